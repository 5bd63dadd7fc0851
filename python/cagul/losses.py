"""Answer-token losses shared by CAGUL (:mod:`cagul.methods.cagul`), the finetuning baselines
(:mod:`cagul.methods`) and the evaluation (:mod:`cagul.evaluation`).

Labels follow transformers: position ``t`` of ``logits [B, S, V]`` predicts
``labels[:, t + 1]``; ``-100`` marks tokens that are not part of the answer. Per-token
values are flattened to ``[N]`` answer tokens with ``row [N]`` the sample of each.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """``[K]`` ascending positions ``t`` whose logits predict an answer token of some sample
    (``labels[:, t + 1] != -100``). Passed as a transformers model's ``logits_to_keep``,
    the LM head runs only there (every position the answer losses look at)."""
    return (labels[:, 1:] != -100).any(dim=0).nonzero().flatten()


def answer_log_probs(
    logits: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor | None = None
) -> tuple[torch.Tensor, ...]:
    """``(log_softmax [N, V] fp32, targets [N], row [N])`` at the answer tokens.

    ``logits``: ``[B, S, V]`` at every position, or ``[B, K, V]`` at ``positions`` only
    (:func:`answer_positions` of ``labels``, the model's ``logits_to_keep``); both give the
    same result."""
    labels = labels.to(logits.device)
    if positions is None:
        logits, shifted = logits[:, :-1], labels[:, 1:]
    else:
        if logits.shape[1] != positions.numel():
            raise ValueError(
                f"answer_log_probs: logits at {logits.shape[1]} positions but "
                f"{positions.numel()} positions were given"
            )
        shifted = labels[:, positions.to(labels.device) + 1]
    keep = shifted != -100
    row = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(shifted)[keep]
    logp = F.log_softmax(logits[keep].float(), dim=-1)
    return logp, shifted[keep], row


def target_log_probs(logp: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``[N]`` log-probability of each answer token (``logp [N, V]``, ``target [N]``)."""
    return logp.gather(1, target[:, None]).squeeze(1)


def per_row_sum(values: torch.Tensor, row: torch.Tensor, n_rows: int) -> torch.Tensor:
    """``[n_rows]`` sums of the per-token ``values [N]`` of each sample."""
    return values.new_zeros(n_rows).index_add(0, row, values)


def per_row_mean(values: torch.Tensor, row: torch.Tensor, n_rows: int) -> torch.Tensor:
    """``[n_rows]`` means of the per-token ``values [N]`` of each sample (0 without tokens)."""
    count = per_row_sum(torch.ones_like(values), row, n_rows)
    return per_row_sum(values, row, n_rows) / count.clamp(min=1.0)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values [B]`` where ``mask [B]`` is true; 0 (still differentiable) if none."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def answer_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[B]`` mean per-token negative log-likelihood of each sample's answer."""
    logp, target, row = answer_log_probs(logits, labels)
    return per_row_mean(-target_log_probs(logp, target), row, labels.shape[0])


def token_kl(ref_logp: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """``[N]`` per-token ``KL(ref || model)`` from the two ``[N, V]`` log-softmaxes."""
    return (ref_logp.exp() * (ref_logp - logp)).sum(-1)


def npo_loss(log_ratio: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO per sample: ``-(2 / beta) * logsigmoid(-beta * log_ratio)`` where ``log_ratio``
    is ``log p_model(y) - log p_ref(y)`` of the whole answer (Zhang et al., 2024). Equals
    ``(2 / beta) * log 2`` at the reference and tends to ``2 * log_ratio`` (gradient
    ascent) when the model is far above it."""
    return -2.0 / beta * F.logsigmoid(-beta * log_ratio)
