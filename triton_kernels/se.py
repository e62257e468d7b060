"""Squeeze-and-Excitation (and se_residual, act_after(se(x) + identity)) forward and
backward on the reduce -> head -> apply skeleton. Per sample n:

    p = mean_l x (C),  u = W1 p + b1 (R),  h = act(u),  o = W2 h + b2 (C),  s = gate(o),
    y = s * x   (se_residual: y = act_after(s * x + identity))

The MLP is two small GEMMs over the batch; each is done where its inputs are complete and
its outputs are needed, with several samples per program so weights are read once per
block of samples rather than once per sample.

Forward, 3 launches:
  1. channel_reduce: sum_l x per (n, c), partials per split of L.
  2. se_forward_head_kernel, grid (sample blocks, hidden blocks): p (written as the saved
     statistic), h = act(W1 p + b1) for its [BLOCK_N, BLOCK_R] tile.
  3. se_forward_apply_kernel, grid (sample blocks x channel blocks x splits): o = W2 h + b2
     and s = gate(o) for its [BLOCK_N, BLOCK_C] tile, then y over its samples' tiles.

Backward, 3 launches (G = sum_l dy * x, or dy * [y > 0] * x for se_residual):
  1. channel_reduce: G partials.
  2. se_backward_head_kernel, one program per block of samples: u, h; then, per chunk of
     channels, o, s, d_o = G gate'(o) and the running W2^T d_o; d_u = (W2^T d_o) act'(u).
     Writes s, d_o (N, C) and h, d_u (N, R).
  3. se_backward_apply_kernel: apply programs compute d_p = W1^T d_u for their tile and
     dx = s dy + d_p / L (se_residual: g = dy [y > 0], dx = s g + d_p / L, didentity = g);
     extra programs at the end of the grid compute dW1 = d_u^T p, db1, dW2 = d_o^T h, db2
     as sums over samples in a fixed order (bitwise reproducible, no atomics).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .channel_reduce import (MAP_IDENTITY, MAP_MASKED_PRODUCT, MAP_PRODUCT, channel_reduce, combine_partial_rows,
                             split_block)
from .launch import (OutputView, acc_dtype, check_index_range, device_function, input_view, launch,
                     programs_target, sm_count, spatial_size, tiling_for, tl_acc_dtype)
from .pointwise import (ACT_RELU, ACT_SILU, GATE_HARDSIGMOID, GATE_SIGMOID, activation, activation_backward,
                        div_precise, gate, gate_backward, relu, sum_along)

# Elements of the [rows, cols, k] broadcast products that stand in for small GEMM tiles.
PRODUCT_ELEMS = 8192
ACTIVATIONS = {"relu": ACT_RELU, "silu": ACT_SILU}
GATES = {"sigmoid": GATE_SIGMOID, "hardsigmoid": GATE_HARDSIGMOID}
EPILOGUE_NONE = 0  # y = s * x
EPILOGUE_ADD = 1  # y = s * x + identity
EPILOGUE_ADD_RELU = 2  # y = relu(s * x + identity)


@device_function
def load_tile(ptr, rows, cols, row_stride, col_stride, row_mask, col_mask, ACC: tl.constexpr):
    """[rows, cols] tile of a 2-D tensor, 0 outside the masks, in ACC."""
    offs = rows.to(tl.int64)[:, None] * row_stride + cols[None, :] * col_stride
    return tl.load(ptr + offs, mask=row_mask[:, None] & col_mask[None, :], other=0.0).to(ACC)


@device_function
def matmul_nt(a, b):
    """a [M, K] times b [N, K] transposed: [M, N] (broadcast product, exact in any dtype)."""
    return sum_along(a[:, None, :] * b[None, :, :], 2)


@device_function
def matmul_nn(a, b):
    """a [M, K] times b [K, N]: [M, N]."""
    return sum_along(a[:, :, None] * b[None, :, :], 1)


@device_function
def row_of(tile, i, BLOCK_N: tl.constexpr):
    """Row i of a [BLOCK_N, cols] register tile."""
    return sum_along(tl.where((tl.arange(0, BLOCK_N) == i)[:, None], tile, 0.0), 0)


@triton.jit(do_not_specialize=["N", "C", "R", "L", "splits"])
def se_forward_head_kernel(
    partial_ptr, pooled_ptr, w1_ptr, b1_ptr, h_ptr,
    N, C, R, L, splits, w1_sr, w1_sc, b1_stride,
    HAS_B1: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_BLOCK: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    r_block = tl.program_id(1)
    r = r_block * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < N
    r_mask = r < R
    inv_l = div_precise(tl.full([], 1.0, ACC), L.to(ACC))
    u = tl.full([BLOCK_N, BLOCK_R], 0.0, ACC)
    for c0 in range(0, C, BLOCK_K):
        cols = c0 + tl.arange(0, BLOCK_K)
        c_mask = cols < C
        p = combine_partial_rows(partial_ptr, rows, cols, row_mask, c_mask, N, C, splits, ACC, SPLIT_BLOCK) * inv_l
        # the saved statistic: the pooled mean, written once (by the first hidden block)
        tl.store(pooled_ptr + rows.to(tl.int64)[:, None] * C + cols[None, :], p,
                 mask=row_mask[:, None] & c_mask[None, :] & (r_block == 0))
        w1 = load_tile(w1_ptr, r, cols, w1_sr, w1_sc, r_mask, c_mask, ACC)
        u += matmul_nt(p, w1)
    if HAS_B1:
        u += tl.load(b1_ptr + r * b1_stride, mask=r_mask, other=0.0).to(ACC)[None, :]
    h = activation(u, ACT)
    tl.store(h_ptr + rows.to(tl.int64)[:, None] * R + r[None, :], h, mask=row_mask[:, None] & r_mask[None, :])


@triton.jit(do_not_specialize=["N", "C", "R", "L", "l_per_split", "c_blocks", "splits"])
def se_forward_apply_kernel(
    x_ptr, identity_ptr, y_ptr, h_ptr, w2_ptr, b2_ptr,
    N, C, R, L, l_per_split, c_blocks, splits,
    x_sn, x_sc, x_sl, i_sn, i_sc, i_sl, y_sn, y_sc, y_sl, w2_sc, w2_sr, b2_stride,
    HAS_B2: tl.constexpr, GATE: tl.constexpr, EPILOGUE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_R: tl.constexpr,
):
    pid = tl.program_id(0)
    k = pid % splits
    tile = pid // splits
    n0 = (tile // c_blocks) * BLOCK_N
    c = (tile % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    rows = n0 + tl.arange(0, BLOCK_N)
    row_mask = rows < N

    # o = W2 h + b2 and s = gate(o) for the [BLOCK_N, BLOCK_C] tile
    o = tl.full([BLOCK_N, BLOCK_C], 0.0, ACC)
    for r0 in range(0, R, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        r_mask = r < R
        h = load_tile(h_ptr, rows, r, R, 1, row_mask, r_mask, ACC)
        w2 = load_tile(w2_ptr, c, r, w2_sc, w2_sr, c_mask, r_mask, ACC)
        o += matmul_nt(h, w2)
    if HAS_B2:
        o += tl.load(b2_ptr + c * b2_stride, mask=c_mask, other=0.0).to(ACC)[None, :]
    s = gate(o, GATE)

    l_begin = k * l_per_split
    l_end = tl.minimum(L, l_begin + l_per_split)
    samples = tl.minimum(N - n0, BLOCK_N)
    for i in range(0, samples):
        scale = row_of(s, i, BLOCK_N)
        n64 = (n0 + i).to(tl.int64)
        x_rows = x_ptr + n64 * x_sn + c[:, None] * x_sc
        i_rows = identity_ptr + n64 * i_sn + c[:, None] * i_sc
        y_rows = y_ptr + n64 * y_sn + c[:, None] * y_sc
        for l0 in range(l_begin, l_end, BLOCK_L):
            l = l0 + tl.arange(0, BLOCK_L)
            mask = c_mask[:, None] & (l < l_end)[None, :]
            xv = tl.load(x_rows + l[None, :] * x_sl, mask=mask, other=0.0).to(ACC)
            yv = xv * scale[:, None]
            if EPILOGUE != 0:
                yv += tl.load(i_rows + l[None, :] * i_sl, mask=mask, other=0.0).to(ACC)
            if EPILOGUE == 2:
                yv = relu(yv)
            tl.store(y_rows + l[None, :] * y_sl, yv.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["N", "C", "R", "splits"])
def se_backward_head_kernel(
    grad_partial_ptr, pooled_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr,
    s_ptr, d_o_ptr, h_ptr, d_u_ptr,
    N, C, R, splits, w1_sr, w1_sc, b1_stride, w2_sc, w2_sr, b2_stride,
    HAS_B1: tl.constexpr, HAS_B2: tl.constexpr, ACT: tl.constexpr, GATE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_BLOCK: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    r = tl.arange(0, BLOCK_R)  # every hidden unit: BLOCK_R >= R
    r_mask = r < R

    # u = W1 p + b1, h = act(u): [BLOCK_N, R]
    u = tl.full([BLOCK_N, BLOCK_R], 0.0, ACC)
    for c0 in range(0, C, BLOCK_K):
        cols = c0 + tl.arange(0, BLOCK_K)
        c_mask = cols < C
        p = load_tile(pooled_ptr, rows, cols, C, 1, row_mask, c_mask, ACC)
        w1 = load_tile(w1_ptr, r, cols, w1_sr, w1_sc, r_mask, c_mask, ACC)
        u += matmul_nt(p, w1)
    if HAS_B1:
        u += tl.load(b1_ptr + r * b1_stride, mask=r_mask, other=0.0).to(ACC)[None, :]
    h = activation(u, ACT)
    out_mask = row_mask[:, None] & r_mask[None, :]
    tl.store(h_ptr + rows.to(tl.int64)[:, None] * R + r[None, :], h, mask=out_mask)

    # per chunk of channels: o, s, d_o; and the running d_h = W2^T d_o
    d_h = tl.full([BLOCK_N, BLOCK_R], 0.0, ACC)
    for c0 in range(0, C, BLOCK_K):
        cols = c0 + tl.arange(0, BLOCK_K)
        c_mask = cols < C
        w2 = load_tile(w2_ptr, cols, r, w2_sc, w2_sr, c_mask, r_mask, ACC)  # [BLOCK_K, BLOCK_R]
        o = matmul_nt(h, w2)
        if HAS_B2:
            o += tl.load(b2_ptr + cols * b2_stride, mask=c_mask, other=0.0).to(ACC)[None, :]
        grad = combine_partial_rows(grad_partial_ptr, rows, cols, row_mask, c_mask, N, C, splits, ACC,
                                    SPLIT_BLOCK)
        d_o = gate_backward(grad, o, GATE)
        tile_mask = row_mask[:, None] & c_mask[None, :]
        offs = rows.to(tl.int64)[:, None] * C + cols[None, :]
        tl.store(s_ptr + offs, gate(o, GATE), mask=tile_mask)
        tl.store(d_o_ptr + offs, d_o, mask=tile_mask)
        d_h += matmul_nn(d_o, w2)
    d_u = activation_backward(d_h, u, ACT)
    tl.store(d_u_ptr + rows.to(tl.int64)[:, None] * R + r[None, :], d_u, mask=out_mask)


@device_function
def outer_sum_over_samples(a_ptr, b_ptr, out_ptr, bias_ptr, N, I, J, tile_i, tile_j, out_si, out_sj,
                           ACC: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr,
                           BLOCK_N: tl.constexpr):
    """out[i, j] = sum_n a[n, i] b[n, j] and (for tile_j == 0) bias[i] = sum_n a[n, i], for
    one [BLOCK_I, BLOCK_J] tile; a is (N, I), b is (N, J), both contiguous. Chunks of
    BLOCK_N samples are added in order: a fixed summation order."""
    i = tile_i * BLOCK_I + tl.arange(0, BLOCK_I)
    j = tile_j * BLOCK_J + tl.arange(0, BLOCK_J)
    i_mask = i < I
    j_mask = j < J
    acc = tl.full([BLOCK_I, BLOCK_J], 0.0, ACC)
    bias = tl.full([BLOCK_I], 0.0, ACC)
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        row_mask = rows < N
        a = load_tile(a_ptr, rows, i, I, 1, row_mask, i_mask, ACC)
        b = load_tile(b_ptr, rows, j, J, 1, row_mask, j_mask, ACC)
        acc += sum_along(a[:, :, None] * b[:, None, :], 0)
        bias += sum_along(a, 0)
    tl.store(out_ptr + i[:, None] * out_si + j[None, :] * out_sj, acc.to(out_ptr.dtype.element_ty),
             mask=i_mask[:, None] & j_mask[None, :])
    tl.store(bias_ptr + i, bias.to(bias_ptr.dtype.element_ty), mask=i_mask & (tile_j == 0))


@triton.jit(do_not_specialize=["N", "C", "R", "L", "l_per_split", "c_blocks", "splits", "apply_programs",
                               "r_tiles", "c_tiles"])
def se_backward_apply_kernel(
    dy_ptr, y_ptr, dx_ptr, didentity_ptr, s_ptr, d_u_ptr, w1_ptr,
    pooled_ptr, d_o_ptr, h_ptr, dw1_ptr, db1_ptr, dw2_ptr, db2_ptr,
    N, C, R, L, l_per_split, c_blocks, splits, apply_programs, r_tiles, c_tiles,
    dy_sn, dy_sc, dy_sl, y_sn, y_sc, y_sl, dx_sn, dx_sc, dx_sl, di_sn, di_sc, di_sl,
    w1_sr, w1_sc, dw1_sr, dw1_sc, dw2_sc, dw2_sr,
    RESIDUAL: tl.constexpr, ACC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_R: tl.constexpr,
    PARAM_BLOCK_R: tl.constexpr, PARAM_BLOCK_C: tl.constexpr, PARAM_BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    if pid < apply_programs:
        k = pid % splits
        tile = pid // splits
        n0 = (tile // c_blocks) * BLOCK_N
        c = (tile % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
        c_mask = c < C
        rows = n0 + tl.arange(0, BLOCK_N)
        row_mask = rows < N

        # d_p / L = (W1^T d_u) / L for the [BLOCK_N, BLOCK_C] tile
        d_p = tl.full([BLOCK_N, BLOCK_C], 0.0, ACC)
        for r0 in range(0, R, BLOCK_R):
            r = r0 + tl.arange(0, BLOCK_R)
            r_mask = r < R
            d_u = load_tile(d_u_ptr, rows, r, R, 1, row_mask, r_mask, ACC)
            w1t = load_tile(w1_ptr, c, r, w1_sc, w1_sr, c_mask, r_mask, ACC)  # [BLOCK_C, BLOCK_R]
            d_p += matmul_nt(d_u, w1t)
        shift = d_p * div_precise(tl.full([], 1.0, ACC), L.to(ACC))
        s = load_tile(s_ptr, rows, c, C, 1, row_mask, c_mask, ACC)

        l_begin = k * l_per_split
        l_end = tl.minimum(L, l_begin + l_per_split)
        samples = tl.minimum(N - n0, BLOCK_N)
        for i in range(0, samples):
            s_row = row_of(s, i, BLOCK_N)
            shift_row = row_of(shift, i, BLOCK_N)
            n64 = (n0 + i).to(tl.int64)
            dy_rows = dy_ptr + n64 * dy_sn + c[:, None] * dy_sc
            y_rows = y_ptr + n64 * y_sn + c[:, None] * y_sc
            dx_rows = dx_ptr + n64 * dx_sn + c[:, None] * dx_sc
            di_rows = didentity_ptr + n64 * di_sn + c[:, None] * di_sc
            for l0 in range(l_begin, l_end, BLOCK_L):
                l = l0 + tl.arange(0, BLOCK_L)
                mask = c_mask[:, None] & (l < l_end)[None, :]
                g = tl.load(dy_rows + l[None, :] * dy_sl, mask=mask, other=0.0).to(ACC)
                if RESIDUAL:
                    yv = tl.load(y_rows + l[None, :] * y_sl, mask=mask, other=0.0)
                    g = tl.where(yv <= 0, 0.0, g)  # as threshold_backward: NaN y passes dy
                    tl.store(di_rows + l[None, :] * di_sl, g.to(didentity_ptr.dtype.element_ty), mask=mask)
                dx = g * s_row[:, None] + shift_row[:, None]
                tl.store(dx_rows + l[None, :] * dx_sl, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    else:
        j = pid - apply_programs
        weight_tiles = r_tiles * c_tiles
        if j < weight_tiles:  # dW1 = d_u^T p (R, C) and db1 = sum_n d_u
            outer_sum_over_samples(d_u_ptr, pooled_ptr, dw1_ptr, db1_ptr, N, R, C, j // c_tiles, j % c_tiles,
                                   dw1_sr, dw1_sc, ACC, PARAM_BLOCK_R, PARAM_BLOCK_C, PARAM_BLOCK_N)
        else:  # dW2 = d_o^T h (C, R) and db2 = sum_n d_o
            j2 = j - weight_tiles
            outer_sum_over_samples(d_o_ptr, h_ptr, dw2_ptr, db2_ptr, N, C, R, j2 // r_tiles, j2 % r_tiles,
                                   dw2_sc, dw2_sr, ACC, PARAM_BLOCK_C, PARAM_BLOCK_R, PARAM_BLOCK_N)


# ---------------------------------------------------------------------------------------
# Host side


def _pow2(v: int) -> int:
    return triton.next_power_of_2(max(int(v), 1))


def _bias(b: Optional[torch.Tensor], fallback: torch.Tensor) -> Tuple[torch.Tensor, int, bool]:
    if b is None:
        return fallback, 0, False
    return b, b.stride(0), True


def head_blocks(n: int, r: int, c: int) -> Tuple[int, int, int]:
    """(BLOCK_N, BLOCK_R, BLOCK_K) of the forward head's [BLOCK_N, BLOCK_R] tiles of h."""
    block_n = min(_pow2(n), 16)
    block_r = min(_pow2(r), 32)
    block_k = min(_pow2(c), max(1, PRODUCT_ELEMS // (block_n * block_r)))
    return block_n, block_r, block_k


def apply_blocks(n: int, r: int, tiling, l: int, target_programs: int) -> Tuple[int, int]:
    """(BLOCK_N, BLOCK_R) of an SE apply program: it recomputes o (or d_p) for BLOCK_N
    samples x BLOCK_C channels at a cost of R multiply-adds per (sample, channel), so it
    takes enough samples that R is small against the positions it then streams (and reads
    W2 once for all of them), but not so many that the launch cannot fill the device."""
    l_span = max(1, min(l, tiling.l_per_split))
    block_n = min(_pow2(n), 16, _pow2(triton.cdiv(4 * max(r, 1), l_span)))
    while block_n > 1 and triton.cdiv(n, block_n) * tiling.c_blocks * tiling.splits < target_programs:
        block_n //= 2
    block_r = min(_pow2(r), max(1, PRODUCT_ELEMS // (block_n * tiling.block_c)))
    return block_n, block_r


def backward_head_blocks(n: int, r: int, c: int, device: torch.device) -> Tuple[int, int, int]:
    """(BLOCK_N, BLOCK_R, BLOCK_K) of the backward head: one program per BLOCK_N samples
    holds their whole hidden layer (BLOCK_R >= R) in registers."""
    block_r = _pow2(r)
    block_n = min(_pow2(n), 16, max(1, 2048 // block_r))
    # more programs than SMs when the batch allows, at some cost in weight re-reads
    while block_n > 4 and triton.cdiv(n, block_n) < sm_count(device):
        block_n //= 2
    block_k = min(_pow2(c), max(1, PRODUCT_ELEMS // (block_n * block_r)))
    return block_n, block_r, block_k


def param_blocks(n: int, r: int, c: int) -> Tuple[int, int, int]:
    """(PARAM_BLOCK_R, PARAM_BLOCK_C, PARAM_BLOCK_N) of the weight-gradient tiles."""
    block_r = min(_pow2(r), 32)
    block_c = min(_pow2(c), 64)
    block_n = min(_pow2(n), max(1, PRODUCT_ELEMS // (block_r * block_c)))
    return block_r, block_c, block_n


def se_forward(x: torch.Tensor, w1: torch.Tensor, b1: Optional[torch.Tensor], w2: torch.Tensor,
               b2: Optional[torch.Tensor], activation: str, gate: str, identity: Optional[torch.Tensor] = None,
               activation_after: str = "none") -> Tuple[torch.Tensor, torch.Tensor]:
    """SE forward with Triton: (y, pooled mean (N, C)), as the ops se_forward and (with
    identity) se_residual_forward. Arguments are assumed checked; y is torch.empty_like(x)."""
    n, c, l = x.shape[0], x.shape[1], spatial_size(x)
    r = w1.shape[0]
    acc = acc_dtype(x.dtype)
    y = torch.empty_like(x)
    pooled = torch.empty((n, c), dtype=acc, device=x.device)
    if n == 0 or c == 0:
        return y, pooled
    if l == 0:  # the mean of nothing is taken as 0 (as the CPU op does); y has no elements
        return y, pooled.zero_()
    xv, xs = input_view(x)
    check_index_range(xv, xs, "x")
    if identity is not None:
        iv, is_ = input_view(identity)
        check_index_range(iv, is_, "identity")
        epilogue = EPILOGUE_ADD_RELU if activation_after == "relu" else EPILOGUE_ADD
    else:
        iv, is_, epilogue = xv, xs, EPILOGUE_NONE
    out = OutputView(y)
    tiling = tiling_for(xv, xs)
    acc_tl = tl_acc_dtype(x.dtype)
    b1, b1_stride, has_b1 = _bias(b1, w1)
    b2, b2_stride, has_b2 = _bias(b2, w2)

    partial = torch.empty((tiling.splits, n, c), dtype=acc, device=x.device)
    channel_reduce(tiling, MAP_IDENTITY, xv, xs, partial)

    h = torch.empty((n, r), dtype=acc, device=x.device)
    block_n, block_r, block_k = head_blocks(n, r, c)
    launch(se_forward_head_kernel, (triton.cdiv(n, block_n), triton.cdiv(max(r, 1), block_r)),
           partial, pooled, w1, b1, h, n, c, r, l, tiling.splits, w1.stride(0), w1.stride(1), b1_stride,
           HAS_B1=has_b1, ACT=ACTIVATIONS[activation], ACC=acc_tl,
           BLOCK_N=block_n, BLOCK_R=block_r, BLOCK_K=block_k,
           SPLIT_BLOCK=split_block(tiling.splits, block_n * block_k, budget=PRODUCT_ELEMS), num_warps=4)

    block_n, block_r = apply_blocks(n, r, tiling, l, programs_target(x.device))
    programs = triton.cdiv(n, block_n) * tiling.c_blocks * tiling.splits
    launch(se_forward_apply_kernel, (programs,),
           xv, iv, out.buffer, h, w2, b2, n, c, r, l, tiling.l_per_split, tiling.c_blocks, tiling.splits,
           *xs, *is_, *out.strides, w2.stride(0), w2.stride(1), b2_stride,
           HAS_B2=has_b2, GATE=GATES[gate], EPILOGUE=epilogue, ACC=acc_tl,
           BLOCK_N=block_n, BLOCK_C=tiling.block_c, BLOCK_L=tiling.block_l, BLOCK_R=block_r,
           num_warps=tiling.num_warps)
    return out.finish(), pooled


def se_backward(dy: torch.Tensor, x: torch.Tensor, w1: torch.Tensor, b1: Optional[torch.Tensor],
                w2: torch.Tensor, b2: Optional[torch.Tensor], pooled: torch.Tensor, activation: str, gate: str,
                y: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, ...]:
    """SE backward with Triton: (dx, dw1, db1, dw2, db2), as the op se_backward; with y
    (the output of se_residual with a relu epilogue) (dx, didentity, dw1, db1, dw2, db2), as
    se_residual_backward. Bias gradients are returned even without biases."""
    n, c, l = x.shape[0], x.shape[1], spatial_size(x)
    r = w1.shape[0]
    acc = acc_dtype(x.dtype)
    residual = y is not None
    dx = torch.empty_like(x)
    didentity = torch.empty_like(x) if residual else None
    dw1 = torch.empty(w1.shape, dtype=w1.dtype, device=w1.device)
    dw2 = torch.empty(w2.shape, dtype=w2.dtype, device=w2.device)
    db1 = torch.empty((r,), dtype=w1.dtype if b1 is None else b1.dtype, device=w1.device)
    db2 = torch.empty((c,), dtype=w2.dtype if b2 is None else b2.dtype, device=w2.device)
    maps = (dx, didentity) if residual else (dx,)
    if n == 0 or c == 0 or l == 0:  # G = 0: every parameter gradient is 0, the maps are empty
        return (*maps, dw1.zero_(), db1.zero_(), dw2.zero_(), db2.zero_())

    xv, xs = input_view(x)
    dyv, dys = input_view(dy)
    check_index_range(xv, xs, "x")
    check_index_range(dyv, dys, "dy")
    if residual:
        yv, ys = input_view(y)
        check_index_range(yv, ys, "y")
        di_out = OutputView(didentity)
    else:
        yv, ys = dyv, dys
    dx_out = OutputView(dx)
    di_buffer, di_strides = (di_out.buffer, di_out.strides) if residual else (dx_out.buffer, dx_out.strides)
    tiling = tiling_for(xv, xs)
    acc_tl = tl_acc_dtype(x.dtype)
    pooled = pooled.contiguous()  # (N, C): a few bytes per channel, normally contiguous already
    b1, b1_stride, has_b1 = _bias(b1, w1)
    b2, b2_stride, has_b2 = _bias(b2, w2)

    grad_partial = torch.empty((tiling.splits, n, c), dtype=acc, device=x.device)
    if residual:
        channel_reduce(tiling, MAP_MASKED_PRODUCT, dyv, dys, grad_partial, b=xv, b_strides=xs, m=yv, m_strides=ys)
    else:
        channel_reduce(tiling, MAP_PRODUCT, dyv, dys, grad_partial, b=xv, b_strides=xs)

    per_channel = torch.empty((2, n, c), dtype=acc, device=x.device)
    s, d_o = per_channel.unbind(0)
    per_hidden = torch.empty((2, n, max(r, 1)), dtype=acc, device=x.device)
    h, d_u = per_hidden[0, :, :r], per_hidden[1, :, :r]
    block_n, block_r, block_k = backward_head_blocks(n, r, c, x.device)
    launch(se_backward_head_kernel, (triton.cdiv(n, block_n),),
           grad_partial, pooled, w1, b1, w2, b2, s, d_o, h, d_u,
           n, c, r, tiling.splits, w1.stride(0), w1.stride(1), b1_stride, w2.stride(0), w2.stride(1), b2_stride,
           HAS_B1=has_b1, HAS_B2=has_b2, ACT=ACTIVATIONS[activation], GATE=GATES[gate], ACC=acc_tl,
           BLOCK_N=block_n, BLOCK_R=block_r, BLOCK_K=block_k,
           SPLIT_BLOCK=split_block(tiling.splits, block_n * block_k, budget=PRODUCT_ELEMS), num_warps=4)

    block_n, block_r = apply_blocks(n, r, tiling, l, programs_target(x.device))
    apply_programs = triton.cdiv(n, block_n) * tiling.c_blocks * tiling.splits
    p_block_r, p_block_c, p_block_n = param_blocks(n, r, c)
    r_tiles, c_tiles = triton.cdiv(r, p_block_r), triton.cdiv(c, p_block_c)
    launch(se_backward_apply_kernel, (apply_programs + 2 * r_tiles * c_tiles,),
           dyv, yv, dx_out.buffer, di_buffer, s, d_u, w1, pooled, d_o, h, dw1, db1, dw2, db2,
           n, c, r, l, tiling.l_per_split, tiling.c_blocks, tiling.splits, apply_programs, r_tiles, c_tiles,
           *dys, *ys, *dx_out.strides, *di_strides,
           w1.stride(0), w1.stride(1), dw1.stride(0), dw1.stride(1), dw2.stride(0), dw2.stride(1),
           RESIDUAL=residual, ACC=acc_tl, BLOCK_N=block_n, BLOCK_C=tiling.block_c, BLOCK_L=tiling.block_l,
           BLOCK_R=block_r, PARAM_BLOCK_R=p_block_r, PARAM_BLOCK_C=p_block_c, PARAM_BLOCK_N=p_block_n,
           num_warps=tiling.num_warps)
    grads = (dw1, db1, dw2, db2)
    if residual:
        return (dx_out.finish(), di_out.finish(), *grads)
    return (dx_out.finish(), *grads)
