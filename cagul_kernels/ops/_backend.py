"""Backend selection and op registration shared by every op (one dispatch idiom).

Every public op takes ``backend=None | "reference" | "cpu" | "triton" | "cuda"``.
``None`` picks the default for the tensors' device: CUDA tensors -> Triton (or the CUDA C++
kernels when Triton is not installed), CPU tensors -> the C++ kernels. An explicit backend
that cannot run on the given tensors is a ``ValueError``/``RuntimeError``; there is never a
silent fallback to another backend.

Each op ``name`` exists as three ``torch.library`` ops with one schema:

- ``cagul::name``: defined in C++ (``csrc/ops.cpp``) with native CPU and CUDA kernels, so
  the dispatcher picks the device kernel and exported / AOTInductor graphs run it without
  Python. Backends ``"cpu"`` and ``"cuda"``.
- ``cagul::name_triton`` and ``cagul::name_reference``: the same schema, defined here, with
  Python implementations.

The public function validates its arguments, resolves the backend and calls
``kernel_op(name, backend)``. Fake implementations and autograd formulas are registered on
all three ops at once (``register_fake``, ``register_autograd``).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

import torch

try:  # loading the library registers the cagul:: schemas and the native kernels
    from cagul_kernels import _C  # noqa: F401
except ImportError as error:
    raise ImportError(
        "cagul_kernels: the compiled operator library cagul_kernels._C is not built; install "
        "with `pip install --no-build-isolation -e .` (or `python setup.py build_ext --inplace`)"
    ) from error

BACKENDS = ("reference", "cpu", "triton", "cuda")
# The backends served by the natively registered op (the dispatcher picks the device kernel).
NATIVE_BACKENDS = ("cpu", "cuda")
# Suffix of each op's name per implementation: native, then the Python-defined twins.
_SUFFIXES = ("", "_triton", "_reference")
_LIBRARY = torch.library.Library("cagul", "FRAGMENT")
_CPU = torch.device("cpu")
# (name, backend) -> its OpOverload: resolved once, as the small ops' calls are a few us.
_OPS: dict[tuple[str, str], torch._ops.OpOverload] = {}


def _suffix(backend: str) -> str:
    return "" if backend in NATIVE_BACKENDS else f"_{backend}"


def kernel_op(name: str, backend: str) -> torch._ops.OpOverload:
    """The op running ``backend`` for op ``name``: ``torch.ops.cagul.<name>`` for cpu / cuda,
    ``torch.ops.cagul.<name>_triton`` / ``<name>_reference`` otherwise."""
    op = _OPS.get((name, backend))
    if op is None:
        op = _OPS[name, backend] = getattr(torch.ops.cagul, name + _suffix(backend)).default
    return op


def define_python_backends(name: str, *, triton: Callable, reference: Callable) -> None:
    """Defines ``cagul::<name>_triton`` and ``cagul::<name>_reference`` with the schema of the
    native ``cagul::<name>`` and the given implementations (any device)."""
    schema = str(getattr(torch.ops.cagul, name).default._schema)
    signature = schema[schema.index("(") :]
    for backend, fn in (("triton", triton), ("reference", reference)):
        _LIBRARY.define(f"{name}_{backend}{signature}")
        _LIBRARY.impl(f"{name}_{backend}", fn, "CompositeExplicitAutograd")


def register_fake(name: str) -> Callable[[Callable], Callable]:
    """Decorator: ``fn`` becomes the fake implementation of every op of ``name``."""

    def decorate(fn: Callable) -> Callable:
        for suffix in _SUFFIXES:
            torch.library.register_fake(f"cagul::{name}{suffix}", fn, lib=_LIBRARY)
        return fn

    return decorate


def register_autograd(
    name: str, make_backward: Callable[[str], Callable], setup_context: Callable
) -> None:
    """Registers ``make_backward(suffix)`` as the backward of ``cagul::<name><suffix>`` for
    every implementation (``suffix`` names the matching backward op's twin)."""
    for suffix in _SUFFIXES:
        torch.library.register_autograd(
            f"cagul::{name}{suffix}",
            make_backward(suffix),
            setup_context=setup_context,
            lib=_LIBRARY,
        )


def extension_has_cuda() -> bool:
    """Whether the compiled library holds the CUDA kernels (built with nvcc)."""
    return torch.ops.cagul.cross_modal_importance.default.has_kernel_for_dispatch_key("CUDA")


# Looked up once (find_spec costs microseconds per call; dynamo traces a constant).
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    return _TRITON_INSTALLED


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(backend: str | None, device: torch.device, op: str) -> str:
    """Returns the concrete backend for ``op`` on tensors living on ``device``."""
    if device == _CPU and backend in (None, "cpu"):  # the common case first
        return "cpu"
    kind = device.type
    if backend is None:
        if kind != "cuda":
            raise ValueError(f"{op}: tensors on {device} are not supported (cpu or cuda only)")
        if triton_available():
            return "triton"
        if extension_has_cuda():
            return "cuda"
        raise RuntimeError(
            f"{op}: no GPU backend for CUDA tensors: install triton or build the CUDA "
            "kernels (pip install --no-build-isolation -e . with nvcc), or pass "
            "backend='reference'"
        )
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend == "cpu":
        raise ValueError(f"{op}: backend='cpu' needs CPU tensors, got tensors on {device}")
    if backend == "triton":
        if not triton_available():
            raise RuntimeError(f"{op}: backend='triton' needs the triton package")
        if kind != "cuda" and not triton_interpret():
            raise ValueError(
                f"{op}: backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU "
                f"tensors), got tensors on {device}"
            )
    elif backend == "cuda":
        if kind != "cuda":
            raise ValueError(f"{op}: backend='cuda' needs CUDA tensors, got tensors on {device}")
        if not extension_has_cuda():
            raise RuntimeError(
                f"{op}: backend='cuda' needs the CUDA kernels, but cagul_kernels._C was built "
                "without CUDA (no nvcc or a CPU-only torch at install time)"
            )
    return backend
