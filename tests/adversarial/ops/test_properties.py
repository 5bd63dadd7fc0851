"""Property-based tests: every op's CPU kernel against ``cagul_kernels.reference`` over
random shapes (empty ones included), strides (``[B, S, H, D]`` views, transposed inputs),
GQA, padding, dtypes, masks (rows with no visible key included) and thread counts.
Triton stays out (the interpreter is too slow for many examples); it is covered by the
parametrised kernel tests."""

import contextlib

import torch
from hypothesis import given
from hypothesis import strategies as st

from cagul_kernels import (
    attention_with_lse,
    cross_modal_importance,
    select_low_importance,
    transform_scatter,
)
from cagul_kernels.ops.transform_scatter import ACTIVATIONS

TOLERANCE = {
    torch.float64: dict(rtol=1e-9, atol=1e-9),
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
}
# What several properties draw alike.
SEEDS = st.integers(0, 2**16)
THREADS = st.sampled_from([1, 2])
KV_HEADS = st.integers(1, 2)
HEAD_DIMS = st.integers(1, 16)
DTYPES = st.sampled_from([torch.float32, torch.bfloat16, torch.float16])


@contextlib.contextmanager
def num_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _tensor(g: torch.Generator, shape, dtype, bshd: bool = False) -> torch.Tensor:
    """Random ``[B, H, S, D]``; with ``bshd`` a ``.transpose(1, 2)`` view of a ``[B, S, H, D]``
    tensor (flash-attn's layout)."""
    if bshd:
        b, h, s, d = shape
        return torch.randn(b, s, h, d, generator=g).to(dtype).transpose(1, 2)
    return torch.randn(*shape, generator=g).to(dtype)


def _index(g: torch.Generator, b: int, n: int, upper: int) -> torch.Tensor:
    """``[B, n]`` positions in ``[0, upper)``, each row distinct, with random ``-1`` padding."""
    rows = [torch.randperm(upper, generator=g)[:n] for _ in range(b)]
    index = torch.stack(rows) if b and n else torch.zeros(b, n, dtype=torch.long)
    pad = torch.rand(index.shape, generator=g) < 0.25
    return index.masked_fill(pad, -1)


def _assert_lse_equal(got: torch.Tensor, want: torch.Tensor, dtype) -> None:
    assert torch.equal(torch.isneginf(got), torch.isneginf(want))
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite], want[finite], **TOLERANCE[dtype])


@given(
    b=st.integers(0, 2),
    hkv=KV_HEADS,
    group=st.integers(1, 2),
    sq=st.integers(0, 7),
    sk=st.integers(0, 7),
    d=HEAD_DIMS,
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    causal=st.booleans(),
    mask=st.sampled_from(["none", "bool", "key_padding", "additive"]),
    bshd=st.booleans(),
    threads=THREADS,
    seed=SEEDS,
)
def test_attention_matches_reference(
    b, hkv, group, sq, sk, d, dtype, causal, mask, bshd, threads, seed
):
    g = torch.Generator().manual_seed(seed)
    hq = hkv * group
    q = _tensor(g, (b, hq, sq, d), dtype, bshd)
    k = _tensor(g, (b, hkv, sk, d), dtype, bshd)
    v = _tensor(g, (b, hkv, sk, d), dtype, bshd)
    attn_mask = {
        "none": None,
        "bool": torch.rand(b, 1, sq, sk, generator=g) < 0.6,
        "key_padding": (torch.rand(b, 1, 1, sk, generator=g) < 0.7).expand(b, 1, sq, sk),
        "additive": torch.randn(b, hq, sq, sk, generator=g).to(dtype),
    }[mask]
    with num_threads(threads):
        out, lse = attention_with_lse(q, k, v, causal=causal, attn_mask=attn_mask, backend="cpu")
    want_out, want_lse = attention_with_lse(
        q, k, v, causal=causal, attn_mask=attn_mask, backend="reference"
    )
    assert out.shape == want_out.shape == q.shape and lse.shape == (b, hq, sq)
    _assert_lse_equal(lse, want_lse, dtype)
    torch.testing.assert_close(out, want_out, **TOLERANCE[dtype])
    no_key = torch.isneginf(want_lse)
    assert (out[no_key] == 0).all()


@given(
    sq=st.integers(1, 6),
    d=st.integers(1, 8),
    row=st.integers(0, 5),
    seed=SEEDS,
)
def test_attention_never_hides_nan(sq, d, row, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, sq, d, generator=g) for _ in range(3))
    row = row % sq
    q[0, 1, row, 0] = float("nan")
    for backend in ("cpu", "reference"):
        out, lse = attention_with_lse(q, k, v, causal=False, backend=backend)
        assert out[0, 1, row].isnan().all() and lse[0, 1, row].isnan(), backend
        assert torch.isfinite(out[0, 0]).all(), backend


@given(
    b=st.integers(1, 2),
    hkv=KV_HEADS,
    group=st.integers(1, 3),
    s=st.integers(1, 12),
    d=HEAD_DIMS,
    nq=st.integers(0, 5),
    nv=st.integers(0, 8),
    dtype=DTYPES,
    causal=st.booleans(),
    per_head=st.booleans(),
    reduce=st.sampled_from(["mean", "sum"]),
    bshd=st.booleans(),
    seed=SEEDS,
)
def test_importance_matches_reference_and_ignores_threads(
    b, hkv, group, s, d, nq, nv, dtype, causal, per_head, reduce, bshd, seed
):
    g = torch.Generator().manual_seed(seed)
    hq = hkv * group
    q = _tensor(g, (b, hq, s, d), dtype, bshd)
    k = _tensor(g, (b, hkv, s, d), dtype, bshd)
    _, lse = attention_with_lse(q, k, k, causal=True, backend="reference")  # finite rows
    qi, vi = _index(g, b, min(nq, s), s), _index(g, b, min(nv, s), s)
    kwargs = dict(causal=causal, per_head=per_head, reduce=reduce)
    results = []
    for threads in (1, 2):
        with num_threads(threads):
            results.append(cross_modal_importance(q, k, lse, qi, vi, backend="cpu", **kwargs))
    assert torch.equal(results[0], results[1])  # deterministic over thread counts
    want = cross_modal_importance(q, k, lse, qi, vi, backend="reference", **kwargs)
    torch.testing.assert_close(results[0], want, **TOLERANCE[torch.float32])
    padded = (vi < 0)[:, None] if per_head else vi < 0
    assert (results[0] * padded == 0).all()


@given(
    b=st.integers(0, 3),
    nv=st.integers(0, 12),
    levels=st.integers(1, 4),
    use_ratio=st.booleans(),
    ratio=st.floats(0.01, 1.0),
    transposed=st.booleans(),
    dtype=DTYPES,
    threads=THREADS,
    seed=SEEDS,
)
def test_selection_matches_reference(
    b, nv, levels, use_ratio, ratio, transposed, dtype, threads, seed
):
    g = torch.Generator().manual_seed(seed)
    # Few distinct values: many ties, which must go to the lower slot.
    importance = torch.randint(0, levels, (nv, b) if transposed else (b, nv), generator=g)
    importance = importance.to(dtype)
    if transposed:
        importance = importance.T
    visual_index = _index(g, b, nv, max(nv, 1))
    n_valid = int((visual_index >= 0).sum(dim=1).min()) if b else 0
    count = dict(ratio=ratio) if use_ratio else dict(k=n_valid // 2)
    with num_threads(threads):
        got = select_low_importance(importance, visual_index, backend="cpu", **count)
    want = select_low_importance(importance, visual_index, backend="reference", **count)
    assert all(torch.equal(x, y) for x, y in zip(got, want, strict=True))


@st.composite
def _scatter_case(draw):
    b, s, d, r = (
        draw(st.integers(1, 3)),
        draw(st.integers(1, 8)),
        draw(st.integers(1, 12)),
        draw(st.integers(1, 8)),
    )
    k = draw(st.integers(0, s))
    return dict(
        b=b,
        s=s,
        d=d,
        r=r,
        k=k,
        dtype=draw(st.sampled_from([torch.float64, torch.float32])),
        activation=draw(st.sampled_from(ACTIVATIONS)),
        gate=draw(st.sampled_from(["none", "float", "bool"])),
        sbd=draw(st.booleans()),
        seed=draw(SEEDS),
    )


def _scatter_inputs(case):
    g = torch.Generator().manual_seed(case["seed"])
    b, s, d, r, dtype = case["b"], case["s"], case["d"], case["r"], case["dtype"]
    if case["sbd"]:  # [S, B, D] storage seen as [B, S, D]
        x = torch.randn(s, b, d, generator=g, dtype=dtype).transpose(0, 1)
    else:
        x = torch.randn(b, s, d, generator=g, dtype=dtype)
    weights = [
        torch.randn(shape, generator=g, dtype=dtype) for shape in ((d, r), (r,), (r, d), (d,))
    ]
    gate = {
        "none": None,
        "float": torch.randint(0, 3, (b,), generator=g).to(torch.float32) / 2,  # 0 included
        "bool": torch.rand(b, generator=g) < 0.5,
    }[case["gate"]]
    return x, _index(g, b, case["k"], s), weights, gate


def _output_and_grads(x, positions, weights, gate, activation, backend):
    """``y`` and the gradients of ``x, w1, b1, w2, b2`` for a fixed linear loss."""
    leaves = [t.clone().requires_grad_() for t in (x, *weights)]
    y = transform_scatter(
        leaves[0], positions, *leaves[1:], activation=activation, gate=gate, backend=backend
    )
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return [y.detach()] + [leaf.grad for leaf in leaves]


@given(case=_scatter_case())
def test_transform_scatter_matches_reference_and_ignores_threads(case):
    x, positions, weights, gate = _scatter_inputs(case)
    runs = []
    for threads in (1, 2):
        with num_threads(threads):
            runs.append(_output_and_grads(x, positions, weights, gate, case["activation"], "cpu"))
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))  # bitwise over threads
    want = _output_and_grads(x, positions, weights, gate, case["activation"], "reference")
    for got_t, want_t in zip(runs[0], want, strict=True):
        torch.testing.assert_close(got_t, want_t, **TOLERANCE[case["dtype"]])
    y = runs[0][0]
    # Gate-off samples and unselected rows are x's, bit for bit.
    untouched = torch.ones(x.shape[:2], dtype=torch.bool)
    keep = positions >= 0
    if gate is not None:
        keep &= (gate != 0)[:, None]
    rows = keep.nonzero()
    untouched[rows[:, 0], positions[keep]] = False
    assert torch.equal(y[untouched], x[untouched])


@given(case=_scatter_case())
def test_inplace_transform_scatter_equals_out_of_place(case):
    x, positions, weights, gate = _scatter_inputs(case)
    want = transform_scatter(x, positions, *weights, activation=case["activation"], gate=gate)
    target = x.clone()
    with torch.no_grad():
        result = transform_scatter(
            target, positions, *weights, activation=case["activation"], gate=gate, inplace=True
        )
    assert result is target
    assert torch.equal(target, want)
