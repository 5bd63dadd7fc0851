"""CAGUL: train the visual token encoder and the forget discriminator of a
:class:`cagul.model.CagulModel` (the VLM stays frozen)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import VLMCollator
from ..losses import (
    answer_log_probs,
    answer_positions,
    masked_mean,
    npo_loss,
    per_row_mean,
    per_row_sum,
    target_log_probs,
    token_kl,
)
from ..model import CagulModel, VisualInputs
from ..training.arguments import FORGET_LOSSES, UnlearningArguments
from ..training.reference_cache import ReferenceCache, sample_keys
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

    The reference pass runs only on the samples whose loss needs it (retain, NPO); in
    ``mode="input"`` it also gives those samples' importance, and the importance pass
    runs on the other samples only. The LM head runs at the answer positions only.
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
        self.reference_cache = (
            ReferenceCache(args.reference_cache_mb * 2**20) if args.reference_cache_mb else None
        )

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
        b = labels.shape[0]
        is_forget = batch["is_forget"].to(labels.device).bool()
        kinds = batch.get("forget_loss")
        if kinds is None:
            kinds = torch.full((b,), FORGET_LOSSES.index(cfg.forget_loss))
        kinds = kinds.to(labels.device)
        vis = model.encode_visual(inputs)
        has_visual = vis.has_visual
        forget_rows, retain_rows = is_forget & has_visual, ~is_forget
        npo_rows = kinds == FORGET_LOSSES.index("npo")
        # Only the retain KL and NPO look at the reference (the model, transform off). Under
        # FSDP every rank must run the same passes (each is a chain of all-gathers), whatever
        # its samples: the reference pass then runs on all of them and gives all importances.
        sharded = _is_fsdp_sharded(self)
        reference_rows = (
            torch.ones_like(is_forget) if sharded else retain_rows | (npo_rows & forget_rows)
        )

        logit = model.discriminator(vis.tokens, vis.mask).float()
        bce = masked_mean(
            F.binary_cross_entropy_with_logits(logit, is_forget.float(), reduction="none"),
            has_visual,
        )
        acc = masked_mean(((logit > 0) == is_forget).float(), has_visual)

        ref_logp, importance = self._reference(vis, labels, reference_rows, sharded)
        positions = answer_positions(labels)
        outputs = model.run(_keep_logits(vis, positions), has_visual, importance=importance)
        logp, target, row = answer_log_probs(outputs.logits, labels, positions)
        token_logp = target_log_probs(logp, target)
        nll = per_row_mean(-token_logp, row, b)
        on_ref = reference_rows[row]  # the answer tokens of the reference's samples

        forget_per_row = nll  # "idk": NLL of the refusal (the collator's target)
        ga_rows = kinds == FORGET_LOSSES.index("bounded_ga")
        if bool(ga_rows.any()):
            forget_per_row = torch.where(ga_rows, F.relu(cfg.ascent_bound - nll), forget_per_row)
        if bool((npo_rows & forget_rows).any()):
            ref_token_logp = target_log_probs(ref_logp, target[on_ref])
            log_ratio = per_row_sum(token_logp[on_ref] - ref_token_logp, row[on_ref], b)
            npo = npo_loss(log_ratio, cfg.npo_beta)
            forget_per_row = torch.where(npo_rows, npo, forget_per_row)
        forget = masked_mean(forget_per_row, forget_rows)
        if bool(retain_rows.any()):
            kl_per_row = per_row_mean(token_kl(ref_logp, logp[on_ref]), row[on_ref], b)
            kl = masked_mean(kl_per_row, retain_rows)
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

    def _reference(
        self, vis: VisualInputs, labels: torch.Tensor, rows: torch.Tensor, sharded: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(ref_logp, importance)``: the reference's ``[N_ref, V]`` log-softmax at the
        answer tokens of the samples ``rows`` (``None`` if none), and in ``mode="input"``
        the ``[B, Nv]`` layer-L importance of every sample with an image: the reference
        pass's for its samples (the same untransformed computation up to layer L), a pass
        stopped after layer L's attention for the others. With a reference cache, the
        samples it holds skip the reference pass (:mod:`cagul.training.reference_cache`).
        ``sharded`` (FSDP; ``rows`` is then every sample, and no cache is used): the
        reference pass gives the importance under autocast too, so that no rank runs a pass
        the others do not."""
        model, has_visual = self.model, vis.has_visual
        input_mode = model.config.mode == "input"
        importance = None
        if input_mode and bool(has_visual.any()):
            importance = torch.zeros(vis.mask.shape, device=vis.mask.device)
        known = torch.zeros_like(rows)  # samples whose importance is filled in
        logp: dict[int, torch.Tensor] = {}  # sample -> its answer tokens' [n, V]
        cache = None if sharded else self.reference_cache
        keys = {} if cache is None else sample_keys(vis, labels, rows)
        run = rows.clone()  # samples whose reference pass runs
        for b, key in keys.items():
            need = importance is not None and bool(has_visual[b])
            entry = cache.get(key, need_importance=need)
            if entry is not None:
                logp[b], run[b] = entry.logp.to(labels.device), False
                if need:
                    importance[b, vis.mask[b]] = entry.importance.to(importance.device)
                    known[b] = True
        if bool(run.any()):
            run_vis, run_labels = vis.select(run), labels[run]
            positions = answer_positions(run_labels)
            want = importance is not None and bool((run & has_visual).any())
            outputs, run_importance = model.reference_forward(
                _keep_logits(run_vis, positions), importance=want, under_autocast=sharded
            )
            run_logp, _, row = answer_log_probs(outputs.logits, run_labels, positions)
            counts = torch.bincount(row, minlength=int(run.sum())).tolist()
            samples = run.nonzero().flatten().tolist()
            logp.update(zip(samples, run_logp.split(counts), strict=True))
            if run_importance is not None:
                importance[run] = run_importance.to(importance.dtype)
                known |= run
        if importance is not None:
            rest = has_visual & ~known
            if bool(rest.any()):
                importance[rest] = model.importance(vis.select(rest)).to(importance.device)
        # a sample without a key (an input that cannot be digested exactly) is not kept
        for b in (b for b in run.nonzero().flatten().tolist() if b in keys):
            visual = importance is not None and bool(has_visual[b])
            cache.put(keys[b], logp[b], importance[b, vis.mask[b]] if visual else None)
        ref_logp = torch.cat([logp[b] for b in sorted(logp)]) if logp else None
        return ref_logp, importance


def _is_fsdp_sharded(module: nn.Module) -> bool:
    """Whether ``fully_shard`` made ``module`` an FSDP2 unit (``cagul.training.fsdp``)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def _keep_logits(vis: VisualInputs, positions: torch.Tensor) -> VisualInputs:
    """``vis`` asking the model for the logits at ``positions`` only (``logits_to_keep``)."""
    return dataclasses.replace(vis, kwargs={**vis.kwargs, "logits_to_keep": positions})
