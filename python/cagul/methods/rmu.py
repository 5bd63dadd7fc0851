"""RMU (Representation Misdirection for Unlearning, Li et al., 2024, WMDP): on forget
samples, steer decoder layer L's activations towards a fixed random direction of norm
``c``; on retain samples, keep them equal to the frozen model's."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..losses import masked_mean
from .base import register_method
from .finetune import FinetuneMethod, split_labels

STEERED_LAYERS = 3  # RMU trains layers L-2..L (without LoRA)


def token_mse(activations: torch.Tensor, target: torch.Tensor, mask: torch.Tensor):
    """``[B]`` mean over the ``mask``-ed tokens of each sample of the per-token mean squared
    error between ``activations`` and ``target`` (``[B, S, D]``); 0 without tokens."""
    per_token = (activations.float() - target.float()).pow(2).mean(-1)
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum(1) / mask.sum(1).clamp(min=1.0)


@register_method("rmu")
class RMU(FinetuneMethod):
    """Forget: ``MSE(h_L, c * u)`` on the answer tokens, ``u`` a fixed uniform random unit
    vector (seeded by ``args.seed``), ``c = args.rmu_steering``; retain:
    ``retain_weight * MSE(h_L, h_L^ref)`` with the frozen model's activations;
    ``L = args.rmu_layer``. Without LoRA only decoder layers ``L-2..L`` train."""

    needs_reference = True

    def __init__(self, vlm: nn.Module, args, lora=None, **kwargs):
        layers = vlm.get_decoder().layers
        if not 0 <= args.rmu_layer < len(layers):
            raise ValueError(
                f"RMU: rmu_layer={args.rmu_layer} but the VLM has {len(layers)} decoder layers"
            )
        super().__init__(vlm, args, lora, **kwargs)
        hidden = vlm.config.get_text_config().hidden_size
        u = torch.rand(hidden, generator=torch.Generator().manual_seed(args.seed))
        control = (u / u.norm() * args.rmu_steering).to(next(vlm.parameters()).device)
        self.register_buffer("control", control, persistent=False)

    def _unfreeze(self, vlm: nn.Module) -> None:
        layer = self.args.rmu_layer
        for module in vlm.get_decoder().layers[max(0, layer - STEERED_LAYERS + 1) : layer + 1]:
            module.requires_grad_(True)

    @contextlib.contextmanager
    def _capture(self, vlm: nn.Module) -> Iterator[list[torch.Tensor]]:
        """Collects the output hidden states of ``vlm``'s decoder layer L."""
        found: list[torch.Tensor] = []

        def hook(module, args, output):
            found.append(output[0] if isinstance(output, tuple) else output)

        handle = vlm.get_decoder().layers[self.args.rmu_layer].register_forward_hook(hook)
        try:
            yield found
        finally:
            handle.remove()

    def activations(self, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """``(model, reference)`` ``[B, S, D]`` activations of layer L."""
        with self._capture(self.vlm) as model_act:
            self.vlm(**inputs)
        with torch.no_grad():
            if self.reference is not None:
                with self._capture(self.reference) as ref_act:
                    self.reference(**inputs)
            else:
                with self.vlm.disable_adapter(), self._capture(self.vlm) as ref_act:
                    self.vlm(**inputs)
        return model_act[0], ref_act[0]

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        inputs, labels, _ = split_labels(batch["inputs"])
        forget_rows = batch["is_forget"].to(labels.device).bool()
        answer = labels != -100
        act, ref = self.activations(inputs)
        forget = masked_mean(token_mse(act, self.control.expand_as(act), answer), forget_rows)
        retain = masked_mean(token_mse(act, ref, answer), ~forget_rows)
        loss = forget + self.args.retain_weight * retain
        metrics = {"loss": loss.item(), "forget_loss": forget.item(), "retain_loss": retain.item()}
        return loss, metrics
