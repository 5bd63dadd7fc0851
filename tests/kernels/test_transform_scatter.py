"""transform_scatter: every backend against plain-autograd through the reference (forward
and backward), gradcheck, gating, padding, in place, strides, the module, opcheck,
torch.compile and bad input."""

import math

import pytest
import torch
from helpers import make_index
from kernel_helpers import assert_low_precision_close, kernel_backends

from cagul_kernels import ResidualTokenMLP, reference, transform_scatter
from cagul_kernels.ops._backend import kernel_op
from cagul_kernels.ops.transform_scatter import ACTIVATIONS

GRAD_NAMES = ("x", "w1", "b1", "w2", "b2")


def _positions(b, s, k, seed=0, dtype=torch.int64, device="cpu"):
    """``[B, K]`` distinct positions per row; row i has ``i % 3`` padding slots, scattered."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(s, generator=g)[: k - i % 3].tolist() for i in range(b)]
    index = make_index(rows, width=k, dtype=dtype)
    return index[:, torch.randperm(k, generator=g)].to(device)


def _params(b, s, d, r, dtype=torch.float32, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, s, d, generator=g)
    w1 = torch.randn(d, r, generator=g) / math.sqrt(d)
    b1 = 0.5 * torch.randn(r, generator=g)
    w2 = torch.randn(r, d, generator=g) / math.sqrt(r)
    b2 = 0.5 * torch.randn(d, generator=g)
    return [t.to(device, dtype) for t in (x, w1, b1, w2, b2)]


def _gate(b, device="cpu"):
    return torch.tensor([0.5, -1.25, 1.0, 2.0][:b], device=device)


def _randn(*shape, seed, device="cpu"):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device)


def _run(params, positions, *, backend, activation="gelu", gate=None, dy=None):
    """``(y, grads)`` through the op; grads of x, w1, b1, w2, b2 for ``sum(y * dy)``."""
    leaves = [p.detach().clone().requires_grad_() for p in params]
    y = transform_scatter(
        leaves[0], positions, *leaves[1:], activation=activation, gate=gate, backend=backend
    )
    dy = torch.ones_like(y) if dy is None else dy
    y.backward(dy)
    return y.detach(), [p.grad for p in leaves]


def _oracle(params, positions, *, activation="gelu", gate=None, dy=None):
    """The same through plain autograd on ``reference.transform_scatter`` in fp32."""
    leaves = [p.detach().float().requires_grad_() for p in params]
    gate = torch.ones(params[0].shape[0], device=params[0].device) if gate is None else gate.float()
    y = reference.transform_scatter(leaves[0], positions, *leaves[1:], gate, activation)
    dy = torch.ones_like(y) if dy is None else dy.float()
    y.backward(dy)
    return y.detach(), [p.grad for p in leaves]


def _assert_matches(got, want, rtol=1e-5, atol=1e-5):
    y, grads = got
    y_ref, grads_ref = want
    torch.testing.assert_close(y.float(), y_ref, rtol=rtol, atol=atol)
    for name, g, g_ref in zip(GRAD_NAMES, grads, grads_ref, strict=True):
        torch.testing.assert_close(g.float(), g_ref, rtol=rtol, atol=atol, msg=f"grad of {name}")


# (B, S, D, R, K): odd sizes, R not a power of two, K not a multiple of any tile.
SHAPES = [(2, 20, 32, 16, 6), (3, 17, 40, 12, 9)]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_S{}_D{}_R{}_K{}".format(*s))
def test_matches_reference(device, backend_or_reference, activation, shape):
    b, s, d, r, k = shape
    params, positions = _params(b, s, d, r, device=device), _positions(b, s, k, device=device)
    dy, gate = _randn(b, s, d, seed=7, device=device), _gate(b, device)
    got = _run(
        params, positions, backend=backend_or_reference, activation=activation, gate=gate, dy=dy
    )
    want = _oracle(params, positions, activation=activation, gate=gate, dy=dy)
    _assert_matches(got, want)


def test_many_tiles(device, backend):
    """Several row tiles, weight-gradient column chunks and a ragged last chunk."""
    b, s, d, r, k = 2, 300, 200, 24, 150
    params = _params(b, s, d, r, seed=3, device=device)
    positions, gate = _positions(b, s, k, seed=3, device=device), _gate(b, device)
    dy = _randn(b, s, d, seed=8, device=device)
    got = _run(params, positions, backend=backend, gate=gate, dy=dy)
    _assert_matches(got, _oracle(params, positions, gate=gate, dy=dy), rtol=1e-4, atol=1e-4)


def _torch_in(dtype, params, positions, gate, dy, activation):
    """``(y, grads)`` of plain autograd on ``reference.transform_scatter`` run in ``dtype``."""
    leaves = [p.detach().to(dtype).requires_grad_() for p in params]
    y = reference.transform_scatter(leaves[0], positions, *leaves[1:], gate.to(dtype), activation)
    y.backward(dy.to(dtype))
    return y.detach(), [p.grad for p in leaves]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("activation", ["gelu", "silu"])
def test_low_precision(device, backend, dtype, activation):
    """fp16/bf16: against the fp32 truth no worse than plain torch run in the same low
    precision (flash-attention's rule); the C++ CPU kernel (fp32 math inside) also equals
    the fp32 oracle on the same rounded inputs up to the output rounding."""
    if backend == "triton" and dtype == torch.bfloat16 and device.type == "cpu":
        pytest.skip("the Triton interpreter mishandles bf16 tl.dot (bf16 Triton: GPU tests)")
    b, s, d, r, k = 3, 120, 64, 48, 40
    params32 = _params(b, s, d, r, device=device)
    params = [p.to(dtype) for p in params32]
    positions, gate = _positions(b, s, k, device=device), _gate(b, device)
    dy32 = _randn(b, s, d, seed=2, device=device)
    y, grads = _run(params, positions, backend=backend, activation=activation, gate=gate,
                    dy=dy32.to(dtype))  # fmt: skip
    assert y.dtype == dtype and all(g.dtype == dtype for g in grads)
    if backend == "cpu":  # fp32 math on the rounded inputs: only the outputs are rounded
        y_ref, grads_ref = _oracle(params, positions, activation=activation, gate=gate,
                                   dy=dy32.to(dtype))  # fmt: skip
        tol = (
            {"rtol": 1e-2, "atol": 1e-2}
            if dtype == torch.bfloat16
            else {"rtol": 2e-3, "atol": 2e-3}
        )
        torch.testing.assert_close(y.float(), y_ref.to(dtype).float(), **tol)
        for g, g_ref in zip(grads, grads_ref, strict=True):
            torch.testing.assert_close(g.float(), g_ref.to(dtype).float(), **tol)
    # Against the fp32 truth on the unrounded inputs.
    truth = _oracle(params32, positions, activation=activation, gate=gate, dy=dy32)
    low = _torch_in(dtype, params32, positions, gate, dy32, activation)
    assert_low_precision_close(y, truth[0], low[0])
    for name, g, g_true, g_low in zip(GRAD_NAMES, grads, truth[1], low[1], strict=True):
        assert_low_precision_close(g, g_true, g_low, atol=1e-4, what=f"grad of {name}")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradcheck_float64(backend, activation):
    b, s, d, r, k = 2, 7, 5, 3, 4
    params = [p.requires_grad_() for p in _params(b, s, d, r, dtype=torch.float64, seed=5)]
    positions, gate = _positions(b, s, k, seed=5), torch.tensor([0.75, -1.5])

    def fn(x, w1, b1, w2, b2):
        return transform_scatter(
            x, positions, w1, b1, w2, b2, activation=activation, gate=gate, backend=backend
        )

    assert torch.autograd.gradcheck(fn, params, eps=1e-6, atol=1e-5)


def test_padding_only_and_empty_k(device, backend_or_reference):
    b, s, d, r = 2, 9, 32, 16
    params = _params(b, s, d, r, device=device)
    dy = _randn(b, s, d, seed=0, device=device)
    padding = torch.full((b, 3), -1, device=device)
    for positions in (padding, torch.empty(b, 0, dtype=torch.int64, device=device)):
        y, grads = _run(params, positions, backend=backend_or_reference, dy=dy)
        assert torch.equal(y, params[0])
        assert torch.equal(grads[0], dy)
        assert all((g == 0).all() for g in grads[1:])


def test_gate(device, backend_or_reference):
    b, s, d, r, k = 3, 16, 32, 16, 5
    params, positions = _params(b, s, d, r, device=device), _positions(b, s, k, device=device)
    params[0][0, :, ::3] = -0.0  # a gated-off sample must keep even the sign of zero
    dy = _randn(b, s, d, seed=0, device=device)
    run = lambda gate: _run(params, positions, backend=backend_or_reference, gate=gate, dy=dy)
    y_none, grads_none = run(None)
    y_one, _ = run(torch.ones(b, device=device))
    assert torch.equal(y_none, y_one)
    y_bool, grads_bool = run(torch.tensor([False, True, True], device=device))
    y_float, grads_float = run(torch.tensor([0.0, 1.0, 1.0], device=device))
    assert torch.equal(y_bool, y_float)
    for grads in (grads_none, grads_bool, grads_float):
        assert all(g is not None for g in grads)
    # Sample 0 is switched off: bit-identical rows and pass-through gradient.
    assert torch.equal(y_bool[0].view(torch.int32), params[0][0].view(torch.int32))
    assert torch.equal(grads_bool[0][0], dy[0])
    torch.testing.assert_close(y_bool[1:], y_one[1:])
    # The other samples do not see sample 0 in the weight gradients.
    _assert_matches(
        (y_bool, grads_bool),
        _oracle(params, positions, gate=torch.tensor([0.0, 1.0, 1.0], device=device), dy=dy),
    )
    # All samples off: the identity, zero weight gradients.
    y_off, grads_off = run(torch.zeros(b, device=device))
    assert torch.equal(y_off, params[0]) and all((g == 0).all() for g in grads_off[1:])


def test_unselected_rows_bit_identical(device, backend_or_reference):
    b, s, d, r, k = 2, 24, 32, 16, 7
    params, positions = _params(b, s, d, r, device=device), _positions(b, s, k, device=device)
    x = params[0]
    x[:, :, 5] = -0.0
    x[1, 3, :4] = float("nan")
    positions[1][positions[1] == 3] = -1  # the NaN row is not selected
    y = transform_scatter(
        x, positions, *params[1:], gate=_gate(b, device), backend=backend_or_reference
    )
    selected = torch.zeros(b, s, dtype=torch.bool, device=device)
    for i in range(b):
        selected[i, positions[i][positions[i] >= 0]] = True
    assert torch.equal(y[~selected].view(torch.int32), x[~selected].view(torch.int32))
    assert not torch.equal(y[selected], x[selected])


def test_inplace_equals_out_of_place(device, backend_or_reference):
    backend = backend_or_reference
    b, s, d, r, k = 2, 20, 32, 16, 6
    params, positions = _params(b, s, d, r, device=device), _positions(b, s, k, device=device)
    gate = _gate(b, device)
    want = transform_scatter(params[0], positions, *params[1:], gate=gate, backend=backend)
    x = params[0].clone()
    storage = x.data_ptr()
    with torch.no_grad():
        out = transform_scatter(x, positions, *params[1:], gate=gate, inplace=True, backend=backend)
    assert out is x and x.data_ptr() == storage
    assert torch.equal(x, want)


def test_non_contiguous_x(device, backend_or_reference):
    backend = backend_or_reference
    b, s, d, r, k = 2, 18, 32, 16, 6
    params, positions = _params(b, s, d, r, device=device), _positions(b, s, k, device=device)
    base = params[0].transpose(1, 2).contiguous()  # [B, D, S]
    x_view = base.transpose(1, 2)  # [B, S, D] with stride 1 along S
    assert not x_view.is_contiguous()
    dy = _randn(b, s, d, seed=0, device=device)
    got = _run([x_view, *params[1:]], positions, backend=backend, dy=dy)
    _assert_matches(got, _oracle(params, positions, dy=dy))
    assert got[0].is_contiguous()
    # In place on the strided view writes through to the base tensor.
    want = got[0]
    with torch.no_grad():
        transform_scatter(x_view, positions, *params[1:], inplace=True, backend=backend)
    torch.testing.assert_close(base.transpose(1, 2), want, rtol=1e-6, atol=1e-6)


def test_zero_stride_grad_and_int32_positions(device, backend):
    """``y.sum().backward()`` hands the op an expanded (stride 0) gradient."""
    b, s, d, r, k = 2, 12, 32, 16, 5
    params = _params(b, s, d, r, device=device)
    positions = _positions(b, s, k, dtype=torch.int32, device=device)
    leaves = [p.clone().requires_grad_() for p in params]
    transform_scatter(leaves[0], positions, *leaves[1:], backend=backend).sum().backward()
    _assert_matches(
        (torch.zeros(0), [p.grad for p in leaves]),
        (torch.zeros(0), _oracle(params, positions.long())[1]),
    )


def test_x_without_grad_skips_dx(device, backend):
    b, s, d, r, k = 2, 12, 32, 16, 5
    params, positions = _params(b, s, d, r, device=device), _positions(b, s, k, device=device)
    weights = [p.clone().requires_grad_() for p in params[1:]]
    y = transform_scatter(params[0], positions, *weights, backend=backend)
    y.backward(torch.ones_like(y))
    want = _oracle(params, positions)[1][1:]
    for g, g_ref in zip((w.grad for w in weights), want, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


def test_backward_deterministic(device, backend):
    b, s, d, r, k = 2, 500, 256, 64, 120
    params, positions = _params(b, s, d, r, device=device), _positions(b, s, k, device=device)
    gate, dy = torch.tensor([0.0, 0.7], device=device), _randn(b, s, d, seed=0, device=device)
    first = _run(params, positions, backend=backend, gate=gate, dy=dy)
    again = _run(params, positions, backend=backend, gate=gate, dy=dy)
    assert torch.equal(first[0], again[0])
    assert all(torch.equal(g, h) for g, h in zip(first[1], again[1], strict=True))


def test_cpu_backward_deterministic_across_threads():
    b, s, d, r, k = 2, 400, 160, 16, 200
    params, positions = _params(b, s, d, r), _positions(b, s, k)
    dy = torch.randn(b, s, d)
    first = _run(params, positions, backend="cpu", dy=dy)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = _run(params, positions, backend="cpu", dy=dy)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first[0], single[0])
    assert all(torch.equal(g, h) for g, h in zip(first[1], single[1], strict=True))


class TestModule:
    def test_zero_init_is_identity(self):
        b, s, d, k = 2, 20, 32, 6
        module = ResidualTokenMLP(d, 8)
        x, positions = torch.randn(b, s, d), _positions(b, s, k)
        for backend in ("reference", *kernel_backends(x.device)):
            assert torch.equal(module(x, positions, backend=backend), x)
        assert (module.w1 != 0).any()

    def test_trains_and_matches_op(self):
        b, s, d, k = 2, 20, 32, 6
        module = ResidualTokenMLP(d, 16, activation="silu")
        x, positions = torch.randn(b, s, d), _positions(b, s, k)
        gate = torch.tensor([True, False])
        module(x, positions, gate=gate).pow(2).sum().backward()
        assert module.w2.grad.abs().sum() > 0 and module.b2.grad.abs().sum() > 0
        with torch.no_grad():
            module.w2.normal_()
        want = transform_scatter(
            x, positions, *module.parameters(), activation="silu", gate=gate, backend="reference"
        )
        torch.testing.assert_close(module(x, positions, gate=gate), want)
        with torch.no_grad():
            y = module(x.clone(), positions, gate=gate, inplace=True)
        torch.testing.assert_close(y, want)

    def test_fp32_parameters_with_bf16_activations(self):
        """fp32 master weights under a bf16 model: the op runs in bf16, grads reach fp32."""
        b, s, d, k = 2, 20, 32, 6
        module = ResidualTokenMLP(d, 8)
        with torch.no_grad():
            module.w2.normal_()
        x, positions = torch.randn(b, s, d).bfloat16(), _positions(b, s, k)
        y = module(x, positions)
        params = [p.bfloat16() for p in module.parameters()]
        want = transform_scatter(x, positions, *params, backend="reference")
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y, want)
        y.float().sum().backward()
        assert module.w1.grad.dtype == torch.float32 and module.w1.grad.abs().sum() > 0

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="activation must be one of"):
            ResidualTokenMLP(8, 4, activation="tanh")
        with pytest.raises(ValueError, match="dim and rank"):
            ResidualTokenMLP(8, 0)
        assert "rank=4" in repr(ResidualTokenMLP(8, 4))


def _op_args(device="cpu"):
    b, s, d, r, k = 2, 12, 32, 16, 5
    params, positions = _params(b, s, d, r, device=device), _positions(b, s, k, device=device)
    return params, positions, _gate(b, device)


def test_opcheck(device, backend_or_reference):
    backend = backend_or_reference
    (x, w1, b1, w2, b2), positions, gate = _op_args(device)
    leaves = [t.requires_grad_() for t in (x, w1, b1, w2, b2)]
    args = (*leaves[:1], positions, *leaves[1:], gate, "gelu_tanh")
    torch.library.opcheck(kernel_op("transform_scatter", backend), args)
    with torch.no_grad():
        _, z = kernel_op("transform_scatter", backend)(*args)
    for need_dx in (True, False):
        torch.library.opcheck(
            kernel_op("transform_scatter_backward", backend),
            (torch.randn_like(x), x.detach(), positions, z, w1.detach(), w2.detach(), gate)
            + ("gelu_tanh", need_dx),
        )
    detached = [t.detach() for t in (x, w1, b1, w2, b2)]
    torch.library.opcheck(
        kernel_op("transform_scatter_", backend),
        (detached[0], positions, *detached[1:], gate, "relu"),
    )


def test_hidden_output_is_reference_preactivation(device):
    (x, w1, b1, w2, b2), positions, gate = _op_args(device)
    gate[0] = 0.0
    want = reference.transform_scatter_hidden(x, positions, w1, b1, gate)
    for backend in ("reference", *kernel_backends(device)):
        _, z = kernel_op("transform_scatter", backend)(x, positions, w1, b1, w2, b2, gate, "gelu")
        torch.testing.assert_close(z, want, rtol=1e-5, atol=1e-5)


def test_torch_compile_fullgraph(device):
    params, positions, gate = _op_args(device)
    backend = device.type  # the native kernels
    compiler = "aot_eager" if device.type == "cpu" else "inductor"

    def loss_fn(x, w1, b1, w2, b2):
        y = transform_scatter(x, positions, w1, b1, w2, b2, gate=gate, backend=backend)
        return (y * y).sum()

    compiled = torch.compile(loss_fn, fullgraph=True, backend=compiler)
    results = []
    for fn in (compiled, loss_fn):
        leaves = [p.clone().requires_grad_() for p in params]
        loss = fn(*leaves)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in leaves]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for g_c, g_e in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(g_c, g_e)

    @torch.compile(fullgraph=True, backend=compiler)
    def infer(x, w1, b1, w2, b2):
        return transform_scatter(x, positions, w1, b1, w2, b2, inplace=True, backend=backend)

    x = params[0].clone()
    with torch.no_grad():
        infer(x, *params[1:])
    want = transform_scatter(params[0], positions, *params[1:], backend=backend)
    torch.testing.assert_close(x, want)


class TestBadInput:
    def setup_method(self):
        self.params, self.positions, self.gate = _op_args()

    def call(self, **overrides):
        names = ("x", "positions", "w1", "b1", "w2", "b2")
        x, w1, b1, w2, b2 = self.params
        args = dict(zip(names, (x, self.positions, w1, b1, w2, b2), strict=True))
        args.update({key: overrides.pop(key) for key in names if key in overrides})
        return transform_scatter(*args.values(), **overrides)

    def test_x_rank_and_dtype(self):
        with pytest.raises(ValueError, match="x must be 3-D"):
            self.call(x=self.params[0][0])
        with pytest.raises(TypeError, match="x must have dtype"):
            self.call(x=self.params[0].long())

    def test_positions_dtype_and_shape(self):
        with pytest.raises(TypeError, match="positions must have dtype"):
            self.call(positions=self.positions.float())
        with pytest.raises(ValueError, match="positions must be 2-D"):
            self.call(positions=self.positions[0])
        with pytest.raises(ValueError, match=r"positions must be \[B=2, K\]"):
            self.call(positions=self.positions[:1])

    @pytest.mark.parametrize(
        "name, bad, match",
        [
            ("w1", lambda w: w[:-1], r"w1 must have shape \[32, 16\]"),
            ("b1", lambda w: w[:-1], r"b1 must have shape \[16\]"),
            ("w2", lambda w: w.T, r"w2 must have shape \[16, 32\]"),
            ("b2", lambda w: torch.cat([w, w]), r"b2 must have shape \[32\]"),
            ("w2", lambda w: w[None], "w2 must be 2-D"),
        ],
    )
    def test_weight_shapes(self, name, bad, match):
        weight = self.params[("x", "w1", "b1", "w2", "b2").index(name)]
        with pytest.raises(ValueError, match=match):
            self.call(**{name: bad(weight)})

    def test_weight_dtype_mismatch(self):
        with pytest.raises(TypeError, match="w2 must have the dtype of x"):
            self.call(w2=self.params[3].double())

    def test_mixed_devices(self):
        with pytest.raises(ValueError, match="one device"):
            self.call(b2=self.params[4].to("meta"))

    def test_positions_out_of_range(self, device, backend_or_reference):
        params = [p.to(device) for p in self.params]
        for value in (self.params[0].shape[1], -2):
            bad = self.positions.clone()
            bad[1, 0] = value
            with pytest.raises(ValueError, match="positions entries must be -1"):
                transform_scatter(params[0], bad.to(device), *params[1:],
                                  backend=backend_or_reference)  # fmt: skip

    def test_duplicate_positions(self, device, backend_or_reference):
        params = [p.to(device) for p in self.params]
        bad = self.positions.clone()
        row = bad[1][bad[1] >= 0]
        bad[1, (bad[1] == row[1]).nonzero()[0, 0]] = row[0]
        bad = bad.to(device)
        run = lambda **kw: transform_scatter(
            params[0], bad, *params[1:], backend=backend_or_reference, **kw
        )
        with pytest.raises(ValueError, match=f"row 1 holds position {int(row[0])} more than once"):
            run()
        with torch.no_grad(), pytest.raises(ValueError, match="must not repeat"):
            run(inplace=True)

    @pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
    def test_reported_repeat_is_first_row_smallest_position(
        self, device, backend_or_reference, index_dtype
    ):
        """Every backend names the same repeat: the first row holding one, its smallest
        repeated position (the CPU kernels check in loops, the others after a sort)."""
        params = [p.to(device) for p in self.params]
        run = lambda positions: transform_scatter(
            params[0], positions.to(device), *params[1:], backend=backend_or_reference
        )
        bad = torch.tensor([[9, 5, 9, 5, -1], [8, 3, 8, 3, -1]], dtype=index_dtype)
        with pytest.raises(ValueError, match="row 0 holds position 5 more than once"):
            run(bad)
        bad[0] = torch.tensor([0, 1, -1, -1, -1])
        with pytest.raises(ValueError, match="row 1 holds position 3 more than once"):
            run(bad)
        bad[1, 4] = -3
        with pytest.raises(ValueError, match=r"found values in \[-3, 8\]"):
            run(bad)

    def test_repeated_padding_is_fine(self):
        padded = torch.cat([self.positions, torch.full((2, 3), -1)], dim=1)
        self.call(positions=padded)

    def test_activation(self):
        with pytest.raises(ValueError, match="activation must be one of"):
            self.call(activation="tanh")

    def test_gate(self):
        with pytest.raises(ValueError, match=r"gate must be \[B=2\]"):
            self.call(gate=torch.ones(3))
        with pytest.raises(TypeError, match="gate must be a float or bool"):
            self.call(gate=torch.ones(2, dtype=torch.int64))
        with pytest.raises(ValueError, match="gate must be 1-D"):
            self.call(gate=torch.ones(2, 1))

    def test_inplace_with_grad(self):
        w1 = self.params[1].clone().requires_grad_()
        with pytest.raises(RuntimeError, match=r"inplace=True is for inference, but w1"):
            self.call(w1=w1, inplace=True)

    def test_float64_gpu_backends(self):
        params = [p.double() for p in self.params]
        with pytest.raises(TypeError, match="float64 runs on the reference and cpu"):
            self.call(
                **dict(zip(("x", "w1", "b1", "w2", "b2"), params, strict=True)), backend="triton"
            )

    def test_backend_names(self):
        with pytest.raises(ValueError, match="backend must be"):
            self.call(backend="metal")
        with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors"):
            self.call(backend="cuda")


# --- CUDA only -------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_rank_limit():
    params = [p.cuda() for p in _params(1, 8, 16, 257)]
    with pytest.raises(ValueError, match="rank R <= 256"):
        transform_scatter(params[0], torch.zeros(1, 1, dtype=torch.long, device="cuda"),
                          *params[1:], backend="cuda")  # fmt: skip
