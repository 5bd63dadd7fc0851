"""Triton kernels of ``select_low_importance`` (see ``cagul_kernels/ops/topk.py``).

Every slot becomes a signed 64-bit word ``key << 32 | slot``, where ``key`` is an
order-preserving int32 image of the value (``-0.0 == +0.0``; padded slots and the tail of
the last chunk get ``INT32_MAX``, above ``+inf``), so comparing words compares
(value, slot) and all words of a row are distinct. Two launches, any row length:

1. ``_sort_chunks``: one program per (chunk of ``CHUNK`` slots, row) sorts its words
   (``tl.sort``, bitonic) into a workspace. Under ``TRITON_INTERPRET=1``, whose
   ``tl.sort`` is very slow, chunks are short (64) and sorted by counting each word's
   smaller words instead.
2. ``_rank``: one program per (block of sorted words, row) finds each word's rank in the row
   (the number of smaller words) by a binary search in every sorted chunk, and writes slot
   and position at that rank when it is below the row's count.

Each output element has exactly one writer: the result is deterministic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..ops._backend import triton_interpret

MAX_CHUNK = 2048
INTERPRET_CHUNK = 64


@triton.jit
def _sort_chunks(
    importance_ptr,
    visual_index_ptr,
    words_ptr,
    nv,
    stride_ib,
    stride_vb,
    row_words,
    CHUNK: tl.constexpr,
    COUNT_RANKS: tl.constexpr,
):
    row = tl.program_id(1).to(tl.int64)
    slots = tl.program_id(0) * CHUNK + tl.arange(0, CHUNK)
    in_row = slots < nv
    value = tl.load(importance_ptr + row * stride_ib + slots, mask=in_row, other=0.0)
    index = tl.load(visual_index_ptr + row * stride_vb + slots, mask=in_row, other=-1)
    bits = value.to(tl.float32).to(tl.int32, bitcast=True)
    bits = tl.where((bits & 0x7FFFFFFF) == 0, 0, bits)  # -0.0 ties with +0.0
    key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # ascending ints <-> ascending floats
    key = tl.where(index >= 0, key, 0x7FFFFFFF)
    words = (key.to(tl.int64) << 32) | slots.to(tl.int64)
    dst = words_ptr + row * row_words + tl.program_id(0) * CHUNK
    if COUNT_RANKS:  # each word's position = the number of smaller words (all distinct)
        local = tl.sum((words[None, :] < words[:, None]).to(tl.int32), axis=1)
        tl.store(dst + local, words)
    else:
        tl.store(dst + tl.arange(0, CHUNK), tl.sort(words))


@triton.jit
def _rank(
    words_ptr,
    visual_index_ptr,
    counts_ptr,
    slots_ptr,
    positions_ptr,
    n_chunks,
    stride_vb,
    width,
    row_words,
    CHUNK: tl.constexpr,
    LOG_CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    row_ptr = words_ptr + row * row_words
    in_row = offs < row_words
    word = tl.load(row_ptr + offs, mask=in_row, other=0x7FFFFFFFFFFFFFFF)
    rank = tl.zeros([BLOCK], dtype=tl.int32)
    for c in range(n_chunks):
        chunk = row_ptr + c * CHUNK
        # Binary lifting: the largest p <= CHUNK - 1 with chunk[p - 1] < word; the last
        # element decides whether the whole chunk is smaller.
        pos = tl.zeros([BLOCK], dtype=tl.int32)
        step = CHUNK // 2
        for _ in tl.static_range(LOG_CHUNK):
            probe = tl.load(chunk + pos + step - 1)
            pos = tl.where(probe < word, pos + step, pos)
            step = step // 2
        last = tl.load(chunk + CHUNK - 1)
        rank += pos + (last < word).to(tl.int32)
    count = tl.load(counts_ptr + row)
    slot = word & 0xFFFFFFFF
    keep = in_row & (rank < count)
    position = tl.load(visual_index_ptr + row * stride_vb + slot, mask=keep, other=-1)
    tl.store(slots_ptr + row * width + rank, slot, mask=keep)
    tl.store(positions_ptr + row * width + rank, position.to(tl.int64), mask=keep)


def select_low_importance(
    importance: torch.Tensor,
    visual_index: torch.Tensor,
    counts: torch.Tensor,
    width: int,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``importance [B, Nv]``, ``visual_index [B, Nv]``, ``counts [B]`` int64 (already
    validated) -> ``(slots, positions)`` ``[B, width]`` int64, ``-1`` past each count.
    ``chunk`` (a power of two; at most 1024 under the interpreter) overrides the sort
    chunk, for tests."""
    b, nv = importance.shape
    slots = torch.full((b, width), -1, dtype=torch.int64, device=importance.device)
    positions = torch.full_like(slots, -1)
    if b == 0 or width == 0:
        return slots, positions
    importance = importance if importance.stride(1) == 1 else importance.contiguous()
    visual_index = visual_index if visual_index.stride(1) == 1 else visual_index.contiguous()
    max_chunk = INTERPRET_CHUNK if triton_interpret() else MAX_CHUNK
    chunk = chunk or min(max_chunk, max(16, triton.next_power_of_2(nv)))
    n_chunks = triton.cdiv(nv, chunk)
    row_words = n_chunks * chunk
    words = torch.empty((b, row_words), dtype=torch.int64, device=importance.device)
    warps = 1 if triton_interpret() else max(1, min(8, chunk // 256))
    _sort_chunks[(n_chunks, b)](
        importance,
        visual_index,
        words,
        nv,
        importance.stride(0),
        visual_index.stride(0),
        row_words,
        CHUNK=chunk,
        COUNT_RANKS=triton_interpret(),
        num_warps=warps,
    )
    block = min(1024, triton.next_power_of_2(row_words))
    _rank[(triton.cdiv(row_words, block), b)](
        words,
        visual_index,
        counts.to(device=importance.device, dtype=torch.int32).contiguous(),
        slots,
        positions,
        n_chunks,
        visual_index.stride(0),
        width,
        row_words,
        CHUNK=chunk,
        LOG_CHUNK=chunk.bit_length() - 1,
        BLOCK=block,
        num_warps=warps if triton_interpret() else 4,
    )
    return slots, positions
