"""IdkDPO: DPO (Rafailov et al., 2023) on the forget samples with the refusal as the
preferred answer and the true answer as the rejected one; NLL on the retain answers."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..data import VLMCollator
from ..losses import per_row_sum, target_log_probs
from .base import register_method
from .finetune import AnswerScores, FinetuneMethod


class PreferenceCollator:
    """Batches with the true answers as targets (``inputs``) plus the same samples with
    the refusal as the forget samples' target (``preferred``: model inputs with labels)."""

    def __init__(self, answers: VLMCollator, refusals: VLMCollator):
        self.answers, self.refusals = answers, refusals

    def __call__(self, samples: list[dict]) -> dict:
        return {**self.answers(samples), "preferred": self.refusals(samples)["inputs"]}


@register_method("idkdpo")
class IdkDPO(FinetuneMethod):
    """Forget: ``-(2/beta) logsigmoid(beta * (log p(r)/p_ref(r) - log p(y)/p_ref(y)))``
    with ``r`` the refusal, ``y`` the true answer, sequence probabilities under the model
    and the reference (``beta = args.npo_beta``); retain: ``retain_weight * NLL``."""

    needs_reference = True

    def collator(self, processor: Any) -> PreferenceCollator:
        refusal = self.args.refusal
        return PreferenceCollator(
            VLMCollator(processor, self.prompt, target="answer", refusal=refusal),
            VLMCollator(processor, self.prompt, target="forget_refusal", refusal=refusal),
        )

    def _log_ratio(self, inputs: dict, scores: AnswerScores) -> torch.Tensor:
        """``[B]`` sequence ``log p(y) - log p_ref(y)`` of the labels of ``inputs``, from the
        model's ``scores`` of them."""
        ref = target_log_probs(self.reference_log_probs(inputs), scores.target)
        return per_row_sum(scores.token_logp - ref, scores.row, scores.batch_size)

    def forget_loss(self, scores: AnswerScores, batch: dict) -> torch.Tensor:
        preferred = batch["preferred"]
        chosen = self._log_ratio(preferred, self.scores(preferred, batch["is_forget"]))
        rejected = self._log_ratio(batch["inputs"], scores)
        beta = self.args.npo_beta
        return -2.0 / beta * F.logsigmoid(beta * (chosen - rejected))
