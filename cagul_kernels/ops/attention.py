"""``attention_with_lse``: softmax attention that also returns the log-sum-exp (LSE).

The LSE is what lets ``cross_modal_importance`` recompute any attention probability
exactly, ``P[i, j] = exp(scale * q_i . k_j - lse_i)``, without materialising ``S x S``.
The output comes from FlashAttention when installed (CUDA), PyTorch's internal flash /
memory-efficient kernels (CUDA) or PyTorch's CPU flash kernel. Gradients flow through
``out`` (the LSE is not differentiable).
"""

from __future__ import annotations

import functools
import importlib.util

import torch

from .. import reference
from ._checks import FLOAT_DTYPES, check_same_device, check_tensor, softmax_scale

OP = "attention_with_lse"
ATTENTION_BACKENDS = ("flash_attn", "sdpa", "reference", "cpu", "cuda")


def attention_with_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = True,
    scale: float | None = None,
    attn_mask: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output and its natural-log LSE.

    Args:
        q: ``[B, Hq, Sq, D]``; k, v: ``[B, Hkv, Sk, D]`` with ``Hq % Hkv == 0`` (GQA).
            Any strides (``[B, S, H, D]`` tensors ``.transpose(1, 2)``-ed work).
        causal: query ``i`` sees keys ``j <= i + Sk - Sq`` (bottom-right aligned, as in
            flash-attn; the usual lower triangle when ``Sq == Sk``).
        scale: softmax scale, default ``1 / sqrt(D)``; finite and > 0.
        attn_mask: optional bool (True = attend) or additive float mask broadcastable to
            ``[B, Hq, Sq, Sk]``, combined with ``causal``.
            Under autocast q, k, v are cast to the autocast dtype, as SDPA does.
        backend: ``None`` (best available), ``"flash_attn"``, ``"sdpa"`` (PyTorch's own
            fused kernels), ``"cpu"`` / ``"cuda"`` (the same, for tensors on that device)
            or ``"reference"`` (plain torch, materialises the scores).

    Returns:
        ``out [B, Hq, Sq, D]`` in q's dtype (equal to
        ``F.scaled_dot_product_attention``) and ``lse [B, Hq, Sq]`` float32, natural log,
        scale applied. Rows that see no key (all masked, the first ``Sq - Sk`` rows under
        causal, or ``Sk = 0``) get ``out = 0`` and ``lse = -inf`` on every backend.
        ``Sq = 0`` gives empty results; ``Hq``, ``Hkv`` and ``D`` must be >= 1.
    """
    _check_args(q, k, v, attn_mask)
    if torch.is_autocast_enabled(q.device.type):
        # As F.scaled_dot_product_attention: run in the autocast dtype (RoPE often leaves
        # q, k in fp32 while v is already bf16).
        dtype = torch.get_autocast_dtype(q.device.type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{OP}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    sq, sk = q.shape[2], k.shape[2]
    scale = softmax_scale(OP, scale, q.shape[3])
    if backend is None:
        backend = _default_backend(q, attn_mask)
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(
            f"{OP}: backend must be one of {ATTENTION_BACKENDS} or None, got {backend!r}"
        )
    if backend in ("cpu", "cuda"):  # PyTorch's own fused kernels on that device
        if q.device.type != backend:
            raise ValueError(f"{OP}: backend={backend!r} needs {backend} tensors, got {q.device}")
        backend = "sdpa"
    if sq == 0 or sk == 0:
        # Nothing to attend (PyTorch's CPU flash kernel divides by these sizes): empty
        # out / lse, or zero rows with lse = -inf when there is no key, as SDPA gives.
        backend = "reference"

    if causal and sq != sk and backend != "flash_attn":
        # PyTorch's kernels align the causal triangle top-left; flash-attn's (and ours) is
        # bottom-right, so pass that case as an explicit mask.
        attn_mask = _merge_masks(attn_mask, _bottom_right_causal(sq, sk, q.device))
        causal = False
    if backend == "reference":
        out, lse = reference.attention_with_lse(q, k, v, causal, scale, attn_mask)
    elif backend == "flash_attn":
        out, lse = _flash_attn(q, k, v, causal, scale, attn_mask)
    else:
        out, lse = _sdpa(q, k, v, causal, scale, attn_mask)
        if q.device.type == "cpu":  # only the CPU flash kernel zeroes NaN rows
            out, lse = _propagate_nan_query_rows(q, out, lse)
    return out, _no_key_rows_to_neg_inf(lse, causal, attn_mask, sk)


def _check_args(q, k, v, attn_mask) -> None:
    """Shapes, dtypes and devices (metadata only, trace-safe)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(OP, name, t, ndim=4, dtypes=FLOAT_DTYPES, shape_hint="[B, H, S, D]")
        if t.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{OP}: {name} must be a cpu or cuda tensor, got one on {t.device}")
    check_same_device(OP, q=q, k=k, v=v, attn_mask=attn_mask)
    b, hq, sq, d = q.shape
    if hq == 0 or d == 0:
        raise ValueError(f"{OP}: q must have at least one head and D >= 1, got {tuple(q.shape)}")
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
        raise ValueError(
            f"{OP}: k and v must be [B={b}, Hkv, Sk, D={d}] and equal, got k {tuple(k.shape)} "
            f"and v {tuple(v.shape)}"
        )
    hkv = k.shape[1]
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(
            f"{OP}: query heads ({hq}) must be a multiple of kv heads ({hkv} in k, >= 1)"
        )
    if attn_mask is not None:
        check_tensor(OP, "attn_mask", attn_mask, dtypes=(torch.bool, *FLOAT_DTYPES))
        full = (b, hq, sq, k.shape[2])
        if attn_mask.dim() > 4 or any(
            m not in (1, f)
            for m, f in zip(
                reversed(attn_mask.shape), reversed(full[4 - attn_mask.dim() :]), strict=True
            )
        ):
            raise ValueError(
                f"{OP}: attn_mask must be broadcastable to [B, Hq, Sq, Sk] = {list(full)}, got "
                f"shape {tuple(attn_mask.shape)}"
            )


@functools.cache
def _flash_attn_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def _default_backend(q: torch.Tensor, attn_mask) -> str:
    if (
        q.is_cuda
        and attn_mask is None
        and q.dtype in (torch.float16, torch.bfloat16)
        and _flash_attn_installed()
    ):
        return "flash_attn"
    return "sdpa"


def _propagate_nan_query_rows(q: torch.Tensor, out: torch.Tensor, lse: torch.Tensor):
    """NaN ``out`` and ``lse`` rows for NaN query rows: PyTorch's CPU flash kernel returns
    ``out = 0``, ``lse = 0`` there, as for a row without keys, which would hide the NaN."""
    nan_rows = q.isnan().any(dim=-1)  # [B, Hq, Sq]
    return out.masked_fill(nan_rows[..., None], float("nan")), lse.masked_fill(
        nan_rows, float("nan")
    )


def _no_key_rows_to_neg_inf(lse: torch.Tensor, causal: bool, attn_mask, sk: int) -> torch.Tensor:
    """``lse`` with ``-inf`` at every row that sees no key, whatever the kernel wrote there
    (PyTorch's CPU flash kernel writes 0, flash-attn +inf), so that
    ``cross_modal_importance``'s finiteness check refuses such a row as a query."""
    sq = lse.shape[2]
    if attn_mask is None:
        if not causal:
            return lse
        # Bottom-right causal alone: rows i < Sq - Sk (flash-attn's native causal).
        return lse.masked_fill(torch.arange(sq, device=lse.device) < sq - sk, float("-inf"))
    visible = attn_mask if attn_mask.dtype == torch.bool else attn_mask != float("-inf")
    if causal:
        visible = visible & _bottom_right_causal(sq, sk, lse.device)
    return lse.masked_fill(~visible.any(dim=-1), float("-inf"))  # [.., Sq] broadcasts


def _bottom_right_causal(sq: int, sk: int, device) -> torch.Tensor:
    return torch.ones(sq, sk, dtype=torch.bool, device=device).tril(sk - sq)


def _merge_masks(mask, causal_mask: torch.Tensor) -> torch.Tensor:
    if mask is None:
        return causal_mask
    if mask.dtype == torch.bool:
        return mask & causal_mask
    return mask.masked_fill(~causal_mask, float("-inf"))


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    if mask is None or mask.dtype != torch.bool:
        return mask if mask is None else mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
        ~mask, float("-inf")
    )


def _expand_kv(k: torch.Tensor, hq: int) -> torch.Tensor:
    """``[B, Hkv, S, D] -> [B, Hq, S, D]``: kv head ``g`` serves query heads ``g*G..g*G+G-1``."""
    b, hkv, s, d = k.shape
    if hkv == hq:
        return k
    return k[:, :, None].expand(b, hkv, hq // hkv, s, d).reshape(b, hq, s, d)


def _sdpa(q, k, v, causal, scale, attn_mask):
    hq, sq = q.shape[1], q.shape[2]
    k, v = _expand_kv(k, hq), _expand_kv(v, hq)
    if not q.is_cuda:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, causal, attn_mask=_additive(attn_mask, q.dtype), scale=scale
        )
        return out, lse
    if attn_mask is None and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(
            q, k, v, 0.0, causal, False, scale=scale
        )[:2]
        return out, lse
    # Memory-efficient kernel: its LSE is padded along the sequence (to a multiple of 32).
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, _additive(attn_mask, q.dtype), True, 0.0, causal, scale=scale
    )[:2]
    return out, lse[..., :sq]


def _flash_attn(q, k, v, causal, scale, attn_mask):
    if not _flash_attn_installed():
        raise RuntimeError("attention_with_lse: backend='flash_attn' needs the flash-attn package")
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError("attention_with_lse: backend='flash_attn' needs fp16/bf16 CUDA tensors")
    if attn_mask is not None:
        raise ValueError("attention_with_lse: backend='flash_attn' does not take attn_mask")
    from flash_attn import flash_attn_func

    # flash-attn works in [B, S, H, D], supports GQA natively and returns a natural-log LSE.
    out, lse, _ = flash_attn_func(
        q.transpose(1, 2),
        k.transpose(1, 2),
        v.transpose(1, 2),
        softmax_scale=scale,
        causal=causal,
        return_attn_probs=True,
    )
    return out.transpose(1, 2), lse
