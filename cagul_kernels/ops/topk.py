"""``select_low_importance``: the lowest-importance visual tokens of every sample, and
``low_importance_tokens``, which chains ``cross_modal_importance`` into it.

Per row b, the ``count_b`` valid slots (``visual_index >= 0``) with the lowest importance,
ordered by (importance, slot): ``count_b = k``, or ``ceil(ratio * n_valid_b)`` with
``ratio``. Backends: reference (stable sort), cpu (C++ MSD radix select), triton and cuda
(per-chunk sort of packed (value, slot) words, then each word's rank by binary search in
every chunk).

Output width. With ``k`` it is ``k``. With ``ratio`` it is ``max_b count_b``, which depends
on ``visual_index``'s values: the custom op computes it inside (the row counts with it), and
its fake implementation returns an unbacked size, so ``torch.compile(fullgraph=True)`` works
for both forms (the ratio form yields tensors of data-dependent width).
"""

from __future__ import annotations

import torch

from .. import reference
from ._backend import (
    NATIVE_BACKENDS,
    define_python_backends,
    kernel_op,
    register_fake,
    resolve_backend,
)
from ._checks import FLOAT_DTYPES, INDEX_DTYPES, check_same_device, check_tensor
from .importance import cross_modal_importance

OP = "select_low_importance"


def select_low_importance(
    importance: torch.Tensor,
    visual_index: torch.Tensor,
    *,
    k: int | None = None,
    ratio: float | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` (or ``ratio`` of the valid) lowest-importance visual tokens of every row.

    Args:
        importance: ``[B, Nv]`` fp32/fp16/bf16, e.g. from ``cross_modal_importance``.
            NaN at a valid slot is an error; padded slots are ignored.
        visual_index: ``[B, Nv]`` int32/int64 sequence positions, ``-1`` = padding.
        k: tokens per row, ``0 <= k <= `` every row's valid count (``k = 0`` gives
            ``[B, 0]`` tensors).
        ratio: in ``(0, 1]``: row b takes ``ceil(ratio * n_valid_b)`` tokens, where a
            product within 1e-9 (relative) of an integer counts as that integer (so
            ``0.7 * 10`` gives 7, not 8). Exactly one of ``k`` / ``ratio``.
        backend: ``None`` | ``"reference"`` | ``"cpu"`` | ``"triton"`` | ``"cuda"``.

    Returns:
        ``(slots, positions)``, both ``[B, K]`` int64: indices into the visual list and the
        matching ``visual_index`` entries (sequence positions, for ``transform_scatter``),
        by ascending importance, ties to the lower slot, never a padded slot. ``K = k``, or
        ``max_b ceil(ratio * n_valid_b)`` with the unused tail of each row set to ``-1``.
    """
    if not (isinstance(importance, torch.Tensor) and isinstance(visual_index, torch.Tensor)):
        _check_args(importance, visual_index, k, ratio)  # raises, naming the argument
    device = importance.device
    backend = resolve_backend(backend, device, OP)
    if backend in NATIVE_BACKENDS:
        # The native op checks shapes, dtypes and the k / ratio range itself, in the words of
        # _check_args (check_select_args in csrc/ops.cpp): the whole call takes microseconds.
        if visual_index.device != device:  # else the dispatcher might pick another kernel
            check_same_device(OP, importance=importance, visual_index=visual_index)
        k, ratio = _count_args(k, ratio)
    else:
        k, ratio = _check_args(importance, visual_index, k, ratio)
    if importance.requires_grad:  # the selection is not differentiable
        importance = importance.detach()
    return kernel_op(OP, backend)(importance, visual_index, k, ratio)


def low_importance_tokens(
    q: torch.Tensor,
    key: torch.Tensor,
    lse: torch.Tensor,
    query_index: torch.Tensor,
    visual_index: torch.Tensor,
    *,
    k: int | None = None,
    ratio: float | None = None,
    scale: float | None = None,
    causal: bool = True,
    reduce: str = "mean",
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cross_modal_importance`` then ``select_low_importance`` in one call.

    ``q``, ``key`` (the attention keys, ``[B, Hkv, S, D]``), ``lse``, ``query_index``,
    ``scale``, ``causal`` and ``reduce`` as in ``cross_modal_importance``; ``k`` / ``ratio``
    as in ``select_low_importance``; ``backend`` is used for both. Returns
    ``(slots, positions)`` ``[B, K]`` int64.
    """
    if isinstance(visual_index, torch.Tensor) and visual_index.dim() == 2:
        _check_count(k, ratio, visual_index.shape[1])  # before the expensive part
    importance = cross_modal_importance(
        q,
        key,
        lse,
        query_index,
        visual_index,
        scale=scale,
        causal=causal,
        reduce=reduce,
        backend=backend,
    )
    return select_low_importance(importance, visual_index, k=k, ratio=ratio, backend=backend)


def _check_args(importance, visual_index, k, ratio) -> tuple[int, float | None]:
    """Metadata checks (trace-safe) of the Python backends, which check_select_args in
    csrc/ops.cpp repeats word for word for the native ones; returns ``(k, ratio)`` as the op
    takes them."""
    check_tensor(OP, "importance", importance, ndim=2, dtypes=FLOAT_DTYPES, shape_hint="[B, Nv]")
    check_tensor(
        OP, "visual_index", visual_index, ndim=2, dtypes=INDEX_DTYPES, shape_hint="[B, Nv]"
    )
    check_same_device(OP, importance=importance, visual_index=visual_index)
    if importance.shape != visual_index.shape:
        raise ValueError(
            f"{OP}: importance {tuple(importance.shape)} and visual_index "
            f"{tuple(visual_index.shape)} must have the same shape [B, Nv]"
        )
    return _check_count(k, ratio, importance.shape[1])


def _check_count(k, ratio, nv) -> tuple[int, float | None]:
    """``_count_args`` and the ranges: ``0 <= k <= nv``, ``0 < ratio <= 1``."""
    k, ratio = _count_args(k, ratio)
    # Comparisons only: a SymFloat traced by torch.compile(dynamic=True) becomes a guard
    # (math.isfinite would break the graph); NaN and inf fail them.
    if ratio is not None:
        if not 0 < ratio <= 1:
            raise ValueError(f"{OP}: ratio must be in (0, 1], got {ratio}")
    elif k < 0:
        raise ValueError(f"{OP}: k must be >= 0, got {k}")
    elif k > nv:
        raise ValueError(f"{OP}: k={k} exceeds the Nv={nv} visual slots of visual_index")
    return k, ratio


def _count_args(k, ratio) -> tuple[int, float | None]:
    """Exactly one of ``k`` (an int) and ``ratio`` (a float); returns them as the op takes
    them: ``(k, None)`` or ``(-1, float(ratio))``."""
    if (k is None) == (ratio is None):
        raise ValueError(f"{OP}: pass exactly one of k or ratio, got k={k!r}, ratio={ratio!r}")
    if ratio is not None:
        if type(ratio) is float:  # the common case first
            return -1, ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float, torch.SymFloat)):
            raise TypeError(f"{OP}: ratio must be a float in (0, 1], got {type(ratio).__name__}")
        return -1, ratio if isinstance(ratio, torch.SymFloat) else float(ratio)
    if isinstance(k, bool) or not isinstance(k, (int, torch.SymInt)):
        raise TypeError(f"{OP}: k must be an int, got {type(k).__name__}")
    return k, None


def _row_counts(importance, visual_index, k, ratio) -> tuple[torch.Tensor, int]:
    """Value checks (the C++ kernels do their own) and the per-row counts ``[B]`` and width."""
    bad = visual_index < -1
    if bool(bad.any()):
        b, j = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"{OP}: visual_index entries must be -1 (padding) or >= 0, found "
            f"{int(visual_index[b, j])} at row {b}, slot {j}"
        )
    valid = visual_index >= 0
    nan = importance.isnan() & valid
    if bool(nan.any()):
        b, j = (int(x) for x in nan.nonzero()[0])
        raise ValueError(f"{OP}: importance is NaN at row {b}, slot {j} (a valid visual token)")
    if ratio is not None:
        counts = reference.ratio_counts(visual_index, ratio)
        return counts, int(counts.max()) if counts.numel() else 0
    n_valid = valid.sum(dim=1)
    short = (n_valid < k).nonzero()
    if short.numel():
        b = int(short[0, 0])
        raise ValueError(
            f"{OP}: k={k} exceeds the {int(n_valid[b])} valid visual tokens of row {b}"
        )
    return torch.full_like(n_valid, k), k


def _reference(importance, visual_index, k, ratio):
    counts, width = _row_counts(importance, visual_index, k, ratio)
    return reference.select_low_importance(importance, visual_index, counts, width)


def _triton(importance, visual_index, k, ratio):
    from ..triton.topk import select_low_importance as triton_select

    counts, width = _row_counts(importance, visual_index, k, ratio)
    return triton_select(importance, visual_index, counts, width)


define_python_backends(OP, triton=_triton, reference=_reference)


@register_fake(OP)
def _(importance, visual_index, k, ratio):
    if ratio is not None:  # the width depends on visual_index's values
        k = torch.library.get_ctx().new_dynamic_size()
    shape = (importance.shape[0], k)
    return (
        importance.new_empty(shape, dtype=torch.int64),
        importance.new_empty(shape, dtype=torch.int64),
    )
