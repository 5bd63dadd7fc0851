"""select_low_importance and low_importance_tokens: every device and backend against the
reference (itself checked against a brute-force sort), ties, padding, ratio counts,
determinism, opcheck, torch.compile and bad input."""

import math

import pytest
import torch
from helpers import make_index, vlm_layout
from kernel_helpers import kernel_backends

from cagul_kernels import (
    attention_with_lse,
    cross_modal_importance,
    low_importance_tokens,
    reference,
    select_low_importance,
)
from cagul_kernels.ops._backend import kernel_op
from cagul_kernels.triton.topk import select_low_importance as triton_select


def _expected(importance, visual_index, k=None, ratio=None):
    """The reference selection, with the counts from the spec."""
    if ratio is not None:
        counts = reference.ratio_counts(visual_index, ratio)
        width = int(counts.max()) if counts.numel() else 0
    else:
        counts, width = torch.full((importance.shape[0],), k), k
    return reference.select_low_importance(importance, visual_index, counts, width)


def _brute_force(importance, visual_index, counts, width):
    """Python's sort of (value, slot) tuples over the valid slots of each row."""
    slots, positions = [], []
    for b in range(importance.shape[0]):
        valid = [
            (float(importance[b, j]), j)
            for j in range(importance.shape[1])
            if visual_index[b, j] >= 0
        ]
        chosen = [j for _, j in sorted(valid)[: int(counts[b])]]
        chosen += [-1] * (width - len(chosen))
        slots.append(chosen)
        positions.append([int(visual_index[b, j]) if j >= 0 else -1 for j in chosen])
    return torch.tensor(slots, dtype=torch.int64), torch.tensor(positions, dtype=torch.int64)


def _padded_index(valid_counts, nv, seed=0, scatter=True):
    """[B, Nv] positions with valid_counts[b] valid slots (scattered among -1 pads)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in valid_counts:
        row = torch.full((nv,), -1, dtype=torch.int64)
        where = torch.randperm(nv, generator=g)[:n] if scatter else torch.arange(n)
        row[where.sort().values] = torch.arange(n) * 3 + 7  # increasing positions
        rows.append(row)
    return torch.stack(rows)


def _same(got, want) -> bool:
    """Equal index tensors (``got`` from any device, ``want`` on the CPU)."""
    return all(torch.equal(g.cpu(), w) for g, w in zip(got, want, strict=True))


def _values(kind, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        return torch.rand(shape, generator=g)
    if kind == "ties":  # many exact ties
        return torch.randint(0, 4, shape, generator=g).float() * 0.25
    if kind == "equal":  # all equal, with -0.0 and +0.0 mixed
        return torch.where(torch.rand(shape, generator=g) < 0.5, -0.0, 0.0)
    if kind == "signed":  # negative, +-inf, denormals
        x = torch.randn(shape, generator=g) * 1e3
        x.view(-1)[::5] = float("inf")
        x.view(-1)[1::7] = float("-inf")
        x.view(-1)[2::11] = 1e-40
        x.view(-1)[3::13] = -1e-40
        return x
    raise ValueError(kind)


KINDS = ["random", "ties", "equal", "signed"]
# (valid counts per row, Nv): different valid counts, Nv not a power of two, one full row.
LAYOUTS = [([77, 40, 1], 77), ([300, 123, 64], 300), ([5, 200], 211)]


def test_reference_matches_brute_force():
    for kind in KINDS:
        for counts_per_row, nv in LAYOUTS[:2]:
            vi = _padded_index(counts_per_row, nv)
            x = _values(kind, vi.shape)
            for k in (0, 1, min(counts_per_row)):
                got = _expected(x, vi, k=k)
                want = _brute_force(x, vi, torch.full((len(counts_per_row),), k), k)
                assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
            counts = reference.ratio_counts(vi, 0.3)
            got = _expected(x, vi, ratio=0.3)
            want = _brute_force(x, vi, counts, int(counts.max()))
            assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


def test_never_selects_padding_before_valid_inf(device):
    x = torch.tensor([[float("inf"), float("inf"), 1.0]], device=device)
    vi = torch.tensor([[-1, 5, 6]], device=device)
    for backend in ("reference", *kernel_backends(device)):
        slots, positions = select_low_importance(x, vi, k=2, backend=backend)
        assert slots.tolist() == [[2, 1]] and positions.tolist() == [[6, 5]]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda x: f"Nv{x[1]}")
def test_matches_reference(device, backend, kind, layout):
    counts_per_row, nv = layout
    vi = _padded_index(counts_per_row, nv, seed=nv)
    x = _values(kind, vi.shape, seed=nv)
    for form in ({"k": min(counts_per_row)}, {"k": 1}, {"ratio": 0.25}, {"ratio": 1.0}):
        slots, positions = select_low_importance(
            x.to(device), vi.to(device), backend=backend, **form
        )
        assert slots.dtype == positions.dtype == torch.int64 and slots.device == device
        assert _same((slots, positions), _expected(x, vi, **form)), form


def test_only_k_valid_slots(device, backend):
    """Rows whose valid slots are exactly k: every valid slot, by importance."""
    vi = _padded_index([6, 6, 6], 50, seed=3)
    x = _values("random", vi.shape, seed=3)
    x[vi < 0] = -1.0  # padded slots would win if they were considered
    slots, positions = select_low_importance(x.to(device), vi.to(device), k=6, backend=backend)
    slots, positions = slots.cpu(), positions.cpu()
    assert torch.equal(slots, _expected(x, vi, k=6)[0])
    assert (positions >= 0).all() and (vi.gather(1, slots) == positions).all()


def test_ratio_counts_are_float_safe(device):
    cases = [(0.7, 10, 7), (0.1, 30, 3), (0.25, 4, 1), (0.3, 7, 3), (1.0, 5, 5), (0.001, 1000, 1)]
    cases += [(0.5, 0, 0), (1e-9, 5, 1), (0.29, 100, 29), (0.57, 100, 57)]
    for ratio, n, want in cases:
        vi = make_index([list(range(n)), [0]], width=max(n, 1))
        assert int(reference.ratio_counts(vi, ratio)[0]) == want, (ratio, n)
        x, vi = torch.rand(vi.shape, device=device), vi.to(device)
        for backend in ("reference", *kernel_backends(device)):
            slots, _ = select_low_importance(x, vi, ratio=ratio, backend=backend)
            assert int((slots[0] >= 0).sum()) == want, (ratio, n, backend)
            assert int((slots[1] >= 0).sum()) == math.ceil(ratio - 1e-12), (ratio, backend)


def test_k_zero_and_empty_batch(device, backend):
    vi = _padded_index([10, 3], 12).to(device)
    x = torch.rand(vi.shape, device=device)
    slots, positions = select_low_importance(x, vi, k=0, backend=backend)
    assert slots.shape == positions.shape == (2, 0) and slots.dtype == torch.int64
    slots, positions = select_low_importance(x[:0], vi[:0], ratio=0.5, backend=backend)
    assert slots.shape == (0, 0)
    slots, positions = select_low_importance(x[:0], vi[:0], k=4, backend=backend)
    assert slots.shape == (0, 4)


def test_low_precision_values_and_int32_index(device, backend):
    vi = _padded_index([90, 71], 97, seed=5)
    for dtype in (torch.float16, torch.bfloat16):
        x = _values("random", vi.shape, seed=5).to(dtype)  # rounding creates ties
        got = select_low_importance(x.to(device), vi.int().to(device), ratio=0.4, backend=backend)
        assert _same(got, _expected(x.float(), vi, ratio=0.4))


def test_nan_at_padded_slot_is_ignored(device):
    vi = _padded_index([20, 20], 30, seed=2)
    x = _values("random", vi.shape, seed=2)
    x[vi < 0] = float("nan")
    want = _expected(x.nan_to_num(0.0), vi, k=5)
    for backend in ("reference", *kernel_backends(device)):
        assert _same(select_low_importance(x.to(device), vi.to(device), k=5, backend=backend), want)


@pytest.mark.parametrize("nv", [16, 77, 300])
def test_triton_multi_chunk_merge(device, nv):
    """Rows spanning many sorted chunks (ranks by binary search across chunks)."""
    vi = _padded_index([nv, nv // 2, 3], nv, seed=nv)
    counts = reference.ratio_counts(vi, 0.6)
    width = int(counts.max())
    for kind in KINDS:
        x = _values(kind, vi.shape, seed=nv)
        got = triton_select(x.to(device), vi.to(device), counts.to(device), width, chunk=16)
        assert _same(got, reference.select_low_importance(x, vi, counts, width)), kind


def test_triton_longer_rows(device):
    vi = _padded_index([1500, 1111], 1500, seed=9)
    x = _values("ties", vi.shape, seed=9) + _values("random", vi.shape, seed=1) * 1e-3
    got = select_low_importance(x.to(device), vi.to(device), ratio=0.25, backend="triton")
    assert _same(got, _expected(x, vi, ratio=0.25))
    vi = _padded_index([20000], 20000)
    x = _values("random", vi.shape, seed=2)
    counts = reference.ratio_counts(vi, 0.25)
    got = triton_select(
        x.to(device), vi.to(device), counts.to(device), int(counts.max()), chunk=1024
    )
    assert _same(got, _expected(x, vi, ratio=0.25))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch", [1, 3])
def test_cpu_large_rows(kind, batch):
    """Rows long enough for the split-row (B=1, 2+ threads) and row-parallel paths of the
    C++ kernel."""
    nv = 70000
    vi = _padded_index([nv - 3 * b for b in range(batch)], nv, seed=batch)
    x = _values(kind, vi.shape, seed=batch)
    for form in ({"ratio": 0.25}, {"k": 20000}, {"ratio": 1.0}):
        got = select_low_importance(x, vi, backend="cpu", **form)
        want = _expected(x, vi, **form)
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True)), form


def test_cpu_deterministic_across_threads():
    vi = _padded_index([70000, 69000], 70000, seed=4)  # split-row path with 2+ threads
    x = _values("ties", vi.shape, seed=4)
    first = select_low_importance(x[:1], vi[:1], ratio=0.3, backend="cpu")
    again = select_low_importance(x[:1], vi[:1], ratio=0.3, backend="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = select_low_importance(x[:1], vi[:1], ratio=0.3, backend="cpu")
    finally:
        torch.set_num_threads(threads)
    for a, b in ((first, again), (first, single)):
        assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


def test_low_importance_tokens_end_to_end(device, backend):
    """Equals the backend's importance followed by the reference selection."""
    b, hq, hkv, d = 2, 4, 2, 32
    s, qi, vi = vlm_layout(b, 2, 30, 3, 6, seed=1)
    qi, vi = qi.to(device), vi.to(device)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, s, d, generator=g).to(device) for h in (hq, hkv, hkv))
    _, lse = attention_with_lse(q, k, v)
    importance = cross_modal_importance(q, k, lse, qi, vi, backend=backend)
    for form in ({"k": 7}, {"ratio": 0.3}):
        got = low_importance_tokens(q, k, lse, qi, vi, backend=backend, **form)
        assert _same(got, _expected(importance.cpu(), vi.cpu(), **form))
        assert (got[1][got[0] >= 0] >= 0).all()
    for bad in ({}, {"k": 1, "ratio": 0.5}):
        with pytest.raises(ValueError, match="exactly one of k or ratio"):
            low_importance_tokens(q, k, lse, qi, vi, backend=backend, **bad)


def test_opcheck(device):
    vi = _padded_index([40, 25], 45, seed=6).to(device)
    x = _values("ties", vi.shape, seed=6).to(device)
    for backend in ("reference", *kernel_backends(device)):
        for k, ratio in ((5, None), (-1, 0.5)):
            torch.library.opcheck(kernel_op("select_low_importance", backend), (x, vi, k, ratio))


def test_torch_compile_fullgraph(device):
    """k form: static width. ratio form: the op's fake returns an unbacked width."""
    vi = _padded_index([40, 25], 45, seed=7).to(device)
    x = _values("random", vi.shape, seed=7).to(device)

    def with_k(x, vi):
        slots, positions = select_low_importance(x * 2, vi, k=9)
        return slots, positions + 1

    def with_ratio(x, vi):
        slots, positions = select_low_importance(x, vi, ratio=0.3)
        return slots, positions.clamp(min=0)

    compiler = "aot_eager" if device.type == "cpu" else "inductor"
    for fn in (with_k, with_ratio):
        compiled = torch.compile(fn, fullgraph=True, backend=compiler)
        got, want = compiled(x, vi), fn(x, vi)
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))


# The public function checks the arguments itself for the Python backends and leaves
# shapes, dtypes and ranges to the native op (csrc/ops.cpp): both must refuse the same input.
@pytest.fixture(params=["reference", "cpu"])
def checked_by(request) -> str:
    return request.param


class TestBadInput:
    def setup_method(self):
        self.vi = _padded_index([8, 5], 10, seed=1)
        self.x = _values("random", self.vi.shape, seed=1)

    def test_k_and_ratio(self, checked_by):
        with pytest.raises(ValueError, match="exactly one of k or ratio"):
            select_low_importance(self.x, self.vi, backend=checked_by)
        with pytest.raises(ValueError, match="exactly one of k or ratio"):
            select_low_importance(self.x, self.vi, k=2, ratio=0.5, backend=checked_by)

    def test_k_range_and_type(self, checked_by):
        with pytest.raises(ValueError, match="k must be >= 0"):
            select_low_importance(self.x, self.vi, k=-1, backend=checked_by)
        with pytest.raises(ValueError, match="exceeds the Nv=10"):
            select_low_importance(self.x, self.vi, k=11, backend=checked_by)
        for bad in (2.0, True, "3"):
            with pytest.raises(TypeError, match="k must be an int"):
                select_low_importance(self.x, self.vi, k=bad, backend=checked_by)

    def test_k_above_valid_count(self, device):
        x, vi = self.x.to(device), self.vi.to(device)
        for backend in ("reference", *kernel_backends(device)):
            with pytest.raises(ValueError, match="k=6 exceeds the 5 valid visual tokens of row 1"):
                select_low_importance(x, vi, k=6, backend=backend)

    def test_ratio_range_and_type(self, checked_by):
        for bad in (0.0, 1.5, -0.2, float("nan"), float("inf"), 2):
            with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\]"):
                select_low_importance(self.x, self.vi, ratio=bad, backend=checked_by)
        for bad in ("0.5", True, torch.tensor(0.5)):
            with pytest.raises(TypeError, match="ratio must be a float"):
                select_low_importance(self.x, self.vi, ratio=bad, backend=checked_by)

    def test_nan_importance(self, device):
        x = self.x.clone()
        j = int((self.vi[1] >= 0).nonzero()[2])
        x[1, j] = float("nan")
        x, vi = x.to(device), self.vi.to(device)
        for backend in ("reference", *kernel_backends(device)):
            with pytest.raises(ValueError, match=f"importance is NaN at row 1, slot {j}"):
                select_low_importance(x, vi, ratio=0.5, backend=backend)

    def test_index_below_padding(self, device):
        vi = self.vi.clone()
        vi[0, 4] = -3
        x, vi = self.x.to(device), vi.to(device)
        for backend in ("reference", *kernel_backends(device)):
            with pytest.raises(ValueError, match="visual_index entries must be -1"):
                select_low_importance(x, vi, k=1, backend=backend)

    def test_shapes_dtypes_devices(self, checked_by):
        def select(x, vi):
            return select_low_importance(x, vi, k=1, backend=checked_by)

        with pytest.raises(ValueError, match="same shape"):
            select(self.x[:, :9], self.vi)
        with pytest.raises(ValueError, match="importance must be 2-D"):
            select(self.x[0], self.vi[0])
        with pytest.raises(ValueError, match="visual_index must be 2-D"):
            select(self.x, self.vi[None])
        with pytest.raises(TypeError, match="importance must have dtype"):
            select(self.x.double(), self.vi)
        with pytest.raises(TypeError, match="visual_index must have dtype"):
            select(self.x, self.vi.float())
        with pytest.raises(TypeError, match=r"importance must be a torch\.Tensor"):
            select(self.x.tolist(), self.vi)
        with pytest.raises(TypeError, match=r"visual_index must be a torch\.Tensor"):
            select(self.x, self.vi.tolist())
        with pytest.raises(ValueError, match="one device"):
            select(self.x, self.vi.to("meta"))

    @pytest.mark.parametrize(
        "case",
        [
            ("shape", lambda x, vi: (x[:, :9], vi, 1, None)),
            ("importance 1-D", lambda x, vi: (x[0], vi[0], 1, None)),
            ("visual_index 3-D", lambda x, vi: (x, vi[None], 1, None)),
            ("float64", lambda x, vi: (x.double(), vi, 1, None)),
            ("float index", lambda x, vi: (x, vi.float(), 1, None)),
            ("k < 0", lambda x, vi: (x, vi, -1, None)),
            ("k > Nv", lambda x, vi: (x, vi, 11, None)),
            ("ratio 0", lambda x, vi: (x, vi, -1, 0.0)),
            ("ratio 1.5", lambda x, vi: (x, vi, -1, 1.5)),
            ("ratio nan", lambda x, vi: (x, vi, -1, float("nan"))),
            ("valid", lambda x, vi: (x, vi, -1, 1e-30)),  # no error from either
        ],
        ids=lambda case: case[0],
    )
    def test_native_op_reads_as_the_python_checks(self, case):
        """A direct (or exported) call of the native op raises what the public function
        raises on the reference backend, word for word."""
        name, make_args = case
        x, vi, k, ratio = make_args(self.x, self.vi)
        count = {"k": k} if ratio is None else {"ratio": ratio}
        errors = []
        for call in (
            lambda: select_low_importance(x, vi, backend="reference", **count),
            lambda: kernel_op("select_low_importance", "cpu")(x, vi, k, ratio),
        ):
            try:
                call()
                errors.append(None)
            except (ValueError, TypeError) as error:
                errors.append((type(error), str(error)))
        assert errors[0] == errors[1]
        assert (errors[0] is None) == (name == "valid")

    def test_backend_names(self):
        with pytest.raises(ValueError, match="backend must be"):
            select_low_importance(self.x, self.vi, k=1, backend="metal")
        with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors"):
            select_low_importance(self.x, self.vi, k=1, backend="cuda")


# Full-size rows: the GPU kernels only (CPU: test_cpu_large_rows; the Triton interpreter
# would take minutes).
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("shape", [(1, 576), (8, 2880), (3, 16384), (8, 65536), (2, 70001)])
def test_gpu_matches_reference(backend, shape):
    b, nv = shape
    vi = _padded_index([nv - 17 * i for i in range(b)], nv, seed=nv)
    for kind in KINDS:
        x = _values(kind, vi.shape, seed=nv)
        for form in ({"ratio": 0.25}, {"k": nv // 3}, {"ratio": 1.0}):
            got = select_low_importance(x.cuda(), vi.cuda(), backend=backend, **form)
            want = _expected(x, vi, **form)
            assert all(torch.equal(g.cpu(), w) for g, w in zip(got, want, strict=True))


def test_bad_values_and_determinism(device, backend):
    vi = _padded_index([300, 200], 300, seed=2).to(device)
    x = _values("ties", vi.shape, seed=2).to(device)
    first = select_low_importance(x, vi, ratio=0.5, backend=backend)
    again = select_low_importance(x, vi, ratio=0.5, backend=backend)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    with pytest.raises(ValueError, match="exceeds the 200 valid visual tokens of row 1"):
        select_low_importance(x, vi, k=250, backend=backend)
    x[0, int((vi[0] >= 0).nonzero()[0])] = float("nan")
    with pytest.raises(ValueError, match="importance is NaN"):
        select_low_importance(x, vi, k=5, backend=backend)
