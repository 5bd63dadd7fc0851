"""Plain-PyTorch references of every op: the test oracle.

They favour obviousness over memory: they materialise the gathered tiles in full.
"""

from __future__ import annotations

import torch


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x [B, H, S, D]``, ``index [B, N]`` -> ``[B, H, N, D]`` fp32 (-1 pads read row 0)."""
    b, h, _, d = x.shape
    idx = index.clamp(min=0)[:, None, :, None].expand(b, h, index.shape[1], d)
    return x.float().gather(2, idx)


def cross_modal_importance(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    query_index: torch.Tensor,
    visual_index: torch.Tensor,
    scale: float,
    causal: bool,
    mean: bool,
    per_head: bool,
) -> torch.Tensor:
    """``sum_i P[i, j]`` over the query rows, with ``P = exp(scale * q k^T - lse)``.

    ``q [B, Hq, S, D]``, ``k [B, Hkv, S, D]``, ``lse [B, Hq, S]``, indices ``[B, Nq]`` /
    ``[B, Nv]`` (-1 = padding). Returns ``[B, Hq, Nv]`` (``per_head``) or ``[B, Nv]``,
    fp32; ``mean`` divides by the valid query count (and by ``Hq`` when summing heads).
    With the LSE of the same attention, ``P`` is exactly its softmax probability.
    """
    b, hq = q.shape[:2]
    group = hq // k.shape[1]
    qg = _gather_rows(q, query_index)  # [B, Hq, Nq, D]
    kg = _gather_rows(k, visual_index).repeat_interleave(group, dim=1)  # [B, Hq, Nv, D]
    lg = lse.float().gather(2, query_index.clamp(min=0)[:, None, :].expand(b, hq, -1))
    probs = torch.exp(scale * (qg @ kg.transpose(-1, -2)) - lg[..., None])  # [B, Hq, Nq, Nv]
    keep = (query_index >= 0)[:, :, None] & (visual_index >= 0)[:, None, :]
    if causal:
        keep = keep & (visual_index[:, None, :] <= query_index[:, :, None])
    importance = torch.where(keep[:, None], probs, 0.0).sum(dim=2)  # [B, Hq, Nv]
    if mean:
        n_queries = (query_index >= 0).sum(dim=1).clamp(min=1).float()
        importance = importance / n_queries[:, None, None]
    if per_head:
        return importance
    importance = importance.sum(dim=1)
    return importance / hq if mean else importance


def importance_from_probs(
    probs: torch.Tensor, query_index: torch.Tensor, visual_index: torch.Tensor
) -> torch.Tensor:
    """The eager way (``output_attentions=True``): mean over heads and valid query rows of
    materialised softmax probabilities ``probs [B, H, S, S]``. Returns ``[B, Nv]`` fp32."""
    b, h, s, _ = probs.shape
    rows = probs.float().gather(2, query_index.clamp(min=0)[:, None, :, None].expand(b, h, -1, s))
    rows = rows * (query_index >= 0)[:, None, :, None]
    cols = rows.gather(
        3, visual_index.clamp(min=0)[:, None, None, :].expand(b, h, rows.shape[2], -1)
    )
    n_queries = (query_index >= 0).sum(dim=1).clamp(min=1).float()
    importance = cols.sum(dim=(1, 2)) / (h * n_queries[:, None])
    return importance * (visual_index >= 0)


def ratio_counts(visual_index: torch.Tensor, ratio: float) -> torch.Tensor:
    """Per-row selection counts ``ceil(ratio * n_valid)`` ``[B]`` int64, float-safe: a
    product within 1e-9 (relative) of an integer counts as that integer, so ``0.7 * 10``
    gives 7, not 8 (``0.7 * 10 == 7.000000000000001`` in floating point)."""
    x = (visual_index >= 0).sum(dim=1).double() * ratio
    r = x.round()
    near = (x - r).abs() <= 1e-9 * x
    return torch.where(near, r, x.ceil()).long()


def select_low_importance(
    importance: torch.Tensor, visual_index: torch.Tensor, counts: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``counts[b]`` lowest-importance valid slots of every row by a stable sort.

    ``importance [B, Nv]``, ``visual_index [B, Nv]`` (-1 = padding), ``counts [B]``
    (``<=`` the row's valid count). Returns ``(slots, positions)`` ``[B, width]`` int64,
    ordered by (importance, slot), ``-1`` past ``counts[b]``. Padded slots sort after every
    valid one (also after valid ``+inf``) by a second stable sort on the padding flag.
    """
    by_value = torch.sort(importance.float(), dim=1, stable=True).indices
    padded = (visual_index < 0).gather(1, by_value)
    order = by_value.gather(1, torch.sort(padded.byte(), dim=1, stable=True).indices)
    slots = order[:, :width]
    keep = torch.arange(width, device=slots.device) < counts[:, None]
    positions = visual_index.long().gather(1, slots)
    return slots.where(keep, -1), positions.where(keep, -1)
