"""SimNPO (Fan et al., 2024, "Simplicity Prevails"): reference-free, length-normalised NPO
with a reward margin; NLL on the retain answers."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import register_method
from .finetune import AnswerScores, FinetuneMethod


@register_method("simnpo")
class SimNPO(FinetuneMethod):
    """Forget: ``-(2/beta) logsigmoid(beta * NLL - gamma)`` where ``NLL`` is the mean
    per-token NLL of the true answer (``log p(y) / |y|`` negated: the length
    normalisation) and ``gamma = args.simnpo_gamma`` the margin (``beta =
    args.simnpo_beta``; open-unlearning writes the margin as ``delta = gamma / beta``);
    retain: ``retain_weight * NLL``."""

    def forget_loss(self, scores: AnswerScores, batch: dict) -> torch.Tensor:
        beta, gamma = self.args.simnpo_beta, self.args.simnpo_gamma
        return -2.0 / beta * F.logsigmoid(beta * scores.nll - gamma)
