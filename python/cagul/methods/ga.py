"""GA (gradient ascent): forget ``-NLL`` of the true answer; no retain term."""

from __future__ import annotations

import torch

from .base import register_method
from .finetune import AnswerScores, FinetuneMethod


@register_method("ga")
class GradientAscent(FinetuneMethod):
    """``loss = mean over forget samples of -NLL(answer)``."""

    def forget_loss(self, scores: AnswerScores, batch: dict) -> torch.Tensor:
        return -scores.nll

    def retain_loss(self, scores: AnswerScores, batch: dict) -> torch.Tensor:
        return scores.nll.sum() * 0.0
