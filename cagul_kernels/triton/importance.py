"""Triton kernel of ``cross_modal_importance`` (see ``cagul_kernels/ops/importance.py``).

One program per (block of ``BLOCK_N`` visual slots, kv head, sample). It gathers its K tile
once (rows ``visual_index``, any strides) and reuses it for every query head of the kv group
and every block of ``BLOCK_M`` query rows (rows ``query_index``): ``s = q k^T`` on the tensor
cores, ``p = exp2(s * scale * log2(e) - lse * log2(e))`` with the causal / padding masks,
column sums in fp32 registers. Each output element is written by exactly one program, summed
in a fixed order (query heads, then query blocks). No atomics: results are deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..ops._backend import triton_interpret

LOG2E = tl.constexpr(1.4426950408889634)
# Position given to padded key slots: larger than any row limit, so they never count.
PAD_KEY = tl.constexpr(2**62)


@triton.jit
def _load_rows(ptr, pos, valid, stride_s, offs_d, stride_d, d_mask):
    """``[N, BLOCK_D]``: rows ``pos [N]`` of the ``[S, D]`` matrix at ``ptr`` (element strides
    ``stride_s``, ``stride_d``); zeros where not ``valid`` or past ``d``."""
    return tl.load(
        ptr + pos[:, None] * stride_s + offs_d[None, :] * stride_d,
        mask=valid[:, None] & d_mask[None, :],
        other=0.0,
    )


@triton.jit
def _importance_kernel(
    q_ptr,
    k_ptr,
    lse_ptr,
    query_index_ptr,
    visual_index_ptr,
    out_ptr,
    nq,
    nv,
    d,
    scale_log2e,
    stride_qb,
    stride_qh,
    stride_qs,
    stride_qd,
    stride_kb,
    stride_kh,
    stride_ks,
    stride_kd,
    stride_lb,
    stride_lh,
    stride_ls,
    stride_ob,
    stride_oh,
    GROUP: tl.constexpr,
    CAUSAL: tl.constexpr,
    PER_HEAD: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    j0 = tl.program_id(0) * BLOCK_N
    g = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)

    offs_n = j0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < d
    key_pos = tl.load(visual_index_ptr + b * nv + offs_n, mask=offs_n < nv, other=-1)
    key_valid = key_pos >= 0
    k_head = k_ptr + b * stride_kb + g * stride_kh
    k_tile = _load_rows(k_head, key_pos, key_valid, stride_ks, offs_d, stride_kd, d_mask)
    k_tile_t = tl.trans(k_tile)  # [BLOCK_D, BLOCK_N]
    key_pos = tl.where(key_valid, key_pos, PAD_KEY)
    min_key = tl.min(key_pos, axis=0)

    total = tl.zeros([BLOCK_N], dtype=tl.float32)
    for hh in range(GROUP):
        h = g * GROUP + hh
        acc = tl.zeros([BLOCK_N], dtype=tl.float32)
        for i0 in range(0, nq, BLOCK_M):
            offs_m = i0 + tl.arange(0, BLOCK_M)
            q_pos = tl.load(query_index_ptr + b * nq + offs_m, mask=offs_m < nq, other=-1)
            q_valid = q_pos >= 0
            # Row i counts key j iff key_pos[j] <= row_limit[i] (covers padding and causal).
            row_limit = q_pos if CAUSAL else tl.where(q_valid, PAD_KEY - 1, -1)
            if tl.max(row_limit, axis=0) >= min_key:  # skip blocks that see no key
                q_head = q_ptr + b * stride_qb + h * stride_qh
                q_tile = _load_rows(q_head, q_pos, q_valid, stride_qs, offs_d, stride_qd, d_mask)
                row_lse = tl.load(
                    lse_ptr + b * stride_lb + h * stride_lh + q_pos * stride_ls,
                    mask=q_valid,
                    other=0.0,
                )
                s = tl.dot(q_tile, k_tile_t, input_precision=INPUT_PRECISION)
                p = tl.exp2(s * scale_log2e - (row_lse * LOG2E)[:, None])
                p = tl.where(key_pos[None, :] <= row_limit[:, None], p, 0.0)
                acc += tl.sum(p, axis=0)
        if PER_HEAD:
            tl.store(out_ptr + b * stride_ob + h * stride_oh + offs_n, acc, mask=offs_n < nv)
        else:
            total += acc
    if not PER_HEAD:
        tl.store(out_ptr + b * stride_ob + g * stride_oh + offs_n, total, mask=offs_n < nv)


def _block_sizes(d: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """``(BLOCK_M, BLOCK_N, BLOCK_D, num_warps)``. On GPU: the largest tiles that compile
    without register spills for sm_80/sm_90 (fp32 ``ieee`` dots run on FMA units and need
    smaller ones). The interpreter uses small blocks so that the tests' small shapes still
    span several query and key blocks."""
    block_d = max(16, triton.next_power_of_2(d))
    if triton_interpret():
        return 8, 32, block_d, 1
    if dtype == torch.float32:
        return (32, 64, block_d, 8) if block_d <= 128 else (16, 64, block_d, 4)
    if block_d <= 128:
        return 64, 64, block_d, (4 if block_d <= 64 else 8)
    return 32, 64, block_d, 4


def column_sums(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    query_index: torch.Tensor,
    visual_index: torch.Tensor,
    scale: float,
    causal: bool,
    per_head: bool,
) -> torch.Tensor:
    """Column sums of ``exp(scale q.k - lse)`` over the valid query rows: ``[B, Hq, Nv]``
    per query head (``per_head``) or ``[B, Hkv, Nv]`` per kv group, fp32. ``q [B, Hq, S, D]``,
    ``k [B, Hkv, S, D]`` (any strides), ``lse [B, Hq, S]`` fp32, int64 indices with -1 padding."""
    b, hq, _, d = q.shape
    hkv = k.shape[1]
    query_index = query_index.contiguous()
    visual_index = visual_index.contiguous()
    nq, nv = query_index.shape[1], visual_index.shape[1]
    out = torch.zeros(b, hq if per_head else hkv, nv, dtype=torch.float32, device=q.device)
    if b > 0 and nv > 0:
        block_m, block_n, block_d, num_warps = _block_sizes(d, q.dtype)
        grid = (triton.cdiv(nv, block_n), hkv, b)
        _importance_kernel[grid](
            q,
            k,
            lse,
            query_index,
            visual_index,
            out,
            nq,
            nv,
            d,
            scale * LOG2E.value,
            *q.stride(),
            *k.stride(),
            *lse.stride(),
            out.stride(0),
            out.stride(1),
            GROUP=hq // hkv,
            CAUSAL=causal,
            PER_HEAD=per_head,
            INPUT_PRECISION="ieee",
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_D=block_d,
            num_warps=num_warps,
        )
    return out
