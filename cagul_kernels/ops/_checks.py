"""Argument checks shared by the ops: clear errors naming the argument, never a crash deep
inside a kernel. Shape/dtype/device checks run on fake tensors too (they only read
metadata); value checks (index ranges, finiteness) run inside the custom ops' real
implementations, so they are invisible to ``torch.compile`` tracing.
"""

from __future__ import annotations

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
