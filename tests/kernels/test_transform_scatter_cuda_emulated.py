"""The CUDA transform_scatter kernels (csrc/cuda/transform_scatter.cu), run on the CPU through
the host emulation of the CUDA built-ins (tests/kernels/cuda_emulation/emu.h) and compared with the
reference.

Without a GPU this is the only execution of the kernels' own code: it checks indexing,
strides, masks, gating, the shared-memory tiles, barrier placement and the split reduction
(not warp-level or memory-model behaviour; the GPU tests do that). The tensor glue of
csrc/ops.cpp is mirrored by ``_forward`` / ``_backward`` below. Needs nvcc (CUDA headers
and host compiler driver); skipped without it.
"""

import ctypes

import pytest
import torch
from kernel_helpers import DTYPE_CODES, emulated_kernels, needs_nvcc
from test_transform_scatter import _gate, _params, _positions

from cagul_kernels import reference
from cagul_kernels.ops.transform_scatter import ACTIVATIONS

pytestmark = needs_nvcc

_P = ctypes.c_void_p
_I64 = ctypes.c_int64


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    lib = emulated_kernels("transform_scatter", 4, tmp_path_factory.mktemp("cuda_emulation"), "-O1")
    lib.ts_forward.argtypes = [ctypes.c_int, *[_P] * 11, _P, ctypes.c_int]
    lib.ts_backward.argtypes = [ctypes.c_int, *[_P] * 14, ctypes.c_int]
    lib.ts_splits.argtypes = [_I64, _I64, _I64]
    lib.ts_splits.restype = _I64
    return lib


def _ptr(t):
    return None if t is None else t.data_ptr()


def _strides(t):
    return ctypes.cast((_I64 * 3)(*t.stride()), _P)


def _dims(*values):
    return ctypes.cast((_I64 * len(values))(*values), _P)


def _f32(t):
    return t.float().contiguous()


def _forward(lib, x, positions, w1, b1, w2, b2, gate, act, inplace=False):
    """Mirror of transform_scatter_cuda: ``(y, z)``."""
    b, _, d = x.shape
    k, r = positions.shape[1], w1.shape[1]
    y = x if inplace else torch.empty(x.shape, dtype=x.dtype).copy_(x)
    z = None if inplace else torch.zeros(b, k, r)
    weights = [_f32(t) for t in (w1, b1, w2, b2)]
    rc = lib.ts_forward(
        DTYPE_CODES[x.dtype], _ptr(x), _strides(x), _ptr(y), _strides(y),
        _ptr(positions), _ptr(gate), *map(_ptr, weights), _ptr(z), _dims(b, k, d, r), act,
    )  # fmt: skip
    assert rc == 0
    return y, z


def _backward(lib, dy, x, positions, z, w1, w2, gate, act, need_dx=True):
    """Mirror of transform_scatter_backward_cuda: ``(dx, dw1, db1, dw2, db2)``."""
    b, s, d = x.shape
    k, r = positions.shape[1], w1.shape[1]
    dx = torch.empty(x.shape, dtype=x.dtype).copy_(dy) if need_dx else None
    w1t, w2t = _f32(w1.t()), _f32(w2.t())
    total = 2 * d * r + d + r
    partials = torch.full((max(lib.ts_splits(b, k, d), 1), total), float("nan"))
    grads, dz = torch.zeros(total), torch.zeros(b, k, r)
    rc = lib.ts_backward(
        DTYPE_CODES[x.dtype], _ptr(x), _strides(x), _ptr(dy), _strides(dy), _ptr(dx),
        _ptr(positions), _ptr(gate), _ptr(z), _ptr(w1t), _ptr(w2t), _ptr(dz), _ptr(partials),
        _ptr(grads), _dims(b, k, d, r, s), act,
    )  # fmt: skip
    assert rc == 0
    dw1, dw2, db2, db1 = grads.split([d * r, d * r, d, r])
    return dx, dw1.view(d, r), db1, dw2.view(r, d), db2


def _check(lib, params, positions, gate, activation, dtype, tol):
    x, w1, b1, w2, b2 = params
    act = ACTIVATIONS.index(activation)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(4)).to(dtype)
    y, z = _forward(lib, x, positions, w1, b1, w2, b2, gate, act)
    y_ref = reference.transform_scatter(x, positions, w1, b1, w2, b2, gate, activation)
    z_ref = reference.transform_scatter_hidden(x, positions, w1, b1, gate)
    torch.testing.assert_close(y.float(), y_ref.float(), **tol)
    torch.testing.assert_close(z, z_ref, **tol)
    got = _backward(lib, dy, x, positions, z, w1, w2, gate, act)
    want = reference.transform_scatter_backward(
        dy, x, positions, z_ref, w1, w2, gate, activation, True
    )
    for name, g, g_ref in zip(("dx", "dw1", "db1", "dw2", "db2"), got, want, strict=True):
        torch.testing.assert_close(g.float(), g_ref.float(), **tol, msg=name)
    return y, got


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_matches_reference(lib, activation):
    b, s, d, r, k = 3, 17, 40, 12, 19  # D, R, K not multiples of the 16-wide tiles
    _check(lib, _params(b, s, d, r), _positions(b, s, k), _gate(b), activation, torch.float32,
           {"rtol": 1e-5, "atol": 1e-5})  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(lib, dtype):
    b, s, d, r, k = 2, 20, 24, 16, 7
    tol = {"rtol": 2e-2, "atol": 2e-2}
    _check(lib, _params(b, s, d, r, dtype=dtype), _positions(b, s, k), _gate(b), "gelu", dtype, tol)


def test_max_rank_gate_and_padding(lib):
    """R = 256 fills every per-thread slot; a gated-off sample and an all-padding row."""
    b, s, d, r, k = 3, 10, 20, 256, 5
    params, positions = _params(b, s, d, r), _positions(b, s, k)
    positions[2] = -1
    gate = torch.tensor([0.0, 1.5, 1.0])
    y, _ = _check(lib, params, positions, gate, "silu", torch.float32, {"rtol": 1e-5, "atol": 1e-5})
    assert torch.equal(y[0], params[0][0]) and torch.equal(y[2], params[0][2])


def test_inplace_and_strided_x(lib):
    b, s, d, r, k = 2, 18, 24, 16, 6
    params, positions = _params(b, s, d, r), _positions(b, s, k)
    gate, act = _gate(b), ACTIVATIONS.index("gelu_tanh")
    want, _ = _forward(lib, *[params[0], positions, *params[1:]], gate, act)
    x_view = params[0].transpose(1, 2).contiguous().transpose(1, 2)
    y, _ = _forward(lib, x_view, positions, *params[1:], gate, act)
    torch.testing.assert_close(y, want, rtol=1e-6, atol=1e-6)
    _forward(lib, x_view, positions, *params[1:], gate, act, inplace=True)
    torch.testing.assert_close(x_view, want, rtol=1e-6, atol=1e-6)


def test_empty_and_weights_only(lib):
    b, s, d, r = 2, 9, 16, 16
    x, w1, b1, w2, b2 = _params(b, s, d, r)
    empty = torch.empty(b, 0, dtype=torch.int64)
    y, z = _forward(lib, x, empty, w1, b1, w2, b2, torch.ones(b), 0)
    assert torch.equal(y, x) and z.shape == (b, 0, r)
    positions = _positions(b, s, 4)
    y, z = _forward(lib, x, positions, w1, b1, w2, b2, torch.ones(b), 0)
    dy = torch.randn(b, s, d)
    dx, *grads = _backward(lib, dy, x, positions, z, w1, w2, torch.ones(b), 0, need_dx=False)
    want = reference.transform_scatter_backward(
        dy, x, positions, z, w1, w2, torch.ones(b), "gelu", False
    )
    assert dx is None
    for g, g_ref in zip(grads, want[1:], strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)
