"""GradDiff: gradient ascent on the forget answers, descent on the retain answers."""

from __future__ import annotations

import torch

from .base import register_method
from .finetune import AnswerScores, FinetuneMethod


@register_method("graddiff")
class GradDiff(FinetuneMethod):
    """``loss = mean_forget(-NLL) + retain_weight * mean_retain(NLL)``."""

    def forget_loss(self, scores: AnswerScores, batch: dict) -> torch.Tensor:
        return -scores.nll
