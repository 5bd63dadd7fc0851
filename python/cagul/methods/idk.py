"""IdK: teach the refusal on the forget samples; NLL on the retain answers."""

from __future__ import annotations

import torch

from .base import register_method
from .finetune import AnswerScores, FinetuneMethod


@register_method("idk")
class IdontKnow(FinetuneMethod):
    """``loss = mean_forget(NLL(refusal)) + retain_weight * mean_retain(NLL(answer))`` (the
    collator puts ``args.refusal`` in the forget samples' labels)."""

    target = "forget_refusal"

    def forget_loss(self, scores: AnswerScores, batch: dict) -> torch.Tensor:
        return scores.nll
