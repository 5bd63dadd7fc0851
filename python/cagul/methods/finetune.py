"""What the finetuning baselines share: a VLM whose language model (or LoRA adapters on it)
trains, an optional frozen reference, the answer scores of a batch, and the save / load of
the result. Each baseline (``ga.py``, ``npo.py``, ...) only defines its loss.

Unlike CAGUL, the baselines change the VLM's weights: all of its language model's weights
(the vision tower and the projector stay frozen), or LoRA adapters on the language model's
linear layers (``peft``) for large models. A batch (``VLMCollator`` output) mixes forget
and retain samples (``is_forget`` per sample); each term is the mean over the batch's
forget (retain) samples, and ``loss = forget + retain_weight * retain``. The reference
(methods with ``needs_reference``) is the model before unlearning: a frozen copy, or the
base model with the adapters disabled under LoRA.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from typing import Any

import torch
from torch import nn

from ..config import CagulConfig
from ..data import VLMCollator
from ..files import read_json
from ..losses import (
    answer_log_probs,
    answer_positions,
    masked_mean,
    per_row_mean,
    target_log_probs,
)
from ..state import atomic_directory, copy_state
from ..training.arguments import UnlearningArguments

BASELINE_CONFIG_NAME = "baseline_config.json"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def lora_config(rank: int, alpha: float | None = None, dropout: float = 0.0, targets=LORA_TARGETS):
    """A ``peft.LoraConfig`` adapting the ``targets`` linear layers of the language model
    only (module paths containing ``language_model``; the vision tower is left alone)."""
    from peft import LoraConfig

    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ValueError(f"lora_config: rank must be an int >= 1, got {rank!r}")
    names = "|".join(targets)
    return LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else 2 * rank,
        lora_dropout=dropout,
        target_modules=rf".*language_model.*\.({names})",
        bias="none",
    )


@dataclasses.dataclass
class AnswerScores:
    """The model's scores of a batch's target answers: ``logp [N, V]`` log-softmax,
    ``target [N]`` and ``row [N]`` (sample of each answer token), ``token_logp [N]``,
    ``nll [B]`` (mean per-token NLL of each sample), ``forget`` / ``retain`` ``[B]`` bool."""

    logp: torch.Tensor
    target: torch.Tensor
    row: torch.Tensor
    token_logp: torch.Tensor
    nll: torch.Tensor
    forget: torch.Tensor
    retain: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.nll.shape[0]


class FinetuneMethod(nn.Module):
    """A finetuning baseline on ``vlm`` (modified in place; wrapped by peft under LoRA: use
    ``.vlm`` afterwards). ``args``: the objective's weights; ``lora``: a
    ``peft.LoraConfig`` (:func:`lora_config`) to train adapters instead of every
    language-model weight; ``prompt_template``: the prompt of the training batches (saved
    with the result).

    Subclasses set ``target`` (what the collator puts in the labels of forget samples:
    ``"answer"`` or ``"forget_refusal"``), ``needs_reference``, and define
    :meth:`forget_loss` (per sample) and, if not the retain NLL, :meth:`retain_loss`.
    """

    name = "finetune"
    target = "answer"
    needs_reference = False

    def __init__(
        self,
        vlm: nn.Module,
        args: UnlearningArguments,
        lora=None,
        prompt_template: str = CagulConfig.prompt_template,
    ):
        super().__init__()
        self.prompt = CagulConfig(prompt_template=prompt_template)
        if not isinstance(args, UnlearningArguments):
            raise TypeError(
                f"{type(self).__name__}: args must be UnlearningArguments, got "
                f"{type(args).__name__}"
            )
        self.args, self.lora = args, lora is not None
        vlm.requires_grad_(False)
        reference = None
        if lora is not None:
            from peft import get_peft_model

            vlm = get_peft_model(vlm, lora)  # marks only the adapters trainable
        else:
            if self.needs_reference:
                reference = copy.deepcopy(vlm).eval()
            self._unfreeze(vlm)
        self.vlm, self.reference = vlm, reference

    def _unfreeze(self, vlm: nn.Module) -> None:
        """Marks the weights this method trains (without LoRA): the language model."""
        for module in (vlm.get_decoder(), vlm.get_output_embeddings()):
            module.requires_grad_(True)

    def train(self, mode: bool = True) -> FinetuneMethod:
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        return self

    # ------------------------------------------------------------------ Method

    def collator(self, processor: Any) -> VLMCollator:
        """The batches this method trains on."""
        return VLMCollator(processor, self.prompt, target=self.target, refusal=self.args.refusal)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.vlm.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.vlm.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        copy_state(self.trainable_state_dict(), state, type(self).__name__)

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def save_pretrained(self, path: str) -> None:
        """The finetuned VLM (the whole model, or the peft adapter under LoRA) and
        ``baseline_config.json``, written to a temporary directory then renamed."""
        info = {
            "method": self.name,
            "lora": self.lora,
            "prompt_template": self.prompt.prompt_template,
            "arguments": self.args.to_dict(),
        }
        with atomic_directory(path) as tmp:
            self.vlm.save_pretrained(tmp)
            with open(os.path.join(tmp, BASELINE_CONFIG_NAME), "w") as f:
                json.dump(info, f, indent=2)

    # ------------------------------------------------------------------ loss

    @torch.no_grad()
    def reference_log_probs(self, inputs: dict) -> torch.Tensor:
        """``[N, V]`` log-softmax of the reference model (frozen copy, or adapters
        disabled) at the answer tokens of ``inputs`` (model inputs with ``labels``)."""
        inputs, labels, positions = split_labels(inputs)
        if self.reference is not None:
            logits = self.reference(**inputs).logits
        else:
            with self.vlm.disable_adapter():
                logits = self.vlm(**inputs).logits
        return answer_log_probs(logits, labels, positions)[0]

    def scores(self, inputs: dict, is_forget: torch.Tensor) -> AnswerScores:
        """The model's :class:`AnswerScores` of ``inputs`` (model inputs with ``labels``)."""
        inputs, labels, positions = split_labels(inputs)
        logp, target, row = answer_log_probs(self.vlm(**inputs).logits, labels, positions)
        token_logp = target_log_probs(logp, target)
        forget = is_forget.to(labels.device).bool()
        nll = per_row_mean(-token_logp, row, labels.shape[0])
        return AnswerScores(logp, target, row, token_logp, nll, forget, ~forget)

    def forget_loss(self, scores: AnswerScores, batch: dict) -> torch.Tensor:
        """``[B]`` forget loss per sample (only forget rows count)."""
        raise NotImplementedError

    def retain_loss(self, scores: AnswerScores, batch: dict) -> torch.Tensor:
        """Scalar retain loss: mean answer NLL of the retain samples."""
        return masked_mean(scores.nll, scores.retain)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        scores = self.scores(batch["inputs"], batch["is_forget"])
        forget = masked_mean(self.forget_loss(scores, batch), scores.forget)
        retain = self.retain_loss(scores, batch)
        loss = forget + self.args.retain_weight * retain
        metrics = {
            "loss": loss.item(),
            "forget_loss": forget.item(),
            "forget_nll": masked_mean(scores.nll, scores.forget).item(),
            "retain_loss": retain.item(),
        }
        return loss, metrics


def split_labels(inputs: dict) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """``(model inputs without labels and without the cache, labels, positions)``: the
    inputs ask for the logits at the answer positions only (``logits_to_keep`` =
    :func:`cagul.losses.answer_positions` of the labels, their ``positions``)."""
    inputs = {**inputs, "use_cache": False}
    labels = inputs.pop("labels")
    positions = answer_positions(labels)
    return {**inputs, "logits_to_keep": positions}, labels, positions


def is_lora_adapter(path: str) -> bool:
    """Whether ``path`` holds a baseline's peft adapter (``adapter_config.json``)."""
    return os.path.isfile(os.path.join(path, "adapter_config.json"))


def load_finetuned(vlm: nn.Module, path: str) -> tuple[nn.Module, CagulConfig]:
    """``(vlm with the LoRA adapter of a baseline at path merged in, a config holding the
    baseline's prompt_template)``. A fully finetuned baseline is a plain checkpoint: load
    it as a VLM. Adapters of the first format (a ``config`` field) load too."""
    from peft import PeftModel

    if not is_lora_adapter(path):
        raise FileNotFoundError(f"load_finetuned: no peft adapter_config.json in {path}")
    info_path = os.path.join(path, BASELINE_CONFIG_NAME)
    if not os.path.isfile(info_path):
        raise FileNotFoundError(f"load_finetuned: no {BASELINE_CONFIG_NAME} in {path}")
    info = read_json(info_path)
    if not isinstance(info, dict):
        raise ValueError(f"load_finetuned: {info_path} must hold a JSON object")
    template = info.get("prompt_template") or info.get("config", {}).get("prompt_template")
    if not isinstance(template, str):
        raise ValueError(f"load_finetuned: {info_path} has no prompt_template")
    prompt = CagulConfig(prompt_template=template)
    return PeftModel.from_pretrained(vlm, path).merge_and_unload().eval(), prompt
