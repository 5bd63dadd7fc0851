"""``transform_scatter``: a residual MLP applied to selected token rows, written back in place
of the originals, fused (gather -> GEMM -> activation -> GEMM -> residual -> scatter).

For every valid ``p = positions[b, i]``:
``y[b, p] = x[b, p] + g_b * (act(x[b, p] @ w1 + b1) @ w2 + b2)``; every other row of ``y``
(and every row of a sample with ``g_b == 0``) is ``x``'s, bit for bit. Backends: reference
(plain torch), cpu (C++/OpenMP, BLAS tiles), triton, cuda.

Three custom ops: ``cagul::transform_scatter`` (out of place; also returns the
pre-activations ``z [B, K, R]``, kept for backward instead of any ``[K, D]`` tensor),
``cagul::transform_scatter_backward`` and ``cagul::transform_scatter_`` (in place, no grad).
"""

from __future__ import annotations

import torch

from .. import reference
from ._backend import (
    define_python_backends,
    kernel_op,
    register_autograd,
    register_fake,
    resolve_backend,
)
from ._checks import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    check_index_values,
    check_no_internal_overlap,
    check_same_device,
    check_tensor,
)

OP = "transform_scatter"
# The kernels receive the activation as its index in this tuple.
ACTIVATIONS = ("gelu", "gelu_tanh", "silu", "relu")
# float64 runs on the reference and cpu backends (for gradcheck), not on the GPU kernels.
_DTYPES = (*FLOAT_DTYPES, torch.float64)
# The CUDA kernels keep a [16, R] hidden tile and a [16, R] weight tile in shared memory.
CUDA_MAX_RANK = 256


def transform_scatter(
    x: torch.Tensor,
    positions: torch.Tensor,
    w1: torch.Tensor,
    b1: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    *,
    activation: str = "gelu",
    gate: torch.Tensor | None = None,
    inplace: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Residual token MLP on the selected rows of ``x``.

    Args:
        x: ``[B, S, D]`` tokens, ``D >= 1``, fp32/fp16/bf16 (fp64 on the reference/cpu
            backends), any strides (with ``inplace=True``, no two elements may share memory).
        positions: ``[B, K]`` int32/int64 sequence positions to transform, ``-1`` = padding
            (as returned by ``select_low_importance``); no position twice in one row.
        w1, b1, w2, b2: ``[D, R]``, ``[R]``, ``[R, D]``, ``[D]``, same dtype and device as x.
        activation: ``"gelu"`` (erf), ``"gelu_tanh"``, ``"silu"`` or ``"relu"``.
        gate: ``[B]`` float or bool per-sample factor ``g_b`` (None = 1); samples with
            ``g_b == 0`` pass through unchanged.
        inplace: write the selected rows into ``x`` and return it (inference: nothing may
            require grad); touches only the ``K`` selected rows instead of copying ``x``.
        backend: ``None`` | ``"reference"`` | ``"cpu"`` | ``"triton"`` | ``"cuda"``.

    Returns:
        ``y [B, S, D]`` (contiguous, dtype of x), or ``x`` itself with ``inplace=True``.
        Differentiable w.r.t. x, w1, b1, w2, b2 (not gate); math in fp32.
    """
    _check_args(x, positions, w1, b1, w2, b2, activation, gate, inplace)
    backend = resolve_backend(backend, x.device, OP)
    if x.dtype == torch.float64 and backend not in ("reference", "cpu"):
        raise TypeError(f"{OP}: float64 runs on the reference and cpu backends only, not {backend}")
    if backend == "cuda" and w1.shape[1] > CUDA_MAX_RANK:
        raise ValueError(
            f"{OP}: backend='cuda' supports rank R <= {CUDA_MAX_RANK}, got w1 of shape "
            f"{tuple(w1.shape)}"
        )
    gate = _gate_tensor(gate, x)
    positions = positions.to(torch.int64)
    if inplace:
        tensors = {"x": x, "w1": w1, "b1": b1, "w2": w2, "b2": b2}
        needing = [name for name, t in tensors.items() if t.requires_grad]
        if torch.is_grad_enabled() and needing:
            raise RuntimeError(
                f"{OP}: inplace=True is for inference, but {', '.join(needing)} require(s) "
                "grad; use inplace=False for training or run under torch.no_grad()"
            )
        kernel_op("transform_scatter_", backend)(x, positions, w1, b1, w2, b2, gate, activation)
        return x
    y, _ = kernel_op(OP, backend)(x, positions, w1, b1, w2, b2, gate, activation)
    return y


def _check_args(x, positions, w1, b1, w2, b2, activation, gate, inplace) -> None:
    check_tensor(OP, "x", x, ndim=3, dtypes=_DTYPES, shape_hint="[B, S, D]")
    if x.shape[2] == 0:
        raise ValueError(f"{OP}: x must have D >= 1 features, got shape {tuple(x.shape)}")
    if inplace:
        check_no_internal_overlap(OP, "x", x)
    check_tensor(OP, "positions", positions, ndim=2, dtypes=INDEX_DTYPES, shape_hint="[B, K]")
    check_tensor(OP, "w1", w1, ndim=2, shape_hint="[D, R]")
    check_tensor(OP, "b1", b1, ndim=1, shape_hint="[R]")
    check_tensor(OP, "w2", w2, ndim=2, shape_hint="[R, D]")
    check_tensor(OP, "b2", b2, ndim=1, shape_hint="[D]")
    if gate is not None:
        check_tensor(OP, "gate", gate, ndim=1, shape_hint="[B]")
        if not (gate.is_floating_point() or gate.dtype == torch.bool):
            raise TypeError(f"{OP}: gate must be a float or bool tensor, got {gate.dtype}")
    check_same_device(OP, x=x, positions=positions, w1=w1, b1=b1, w2=w2, b2=b2, gate=gate)
    for name, t in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        if t.dtype != x.dtype:
            raise TypeError(f"{OP}: {name} must have the dtype of x ({x.dtype}), got {t.dtype}")
    b, _, d = x.shape
    r = w1.shape[1]
    expected = {"w1": (w1, (d, r)), "b1": (b1, (r,)), "w2": (w2, (r, d)), "b2": (b2, (d,))}
    for name, (t, shape) in expected.items():
        if tuple(t.shape) != shape:
            raise ValueError(
                f"{OP}: {name} must have shape {list(shape)} (D={d} from x, R={r} from w1), "
                f"got {tuple(t.shape)}"
            )
    if positions.shape[0] != b:
        raise ValueError(f"{OP}: positions must be [B={b}, K], got {tuple(positions.shape)}")
    if gate is not None and gate.shape[0] != b:
        raise ValueError(f"{OP}: gate must be [B={b}], got {tuple(gate.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"{OP}: activation must be one of {ACTIVATIONS}, got {activation!r}")


def _gate_tensor(gate: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """``[B]`` float32 gate (ones when None)."""
    if gate is None:
        return torch.ones(x.shape[0], dtype=torch.float32, device=x.device)
    return gate.detach().to(torch.float32)


def _check_positions(positions: torch.Tensor, seq_len: int) -> None:
    check_index_values(OP, "positions", positions, seq_len)
    if positions.shape[1] < 2:
        return
    ordered = positions.sort(dim=1).values
    repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    if bool(repeated.any()):
        b, i = (int(v) for v in repeated.nonzero()[0])
        raise ValueError(
            f"{OP}: positions must not repeat within a row, but row {b} holds position "
            f"{int(ordered[b, i + 1])} more than once"
        )


# --- Python implementations (the native CPU / CUDA kernels are registered in csrc/ops.cpp):
# forward(x, positions, w1, b1, w2, b2, gate, act, inplace) -> (y, z) | None,
# backward(dy, x, positions, z, w1, w2, gate, act, need_dx) -> (dx, dw1, db1, dw2, db2);
# positions contiguous int64, gate float32, act the index in ACTIVATIONS.


def _reference_forward(x, positions, w1, b1, w2, b2, gate, act, inplace):
    name = ACTIVATIONS[act]
    if inplace:
        index, rows = reference.transform_scatter_rows(x, positions, w1, b1, w2, b2, gate, name)
        x.index_put_(index, rows.to(x.dtype))
        return None
    y = reference.transform_scatter(x, positions, w1, b1, w2, b2, gate, name).contiguous()
    return y, reference.transform_scatter_hidden(x, positions, w1, b1, gate)


def _reference_backward(dy, x, positions, z, w1, w2, gate, act, need_dx):
    return reference.transform_scatter_backward(
        dy, x, positions, z, w1, w2, gate, ACTIVATIONS[act], need_dx
    )


def _triton_forward(*args):
    from ..triton.transform_scatter import forward

    return forward(*args)


def _triton_backward(*args):
    from ..triton.transform_scatter import backward

    return backward(*args)


def _python_ops(forward, backward):
    """The (out of place, in place, backward) op bodies around a forward / backward pair."""

    def out_of_place(x, positions, w1, b1, w2, b2, gate, activation):
        _check_positions(positions, x.shape[1])
        act = ACTIVATIONS.index(activation)
        y, z = forward(x, positions.contiguous(), w1, b1, w2, b2, gate, act, False)
        return y, z

    def in_place(x, positions, w1, b1, w2, b2, gate, activation):
        _check_positions(positions, x.shape[1])
        act = ACTIVATIONS.index(activation)
        forward(x, positions.contiguous(), w1, b1, w2, b2, gate, act, True)

    def gradients(dy, x, positions, z, w1, w2, gate, activation, need_dx):
        act = ACTIVATIONS.index(activation)
        return tuple(backward(dy, x, positions.contiguous(), z, w1, w2, gate, act, need_dx))

    return out_of_place, in_place, gradients


_TRITON = _python_ops(_triton_forward, _triton_backward)
_REFERENCE = _python_ops(_reference_forward, _reference_backward)
for _name, _triton_body, _reference_body in zip(
    (OP, "transform_scatter_", "transform_scatter_backward"), _TRITON, _REFERENCE, strict=True
):
    define_python_backends(_name, triton=_triton_body, reference=_reference_body)


def _hidden_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@register_fake(OP)
def _(x, positions, w1, b1, w2, b2, gate, activation):
    y = x.new_empty(x.shape)
    z = x.new_empty((*positions.shape, w1.shape[1]), dtype=_hidden_dtype(x))
    return y, z


@register_fake("transform_scatter_backward")
def _(dy, x, positions, z, w1, w2, gate, activation, need_dx):
    dx = x.new_empty(x.shape if need_dx else (0,))
    d, r = w1.shape
    return dx, w1.new_empty((d, r)), w1.new_empty((r,)), w2.new_empty((r, d)), w2.new_empty((d,))


@register_fake("transform_scatter_")
def _(x, positions, w1, b1, w2, b2, gate, activation):
    return None


def _setup_context(ctx, inputs, output):
    x, positions, w1, _, w2, _, gate, activation = inputs
    ctx.save_for_backward(x, positions, output[1], w1, w2, gate)
    ctx.mark_non_differentiable(output[1])
    ctx.activation = activation


def _make_backward(suffix: str):
    """Backward of ``cagul::transform_scatter<suffix>``: ``transform_scatter_backward<suffix>``."""
    backward_op = getattr(torch.ops.cagul, f"transform_scatter_backward{suffix}").default

    def backward(ctx, dy, _dz):
        x, positions, z, w1, w2, gate = ctx.saved_tensors
        need = ctx.needs_input_grad
        dx, dw1, db1, dw2, db2 = backward_op(
            dy, x, positions, z, w1, w2, gate, ctx.activation, need[0]
        )
        grads = (dx, None, dw1, db1, dw2, db2)
        return (*(g if n else None for g, n in zip(grads, need, strict=False)), None, None)

    return backward


register_autograd(OP, _make_backward, _setup_context)
