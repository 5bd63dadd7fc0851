"""Finetuning unlearning baselines: GA, GradDiff, KL, NPO and IdK.

Unlike CAGUL, these change the VLM's weights: all of its language model's weights (the
vision tower and the projector stay frozen), or LoRA adapters on the language model's
linear layers (``peft``) for large models. Each is a :class:`cagul.train.Method`, so it
trains in :class:`cagul.train.CagulTrainer` on the same forget / retain samples
(``VLMCollator`` batches mixing both, ``is_forget`` per sample) with the same schedule
(``CagulConfig``: ``lr``, ``steps``, ``batch_size``, ...). Per sample, ``NLL`` is the mean
per-token negative log-likelihood of the target answer; ``w`` is
``CagulConfig.retain_weight``:

=========  ============================================  ======================
method     forget samples (true answer, IdK: refusal)    retain samples
=========  ============================================  ======================
ga         ``-NLL``                                      (not used)
graddiff   ``-NLL``                                      ``w * NLL``
kl         ``-NLL``                                      ``w * KL(ref || model)``
npo        ``-(2/beta) logsigmoid(-beta log(p/p_ref))``  ``w * NLL``
idk        ``NLL`` of ``CagulConfig.refusal``            ``w * NLL``
=========  ============================================  ======================

Each term is the mean over the batch's forget (retain) samples. ``p`` / ``p_ref`` are the
sequence probabilities of the true answer under the model and under the reference, the
model before unlearning (a frozen copy, or the base model with the adapters disabled under
LoRA); ``KL`` is per answer token, averaged per sample. ``beta`` is
``CagulConfig.npo_beta``.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import torch
from torch import nn

from .config import CagulConfig
from .data import VLMCollator
from .losses import (
    answer_log_probs,
    masked_mean,
    npo_loss,
    per_row_mean,
    per_row_sum,
    target_log_probs,
    token_kl,
)
from .state import copy_state

BASELINES = ("ga", "graddiff", "kl", "npo", "idk")
BASELINE_CONFIG_NAME = "baseline_config.json"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_NEEDS_REFERENCE = ("kl", "npo")


def lora_config(rank: int, alpha: float | None = None, dropout: float = 0.0, targets=LORA_TARGETS):
    """A ``peft.LoraConfig`` adapting the ``targets`` linear layers of the language model
    only (module paths containing ``language_model``; the vision tower is left alone)."""
    from peft import LoraConfig

    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"lora_config: rank must be an int >= 1, got {rank!r}")
    names = "|".join(targets)
    return LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else 2 * rank,
        lora_dropout=dropout,
        target_modules=rf".*language_model.*\.({names})",
        bias="none",
    )


class UnlearningBaseline(nn.Module):
    """A finetuning baseline (``method`` in :data:`BASELINES`) on ``vlm``.

    ``config``: the schedule and ``retain_weight``, ``npo_beta``, ``refusal``,
    ``prompt_template``. ``lora``: a ``peft.LoraConfig`` (:func:`lora_config`) to train
    adapters instead of every language-model weight. ``vlm`` is modified in place (wrapped
    by peft under LoRA: use ``.vlm`` afterwards).
    """

    def __init__(self, vlm: nn.Module, method: str, config: CagulConfig, lora=None):
        super().__init__()
        if method not in BASELINES:
            raise ValueError(
                f"UnlearningBaseline: method must be one of {BASELINES}, got {method!r}"
            )
        if not isinstance(config, CagulConfig):
            raise TypeError(
                f"UnlearningBaseline: config must be a CagulConfig, got {type(config).__name__}"
            )
        self.method, self.config, self.lora = method, config, lora is not None
        vlm.requires_grad_(False)
        reference = None
        if lora is not None:
            from peft import get_peft_model

            vlm = get_peft_model(vlm, lora)  # marks only the adapters trainable
        else:
            if method in _NEEDS_REFERENCE:
                reference = copy.deepcopy(vlm).eval()
            language_model = vlm.get_decoder()
            for module in (language_model, vlm.get_output_embeddings()):
                module.requires_grad_(True)
        self.vlm, self.reference = vlm, reference

    def train(self, mode: bool = True) -> UnlearningBaseline:
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        return self

    # ------------------------------------------------------------------ Method

    def collator(self, processor: Any) -> VLMCollator:
        """The batches this method trains on: true answers, IdK: the refusal on forget
        samples."""
        target = "forget_refusal" if self.method == "idk" else "answer"
        return VLMCollator(processor, self.config, target=target)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.vlm.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.vlm.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        copy_state(self.trainable_state_dict(), state, "UnlearningBaseline")

    def save_pretrained(self, path: str) -> None:
        """The finetuned VLM (``save_pretrained``: the whole model, or the peft adapter
        under LoRA) and ``baseline_config.json``."""
        self.vlm.save_pretrained(path)
        info = {"method": self.method, "lora": self.lora, "config": self.config.to_dict()}
        with open(os.path.join(path, BASELINE_CONFIG_NAME), "w") as f:
            json.dump(info, f, indent=2)

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    # ------------------------------------------------------------------ loss

    @torch.no_grad()
    def _reference_log_probs(self, inputs: dict, labels: torch.Tensor) -> torch.Tensor:
        if self.reference is not None:
            logits = self.reference(**inputs).logits
        else:
            with self.vlm.disable_adapter():
                logits = self.vlm(**inputs).logits
        return answer_log_probs(logits, labels)[0]

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, method = self.config, self.method
        inputs = {**batch["inputs"], "use_cache": False}
        labels = inputs.pop("labels")
        b = labels.shape[0]
        forget_rows = batch["is_forget"].to(labels.device).bool()
        retain_rows = ~forget_rows

        logp, target, row = answer_log_probs(self.vlm(**inputs).logits, labels)
        token_logp = target_log_probs(logp, target)
        nll = per_row_mean(-token_logp, row, b)
        ref_logp = self._reference_log_probs(inputs, labels) if method in _NEEDS_REFERENCE else None

        if method == "idk":
            forget_per_row = nll
        elif method == "npo":
            log_ratio = per_row_sum(token_logp - target_log_probs(ref_logp, target), row, b)
            forget_per_row = npo_loss(log_ratio, cfg.npo_beta)
        else:
            forget_per_row = -nll
        forget = masked_mean(forget_per_row, forget_rows)
        if method == "ga":
            retain = nll.sum() * 0.0
        elif method == "kl":
            retain = masked_mean(per_row_mean(token_kl(ref_logp, logp), row, b), retain_rows)
        else:
            retain = masked_mean(nll, retain_rows)
        loss = forget + cfg.retain_weight * retain
        metrics = {
            "loss": loss.item(),
            "forget_loss": forget.item(),
            "forget_nll": masked_mean(nll, forget_rows).item(),
            "retain_loss": retain.item(),
        }
        return loss, metrics


def is_lora_adapter(path: str) -> bool:
    """Whether ``path`` holds a baseline's peft adapter (``adapter_config.json``)."""
    return os.path.isfile(os.path.join(path, "adapter_config.json"))


def load_finetuned(vlm: nn.Module, path: str) -> tuple[nn.Module, CagulConfig]:
    """``(vlm with the LoRA adapter of a baseline at path merged in, the baseline's
    CagulConfig)``. A fully finetuned baseline is a plain checkpoint: load it as a VLM."""
    from peft import PeftModel

    if not is_lora_adapter(path):
        raise FileNotFoundError(f"load_finetuned: no peft adapter_config.json in {path}")
    info_path = os.path.join(path, BASELINE_CONFIG_NAME)
    if not os.path.isfile(info_path):
        raise FileNotFoundError(f"load_finetuned: no {BASELINE_CONFIG_NAME} in {path}")
    with open(info_path) as f:
        info = json.load(f)
    if not isinstance(info, dict) or "config" not in info:
        raise ValueError(f"load_finetuned: {info_path} has no 'config' field")
    config = CagulConfig.from_dict(info["config"])
    return PeftModel.from_pretrained(vlm, path).merge_and_unload().eval(), config
