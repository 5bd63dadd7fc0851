"""KL: gradient ascent on the forget answers; the retain answers keep the reference
model's token distribution."""

from __future__ import annotations

import torch

from ..losses import masked_mean, per_row_mean, token_kl
from .base import register_method
from .finetune import AnswerScores, FinetuneMethod


@register_method("kl")
class KLMinimization(FinetuneMethod):
    """``loss = mean_forget(-NLL) + retain_weight * mean_retain(KL(ref || model))``, the KL
    per answer token, averaged per sample."""

    needs_reference = True

    def forget_loss(self, scores: AnswerScores, batch: dict) -> torch.Tensor:
        return -scores.nll

    def retain_loss(self, scores: AnswerScores, batch: dict) -> torch.Tensor:
        ref_logp = self.reference_log_probs(batch["inputs"])
        kl = per_row_mean(token_kl(ref_logp, scores.logp), scores.row, scores.batch_size)
        return masked_mean(kl, scores.retain)
