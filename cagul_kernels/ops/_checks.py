"""Argument checks shared by the ops: clear errors naming the argument, never a crash deep
inside a kernel. Shape/dtype/device checks run on fake tensors too (they only read
metadata); value checks (index ranges, finiteness) run inside the custom ops' real
implementations, so they are invisible to ``torch.compile`` tracing.
"""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


def check_tensor(
    op: str,
    name: str,
    t,
    *,
    ndim: int | None = None,
    dtypes: tuple[torch.dtype, ...] | None = None,
    shape_hint: str = "",
) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        hint = f" {shape_hint}" if shape_hint else ""
        raise ValueError(f"{op}: {name} must be {ndim}-D{hint}, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{op}: {name} must have dtype in ({names}), got {t.dtype}")


def check_same_device(op: str, **tensors: torch.Tensor) -> torch.device:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    first_name, first = next(iter(devices.items()))
    for name, dev in devices.items():
        if dev != first:
            raise ValueError(
                f"{op}: all tensors must be on one device, but {first_name} is on {first} "
                f"and {name} is on {dev}"
            )
    return first


def check_index_values(op: str, name: str, index: torch.Tensor, upper: int) -> None:
    """Every entry must be -1 (padding) or in [0, upper)."""
    if index.numel() == 0:
        return
    lo, hi = int(index.min()), int(index.max())
    if lo < -1 or hi >= upper:
        raise ValueError(
            f"{op}: {name} entries must be -1 (padding) or in [0, {upper}), "
            f"found values in [{lo}, {hi}]"
        )


def check_positive_finite(op: str, name: str, value) -> None:
    """``value`` must be a real number in ``(0, inf)``. Comparisons only (no
    ``math.isfinite``), so a ``SymFloat`` traced by ``torch.compile(dynamic=True)`` passes
    through as a guard instead of breaking the graph; NaN fails ``0 < value``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.SymInt, torch.SymFloat)):
        raise TypeError(f"{op}: {name} must be a float, got {type(value).__name__}")
    if not 0 < value < math.inf:
        raise ValueError(f"{op}: {name} must be finite and > 0, got {value}")


def softmax_scale(op: str, scale, head_dim) -> float:
    """The softmax scale: ``1 / sqrt(head_dim)`` when ``scale`` is None, else ``scale``
    checked finite and positive (a traced ``SymFloat`` stays symbolic)."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    check_positive_finite(op, "scale", scale)
    return scale if isinstance(scale, torch.SymFloat) else float(scale)


def check_no_internal_overlap(op: str, name: str, t: torch.Tensor) -> None:
    """Refuses a tensor whose elements may share memory, as torch's in-place ops refuse
    ``expand()``-ed (stride-0) inputs. Public sizes/strides only: with the dimensions of
    size > 1 sorted by stride, each stride must exceed the largest offset the smaller-stride
    dimensions reach (sufficient for no overlap; it catches stride 0 and overlapping
    ``as_strided`` views, and passes every contiguous tensor or permutation of one)."""
    span = 0
    # Smallest stride first; a selection loop rather than sorted(), whose tuple keys
    # torch.compile cannot trace when strides are symbolic (each comparison is a guard).
    dims = [(stride, size) for size, stride in zip(t.shape, t.stride(), strict=True) if size > 1]
    while dims:
        first = 0
        for i in range(1, len(dims)):
            if dims[i][0] < dims[first][0]:
                first = i
        stride, size = dims.pop(first)
        if stride <= span:
            raise ValueError(
                f"{op}: {name} must not overlap itself in memory (shape {tuple(t.shape)}, "
                f"strides {t.stride()}, e.g. from expand()): in-place writes would land on "
                f"shared elements; pass {name}.contiguous() or use inplace=False"
            )
        span += (size - 1) * stride
