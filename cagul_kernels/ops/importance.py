"""``cross_modal_importance``: how much the query tokens attend to each visual token,
recomputed tile by tile from q, k and the attention's LSE (never the ``S x S`` matrix).

``alpha[b, j] = 1 / (Hq * n_q) * sum_h sum_{i in Q_b} exp(scale * q[b,h,i] . k[b,h//G,v_j]
- lse[b,h,i])`` with ``v_j = visual_index[b, j]``. Backends: reference (plain torch), cpu
(C++/OpenMP, BLAS tiles), triton, cuda.
"""

from __future__ import annotations

import torch

from .. import reference
from ._backend import define_python_backends, kernel_op, register_fake, resolve_backend
from ._checks import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    check_index_values,
    check_same_device,
    check_tensor,
    softmax_scale,
)

OP = "cross_modal_importance"
REDUCTIONS = ("mean", "sum")
# The C++ kernel masks with int32 positions (INT32_MAX - 1 and INT32_MAX are sentinels).
CPU_MAX_SEQ_LEN = 2**31 - 1


def cross_modal_importance(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    query_index: torch.Tensor,
    visual_index: torch.Tensor,
    *,
    scale: float | None = None,
    causal: bool = True,
    reduce: str = "mean",
    per_head: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Cross-modal attention importance of every visual token.

    Args:
        q: ``[B, Hq, S, D]`` (RoPE'd) queries; k: ``[B, Hkv, S, D]`` keys, ``Hq % Hkv == 0``.
            Any strides, so ``[B, S, H, D]`` tensors passed as ``.transpose(1, 2)`` work.
        lse: ``[B, Hq, S]`` natural-log LSE of the same attention (scale applied), as
            returned by ``attention_with_lse``.
        query_index: ``[B, Nq]`` int32/int64 sequence positions of the query (text)
            tokens, ``-1`` = padding.
        visual_index: ``[B, Nv]`` int32/int64 positions of the visual tokens, ``-1`` = pad.
        scale: softmax scale used by the attention, default ``1 / sqrt(D)``; finite, > 0.
        causal: a query at position p gives zero weight to keys at positions > p.
        reduce: ``"mean"`` divides by ``Hq * n_valid_queries`` (by ``n_valid_queries``
            with ``per_head``); ``"sum"`` does not divide.
        per_head: return ``[B, Hq, Nv]`` instead of summing over heads.
        backend: ``None`` | ``"reference"`` | ``"cpu"`` | ``"triton"`` | ``"cuda"``.

    Returns:
        ``[B, Nv]`` (or ``[B, Hq, Nv]``) float32; padded visual slots are 0. Not
        differentiable (inputs are detached): it ranks tokens, it is not trained through.
    """
    _check_args(q, k, lse, query_index, visual_index, reduce)
    scale = softmax_scale(OP, scale, q.shape[-1])
    backend = resolve_backend(backend, q.device, OP)
    if backend == "cpu" and q.shape[2] >= CPU_MAX_SEQ_LEN:
        raise ValueError(
            f"{OP}: backend='cpu' takes sequences shorter than {CPU_MAX_SEQ_LEN} tokens "
            f"(int32 positions), got q of shape {tuple(q.shape)}"
        )
    return kernel_op(OP, backend)(
        q.detach(),
        k.detach(),
        lse.detach(),
        query_index.to(torch.int64),
        visual_index.to(torch.int64),
        scale,
        causal,
        reduce == "mean",
        per_head,
    )


def _check_args(q, k, lse, query_index, visual_index, reduce) -> None:
    check_tensor(OP, "q", q, ndim=4, dtypes=FLOAT_DTYPES, shape_hint="[B, Hq, S, D]")
    check_tensor(OP, "k", k, ndim=4, dtypes=FLOAT_DTYPES, shape_hint="[B, Hkv, S, D]")
    check_tensor(OP, "lse", lse, ndim=3, dtypes=(torch.float32,), shape_hint="[B, Hq, S]")
    check_tensor(OP, "query_index", query_index, ndim=2, dtypes=INDEX_DTYPES, shape_hint="[B, Nq]")
    check_tensor(
        OP, "visual_index", visual_index, ndim=2, dtypes=INDEX_DTYPES, shape_hint="[B, Nv]"
    )
    check_same_device(OP, q=q, k=k, lse=lse, query_index=query_index, visual_index=visual_index)
    if q.dtype != k.dtype:
        raise TypeError(f"{OP}: q and k must share a dtype, got {q.dtype} and {k.dtype}")
    b, hq, s, d = q.shape
    if k.shape[0] != b or k.shape[2] != s or k.shape[3] != d:
        raise ValueError(f"{OP}: k must be [B={b}, Hkv, S={s}, D={d}], got {tuple(k.shape)}")
    if hq == 0 or d == 0:
        raise ValueError(f"{OP}: q must have at least one head and D >= 1, got {tuple(q.shape)}")
    if k.shape[1] == 0 or hq % k.shape[1] != 0:
        raise ValueError(
            f"{OP}: query heads ({hq}) must be a multiple of kv heads ({k.shape[1]} in k, >= 1)"
        )
    if tuple(lse.shape) != (b, hq, s):
        raise ValueError(f"{OP}: lse must be [B={b}, Hq={hq}, S={s}], got {tuple(lse.shape)}")
    for name, index in (("query_index", query_index), ("visual_index", visual_index)):
        if index.shape[0] != b:
            raise ValueError(f"{OP}: {name} must be [B={b}, N], got {tuple(index.shape)}")
    if reduce not in REDUCTIONS:
        raise ValueError(f"{OP}: reduce must be one of {REDUCTIONS}, got {reduce!r}")


def _check_values(lse, query_index, visual_index) -> None:
    s = lse.shape[2]
    check_index_values(OP, "query_index", query_index, s)
    check_index_values(OP, "visual_index", visual_index, s)
    b, hq = lse.shape[:2]
    rows = lse.gather(2, query_index.clamp(min=0)[:, None, :].expand(b, hq, -1))
    if not bool(torch.isfinite(rows).logical_or(query_index[:, None, :] < 0).all()):
        raise ValueError(f"{OP}: lse must be finite at every valid query position")


def finish_importance(
    sums: torch.Tensor, query_index: torch.Tensor, hq: int, mean: bool, per_head: bool
) -> torch.Tensor:
    """Triton column sums -> importance (csrc/ops.cpp does the same for the C++ kernels).
    ``sums`` is ``[B, Hq, Nv]`` (``per_head``) or ``[B, Hkv, Nv]`` per kv group, reduced
    here over groups in a fixed order; ``mean`` divides by the valid query count (and by
    ``Hq`` when heads are summed)."""
    out = sums if per_head else sums.sum(dim=1)
    if not mean:
        return out
    n_valid = (query_index >= 0).sum(dim=1).clamp(min=1).float()
    return out / (n_valid[:, None, None] if per_head else n_valid[:, None] * hq)


# The Python implementations (the native CPU / CUDA kernels are registered in csrc/ops.cpp).


def _triton(q, k, lse, query_index, visual_index, scale, causal, mean, per_head):
    from ..triton.importance import column_sums

    _check_values(lse, query_index, visual_index)
    sums = column_sums(
        q, k, lse, query_index.contiguous(), visual_index.contiguous(), scale, causal, per_head
    )
    return finish_importance(sums, query_index, q.shape[1], mean, per_head)


def _reference(q, k, lse, query_index, visual_index, scale, causal, mean, per_head):
    _check_values(lse, query_index, visual_index)
    return reference.cross_modal_importance(
        q, k, lse, query_index, visual_index, scale, causal, mean, per_head
    )


define_python_backends(OP, triton=_triton, reference=_reference)


@register_fake(OP)
def _(q, k, lse, query_index, visual_index, scale, causal, mean, per_head):
    b, hq = q.shape[:2]
    nv = visual_index.shape[1]
    shape = (b, hq, nv) if per_head else (b, nv)
    return q.new_empty(shape, dtype=torch.float32)
