"""Plain-PyTorch references of every op: the test oracle.

They favour obviousness over memory: they materialise the gathered tiles in full.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def attention_with_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    scale: float,
    attn_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention from materialised fp32 scores, and its natural-log LSE.

    ``q [B, Hq, Sq, D]``, ``k``, ``v [B, Hkv, Sk, D]`` (query head h reads kv head
    ``h // (Hq // Hkv)``), causal bottom-right aligned, ``attn_mask`` bool (True = attend)
    or additive, broadcastable to ``[B, Hq, Sq, Sk]``. Returns ``out [B, Hq, Sq, D]`` in q's
    dtype and ``lse [B, Hq, Sq]`` fp32. A row that sees no key gets ``out = 0`` and
    ``lse = -inf``; NaN anywhere in a row's inputs stays NaN in that row.
    """
    group = q.shape[1] // k.shape[1]
    k, v = k.float().repeat_interleave(group, dim=1), v.float().repeat_interleave(group, dim=1)
    scores = (q.float() @ k.transpose(-1, -2)) * scale
    sq, sk = scores.shape[-2:]
    if causal:
        visible = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(sk - sq)
        scores = scores.masked_fill(~visible, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.float()
    lse = torch.logsumexp(scores, dim=-1)
    # exp(-inf - 0) = 0 on rows without a key; no nan_to_num, which would also hide NaNs.
    probs = torch.exp(scores - lse.masked_fill(lse == float("-inf"), 0.0)[..., None])
    return (probs @ v).to(q.dtype), lse


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


# --- select_low_importance ---------------------------------------------------------------


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


# --- transform_scatter -------------------------------------------------------------------

_GELU_TANH_C = math.sqrt(2.0 / math.pi)


def activation(z: torch.Tensor, name: str) -> torch.Tensor:
    """``gelu`` (erf), ``gelu_tanh``, ``silu`` or ``relu`` of ``z``."""
    if name == "gelu":
        return F.gelu(z)
    if name == "gelu_tanh":
        return F.gelu(z, approximate="tanh")
    if name == "silu":
        return F.silu(z)
    if name == "relu":
        return F.relu(z)
    raise ValueError(f"unknown activation {name!r}")


def activation_grad(z: torch.Tensor, name: str) -> torch.Tensor:
    """``d activation(z) / dz``, written out (the oracle for the kernels' backward)."""
    if name == "gelu":
        cdf = 0.5 * (1.0 + torch.erf(z * math.sqrt(0.5)))
        return cdf + z * torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    if name == "gelu_tanh":
        # gelu_tanh(z) = z * sigmoid(2u), u = c (z + 0.044715 z^3)
        s = torch.sigmoid(2.0 * _GELU_TANH_C * (z + 0.044715 * z**3))
        return s + z * s * (1.0 - s) * 2.0 * _GELU_TANH_C * (1.0 + 3 * 0.044715 * z * z)
    if name == "silu":
        s = torch.sigmoid(z)
        return s * (1.0 + z * (1.0 - s))
    if name == "relu":
        return (z > 0).to(z.dtype)
    raise ValueError(f"unknown activation {name!r}")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _selected(positions: torch.Tensor, gate: torch.Tensor):
    """``(b, i, p)`` of every valid slot of a sample whose gate is not zero."""
    keep = (positions >= 0) & (gate != 0)[:, None]
    bi, ki = keep.nonzero(as_tuple=True)
    return bi, ki, positions[bi, ki]


def transform_scatter_rows(x, positions, w1, b1, w2, b2, gate, activation_name):
    """The transformed rows: ``((b, p), x[b,p] + g_b * (act(x[b,p] @ w1 + b1) @ w2 + b2))``
    for every selected ``(b, p)``, in the compute dtype (fp32, or fp64 for fp64 input)."""
    cdt = _compute_dtype(x)
    bi, _, pi = _selected(positions, gate)
    xs = x[bi, pi].to(cdt)  # [N, D]
    hidden = activation(xs @ w1.to(cdt) + b1.to(cdt), activation_name)
    rows = xs + gate.to(cdt)[bi, None] * (hidden @ w2.to(cdt) + b2.to(cdt))
    return (bi, pi), rows


def transform_scatter(
    x: torch.Tensor,
    positions: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    gate: torch.Tensor,
    activation_name: str,
) -> torch.Tensor:
    """Gather -> MLP -> ``index_put``, out of place and differentiable with plain autograd.

    ``x [B, S, D]``, ``positions [B, K]`` (-1 = padding, no repeats within a row),
    ``w1 [D, R]``, ``b1 [R]``, ``w2 [R, D]``, ``b2 [D]``, ``gate [B]`` float. Rows of samples
    whose gate is 0 and rows not selected are copies of ``x``.
    """
    index, rows = transform_scatter_rows(x, positions, w1, b1, w2, b2, gate, activation_name)
    return x.index_put(index, rows.to(x.dtype))


def transform_scatter_hidden(x, positions, w1, b1, gate) -> torch.Tensor:
    """Pre-activations ``z [B, K, R] = x[b, p] @ w1 + b1`` (compute dtype; 0 where a slot is
    padding or its sample's gate is 0), the tensor the fused forward keeps for backward."""
    cdt = _compute_dtype(x)
    bi, ki, pi = _selected(positions, gate)
    z = x.new_zeros((*positions.shape, w1.shape[1]), dtype=cdt)
    z[bi, ki] = x[bi, pi].to(cdt) @ w1.to(cdt) + b1.to(cdt)
    return z


def transform_scatter_backward(dy, x, positions, z, w1, w2, gate, activation_name, need_dx):
    """Gradients of ``transform_scatter`` from ``dy [B, S, D]`` and the saved pre-activations
    ``z``: ``(dx, dw1, db1, dw2, db2)``; ``dx`` is an empty tensor unless ``need_dx``."""
    cdt = _compute_dtype(x)
    bi, ki, pi = _selected(positions, gate)
    zs = z[bi, ki]  # [N, R]
    dy_rows = dy[bi, pi].to(cdt)
    gdy = gate.to(cdt)[bi, None] * dy_rows
    dz = (gdy @ w2.to(cdt).T) * activation_grad(zs, activation_name)
    dw2 = activation(zs, activation_name).T @ gdy
    dw1 = x[bi, pi].to(cdt).T @ dz
    dx = x.new_empty(0)
    if need_dx:
        rows = (dy_rows + dz @ w1.to(cdt).T).to(x.dtype)
        dx = dy.to(x.dtype).contiguous().index_put((bi, pi), rows)
    return dx, dw1.to(w1.dtype), dz.sum(0).to(w1.dtype), dw2.to(w2.dtype), gdy.sum(0).to(w2.dtype)
