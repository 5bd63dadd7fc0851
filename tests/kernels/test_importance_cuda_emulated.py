"""The CUDA importance kernel (csrc/cuda/importance.cu), run on the CPU through a host
emulation of the CUDA built-ins (tests/kernels/cuda_emulation/emu.h) and compared with the
reference.

Without a GPU this is the only execution of the CUDA kernel's own code: it checks indexing,
strides, masks, the query-chunk skipping, the wmma tile layouts and alignment (fp16/bf16),
reductions and barrier placement (not warp-level or memory-model behaviour: the GPU tests
do that). Needs nvcc (for the CUDA headers and as the host compiler driver); skipped without
it. The tensor glue of csrc/ops.cpp is replaced by ``_finish`` below (same kv-head sum and
normalisation).
"""

import ctypes

import pytest
import torch
from helpers import make_index, vlm_layout
from kernel_helpers import DTYPE_CODES, emulated_kernels, needs_nvcc
from test_importance import SHAPES

from cagul_kernels import attention_with_lse, reference
from cagul_kernels.ops.importance import finish_importance

pytestmark = needs_nvcc


@pytest.fixture(scope="module")
def kernel_lib(tmp_path_factory):
    lib = emulated_kernels("importance", 1, tmp_path_factory.mktemp("cuda_emulation"))
    lib.emu_error.restype = ctypes.c_char_p
    return lib


def _emulated(lib, q, k, lse, qi, vi, scale, causal, per_head):
    """Raw kernel output: ``[B, Hq, Nv]`` (per_head) or ``[B, Hkv, Nv]`` partial sums."""
    b, hq, _, d = q.shape
    hkv = k.shape[1]
    nq, nv = qi.shape[1], vi.shape[1]
    out = torch.full((b, hq if per_head else hkv, nv), float("nan"))  # must be fully written
    dims = torch.tensor(
        [b, hq, hkv, d, nq, nv, *q.stride()[:3], *k.stride()[:3], *lse.stride()],
        dtype=torch.int64,
    )
    ptr = lambda t: ctypes.c_void_p(t.data_ptr())
    rc = lib.run_importance(
        ptr(q),
        ptr(k),
        ptr(lse),
        ptr(qi),
        ptr(vi),
        ptr(out),
        ptr(dims),
        ctypes.c_float(scale),
        int(causal),
        int(per_head),
        DTYPE_CODES[q.dtype],
    )
    assert rc == 0, f"launcher returned cudaError {rc}"
    assert lib.emu_error() is None, lib.emu_error().decode()
    return out


def _check(lib, q, k, lse, qi, vi, causal):
    scale = q.shape[-1] ** -0.5
    for per_head in (False, True):
        raw = _emulated(lib, q, k, lse, qi, vi, scale, causal, per_head)
        for mean in (True, False):
            got = finish_importance(raw, qi, q.shape[1], mean, per_head)
            want = reference.cross_modal_importance(
                q.float(), k.float(), lse, qi, vi, scale, causal, mean, per_head
            )
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
        assert (raw.sum(1)[vi < 0] == 0).all()  # padded slots: exactly 0 (terms are >= 0)


def _inputs(b, hq, hkv, d, s, dtype, causal):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, s, d, generator=g).to(dtype) for h in (hq, hkv, hkv))
    _, lse = attention_with_lse(q.float(), k.float(), v.float(), causal=causal)
    # Pass q and k as [B, S, H, D] storage viewed as [B, H, S, D].
    return (
        q.transpose(1, 2).contiguous().transpose(1, 2),
        k.transpose(1, 2).contiguous().transpose(1, 2),
        lse,
    )


# fp32 runs the SIMT path, fp16/bf16 the tensor-core (wmma) path.
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}_H{}x{}_D{}_img{}x{}".format(*s[:6]))
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("text_first", [True, False], ids=["question_after", "text_before_image"])
def test_matches_reference(kernel_lib, shape, causal, text_first, dtype):
    b, hq, hkv, d, n_img, n_tok, prefix, question = shape
    s, qi, vi = vlm_layout(b, n_img, n_tok, prefix, question)
    if not text_first:
        qi = make_index([list(range(max(prefix, 3)))] * b)
    q, k, lse = _inputs(b, hq, hkv, d, s, dtype, causal)
    _check(kernel_lib, q, k, lse, qi, vi, causal)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_several_query_chunks(kernel_lib, dtype):
    """70 query rows span two 64-row chunks; D = 72 (padded to 80)."""
    s, qi, vi = vlm_layout(2, 2, 40, 3, 70)
    q, k, lse = _inputs(2, 8, 2, 72, s, dtype, True)
    _check(kernel_lib, q, k, lse, qi, vi, True)


def test_no_queries_and_deterministic(kernel_lib):
    s, qi, vi = vlm_layout(2, 1, 20, 2, 4)
    qi[1] = -1
    q, k, lse = _inputs(2, 4, 4, 64, s, torch.float32, True)
    first = _emulated(kernel_lib, q, k, lse, qi, vi, 0.125, True, False)
    again = _emulated(kernel_lib, q, k, lse, qi, vi, 0.125, True, False)
    assert torch.equal(first, again)
    assert (first[1] == 0).all() and (first[0] > 0).any()
