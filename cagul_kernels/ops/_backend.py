"""Backend selection shared by every op.

Every public op takes ``backend=None | "reference" | "cpu" | "triton" | "cuda"``.
``None`` picks the default for the tensors' device: CUDA tensors -> Triton (or the CUDA C++
kernels when Triton is not installed), CPU tensors -> the C++ kernels. An explicit backend
that cannot run on the given tensors is a ``ValueError``/``RuntimeError``; there is never a
silent fallback to another backend.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

BACKENDS = ("reference", "cpu", "triton", "cuda")


@functools.cache
def extension():
    """The compiled ``cagul_kernels._C`` module, or ``None`` when it is not built."""
    try:
        from cagul_kernels import _C
    except ImportError:
        return None
    return _C


def extension_has_cuda() -> bool:
    ext = extension()
    return ext is not None and bool(ext.with_cuda)


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str | None, device: torch.device, op: str) -> str:
    """Returns the concrete backend for ``op`` on tensors living on ``device``."""
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS} or None, got {backend!r}")
    on_cuda = device.type == "cuda"
    if backend is None:
        if on_cuda:
            if triton_available():
                return "triton"
            if extension_has_cuda():
                return "cuda"
            raise RuntimeError(
                f"{op}: no GPU backend for CUDA tensors: install triton or build the CUDA "
                "kernels (pip install --no-build-isolation -e . with nvcc), or pass "
                "backend='reference'"
            )
        if device.type != "cpu":
            raise ValueError(f"{op}: tensors on {device} are not supported (cpu or cuda only)")
        backend = "cpu"
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"{op}: backend='cpu' needs CPU tensors, got tensors on {device}")
        if extension() is None:
            raise RuntimeError(
                f"{op}: the C++ extension cagul_kernels._C is not built; install with "
                "`pip install --no-build-isolation -e .` or pass backend='reference'"
            )
    elif backend == "triton":
        if not triton_available():
            raise RuntimeError(f"{op}: backend='triton' needs the triton package")
        if not on_cuda and not triton_interpret():
            raise ValueError(
                f"{op}: backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU "
                f"tensors), got tensors on {device}"
            )
    elif backend == "cuda":
        if not on_cuda:
            raise ValueError(f"{op}: backend='cuda' needs CUDA tensors, got tensors on {device}")
        if not extension_has_cuda():
            raise RuntimeError(
                f"{op}: backend='cuda' needs the CUDA kernels, but cagul_kernels._C was built "
                "without CUDA (no nvcc or a CPU-only torch at install time)"
            )
    return backend
