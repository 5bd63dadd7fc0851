"""NPO (Negative Preference Optimization, Zhang et al., 2024) on the forget answers; NLL on
the retain answers."""

from __future__ import annotations

import torch

from ..losses import npo_loss, per_row_sum, target_log_probs
from .base import register_method
from .finetune import AnswerScores, FinetuneMethod


@register_method("npo")
class NPO(FinetuneMethod):
    """Forget: ``-(2/beta) logsigmoid(-beta log(p/p_ref))`` with ``p`` / ``p_ref`` the
    sequence probabilities of the true answer under the model / the reference
    (``beta = args.npo_beta``); retain: ``retain_weight * NLL``."""

    needs_reference = True

    def forget_loss(self, scores: AnswerScores, batch: dict) -> torch.Tensor:
        ref_logp = self.reference_log_probs(batch["inputs"])
        ref_token_logp = target_log_probs(ref_logp, scores.target)
        log_ratio = per_row_sum(
            scores.token_logp - ref_token_logp, scores.row, scores.batch_size
        )
        return npo_loss(log_ratio, self.args.npo_beta)
