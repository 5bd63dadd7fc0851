"""attention_with_lse: output equal to SDPA and the natural-log LSE of the reference, on
CPU and through each CUDA path (PyTorch's flash and memory-efficient kernels, flash-attn)."""

import importlib.util

import pytest
import torch

from cagul_kernels import attention_with_lse


def _qkv(b, hq, hkv, d, s, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, h, s, d, generator=g).to("cuda", dtype) for h in (hq, hkv, hkv))


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


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("hq,hkv,causal", [(4, 4, True), (8, 2, False), (8, 2, True)])
def test_attention_sdpa_flash_path(monkeypatch, dtype, hq, hkv, causal):
    calls = _spy(monkeypatch, "_scaled_dot_product_flash_attention")
    q, k, v = _qkv(2, hq, hkv, 64, 37, dtype)
    out, lse = attention_with_lse(q, k, v, causal=causal, backend="sdpa")
    assert calls, "fp16/bf16 without a mask must use PyTorch's flash kernel"
    _check_attention(q, k, v, causal, out, lse, 2e-3 if dtype == torch.float16 else 1e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("hq,hkv,causal", [(4, 4, True), (8, 2, False), (8, 2, True)])
@pytest.mark.parametrize("s", [37, 64])
def test_attention_efficient_path_fp32(monkeypatch, hq, hkv, causal, s):
    """fp32 goes to the memory-efficient kernel, whose LSE is padded along S (S=37 -> 64)."""
    calls = _spy(monkeypatch, "_scaled_dot_product_efficient_attention")
    q, k, v = _qkv(2, hq, hkv, 64, s)
    out, lse = attention_with_lse(q, k, v, causal=causal, backend="sdpa")
    assert calls, "fp32 must use PyTorch's memory-efficient kernel"
    _check_attention(q, k, v, causal, out, lse, 2e-3)  # the kernel may use TF32


@pytest.mark.gpu
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


@pytest.mark.gpu
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
