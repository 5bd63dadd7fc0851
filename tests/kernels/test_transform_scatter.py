"""transform_scatter: every backend against plain-autograd through the reference (forward
and backward), gradcheck, gating, padding, in place, strides, the module, opcheck,
torch.compile and bad input."""

import math

import pytest
import torch
from helpers import CPU_TENSOR_BACKENDS, make_index

from cagul_kernels import ResidualTokenMLP, reference, transform_scatter
from cagul_kernels.ops.transform_scatter import ACTIVATIONS

GRAD_NAMES = ("x", "w1", "b1", "w2", "b2")


def _positions(b, s, k, seed=0, dtype=torch.int64):
    """``[B, K]`` distinct positions per row; row i has ``i % 3`` padding slots, scattered."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randperm(s, generator=g)[: k - i % 3].tolist() for i in range(b)]
    index = make_index(rows, width=k, dtype=dtype)
    return index[:, torch.randperm(k, generator=g)]


def _params(b, s, d, r, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, s, d, generator=g)
    w1 = torch.randn(d, r, generator=g) / math.sqrt(d)
    b1 = 0.5 * torch.randn(r, generator=g)
    w2 = torch.randn(r, d, generator=g) / math.sqrt(r)
    b2 = 0.5 * torch.randn(d, generator=g)
    return [t.to(dtype) for t in (x, w1, b1, w2, b2)]


def _gate(b):
    return torch.tensor([0.5, -1.25, 1.0, 2.0][:b])


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
    gate = torch.ones(params[0].shape[0]) if gate is None else gate.float()
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


@pytest.mark.parametrize("backend", ("reference", *CPU_TENSOR_BACKENDS))
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_S{}_D{}_R{}_K{}".format(*s))
def test_matches_reference(backend, activation, shape):
    b, s, d, r, k = shape
    params, positions = _params(b, s, d, r), _positions(b, s, k)
    dy = torch.randn(b, s, d, generator=torch.Generator().manual_seed(7))
    gate = _gate(b)
    got = _run(params, positions, backend=backend, activation=activation, gate=gate, dy=dy)
    want = _oracle(params, positions, activation=activation, gate=gate, dy=dy)
    _assert_matches(got, want)


def test_cpu_kernel_many_tiles():
    """Several row tiles, weight-gradient column chunks and a ragged last chunk."""
    b, s, d, r, k = 2, 300, 200, 24, 150
    params, positions = _params(b, s, d, r, seed=3), _positions(b, s, k, seed=3)
    dy = torch.randn(b, s, d, generator=torch.Generator().manual_seed(8))
    got = _run(params, positions, backend="cpu", gate=_gate(b), dy=dy)
    _assert_matches(got, _oracle(params, positions, gate=_gate(b), dy=dy), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_kernel_low_precision(dtype):
    b, s, d, r, k = 2, 30, 64, 16, 10
    params, positions = _params(b, s, d, r, dtype=dtype), _positions(b, s, k)
    dy = torch.randn(b, s, d, generator=torch.Generator().manual_seed(2)).to(dtype)
    y, grads = _run(params, positions, backend="cpu", gate=_gate(b), dy=dy)
    assert y.dtype == dtype and all(g.dtype == dtype for g in grads)
    # Same (rounded) inputs in fp32: the kernel rounds only its outputs.
    y_ref, grads_ref = _oracle(params, positions, gate=_gate(b), dy=dy)
    tol = {"rtol": 1e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {"rtol": 2e-3, "atol": 2e-3}
    torch.testing.assert_close(y.float(), y_ref.to(dtype).float(), **tol)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g.float(), g_ref.to(dtype).float(), **tol)


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


@pytest.mark.parametrize("backend", ("reference", *CPU_TENSOR_BACKENDS))
def test_padding_only_and_empty_k(backend):
    b, s, d, r = 2, 9, 32, 16
    params = _params(b, s, d, r)
    dy = torch.randn(b, s, d)
    for positions in (torch.full((b, 3), -1), torch.empty(b, 0, dtype=torch.int64)):
        y, grads = _run(params, positions, backend=backend, dy=dy)
        assert torch.equal(y, params[0])
        assert torch.equal(grads[0], dy)
        assert all((g == 0).all() for g in grads[1:])


@pytest.mark.parametrize("backend", ("reference", *CPU_TENSOR_BACKENDS))
def test_gate(backend):
    b, s, d, r, k = 3, 16, 32, 16, 5
    params, positions = _params(b, s, d, r), _positions(b, s, k)
    params[0][0, :, ::3] = -0.0  # a gated-off sample must keep even the sign of zero
    dy = torch.randn(b, s, d)
    run = lambda gate: _run(params, positions, backend=backend, gate=gate, dy=dy)
    y_none, grads_none = run(None)
    y_one, _ = run(torch.ones(b))
    assert torch.equal(y_none, y_one)
    y_bool, grads_bool = run(torch.tensor([False, True, True]))
    y_float, grads_float = run(torch.tensor([0.0, 1.0, 1.0]))
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
        _oracle(params, positions, gate=torch.tensor([0.0, 1.0, 1.0]), dy=dy),
    )
    # All samples off: the identity, zero weight gradients.
    y_off, grads_off = run(torch.zeros(b))
    assert torch.equal(y_off, params[0]) and all((g == 0).all() for g in grads_off[1:])


@pytest.mark.parametrize("backend", ("reference", *CPU_TENSOR_BACKENDS))
def test_unselected_rows_bit_identical(backend):
    b, s, d, r, k = 2, 24, 32, 16, 7
    params, positions = _params(b, s, d, r), _positions(b, s, k)
    x = params[0]
    x[:, :, 5] = -0.0
    x[1, 3, :4] = float("nan")
    positions[1][positions[1] == 3] = -1  # the NaN row is not selected
    y = transform_scatter(x, positions, *params[1:], gate=_gate(b), backend=backend)
    selected = torch.zeros(b, s, dtype=torch.bool)
    for i in range(b):
        selected[i, positions[i][positions[i] >= 0]] = True
    assert torch.equal(y[~selected].view(torch.int32), x[~selected].view(torch.int32))
    assert not torch.equal(y[selected], x[selected])


@pytest.mark.parametrize("backend", ("reference", *CPU_TENSOR_BACKENDS))
def test_inplace_equals_out_of_place(backend):
    b, s, d, r, k = 2, 20, 32, 16, 6
    params, positions = _params(b, s, d, r), _positions(b, s, k)
    gate = _gate(b)
    want = transform_scatter(params[0], positions, *params[1:], gate=gate, backend=backend)
    x = params[0].clone()
    storage = x.data_ptr()
    with torch.no_grad():
        out = transform_scatter(x, positions, *params[1:], gate=gate, inplace=True, backend=backend)
    assert out is x and x.data_ptr() == storage
    assert torch.equal(x, want)


@pytest.mark.parametrize("backend", ("reference", *CPU_TENSOR_BACKENDS))
def test_non_contiguous_x(backend):
    b, s, d, r, k = 2, 18, 32, 16, 6
    params, positions = _params(b, s, d, r), _positions(b, s, k)
    base = params[0].transpose(1, 2).contiguous()  # [B, D, S]
    x_view = base.transpose(1, 2)  # [B, S, D] with stride 1 along S
    assert not x_view.is_contiguous()
    dy = torch.randn(b, s, d)
    got = _run([x_view, *params[1:]], positions, backend=backend, dy=dy)
    _assert_matches(got, _oracle(params, positions, dy=dy))
    assert got[0].is_contiguous()
    # In place on the strided view writes through to the base tensor.
    want = got[0]
    with torch.no_grad():
        transform_scatter(x_view, positions, *params[1:], inplace=True, backend=backend)
    torch.testing.assert_close(base.transpose(1, 2), want, rtol=1e-6, atol=1e-6)


def test_zero_stride_grad_and_int32_positions():
    """``y.sum().backward()`` hands the op an expanded (stride 0) gradient."""
    b, s, d, r, k = 2, 12, 32, 16, 5
    params, positions = _params(b, s, d, r), _positions(b, s, k, dtype=torch.int32)
    leaves = [p.clone().requires_grad_() for p in params]
    transform_scatter(leaves[0], positions, *leaves[1:], backend="cpu").sum().backward()
    _assert_matches(
        (torch.zeros(0), [p.grad for p in leaves]),
        (torch.zeros(0), _oracle(params, positions.long())[1]),
    )


def test_x_without_grad_skips_dx():
    b, s, d, r, k = 2, 12, 32, 16, 5
    params, positions = _params(b, s, d, r), _positions(b, s, k)
    weights = [p.clone().requires_grad_() for p in params[1:]]
    y = transform_scatter(params[0], positions, *weights, backend="cpu")
    y.backward(torch.ones_like(y))
    want = _oracle(params, positions)[1][1:]
    for g, g_ref in zip((w.grad for w in weights), want, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)


def test_cpu_backward_deterministic():
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
    again = _run(params, positions, backend="cpu", dy=dy)
    for other in (single, again):
        assert torch.equal(first[0], other[0])
        assert all(torch.equal(g, h) for g, h in zip(first[1], other[1], strict=True))


class TestModule:
    def test_zero_init_is_identity(self):
        b, s, d, k = 2, 20, 32, 6
        module = ResidualTokenMLP(d, 8)
        x, positions = torch.randn(b, s, d), _positions(b, s, k)
        for backend in ("reference", *CPU_TENSOR_BACKENDS):
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


def _op_args(backend, dtype=torch.float32):
    b, s, d, r, k = 2, 12, 32, 16, 5
    params, positions = _params(b, s, d, r, dtype=dtype), _positions(b, s, k)
    return params, positions, _gate(b), backend


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_opcheck(backend):
    (x, w1, b1, w2, b2), positions, gate, backend = _op_args(backend)
    leaves = [t.requires_grad_() for t in (x, w1, b1, w2, b2)]
    args = (*leaves[:1], positions, *leaves[1:], gate, "gelu_tanh", backend)
    torch.library.opcheck(torch.ops.cagul.transform_scatter.default, args)
    with torch.no_grad():
        _, z = torch.ops.cagul.transform_scatter(*args)
    for need_dx in (True, False):
        torch.library.opcheck(
            torch.ops.cagul.transform_scatter_backward.default,
            (torch.randn_like(x), x.detach(), positions, z, w1.detach(), w2.detach(), gate)
            + ("gelu_tanh", need_dx, backend),
        )
    detached = [t.detach() for t in (x, w1, b1, w2, b2)]
    torch.library.opcheck(
        torch.ops.cagul.transform_scatter_.default,
        (detached[0], positions, *detached[1:], gate, "relu", backend),
    )


def test_hidden_output_is_reference_preactivation():
    (x, w1, b1, w2, b2), positions, gate, _ = _op_args("cpu")
    gate[0] = 0.0
    want = reference.transform_scatter_hidden(x, positions, w1, b1, gate)
    for backend in ("reference", *CPU_TENSOR_BACKENDS):
        _, z = torch.ops.cagul.transform_scatter(
            x, positions, w1, b1, w2, b2, gate, "gelu", backend
        )
        torch.testing.assert_close(z, want, rtol=1e-5, atol=1e-5)


def test_torch_compile_fullgraph():
    params, positions, gate, _ = _op_args("cpu")

    def loss_fn(x, w1, b1, w2, b2):
        y = transform_scatter(x, positions, w1, b1, w2, b2, gate=gate, backend="cpu")
        return (y * y).sum()

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    results = []
    for fn in (compiled, loss_fn):
        leaves = [p.clone().requires_grad_() for p in params]
        loss = fn(*leaves)
        loss.backward()
        results.append((loss.detach(), [p.grad for p in leaves]))
    torch.testing.assert_close(results[0][0], results[1][0])
    for g_c, g_e in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(g_c, g_e)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def infer(x, w1, b1, w2, b2):
        return transform_scatter(x, positions, w1, b1, w2, b2, inplace=True, backend="cpu")

    x = params[0].clone()
    with torch.no_grad():
        infer(x, *params[1:])
    want = transform_scatter(params[0], positions, *params[1:], backend="cpu")
    torch.testing.assert_close(x, want)


class TestBadInput:
    def setup_method(self):
        self.params, self.positions, self.gate, _ = _op_args("cpu")

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

    def test_positions_out_of_range(self):
        for value in (self.params[0].shape[1], -2):
            bad = self.positions.clone()
            bad[1, 0] = value
            with pytest.raises(ValueError, match="positions entries must be -1"):
                self.call(positions=bad)

    def test_duplicate_positions(self):
        bad = self.positions.clone()
        row = bad[1][bad[1] >= 0]
        bad[1, (bad[1] == row[1]).nonzero()[0, 0]] = row[0]
        with pytest.raises(ValueError, match=f"row 1 holds position {int(row[0])} more than once"):
            self.call(positions=bad)
        with torch.no_grad(), pytest.raises(ValueError, match="must not repeat"):
            self.call(positions=bad, inplace=True)

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


# --- GPU ---------------------------------------------------------------------------------


def _relative_error(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gpu_matches_reference(backend, dtype, activation):
    b, s, d, r, k = 3, 300, 200, 48, 70
    params = [p.cuda() for p in _params(b, s, d, r, dtype=dtype)]
    positions, gate = _positions(b, s, k).cuda(), _gate(b).cuda()
    dy = torch.randn(b, s, d, device="cuda").to(dtype)
    y, grads = _run(params, positions, backend=backend, activation=activation, gate=gate, dy=dy)
    y_ref, grads_ref = _oracle(params, positions, activation=activation, gate=gate, dy=dy)
    limit = 1e-5 if dtype == torch.float32 else 2e-2
    assert _relative_error(y, y_ref) < limit
    for name, g, g_ref in zip(GRAD_NAMES, grads, grads_ref, strict=True):
        assert g.dtype == dtype
        assert _relative_error(g, g_ref) < limit, name


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_inplace_gate_and_determinism(backend):
    b, s, d, r, k = 2, 500, 256, 64, 120
    params = [p.cuda() for p in _params(b, s, d, r)]
    positions, gate = _positions(b, s, k).cuda(), torch.tensor([0.0, 0.7], device="cuda")
    want = transform_scatter(params[0], positions, *params[1:], gate=gate, backend=backend)
    assert torch.equal(want[0], params[0][0])
    x = params[0].clone()
    with torch.no_grad():
        transform_scatter(x, positions, *params[1:], gate=gate, inplace=True, backend=backend)
    assert torch.equal(x, want)
    dy = torch.randn(b, s, d, device="cuda")
    first = _run(params, positions, backend=backend, gate=gate, dy=dy)
    again = _run(params, positions, backend=backend, gate=gate, dy=dy)
    assert all(torch.equal(g, h) for g, h in zip(first[1], again[1], strict=True))


@pytest.mark.gpu
def test_cuda_rank_limit():
    params = [p.cuda() for p in _params(1, 8, 16, 257)]
    with pytest.raises(ValueError, match="rank R <= 256"):
        transform_scatter(params[0], torch.zeros(1, 1, dtype=torch.long, device="cuda"),
                          *params[1:], backend="cuda")  # fmt: skip
