"""The benchmark providers, one definition each, shared by the ``bench_*.py`` scripts (CSV,
plots) and the pytest-benchmark suites (``benchmarks/test_bench_*.py``).

Every ``*_providers`` function takes prepared inputs and returns ``name -> zero-argument
callable``, ours next to the baselines a user would otherwise run.
"""

from __future__ import annotations

import importlib.util
import math
from types import SimpleNamespace

import torch

from cagul_kernels import (
    attention_with_lse,
    cross_modal_importance,
    reference,
    select_low_importance,
    transform_scatter,
)
from cagul_kernels.ops._backend import extension_has_cuda

# ---- cross_modal_importance ------------------------------------------------------------------

# Prompt layout of the importance benchmarks: [PREFIX text][Nv image][QUESTION], Hq heads of D.
IMPORTANCE_HQ, IMPORTANCE_D, PREFIX, QUESTION = 16, 128, 32, 128


def importance_inputs(nv: int, hkv: int, device: torch.device, dtype: torch.dtype):
    """``(q, k, v, lse, query_index, visual_index)`` for ``[32 text][nv image][128 question]``."""
    s = PREFIX + nv + QUESTION
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, IMPORTANCE_HQ, s, IMPORTANCE_D, device=device, dtype=dtype, generator=g)
    k = torch.randn(1, hkv, s, IMPORTANCE_D, device=device, dtype=dtype, generator=g)
    v = torch.randn(1, hkv, s, IMPORTANCE_D, device=device, dtype=dtype, generator=g)
    visual_index = torch.arange(PREFIX, PREFIX + nv, device=device)[None]
    query_index = torch.arange(PREFIX + nv, s, device=device)[None]
    _, lse = attention_with_lse(q, k, v)
    return q, k, v, lse, query_index, visual_index


def eager_importance(q, k, v, query_index, visual_index):
    """The ``output_attentions=True`` way, literally: transformers' eager attention (Llama)
    with the additive 4-D causal mask the model builds, keeping the probabilities, then
    the question rows' mean over heads on the image columns."""
    from transformers.models.llama.modeling_llama import eager_attention_forward

    s = q.shape[2]
    mask = torch.full((s, s), torch.finfo(q.dtype).min, dtype=q.dtype, device=q.device).triu(1)
    module = SimpleNamespace(num_key_value_groups=q.shape[1] // k.shape[1], training=False)
    out, probs = eager_attention_forward(
        module, q, k, v, mask[None, None], 1 / math.sqrt(q.shape[-1])
    )
    rows = probs[:, :, query_index[0]][..., visual_index[0]]
    return out, rows.float().mean(dim=(1, 2))


def pyramiddrop_importance(q, k, query_index, visual_index):
    """PyramidDrop-style recompute, what a user of FlashAttention would otherwise write: only
    the query rows of q (their projection is the same for every provider), full-row softmax
    over all keys (causal), the image columns sliced out, mean over heads and queries; no LSE."""
    rows = q[:, :, query_index[0]]  # [B, Hq, Nq, D]
    keys = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = (rows @ keys.transpose(-1, -2)).float() / math.sqrt(q.shape[-1])
    positions = torch.arange(k.shape[2], device=q.device)
    scores = scores.masked_fill(positions > query_index[0][:, None], float("-inf"))
    return scores.softmax(-1)[..., visual_index[0]].mean(dim=(1, 2))


def importance_providers(q, k, v, lse, query_index, visual_index, backends):
    """Eager, SDPA / FlashAttention-2 attention alone, ours fused with attention and alone
    per backend, and the two plain-torch recomputes (from the LSE; PyramidDrop-style)."""
    providers = {
        "eager": lambda: eager_importance(q, k, v, query_index, visual_index),
        "attention_with_lse": lambda: attention_with_lse(q, k, v),
    }
    if q.is_cuda:
        providers["sdpa_flash"] = lambda: _sdpa_flash(q, k, v)
        if importlib.util.find_spec("flash_attn") is not None:
            providers["flash_attn2"] = lambda: _flash_attn2(q, k, v)
    for backend in backends:
        providers[f"attention_with_lse+importance[{backend}]"] = lambda b=backend: (
            cross_modal_importance(
                q, k, attention_with_lse(q, k, v)[1], query_index, visual_index, backend=b
            )
        )
        providers[f"importance[{backend}]"] = lambda b=backend: cross_modal_importance(
            q, k, lse, query_index, visual_index, backend=b
        )
    providers["importance_torch_recompute"] = lambda: cross_modal_importance(
        q, k, lse, query_index, visual_index, backend="reference"
    )
    providers["pyramiddrop_recompute"] = lambda: pyramiddrop_importance(
        q, k, query_index, visual_index
    )
    return providers


def _sdpa_flash(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return torch.nn.functional.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1]
        )


def _flash_attn2(q, k, v):
    from flash_attn import flash_attn_func

    return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)


# ---- select_low_importance -------------------------------------------------------------------

TOPK_RATIO = 0.25


def topk_inputs(batch: int, nv: int, device: torch.device):
    """Importance-like rows (a softmax of ``2 * randn``), every slot valid."""
    g = torch.Generator().manual_seed(nv + batch)
    importance = (torch.randn(batch, nv, generator=g) * 2).softmax(-1).to(device)
    visual_index = (torch.arange(nv) + 16).repeat(batch, 1).to(device)
    return importance, visual_index


def topk_providers(importance, visual_index):
    """``cagul`` (the public op, all checks), ``torch_topk`` (``torch.topk(largest=False)``
    and a gather of the positions: no padding handling, no tie order), ``reference``, and on
    CUDA the CUDA C++ kernel when built."""
    k = math.ceil(TOPK_RATIO * importance.shape[1])
    out = {
        "torch_topk": lambda: visual_index.gather(
            1, torch.topk(importance, k, dim=1, largest=False).indices
        ),
        "cagul": lambda: select_low_importance(importance, visual_index, ratio=TOPK_RATIO),
        "reference": lambda: select_low_importance(
            importance, visual_index, ratio=TOPK_RATIO, backend="reference"
        ),
    }
    if importance.is_cuda and extension_has_cuda():
        out["cuda"] = lambda: select_low_importance(
            importance, visual_index, ratio=TOPK_RATIO, backend="cuda"
        )
    return out


# ---- transform_scatter -----------------------------------------------------------------------

SCATTER_RANK = 64


def transform_scatter_inputs(s: int, d: int, device: torch.device):
    """``[x, positions, w1, b1, w2, b2, dy, gate]`` for B=1, K = S/4, R = 64, fp32."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, s, d, generator=g)
    positions = torch.randperm(s, generator=g)[: s // 4][None]
    w1 = torch.randn(d, SCATTER_RANK, generator=g) / d**0.5
    b1 = torch.zeros(SCATTER_RANK)
    w2 = 0.02 * torch.randn(SCATTER_RANK, d, generator=g)
    b2 = torch.zeros(d)
    dy = torch.randn(1, s, d, generator=g)
    gate = torch.ones(1)
    return [t.to(device) for t in (x, positions, w1, b1, w2, b2, dy, gate)]


def transform_scatter_providers(s, d, device, backends):
    """The plain-torch way (gather -> MLP -> index_put with autograd: ``torch_fwd``,
    ``torch_fwd_nograd``, ``torch_fwd_bwd``) and per backend the fused op in place under
    ``no_grad`` (``<backend>_inplace``), out of place (``_fwd``) and with backward."""
    x, positions, w1, b1, w2, b2, dy, gate = transform_scatter_inputs(s, d, device)
    leaves = [t.clone().requires_grad_() for t in (x, w1, b1, w2, b2)]

    def torch_forward():
        return reference.transform_scatter(leaves[0], positions, *leaves[1:], gate, "gelu")

    def torch_forward_nograd():
        with torch.no_grad():
            return reference.transform_scatter(x, positions, w1, b1, w2, b2, gate, "gelu")

    providers = {
        "torch_fwd": torch_forward,
        "torch_fwd_nograd": torch_forward_nograd,
        "torch_fwd_bwd": lambda: torch.autograd.grad(torch_forward(), leaves, dy),
    }
    for backend in backends:

        def fused(backend=backend):
            return transform_scatter(leaves[0], positions, *leaves[1:], backend=backend)

        def inplace(backend=backend):
            with torch.no_grad():
                return transform_scatter(
                    x, positions, w1, b1, w2, b2, inplace=True, backend=backend
                )

        providers[f"{backend}_inplace"] = inplace
        providers[f"{backend}_fwd"] = fused
        providers[f"{backend}_fwd_bwd"] = lambda fused=fused: torch.autograd.grad(
            fused(), leaves, dy
        )
    return providers
