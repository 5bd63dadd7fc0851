"""cross_modal_importance: every backend against the reference, the eager softmax way,
opcheck, torch.compile, and bad input."""

import math

import pytest
import torch
from helpers import CPU_TENSOR_BACKENDS, make_index, vlm_layout

from cagul_kernels import attention_with_lse, cross_modal_importance, reference


def _inputs(b, hq, hkv, d, s, dtype=torch.float32, seed=0, causal=True):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, s, d, generator=g).to(dtype)
    k = torch.randn(b, hkv, s, d, generator=g).to(dtype)
    v = torch.randn(b, hkv, s, d, generator=g).to(dtype)
    _, lse = attention_with_lse(q, k, v, causal=causal)
    return q, k, lse


def _reference(q, k, lse, qi, vi, causal=True, reduce="mean", per_head=False):
    return cross_modal_importance(
        q.float(),
        k.float(),
        lse,
        qi,
        vi,
        causal=causal,
        reduce=reduce,
        per_head=per_head,
        backend="reference",
    )


# Shapes: (B, Hq, Hkv, D, images, image_tokens, prefix, question)
SHAPES = [
    (1, 4, 4, 64, 1, 40, 5, 9),
    (3, 8, 2, 80, 3, 13, 4, 7),
    (3, 4, 4, 128, 1, 150, 0, 5),
]


@pytest.mark.parametrize("backend", CPU_TENSOR_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_H{}x{}_D{}_img{}x{}".format(*s[:6]))
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("text_first", [True, False], ids=["question_after", "text_before_image"])
def test_matches_reference(backend, shape, causal, text_first):
    b, hq, hkv, d, n_img, n_tok, prefix, question = shape
    s, qi, vi = vlm_layout(b, n_img, n_tok, prefix, question)
    if not text_first:  # queries = the prefix text before the images
        qi = make_index([list(range(max(prefix, 3)))] * b)
    q, k, lse = _inputs(b, hq, hkv, d, s, causal=causal)
    for reduce in ("mean", "sum"):
        for per_head in (False, True):
            got = cross_modal_importance(
                q, k, lse, qi, vi, causal=causal, reduce=reduce, per_head=per_head, backend=backend
            )
            want = _reference(q, k, lse, qi, vi, causal, reduce, per_head)
            assert got.shape == want.shape and got.dtype == torch.float32
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
            assert (
                (got[..., vi < 0] == 0).all()
                if not per_head
                else (got.transpose(0, 1)[:, vi < 0] == 0).all()
            )


# The Triton interpreter mishandles bf16 tl.dot: bf16 Triton runs in the GPU tests only.
@pytest.mark.parametrize(
    "backend,dtype",
    [("cpu", torch.float16), ("cpu", torch.bfloat16), ("triton", torch.float16)],
    ids=["cpu-fp16", "cpu-bf16", "triton-fp16"],
)
def test_low_precision(backend, dtype):
    s, qi, vi = vlm_layout(2, 2, 30, 3, 6)
    q, k, lse = _inputs(2, 8, 2, 64, s, dtype=dtype)
    got = cross_modal_importance(q, k, lse, qi, vi, backend=backend)
    want = _reference(q, k, lse, qi, vi)  # same (rounded) inputs, in fp32
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_equals_eager_softmax_importance():
    """The op equals the `output_attentions=True` way: mean of materialised probabilities."""
    b, hq, hkv, d = 2, 8, 2, 64
    s, qi, vi = vlm_layout(b, 3, 20, 4, 8, seed=3)
    q, k, lse = _inputs(b, hq, hkv, d, s)
    scores = q @ k.repeat_interleave(hq // hkv, dim=1).transpose(-1, -2) / math.sqrt(d)
    probs = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf")).softmax(
        -1
    )
    want = reference.importance_from_probs(probs, qi, vi)
    for backend in ("reference", *CPU_TENSOR_BACKENDS):
        got = cross_modal_importance(q, k, lse, qi, vi, backend=backend)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_strided_bshd_views():
    """[B, S, H, D] tensors passed as transposed views give the same answer."""
    s, qi, vi = vlm_layout(2, 1, 33, 2, 5)
    q, k, lse = _inputs(2, 4, 2, 64, s)
    q_bshd, k_bshd = q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous()
    want = _reference(q, k, lse, qi, vi)
    for backend in CPU_TENSOR_BACKENDS:
        got = cross_modal_importance(
            q_bshd.transpose(1, 2), k_bshd.transpose(1, 2), lse, qi, vi, backend=backend
        )
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_int32_indices_and_deterministic():
    s, qi, vi = vlm_layout(3, 2, 150, 3, 9)
    q, k, lse = _inputs(3, 8, 2, 64, s)
    first = cross_modal_importance(q, k, lse, qi.int(), vi.int(), backend="cpu")
    again = cross_modal_importance(q, k, lse, qi, vi, backend="cpu")
    assert torch.equal(first, again)
    torch.set_num_threads(1)
    try:
        single = cross_modal_importance(q, k, lse, qi, vi, backend="cpu")
    finally:
        torch.set_num_threads(2)
    assert torch.equal(first, single)


def test_sample_without_queries_is_zero():
    s, qi, vi = vlm_layout(2, 1, 20, 2, 4)
    qi[1] = -1
    q, k, lse = _inputs(2, 4, 4, 64, s)
    for backend in CPU_TENSOR_BACKENDS:
        got = cross_modal_importance(q, k, lse, qi, vi, backend=backend)
        assert (got[1] == 0).all() and (got[0] > 0).any()


def test_opcheck():
    s, qi, vi = vlm_layout(2, 1, 20, 2, 4)
    q, k, lse = _inputs(2, 4, 2, 64, s)
    for backend in ("reference", *CPU_TENSOR_BACKENDS):
        torch.library.opcheck(
            torch.ops.cagul.cross_modal_importance.default,
            (q, k, lse, qi, vi, 0.125, True, True, False, backend),
        )


def test_torch_compile_fullgraph():
    s, qi, vi = vlm_layout(2, 1, 20, 2, 4)
    q, k, v = (torch.randn(2, 4, s, 64) for _ in range(3))

    def importance(q, k, v):
        out, lse = attention_with_lse(q, k, v)
        return out, cross_modal_importance(q, k, lse, qi, vi, backend="cpu")

    compiled = torch.compile(importance, fullgraph=True, backend="aot_eager")
    out_c, imp_c = compiled(q, k, v)
    out_e, imp_e = importance(q, k, v)
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(imp_c, imp_e)


class TestBadInput:
    def setup_method(self):
        self.s, self.qi, self.vi = vlm_layout(2, 1, 10, 2, 3)
        self.q, self.k, self.lse = _inputs(2, 4, 2, 64, self.s)

    def call(self, **overrides):
        args = dict(q=self.q, k=self.k, lse=self.lse, query_index=self.qi, visual_index=self.vi)
        kwargs = {key: overrides.pop(key) for key in list(overrides) if key not in args}
        args.update(overrides)
        return cross_modal_importance(**args, **kwargs)

    def test_batch_mismatch(self):
        with pytest.raises(ValueError, match="k must be"):
            self.call(k=self.k[:1])

    def test_heads_not_multiple(self):
        with pytest.raises(ValueError, match="multiple of kv heads"):
            self.call(k=torch.randn(2, 3, self.s, 64), lse=self.lse)

    def test_lse_shape(self):
        with pytest.raises(ValueError, match="lse must be"):
            self.call(lse=self.lse[:, :2])

    def test_lse_dtype(self):
        with pytest.raises(TypeError, match="lse must have dtype"):
            self.call(lse=self.lse.double())

    def test_index_out_of_range(self):
        bad = self.vi.clone()
        bad[0, 0] = self.s
        with pytest.raises(ValueError, match="visual_index entries"):
            self.call(visual_index=bad)

    def test_index_below_padding(self):
        bad = self.qi.clone()
        bad[1, 0] = -2
        with pytest.raises(ValueError, match="query_index entries"):
            self.call(query_index=bad)

    def test_index_float_dtype(self):
        with pytest.raises(TypeError, match="query_index must have dtype"):
            self.call(query_index=self.qi.float())

    def test_non_finite_lse(self):
        bad = self.lse.clone()
        bad[0, 1, int(self.qi[0, 0])] = float("nan")
        with pytest.raises(ValueError, match="lse must be finite"):
            self.call(lse=bad)

    def test_reduce_and_backend_names(self):
        with pytest.raises(ValueError, match="reduce must be"):
            self.call(reduce="max")
        with pytest.raises(ValueError, match="backend must be"):
            self.call(backend="metal")

    def test_gpu_backends_on_cpu_tensors(self):
        with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors"):
            self.call(backend="cuda")

    def test_mixed_devices(self):
        with pytest.raises(ValueError, match="one device"):
            self.call(query_index=self.qi.to("meta"))


def test_attention_with_lse_matches_sdpa():
    for hq, hkv, causal in ((4, 4, True), (8, 2, False), (8, 2, True)):
        q, k, v = (
            torch.randn(2, hq, 37, 64),
            torch.randn(2, hkv, 37, 64),
            torch.randn(2, hkv, 37, 64),
        )
        out, lse = attention_with_lse(q, k, v, causal=causal)
        want = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=causal, enable_gqa=True
        )
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
        ref_out, ref_lse = attention_with_lse(q, k, v, causal=causal, backend="reference")
        torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)


def test_attention_with_lse_autocast_casts_like_sdpa():
    """Under autocast mixed q/k (fp32 after RoPE) and v (bf16) run in the autocast dtype."""
    q, k = torch.randn(1, 4, 9, 32), torch.randn(1, 2, 9, 32)
    v = torch.randn(1, 2, 9, 32).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, lse = attention_with_lse(q, k, v)
        want = torch.nn.functional.scaled_dot_product_attention(
            q, k, v.float(), is_causal=True, enable_gqa=True
        )
    assert out.dtype == want.dtype == torch.bfloat16 and lse.dtype == torch.float32
    torch.testing.assert_close(out, want, rtol=2e-2, atol=2e-2)
    with pytest.raises(TypeError, match="share a dtype"):
        attention_with_lse(q, k, v)
