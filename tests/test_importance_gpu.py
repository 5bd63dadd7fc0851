"""GPU tests (marked ``gpu``, skipped without CUDA): the triton and cuda backends of
``cross_modal_importance`` on CUDA tensors against the reference over the CPU tests'
parametrisation plus fp16/bf16, and ``attention_with_lse``'s CUDA paths against SDPA."""

import importlib.util
import math

import pytest
import torch
from helpers import make_index, vlm_layout
from test_importance import SHAPES

from cagul_kernels import attention_with_lse, cross_modal_importance, reference

pytestmark = pytest.mark.gpu

GPU_BACKENDS = ("triton", "cuda")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]


def _qkv(b, hq, hkv, d, s, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, s, d, generator=g).to("cuda", dtype) for h in (hq, hkv, hkv))


def _inputs(b, hq, hkv, d, s, dtype=torch.float32, causal=True, seed=0):
    q, k, v = _qkv(b, hq, hkv, d, s, dtype, seed)
    _, lse = attention_with_lse(q, k, v, causal=causal)
    return q, k, lse


def _reference(q, k, lse, qi, vi, **kwargs):
    """The oracle on the same (rounded) inputs, in fp32."""
    return cross_modal_importance(q.float(), k.float(), lse, qi, vi, backend="reference", **kwargs)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_H{}x{}_D{}_img{}x{}".format(*s[:6]))
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("text_first", [True, False], ids=["question_after", "text_before_image"])
def test_matches_reference(backend, shape, causal, text_first, dtype):
    b, hq, hkv, d, n_img, n_tok, prefix, question = shape
    s, qi, vi = vlm_layout(b, n_img, n_tok, prefix, question)
    if not text_first:
        qi = make_index([list(range(max(prefix, 3)))] * b)
    qi, vi = qi.cuda(), vi.cuda()
    q, k, lse = _inputs(b, hq, hkv, d, s, dtype, causal)
    for reduce in ("mean", "sum"):
        for per_head in (False, True):
            kwargs = dict(causal=causal, reduce=reduce, per_head=per_head)
            got = cross_modal_importance(q, k, lse, qi, vi, backend=backend, **kwargs)
            want = _reference(q, k, lse, qi, vi, **kwargs)
            assert got.shape == want.shape and got.dtype == torch.float32 and got.is_cuda
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
            padded = got[..., vi < 0] if not per_head else got.transpose(0, 1)[:, vi < 0]
            assert (padded == 0).all()


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("d", [96, 256])
def test_other_head_dims(backend, d):
    s, qi, vi = vlm_layout(2, 2, 70, 3, 70)  # 70 queries: more than one query block
    q, k, lse = _inputs(2, 8, 2, d, s, torch.float16)
    got = cross_modal_importance(q, k, lse, qi.cuda(), vi.cuda(), backend=backend)
    torch.testing.assert_close(
        got, _reference(q, k, lse, qi.cuda(), vi.cuda()), rtol=1e-4, atol=1e-6
    )


def test_default_backend_is_triton():
    s, qi, vi = vlm_layout(2, 1, 50, 2, 6)
    q, k, lse = _inputs(2, 4, 2, 64, s)
    qi, vi = qi.cuda(), vi.cuda()
    assert torch.equal(
        cross_modal_importance(q, k, lse, qi, vi),
        cross_modal_importance(q, k, lse, qi, vi, backend="triton"),
    )


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_equals_eager_softmax_importance(backend):
    b, hq, hkv, d = 2, 8, 2, 64
    s, qi, vi = vlm_layout(b, 3, 20, 4, 8, seed=3)
    qi, vi = qi.cuda(), vi.cuda()
    q, k, lse = _inputs(b, hq, hkv, d, s)
    scores = q @ k.repeat_interleave(hq // hkv, dim=1).transpose(-1, -2) / math.sqrt(d)
    causal = torch.ones(s, s, dtype=torch.bool, device="cuda").triu(1)
    want = reference.importance_from_probs(
        scores.masked_fill(causal, float("-inf")).softmax(-1), qi, vi
    )
    got = cross_modal_importance(q, k, lse, qi, vi, backend=backend)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_strided_bshd_views(backend, dtype):
    s, qi, vi = vlm_layout(2, 1, 33, 2, 5)
    qi, vi = qi.cuda(), vi.cuda()
    q, k, lse = _inputs(2, 4, 2, 64, s, dtype)
    q_bshd, k_bshd = q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous()
    got = cross_modal_importance(
        q_bshd.transpose(1, 2), k_bshd.transpose(1, 2), lse, qi, vi, backend=backend
    )
    torch.testing.assert_close(got, _reference(q, k, lse, qi, vi), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_deterministic_and_int32_indices(backend):
    s, qi, vi = vlm_layout(2, 3, 700, 32, 128)
    qi, vi = qi.cuda(), vi.cuda()
    q, k, lse = _inputs(2, 16, 4, 128, s, torch.bfloat16)
    first = cross_modal_importance(q, k, lse, qi, vi, backend=backend)
    for _ in range(3):
        assert torch.equal(
            first, cross_modal_importance(q, k, lse, qi.int(), vi.int(), backend=backend)
        )
    torch.testing.assert_close(first, _reference(q, k, lse, qi, vi), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_sample_without_queries_is_zero(backend):
    s, qi, vi = vlm_layout(2, 1, 20, 2, 4)
    qi[1] = -1
    q, k, lse = _inputs(2, 4, 4, 64, s)
    got = cross_modal_importance(q, k, lse, qi.cuda(), vi.cuda(), backend=backend)
    assert (got[1] == 0).all() and (got[0] > 0).any()


def test_opcheck():
    s, qi, vi = vlm_layout(2, 1, 20, 2, 4)
    q, k, lse = _inputs(2, 4, 2, 64, s)
    for backend in ("reference", *GPU_BACKENDS):
        torch.library.opcheck(
            torch.ops.cagul.cross_modal_importance.default,
            (q, k, lse, qi.cuda(), vi.cuda(), 0.125, True, True, False, backend),
        )


def test_torch_compile_fullgraph():
    s, qi, vi = vlm_layout(2, 1, 20, 2, 4)
    qi, vi = qi.cuda(), vi.cuda()
    q, k, v = _qkv(2, 4, 4, 64, s, torch.float16)

    def importance(q, k, v):
        out, lse = attention_with_lse(q, k, v)
        return out, cross_modal_importance(q, k, lse, qi, vi)

    compiled = torch.compile(importance, fullgraph=True)
    out_c, imp_c = compiled(q, k, v)
    out_e, imp_e = importance(q, k, v)
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(imp_c, imp_e)


# attention_with_lse on CUDA ------------------------------------------------------------------


def _spy(monkeypatch, op_name):
    """Counts calls of ``torch.ops.aten.<op_name>`` made by attention_with_lse."""
    calls = []
    op = getattr(torch.ops.aten, op_name)

    def spy(*args, **kwargs):
        calls.append(op_name)
        return op(*args, **kwargs)

    monkeypatch.setattr(torch.ops.aten, op_name, spy)
    return calls


def _check_attention(q, k, v, causal, out, lse, tol):
    hq = q.shape[1]
    want = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=causal, enable_gqa=hq != k.shape[1]
    )
    torch.testing.assert_close(out, want, rtol=tol, atol=tol)
    _, ref_lse = attention_with_lse(
        q.float(), k.float(), v.float(), causal=causal, backend="reference"
    )
    assert lse.shape == (q.shape[0], hq, q.shape[2]) and lse.dtype == torch.float32
    torch.testing.assert_close(lse, ref_lse, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("hq,hkv,causal", [(4, 4, True), (8, 2, False), (8, 2, True)])
def test_attention_sdpa_flash_path(monkeypatch, dtype, hq, hkv, causal):
    calls = _spy(monkeypatch, "_scaled_dot_product_flash_attention")
    q, k, v = _qkv(2, hq, hkv, 64, 37, dtype)
    out, lse = attention_with_lse(q, k, v, causal=causal, backend="sdpa")
    assert calls, "fp16/bf16 without a mask must use PyTorch's flash kernel"
    _check_attention(q, k, v, causal, out, lse, 2e-3 if dtype == torch.float16 else 1e-2)


@pytest.mark.parametrize("hq,hkv,causal", [(4, 4, True), (8, 2, False), (8, 2, True)])
@pytest.mark.parametrize("s", [37, 64])
def test_attention_efficient_path_fp32(monkeypatch, hq, hkv, causal, s):
    """fp32 goes to the memory-efficient kernel, whose LSE is padded along S (S=37 -> 64)."""
    calls = _spy(monkeypatch, "_scaled_dot_product_efficient_attention")
    q, k, v = _qkv(2, hq, hkv, 64, s)
    out, lse = attention_with_lse(q, k, v, causal=causal, backend="sdpa")
    assert calls, "fp32 must use PyTorch's memory-efficient kernel"
    _check_attention(q, k, v, causal, out, lse, 2e-3)  # the kernel may use TF32


def test_attention_efficient_path_with_mask(monkeypatch):
    """A mask forces the efficient kernel for fp16 too; padded LSE sliced; mask respected."""
    calls = _spy(monkeypatch, "_scaled_dot_product_efficient_attention")
    q, k, v = _qkv(2, 4, 4, 64, 45, torch.float16)
    mask = torch.rand(2, 1, 45, 45, generator=torch.Generator().manual_seed(1)) > 0.3
    mask = (mask | torch.eye(45, dtype=torch.bool)).cuda()  # every row keeps a key
    out, lse = attention_with_lse(q, k, v, causal=False, attn_mask=mask, backend="sdpa")
    assert calls
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, want, rtol=2e-3, atol=2e-3)
    _, ref_lse = attention_with_lse(
        q.float(), k.float(), v.float(), causal=False, attn_mask=mask, backend="reference"
    )
    assert lse.shape == (2, 4, 45)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(
    importlib.util.find_spec("flash_attn") is None, reason="flash-attn not installed"
)
@pytest.mark.parametrize("hq,hkv,causal", [(4, 4, True), (8, 2, False), (8, 2, True)])
def test_attention_flash_attn_package(hq, hkv, causal):
    q, k, v = _qkv(2, hq, hkv, 64, 37, torch.float16)
    out, lse = attention_with_lse(q, k, v, causal=causal, backend="flash_attn")
    _check_attention(q, k, v, causal, out, lse, 2e-3)
    _, sdpa_lse = attention_with_lse(q, k, v, causal=causal, backend="sdpa")
    torch.testing.assert_close(lse, sdpa_lse, rtol=1e-4, atol=1e-4)
