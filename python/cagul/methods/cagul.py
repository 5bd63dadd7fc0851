"""CAGUL: train the visual token encoder and the forget discriminator of a
:class:`cagul.model.CagulModel` (the VLM stays frozen)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import VLMCollator
from ..losses import (
    answer_log_probs,
    masked_mean,
    npo_loss,
    per_row_mean,
    per_row_sum,
    target_log_probs,
    token_kl,
)
from ..model import CagulModel
from ..training.arguments import FORGET_LOSSES, UnlearningArguments
from .base import register_method


@register_method("cagul")
class CagulMethod(nn.Module):
    """CAGUL's training objective on a :class:`CagulModel` (VLM frozen).

    A batch (``VLMCollator`` output) mixes forget and retain samples. The loss is
    ``forget + retain_weight * KL + discriminator_weight * BCE``:

    - discriminator BCE on every sample with an image (forget = 1, retain = 0);
    - the encoder runs on every sample (gate forced on: it must leave retain images alone
      on its own, which keeps the model safe when the discriminator errs);
    - forget loss on forget samples: ``"idk"`` mean NLL of the refusal target,
      ``"bounded_ga"`` ``relu(ascent_bound - NLL)`` of the true answer, ``"npo"``
      ``-(2 / beta) * logsigmoid(-beta * (log p(y) - log p_ref(y)))`` with sequence
      log-probabilities of the true answer (per sample: the batch's ``forget_loss``
      indices into ``FORGET_LOSSES``, default ``args.forget_loss`` for every sample);
    - ``KL(p_ref || p)`` per answer token on retain samples, where ``p_ref`` is the same
      frozen model with the transform off (no second model copy).
    """

    def __init__(self, model: CagulModel, args: UnlearningArguments):
        super().__init__()
        if not isinstance(model, CagulModel):
            raise TypeError(f"CagulMethod: expected a CagulModel, got {type(model).__name__}")
        if not isinstance(args, UnlearningArguments):
            raise TypeError(
                f"CagulMethod: args must be UnlearningArguments, got {type(args).__name__}"
            )
        self.model, self.args = model, args
        self.config = model.config

    def collator(self, processor: Any) -> VLMCollator:
        """The batches CAGUL trains on: forget samples' targets per their forget loss."""
        return VLMCollator(
            processor, self.config, refusal=self.args.refusal, forget_loss=self.args.forget_loss
        )

    def trainable_parameters(self) -> list[dict]:
        cfg = self.args
        return [
            {"params": list(self.model.encoder.parameters()), "lr": cfg.lr},
            {
                "params": list(self.model.discriminator.parameters()),
                "lr": cfg.discriminator_lr or cfg.lr,
            },
        ]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.trainable_state_dict()

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_trainable_state_dict(state)

    def save_pretrained(self, path: str) -> None:
        self.model.save_pretrained(path)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, model = self.args, self.model
        inputs = {**batch["inputs"], "use_cache": False}
        labels = inputs.pop("labels")
        is_forget = batch["is_forget"].to(labels.device).bool()
        vis = model.encode_visual(inputs)
        has_visual = vis.has_visual

        logit = model.discriminator(vis.tokens, vis.mask).float()
        bce = masked_mean(
            F.binary_cross_entropy_with_logits(logit, is_forget.float(), reduction="none"),
            has_visual,
        )
        acc = masked_mean(((logit > 0) == is_forget).float(), has_visual)

        logp, target, row = answer_log_probs(model.run(vis, has_visual).logits, labels)
        token_logp = target_log_probs(logp, target)
        b = labels.shape[0]
        nll = per_row_mean(-token_logp, row, b)
        forget_rows, retain_rows = is_forget & has_visual, ~is_forget

        kinds = batch.get("forget_loss")
        if kinds is None:
            kinds = torch.full((b,), FORGET_LOSSES.index(cfg.forget_loss))
        kinds = kinds.to(labels.device)
        npo_rows = kinds == FORGET_LOSSES.index("npo")
        if bool(retain_rows.any()) or bool((npo_rows & forget_rows).any()):
            with torch.no_grad():
                ref_logp, _, _ = answer_log_probs(
                    model.run(vis, torch.zeros_like(has_visual)).logits, labels
                )
        forget_per_row = nll  # "idk": NLL of the refusal (the collator's target)
        ga_rows = kinds == FORGET_LOSSES.index("bounded_ga")
        if bool(ga_rows.any()):
            forget_per_row = torch.where(ga_rows, F.relu(cfg.ascent_bound - nll), forget_per_row)
        if bool((npo_rows & forget_rows).any()):
            log_ratio = per_row_sum(token_logp - target_log_probs(ref_logp, target), row, b)
            npo = npo_loss(log_ratio, cfg.npo_beta)
            forget_per_row = torch.where(npo_rows, npo, forget_per_row)
        forget = masked_mean(forget_per_row, forget_rows)
        if bool(retain_rows.any()):
            kl = masked_mean(per_row_mean(token_kl(ref_logp, logp), row, b), retain_rows)
        else:
            kl = logp.sum() * 0.0
        loss = forget + cfg.retain_weight * kl + cfg.discriminator_weight * bce
        metrics = {
            "loss": loss.item(),
            "forget_loss": forget.item(),
            "forget_nll": masked_mean(nll, forget_rows).item(),
            "retain_kl": kl.item(),
            "disc_bce": bce.item(),
            "disc_acc": acc.item(),
        }
        return loss, metrics
