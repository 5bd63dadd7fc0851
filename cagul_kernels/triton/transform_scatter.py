"""Triton kernels of ``transform_scatter`` (semantics: ``cagul_kernels/ops/transform_scatter.py``).

Forward: one program per ``(sample b, block of BLOCK_M slots)``: gather the rows, ``z = x W1
+ b1`` over D chunks (``tl.dot``), ``h = act(z)``, then per D chunk ``h W2 + b2``, residual
and scatter. Backward, without floating-point atomics:

- rows kernel (same grid): ``dz = ((g dy) W2^T) * act'(z)`` (stored, ``[B, K, R]`` fp32)
  and ``dx = dy + dz W1^T`` on the selected rows (``dx`` starts as a copy of ``dy``);
- weights kernel, grid ``(D chunks, splits)``: each program loops over a fixed range of row
  blocks in order and accumulates its ``dW1[chunk, :] = x^T dz``, ``dW2[:, chunk] =
  act(z)^T (g dy)``, ``db2`` (and ``db1`` in the first chunk) in registers, then writes one
  partial per split; the partials are summed in split order. The split count depends only
  on the shapes, so results are deterministic.

fp32 inputs use IEEE fp32 ``tl.dot``; fp16/bf16 inputs feed the dots in their own dtype
with fp32 accumulation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Kernels may only read constexpr globals. Each multiplies a tensor from the right: the
# interpreter mishandles ``constexpr * tensor`` (products keep the order of the formulas,
# so the rounding is theirs).
_SQRT_HALF = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)
_GELU_TANH_2C = tl.constexpr(1.5957691216057308)  # 2 * sqrt(2 / pi)
_GELU_TANH_A = tl.constexpr(0.044715)
_GELU_TANH_3A = tl.constexpr(3 * 0.044715)


@triton.jit
def _gelu_tanh_sigmoid(z):
    """``sigmoid(2c (z + a z^3))``: ``0.5 (1 + tanh(c (z + a z^3)))`` of the tanh GELU."""
    return tl.sigmoid((z + z * _GELU_TANH_A * z * z) * _GELU_TANH_2C)


@triton.jit
def _activation(z, ACT: tl.constexpr):
    """ACT indexes ACTIVATIONS: gelu (erf), gelu_tanh, silu, relu."""
    if ACT == 0:
        out = 0.5 * z * (1.0 + tl.math.erf(z * _SQRT_HALF))
    elif ACT == 1:
        out = z * _gelu_tanh_sigmoid(z)
    elif ACT == 2:
        out = z * tl.sigmoid(z)
    else:
        out = tl.maximum(z, 0.0)
    return out


@triton.jit
def _activation_grad(z, ACT: tl.constexpr):
    if ACT == 0:
        out = 0.5 * (1.0 + tl.math.erf(z * _SQRT_HALF)) + z * tl.exp(-0.5 * z * z) * _INV_SQRT_2PI
    elif ACT == 1:
        s = _gelu_tanh_sigmoid(z)
        out = s + z * s * (1.0 - s) * _GELU_TANH_2C * (1.0 + z * _GELU_TANH_3A * z)
    elif ACT == 2:
        s = tl.sigmoid(z)
        out = s * (1.0 + z * (1.0 - s))
    else:
        out = tl.where(z > 0.0, 1.0, 0.0)
    return out


@triton.jit
def _block_rows(pos_ptr, gate_ptr, b, m0, K, BLOCK_M: tl.constexpr):
    """Slots ``m0 + [0, BLOCK_M)`` of sample b: (slot offsets, row positions, valid, gate)."""
    offs_m = m0 + tl.arange(0, BLOCK_M)
    pos = tl.load(pos_ptr + b * K + offs_m, mask=offs_m < K, other=-1)
    g = tl.load(gate_ptr + b)
    valid = tl.where(g != 0.0, pos, -1) >= 0
    return offs_m, tl.where(valid, pos, 0).to(tl.int64), valid, g


@triton.jit
def _program_rows(pos_ptr, gate_ptr, K, BLOCK_M: tl.constexpr):
    """The row kernels' block: sample ``b = program_id(0)``, slots ``program_id(1) * BLOCK_M
    + [0, BLOCK_M)``: ``(b, slot offsets, row positions, valid, gate)``."""
    b = tl.program_id(0).to(tl.int64)
    offs_m, rows, valid, g = _block_rows(
        pos_ptr, gate_ptr, b, tl.program_id(1) * BLOCK_M, K, BLOCK_M
    )
    return b, offs_m, rows, valid, g


@triton.jit
def _load_rows(rows_ptr, valid, offs_d, d_ok, stride_d):
    """``[BLOCK_M, BLOCK_D]``: columns ``offs_d`` of the rows starting at ``rows_ptr``
    ``[BLOCK_M]``; zeros for rows not ``valid`` and columns not ``d_ok``."""
    mask = valid[:, None] & d_ok[None, :]
    return tl.load(rows_ptr[:, None] + offs_d[None, :] * stride_d, mask=mask, other=0.0)


@triton.jit
def _load_tile(ptr, offs_i, offs_j, ok_i, ok_j, row_stride):
    """``[len(offs_i), len(offs_j)]`` tile of the row-major matrix at ``ptr``; zeros outside
    ``ok_i`` / ``ok_j``."""
    return tl.load(
        ptr + offs_i[:, None] * row_stride + offs_j[None, :],
        mask=ok_i[:, None] & ok_j[None, :],
        other=0.0,
    )


@triton.jit
def _rows_times_weight(
    rows_ptr, valid, stride_d, scale, w_ptr, offs_r, r_ok, D, R,
    W_TRANSPOSED: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    """``rows @ W`` ``[BLOCK_M, BLOCK_R]`` fp32, over D in chunks of BLOCK_D: the rows
    ``[BLOCK_M, D]`` at ``rows_ptr`` (zeros where not ``valid``), times ``scale`` and rounded
    to w's dtype unless ``scale`` is None; ``W [D, R]`` is the row-major ``w [D, R]``, or with
    ``W_TRANSPOSED`` ``w^T`` of a row-major ``w [R, D]``."""
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        a = _load_rows(rows_ptr, valid, offs_d, d_ok, stride_d)
        if scale is not None:
            a = (a.to(tl.float32) * scale).to(w_ptr.dtype.element_ty)
        if W_TRANSPOSED:
            w = tl.trans(_load_tile(w_ptr, offs_r, offs_d, r_ok, d_ok, D))
        else:
            w = _load_tile(w_ptr, offs_d, offs_r, d_ok, r_ok, R)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _forward_kernel(
    x_ptr, y_ptr, pos_ptr, gate_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, z_ptr,
    K, D, R,
    sxb, sxs, sxd, syb, sys, syd,
    ACT: tl.constexpr, STORE_Z: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    b, offs_m, rows, valid, g = _program_rows(pos_ptr, gate_ptr, K, BLOCK_M)
    x_rows = x_ptr + b * sxb + rows * sxs
    offs_r = tl.arange(0, BLOCK_R)
    r_ok = offs_r < R
    z = _rows_times_weight(
        x_rows, valid, sxd, None, w1_ptr, offs_r, r_ok, D, R,
        False, PRECISION, BLOCK_M, BLOCK_D, BLOCK_R,
    )  # fmt: skip
    z += tl.load(b1_ptr + offs_r, mask=r_ok, other=0.0).to(tl.float32)[None, :]
    z = tl.where(valid[:, None] & r_ok[None, :], z, 0.0)
    if STORE_Z:
        tl.store(
            z_ptr + (b * K + offs_m)[:, None] * R + offs_r[None, :],
            z,
            mask=(offs_m < K)[:, None] & r_ok[None, :],
        )
    h = _activation(z, ACT).to(w2_ptr.dtype.element_ty)
    y_rows = y_ptr + b * syb + rows * sys
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        wt = _load_tile(w2_ptr, offs_r, offs_d, r_ok, d_ok, D)
        out = tl.dot(h, wt, input_precision=PRECISION)
        out += tl.load(b2_ptr + offs_d, mask=d_ok, other=0.0).to(tl.float32)[None, :]
        yt = _load_rows(x_rows, valid, offs_d, d_ok, sxd).to(tl.float32) + g * out
        mask = valid[:, None] & d_ok[None, :]
        tl.store(y_rows[:, None] + offs_d[None, :] * syd, yt.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_rows_kernel(
    dy_ptr, dx_ptr, pos_ptr, gate_ptr, z_ptr, w1_ptr, w2_ptr, dz_ptr,
    S, K, D, R,
    sdb, sds, sdd,
    ACT: tl.constexpr, NEED_DX: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    b, offs_m, rows, valid, g = _program_rows(pos_ptr, gate_ptr, K, BLOCK_M)
    dy_rows = dy_ptr + b * sdb + rows * sds
    offs_r = tl.arange(0, BLOCK_R)
    r_ok = offs_r < R
    dh = _rows_times_weight(  # (g dy) W2^T
        dy_rows, valid, sdd, g, w2_ptr, offs_r, r_ok, D, R,
        True, PRECISION, BLOCK_M, BLOCK_D, BLOCK_R,
    )  # fmt: skip
    slot = (b * K + offs_m)[:, None] * R + offs_r[None, :]
    keep = valid[:, None] & r_ok[None, :]
    zt = tl.load(z_ptr + slot, mask=keep, other=0.0)
    dz = tl.where(keep, dh * _activation_grad(zt, ACT), 0.0)
    tl.store(dz_ptr + slot, dz, mask=(offs_m < K)[:, None] & r_ok[None, :])
    if NEED_DX:
        dx_rows = dx_ptr + (b * S + rows) * D
        dzc = dz.to(w2_ptr.dtype.element_ty)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            d_ok = offs_d < D
            w1t = _load_tile(w1_ptr, offs_d, offs_r, d_ok, r_ok, R)
            upd = tl.dot(dzc, tl.trans(w1t), input_precision=PRECISION)
            dxt = _load_rows(dy_rows, valid, offs_d, d_ok, sdd).to(tl.float32) + upd
            mask = valid[:, None] & d_ok[None, :]
            tl.store(dx_rows[:, None] + offs_d[None, :], dxt.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_weights_kernel(
    x_ptr, dy_ptr, pos_ptr, gate_ptr, z_ptr, dz_ptr, part_ptr,
    K, D, R, n_tiles, tiles_per_split, total,
    sxb, sxs, sxd, sdb, sds, sdd,
    ACT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    pid_d = tl.program_id(0)
    split = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    offs_r = tl.arange(0, BLOCK_R)
    r_ok = offs_r < R
    dot_t = x_ptr.dtype.element_ty
    acc_w1 = tl.zeros((BLOCK_D, BLOCK_R), dtype=tl.float32)
    acc_w2 = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
    acc_b1 = tl.zeros((BLOCK_R,), dtype=tl.float32)
    acc_b2 = tl.zeros((BLOCK_D,), dtype=tl.float32)
    k_tiles = tl.cdiv(K, BLOCK_M)
    start = split * tiles_per_split
    end = tl.minimum(start + tiles_per_split, n_tiles)
    for t in range(start, end):
        b = (t // k_tiles).to(tl.int64)
        offs_m, rows, valid, g = _block_rows(
            pos_ptr, gate_ptr, b, (t % k_tiles) * BLOCK_M, K, BLOCK_M
        )
        mask = valid[:, None] & d_ok[None, :]
        xt = tl.load(
            x_ptr + b * sxb + rows[:, None] * sxs + offs_d[None, :] * sxd, mask=mask, other=0.0
        )
        dyt = tl.load(
            dy_ptr + b * sdb + rows[:, None] * sds + offs_d[None, :] * sdd, mask=mask, other=0.0
        )
        gdy = dyt.to(tl.float32) * g
        slot = (b * K + offs_m)[:, None] * R + offs_r[None, :]
        keep = valid[:, None] & r_ok[None, :]
        h = tl.where(keep, _activation(tl.load(z_ptr + slot, mask=keep, other=0.0), ACT), 0.0)
        dz = tl.load(dz_ptr + slot, mask=keep, other=0.0)
        acc_w1 = tl.dot(tl.trans(xt), dz.to(dot_t), acc_w1, input_precision=PRECISION)
        acc_w2 = tl.dot(tl.trans(h.to(dot_t)), gdy.to(dot_t), acc_w2, input_precision=PRECISION)
        acc_b1 += tl.sum(dz, axis=0)
        acc_b2 += tl.sum(gdy, axis=0)
    part = part_ptr + split.to(tl.int64) * total
    wmask = d_ok[:, None] & r_ok[None, :]
    tl.store(part + offs_d[:, None] * R + offs_r[None, :], acc_w1, mask=wmask)
    tl.store(
        part + D * R + offs_r[:, None] * D + offs_d[None, :],
        acc_w2,
        mask=r_ok[:, None] & d_ok[None, :],
    )
    tl.store(part + 2 * D * R + offs_d, acc_b2, mask=d_ok)
    if pid_d == 0:
        tl.store(part + 2 * D * R + D + offs_r, acc_b1, mask=r_ok)


@triton.jit
def _sum_partials_kernel(part_ptr, out_ptr, n_parts, total, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(0, n_parts):  # fixed order
        acc += tl.load(part_ptr + i * total + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, acc, mask=mask)


def _blocks(x: torch.Tensor, r: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_D, BLOCK_R): tiny tiles under the interpreter, GPU-sized otherwise."""
    block_r = max(16, triton.next_power_of_2(r))
    block_d = max(16, min(64, 8192 // block_r))
    return (64 if x.is_cuda else 16), block_d, block_r


def _precision(x: torch.Tensor) -> str:
    return "ieee" if x.dtype == torch.float32 else "tf32"


def forward(x, positions, w1, b1, w2, b2, gate, act, inplace):
    """``(y, z)``, or ``None`` with ``inplace`` (then ``x`` holds the result)."""
    bsz, _, d = x.shape
    k, r = positions.shape[1], w1.shape[1]
    w1, b1, w2, b2 = (t.contiguous() for t in (w1, b1, w2, b2))
    if inplace:
        y, z = x, None
    else:
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device).copy_(x)
        z = torch.zeros((bsz, k, r), dtype=torch.float32, device=x.device)
    block_m, block_d, block_r = _blocks(x, r)
    if bsz * k > 0:
        _forward_kernel[(bsz, triton.cdiv(k, block_m))](
            x, y, positions, gate, w1, b1, w2, b2, y if z is None else z,
            k, d, r,
            *x.stride(), *y.stride(),
            ACT=act, STORE_Z=z is not None, PRECISION=_precision(x),
            BLOCK_M=block_m, BLOCK_D=block_d, BLOCK_R=block_r,
        )  # fmt: skip
    return None if inplace else (y, z)


def backward(dy, x, positions, z, w1, w2, gate, act, need_dx):
    """``(dx, dw1, db1, dw2, db2)``; ``dx`` is empty unless ``need_dx``."""
    bsz, s, d = x.shape
    k, r = positions.shape[1], w1.shape[1]
    w1, w2, z = w1.contiguous(), w2.contiguous(), z.contiguous()
    dx = (
        torch.empty(x.shape, dtype=x.dtype, device=x.device).copy_(dy)
        if need_dx
        else x.new_empty(0)
    )
    total = 2 * d * r + d + r
    grads = torch.zeros(total, dtype=torch.float32, device=x.device)
    block_m, block_d, block_r = _blocks(x, r)
    n_tiles = bsz * triton.cdiv(k, block_m)
    if n_tiles > 0:
        dz = torch.empty((bsz, k, r), dtype=torch.float32, device=x.device)
        _backward_rows_kernel[(bsz, triton.cdiv(k, block_m))](
            dy, dx, positions, gate, z, w1, w2, dz,
            s, k, d, r,
            *dy.stride(),
            ACT=act, NEED_DX=need_dx, PRECISION=_precision(x),
            BLOCK_M=block_m, BLOCK_D=block_d, BLOCK_R=block_r,
        )  # fmt: skip
        # Splits of the row blocks: a function of the shapes only (determinism).
        d_blocks = triton.cdiv(d, block_d)
        tiles_per_split = triton.cdiv(n_tiles, max(1, min(32, triton.cdiv(256, d_blocks))))
        n_splits = triton.cdiv(n_tiles, tiles_per_split)
        parts = torch.zeros((n_splits, total), dtype=torch.float32, device=x.device)
        _backward_weights_kernel[(d_blocks, n_splits)](
            x, dy, positions, gate, z, dz, parts,
            k, d, r, n_tiles, tiles_per_split, total,
            *x.stride(), *dy.stride(),
            ACT=act, PRECISION=_precision(x),
            BLOCK_M=block_m, BLOCK_D=block_d, BLOCK_R=block_r,
        )  # fmt: skip
        _sum_partials_kernel[(triton.cdiv(total, 1024),)](parts, grads, n_splits, total, BLOCK=1024)
    dw1, dw2, db2, db1 = grads.split([d * r, d * r, d, r])
    return (
        dx,
        dw1.view(d, r).to(w1.dtype, copy=True),
        db1.to(w1.dtype, copy=True),
        dw2.view(r, d).to(w2.dtype, copy=True),
        db2.to(w2.dtype, copy=True),
    )
