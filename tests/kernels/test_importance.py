"""cross_modal_importance on every device and backend against the reference, the eager
softmax way, opcheck, torch.compile, and bad input."""

import math

import pytest
import torch
from helpers import make_index, vlm_layout
from kernel_helpers import assert_low_precision_close, kernel_backends

from cagul_kernels import attention_with_lse, cross_modal_importance, reference
from cagul_kernels.ops._backend import kernel_op


def _inputs(b, hq, hkv, d, s, dtype=torch.float32, seed=0, causal=True, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, s, d, generator=g).to(device, dtype) for h in (hq, hkv, hkv))
    _, lse = attention_with_lse(q, k, v, causal=causal)
    return q, k, lse


def _reference(q, k, lse, qi, vi, causal=True, reduce="mean", per_head=False):
    """The oracle on the same (rounded) inputs, in fp32."""
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


def _layout(device, *args, **kwargs):
    s, qi, vi = vlm_layout(*args, **kwargs)
    return s, qi.to(device), vi.to(device)


# Shapes: (B, Hq, Hkv, D, images, image_tokens, prefix, question)
SHAPES = [
    (1, 4, 4, 64, 1, 40, 5, 9),
    (3, 8, 2, 80, 3, 13, 4, 7),
    (3, 4, 4, 128, 1, 150, 0, 5),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_H{}x{}_D{}_img{}x{}".format(*s[:6]))
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("text_first", [True, False], ids=["question_after", "text_before_image"])
def test_matches_reference(device, backend, shape, causal, text_first):
    b, hq, hkv, d, n_img, n_tok, prefix, question = shape
    s, qi, vi = _layout(device, b, n_img, n_tok, prefix, question)
    if not text_first:  # queries = the prefix text before the images
        qi = make_index([list(range(max(prefix, 3)))] * b).to(device)
    q, k, lse = _inputs(b, hq, hkv, d, s, causal=causal, device=device)
    for reduce in ("mean", "sum"):
        for per_head in (False, True):
            got = cross_modal_importance(
                q, k, lse, qi, vi, causal=causal, reduce=reduce, per_head=per_head, backend=backend
            )
            want = _reference(q, k, lse, qi, vi, causal, reduce, per_head)
            assert got.shape == want.shape and got.dtype == torch.float32
            assert got.device == q.device
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
            assert (
                (got[..., vi < 0] == 0).all()
                if not per_head
                else (got.transpose(0, 1)[:, vi < 0] == 0).all()
            )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("d", [64, 96, 256])
def test_low_precision(device, backend, dtype, d):
    """fp16/bf16 inputs, fp32 accumulation: equal to the fp32 oracle on the same rounded
    inputs, and against the fp32 truth no worse than the torch reference run in the same
    low precision (flash-attention's rule). 70 queries: more than one query block."""
    if backend == "triton" and dtype == torch.bfloat16 and device.type == "cpu":
        pytest.skip("the Triton interpreter mishandles bf16 tl.dot (bf16 Triton: GPU tests)")
    s, qi, vi = _layout(device, 2, 2, 30, 3, 70)
    q32, k32, lse32 = _inputs(2, 8, 2, d, s, device=device)
    q, k, lse = _inputs(2, 8, 2, d, s, dtype=dtype, device=device)
    got = cross_modal_importance(q, k, lse, qi, vi, backend=backend)
    torch.testing.assert_close(got, _reference(q, k, lse, qi, vi), rtol=1e-4, atol=1e-6)
    truth = _reference(q32, k32, lse32, qi, vi)
    low_precision = cross_modal_importance(q, k, lse, qi, vi, backend="reference")
    assert_low_precision_close(got, truth, low_precision)


def test_default_backend(device):
    """CPU tensors: the C++ kernel; CUDA tensors: Triton."""
    s, qi, vi = _layout(device, 2, 1, 50, 2, 6)
    q, k, lse = _inputs(2, 4, 2, 64, s, device=device)
    default = "cpu" if device.type == "cpu" else "triton"
    assert torch.equal(
        cross_modal_importance(q, k, lse, qi, vi),
        cross_modal_importance(q, k, lse, qi, vi, backend=default),
    )


def test_equals_eager_softmax_importance(device):
    """The op equals the `output_attentions=True` way: mean of materialised probabilities."""
    b, hq, hkv, d = 2, 8, 2, 64
    s, qi, vi = _layout(device, b, 3, 20, 4, 8, seed=3)
    q, k, lse = _inputs(b, hq, hkv, d, s, device=device)
    scores = q @ k.repeat_interleave(hq // hkv, dim=1).transpose(-1, -2) / math.sqrt(d)
    causal = torch.ones(s, s, dtype=torch.bool, device=device).triu(1)
    want = reference.importance_from_probs(
        scores.masked_fill(causal, float("-inf")).softmax(-1), qi, vi
    )
    for backend in ("reference", *kernel_backends(device)):
        got = cross_modal_importance(q, k, lse, qi, vi, backend=backend)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_strided_bshd_views(device, backend):
    """[B, S, H, D] tensors passed as transposed views give the same answer."""
    s, qi, vi = _layout(device, 2, 1, 33, 2, 5)
    q, k, lse = _inputs(2, 4, 2, 64, s, device=device)
    q_bshd, k_bshd = q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous()
    got = cross_modal_importance(
        q_bshd.transpose(1, 2), k_bshd.transpose(1, 2), lse, qi, vi, backend=backend
    )
    torch.testing.assert_close(got, _reference(q, k, lse, qi, vi), rtol=1e-4, atol=1e-6)


def test_int32_indices_and_deterministic(device, backend):
    s, qi, vi = _layout(device, 3, 2, 150, 3, 9)
    q, k, lse = _inputs(3, 8, 2, 64, s, device=device)
    first = cross_modal_importance(q, k, lse, qi.int(), vi.int(), backend=backend)
    for _ in range(2):
        assert torch.equal(first, cross_modal_importance(q, k, lse, qi, vi, backend=backend))


def test_cpu_kernel_deterministic_across_threads():
    s, qi, vi = vlm_layout(3, 2, 150, 3, 9)
    q, k, lse = _inputs(3, 8, 2, 64, s)
    first = cross_modal_importance(q, k, lse, qi, vi, backend="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = cross_modal_importance(q, k, lse, qi, vi, backend="cpu")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first, single)


def test_sample_without_queries_is_zero(device, backend):
    s, qi, vi = _layout(device, 2, 1, 20, 2, 4)
    qi[1] = -1
    q, k, lse = _inputs(2, 4, 4, 64, s, device=device)
    got = cross_modal_importance(q, k, lse, qi, vi, backend=backend)
    assert (got[1] == 0).all() and (got[0] > 0).any()


def test_opcheck(device):
    s, qi, vi = _layout(device, 2, 1, 20, 2, 4)
    q, k, lse = _inputs(2, 4, 2, 64, s, device=device)
    for backend in ("reference", *kernel_backends(device)):
        torch.library.opcheck(
            kernel_op("cross_modal_importance", backend),
            (q, k, lse, qi, vi, 0.125, True, True, False),
        )


def test_torch_compile_fullgraph(device):
    s, qi, vi = _layout(device, 2, 1, 20, 2, 4)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, s, 64, generator=g).to(device) for _ in range(3))

    def importance(q, k, v):
        out, lse = attention_with_lse(q, k, v)
        return out, cross_modal_importance(q, k, lse, qi, vi)

    compiler = "aot_eager" if device.type == "cpu" else "inductor"
    compiled = torch.compile(importance, fullgraph=True, backend=compiler)
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
