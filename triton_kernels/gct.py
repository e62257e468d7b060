"""GCT (Gated Channel Transformation) forward and backward on the reduce -> head -> apply
skeleton. Formulas as csrc/include/gct_fused/gct_math.h; notation (per sample n, channel c):

    l2: s = sum_l x^2, e = alpha * sqrt(s + eps), denom = sqrt(mean_c e^2 + eps)
    l1: s = sum_l |x| (x after relu), e = alpha * s, denom = mean_c |e| + eps
    z = e * (gamma / denom) + beta,  g = 1 + tanh(z) (as 2 / (1 + exp(-2z))),  y = g * x

Forward, 2 launches:
  1. channel_reduce: s per (n, c) (partials per split of L); unsplit, it also writes the
     per-channel-block sums of the normaliser term.
  2. gct_forward_apply_kernel: the head folded into the apply. Each program finds its
     sample's normaliser (c_blocks block sums, or, split, all channels' partials), its
     channels' gate, and scales its tile. Split, the programs of split 0 write s.

Backward, 3 launches (G = sum_l dy * x, r = 1 / denom, Q = sum_c dz * gamma * e):
  1. channel_reduce: G partials.
  2. gct_backward_head_kernel, one program per sample: dz = G (1 - tanh^2 z);
     de = dz gamma r - Q * dr/de; the coefficients g and k of dx = g dy + k f(x); and this
     sample's contributions to dalpha, dgamma, dbeta (written per (n, c)).
  3. gct_backward_apply_kernel: dx on the apply programs; extra programs at the end of the
     grid sum the per-sample contributions over n in a fixed order (parameter gradients are
     bitwise reproducible: no atomics).
"""

from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from .channel_reduce import (MAP_ABS, MAP_IDENTITY, MAP_PRODUCT, MAP_SQUARE, channel_reduce, combine_partials,
                             split_block)
from .launch import (OutputView, acc_dtype, check_index_range, device_function, input_view, launch, spatial_size,
                     split_epsilon, tiling_for, tl_acc_dtype)
from .pointwise import (div_precise, epsilon_in, gct_embedding, gct_norm_denom, gct_norm_term, sign, sqrt_precise,
                        sum_along, gct_dz, gct_gate)

# Channels per chunk of the O(C) head loops.
HEAD_BLOCK = 1024
# Channels per program of the parameter-gradient sum over samples.
PARAM_BLOCK_C = 128


@triton.jit(do_not_specialize=["N", "C", "L", "l_per_split", "c_blocks", "splits"])
def gct_forward_apply_kernel(
    x_ptr, y_ptr, partial_ptr, norm_ptr, stats_ptr, alpha_ptr, gamma_ptr, beta_ptr,
    N, C, L, l_per_split, c_blocks, splits,
    x_sn, x_sc, x_sl, y_sn, y_sc, y_sl, alpha_stride, gamma_stride, beta_stride,
    eps_hi, eps_lo,
    MODE: tl.constexpr, SPLIT: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_H: tl.constexpr,
    SPLIT_BLOCK_H: tl.constexpr, SPLIT_BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    k = pid % splits
    row = pid // splits
    n = row // c_blocks
    cb = row % c_blocks
    n64 = n.to(tl.int64)
    eps = epsilon_in(eps_hi, eps_lo, ACC)

    # Head, part 1: the sample's normaliser, sum_c of e^2 (l2) or |e| (l1).
    if SPLIT:
        terms = tl.full([BLOCK_H], 0.0, ACC)
        for c0 in range(0, C, BLOCK_H):
            ch = c0 + tl.arange(0, BLOCK_H)
            hm = ch < C
            s_h = combine_partials(partial_ptr, n, N, C, ch, hm, splits, ACC, SPLIT_BLOCK_H)
            a_h = tl.load(alpha_ptr + ch * alpha_stride, mask=hm, other=0.0).to(ACC)
            terms += tl.where(hm, gct_norm_term(gct_embedding(s_h, a_h, eps, MODE), MODE), 0.0)
        term_sum = sum_along(terms, 0)
    else:
        # the reduce already summed the term over each block of channels
        parts = tl.full([BLOCK_H], 0.0, ACC)
        for j0 in range(0, c_blocks, BLOCK_H):
            j = j0 + tl.arange(0, BLOCK_H)
            parts += tl.load(norm_ptr + n64 * c_blocks + j, mask=j < c_blocks, other=0.0)
        term_sum = sum_along(parts, 0)
    denom = gct_norm_denom(term_sum, C, eps, MODE)

    # Head, part 2: this program's channels.
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    if SPLIT:
        s = combine_partials(partial_ptr, n, N, C, c, c_mask, splits, ACC, SPLIT_BLOCK_C)
        tl.store(stats_ptr + n64 * C + c, s, mask=c_mask & (k == 0))
    else:
        s = tl.load(stats_ptr + n64 * C + c, mask=c_mask, other=0.0)
    alpha = tl.load(alpha_ptr + c * alpha_stride, mask=c_mask, other=0.0).to(ACC)
    gamma = tl.load(gamma_ptr + c * gamma_stride, mask=c_mask, other=0.0).to(ACC)
    beta = tl.load(beta_ptr + c * beta_stride, mask=c_mask, other=0.0).to(ACC)
    e = gct_embedding(s, alpha, eps, MODE)
    g = gct_gate(e * div_precise(gamma, denom) + beta)

    # Apply: y = g * x over this program's part of L.
    l_begin = k * l_per_split
    l_end = tl.minimum(L, l_begin + l_per_split)
    x_rows = x_ptr + n64 * x_sn + c[:, None] * x_sc
    y_rows = y_ptr + n64 * y_sn + c[:, None] * y_sc
    for l0 in range(l_begin, l_end, BLOCK_L):
        l = l0 + tl.arange(0, BLOCK_L)
        mask = c_mask[:, None] & (l < l_end)[None, :]
        xv = tl.load(x_rows + l[None, :] * x_sl, mask=mask, other=0.0).to(ACC)
        yv = xv * g[:, None]
        tl.store(y_rows + l[None, :] * y_sl, yv.to(y_ptr.dtype.element_ty), mask=mask)


@device_function
def _gct_channel_state(stats_ptr, alpha_ptr, gamma_ptr, beta_ptr, n64, C, c, mask,
                       alpha_stride, gamma_stride, beta_stride, eps, denom, MODE: tl.constexpr, ACC: tl.constexpr):
    """s, alpha, gamma, e and z of channels c of one sample."""
    s = tl.load(stats_ptr + n64 * C + c, mask=mask, other=0.0)
    alpha = tl.load(alpha_ptr + c * alpha_stride, mask=mask, other=0.0).to(ACC)
    gamma = tl.load(gamma_ptr + c * gamma_stride, mask=mask, other=0.0).to(ACC)
    beta = tl.load(beta_ptr + c * beta_stride, mask=mask, other=0.0).to(ACC)
    e = gct_embedding(s, alpha, eps, MODE)
    z = e * div_precise(gamma, denom) + beta
    return s, alpha, gamma, e, z


@triton.jit(do_not_specialize=["N", "C", "splits"])
def gct_backward_head_kernel(
    grad_partial_ptr, stats_ptr, alpha_ptr, gamma_ptr, beta_ptr,
    coef_g_ptr, coef_k_ptr, dalpha_n_ptr, dgamma_n_ptr, dbeta_n_ptr,
    N, C, splits, alpha_stride, gamma_stride, beta_stride, eps_hi, eps_lo,
    MODE: tl.constexpr, ACC: tl.constexpr, BLOCK_H: tl.constexpr, SPLIT_BLOCK: tl.constexpr,
):
    n = tl.program_id(0)
    n64 = n.to(tl.int64)
    eps = epsilon_in(eps_hi, eps_lo, ACC)
    c_count = C.to(ACC)

    # Pass 1: the normaliser.
    terms = tl.full([BLOCK_H], 0.0, ACC)
    for c0 in range(0, C, BLOCK_H):
        c = c0 + tl.arange(0, BLOCK_H)
        mask = c < C
        s = tl.load(stats_ptr + n64 * C + c, mask=mask, other=0.0)
        alpha = tl.load(alpha_ptr + c * alpha_stride, mask=mask, other=0.0).to(ACC)
        terms += tl.where(mask, gct_norm_term(gct_embedding(s, alpha, eps, MODE), MODE), 0.0)
    denom = gct_norm_denom(sum_along(terms, 0), C, eps, MODE)
    r = div_precise(tl.full([], 1.0, ACC), denom)

    # Pass 2: the gate g and Q = sum_c dz * gamma * e.
    q_terms = tl.full([BLOCK_H], 0.0, ACC)
    for c0 in range(0, C, BLOCK_H):
        c = c0 + tl.arange(0, BLOCK_H)
        mask = c < C
        s, alpha, gamma, e, z = _gct_channel_state(stats_ptr, alpha_ptr, gamma_ptr, beta_ptr, n64, C, c, mask,
                                                   alpha_stride, gamma_stride, beta_stride, eps, denom, MODE, ACC)
        g = gct_gate(z)
        tl.store(coef_g_ptr + n64 * C + c, g, mask=mask)
        grad = combine_partials(grad_partial_ptr, n, N, C, c, mask, splits, ACC, SPLIT_BLOCK)
        dz = gct_dz(grad, z, g)
        q_terms += tl.where(mask, dz * gamma * e, 0.0)
    q = sum_along(q_terms, 0)

    # Pass 3: de, the coefficient k of f(x), and this sample's parameter-gradient terms.
    for c0 in range(0, C, BLOCK_H):
        c = c0 + tl.arange(0, BLOCK_H)
        mask = c < C
        s, alpha, gamma, e, z = _gct_channel_state(stats_ptr, alpha_ptr, gamma_ptr, beta_ptr, n64, C, c, mask,
                                                   alpha_stride, gamma_stride, beta_stride, eps, denom, MODE, ACC)
        grad = combine_partials(grad_partial_ptr, n, N, C, c, mask, splits, ACC, SPLIT_BLOCK)
        dz = gct_dz(grad, z, gct_gate(z))
        if MODE == 0:
            de = dz * gamma * r - q * r * r * r * e / c_count
            root = sqrt_precise(s + eps)
            dalpha = de * root
            k = div_precise(de * alpha, root)
        else:
            de = dz * gamma * r - q * r * r * sign(e) / c_count
            dalpha = de * s
            k = de * alpha
        tl.store(coef_k_ptr + n64 * C + c, k, mask=mask)
        tl.store(dalpha_n_ptr + n64 * C + c, dalpha, mask=mask)
        tl.store(dgamma_n_ptr + n64 * C + c, dz * e * r, mask=mask)
        tl.store(dbeta_n_ptr + n64 * C + c, dz, mask=mask)


@device_function
def sum_over_samples(src_ptr, dst_ptr, N, C, c, c_mask, dst_stride,
                     ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
    """dst[c] = sum_n src[n, c] for an (N, C) src, in a fixed order (chunks of BLOCK_N
    samples added in order, then one tree sum whose shape is fixed by the constexprs)."""
    acc = tl.full([BLOCK_N, BLOCK_C], 0.0, ACC)
    for n0 in range(0, N, BLOCK_N):
        rows = n0 + tl.arange(0, BLOCK_N)
        mask = (rows < N)[:, None] & c_mask[None, :]
        acc += tl.load(src_ptr + rows.to(tl.int64)[:, None] * C + c[None, :], mask=mask, other=0.0)
    total = sum_along(acc, 0)
    tl.store(dst_ptr + c * dst_stride, total.to(dst_ptr.dtype.element_ty), mask=c_mask)


@triton.jit(do_not_specialize=["N", "C", "L", "l_per_split", "c_blocks", "splits", "apply_programs"])
def gct_backward_apply_kernel(
    dy_ptr, x_ptr, dx_ptr, coef_g_ptr, coef_k_ptr,
    dalpha_n_ptr, dgamma_n_ptr, dbeta_n_ptr, dalpha_ptr, dgamma_ptr, dbeta_ptr,
    N, C, L, l_per_split, c_blocks, splits, apply_programs,
    dy_sn, dy_sc, dy_sl, x_sn, x_sc, x_sl, dx_sn, dx_sc, dx_sl,
    F_KIND: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr,
    PARAM_BLOCK_N: tl.constexpr, PARAM_BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    if pid < apply_programs:
        # dx = g * dy + k * f(x), f(x) = x (l2), sign(x) (l1), 1 (l1 after relu)
        k_split = pid % splits
        row = pid // splits
        n = row // c_blocks
        cb = row % c_blocks
        n64 = n.to(tl.int64)
        c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
        c_mask = c < C
        g = tl.load(coef_g_ptr + n64 * C + c, mask=c_mask, other=0.0)
        k = tl.load(coef_k_ptr + n64 * C + c, mask=c_mask, other=0.0)
        l_begin = k_split * l_per_split
        l_end = tl.minimum(L, l_begin + l_per_split)
        dy_rows = dy_ptr + n64 * dy_sn + c[:, None] * dy_sc
        x_rows = x_ptr + n64 * x_sn + c[:, None] * x_sc
        dx_rows = dx_ptr + n64 * dx_sn + c[:, None] * dx_sc
        for l0 in range(l_begin, l_end, BLOCK_L):
            l = l0 + tl.arange(0, BLOCK_L)
            mask = c_mask[:, None] & (l < l_end)[None, :]
            dy = tl.load(dy_rows + l[None, :] * dy_sl, mask=mask, other=0.0).to(ACC)
            if F_KIND == 2:
                dx = g[:, None] * dy + k[:, None]
            else:
                xv = tl.load(x_rows + l[None, :] * x_sl, mask=mask, other=0.0).to(ACC)
                if F_KIND == 0:
                    dx = g[:, None] * dy + k[:, None] * xv
                else:
                    dx = g[:, None] * dy + k[:, None] * sign(xv)
            tl.store(dx_rows + l[None, :] * dx_sl, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    else:
        # parameter gradients: sum over samples of the head's per-sample terms
        c = (pid - apply_programs) * PARAM_BLOCK_C + tl.arange(0, PARAM_BLOCK_C)
        c_mask = c < C
        sum_over_samples(dalpha_n_ptr, dalpha_ptr, N, C, c, c_mask, 1, ACC, PARAM_BLOCK_N, PARAM_BLOCK_C)
        sum_over_samples(dgamma_n_ptr, dgamma_ptr, N, C, c, c_mask, 1, ACC, PARAM_BLOCK_N, PARAM_BLOCK_C)
        sum_over_samples(dbeta_n_ptr, dbeta_ptr, N, C, c, c_mask, 1, ACC, PARAM_BLOCK_N, PARAM_BLOCK_C)


def _mode_code(mode: str) -> int:
    return 0 if mode == "l2" else 1


def _flat(p: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """A per-channel parameter as a 1-D view (a copy only if it has no 1-D view: C values)."""
    flat = p.reshape(-1)
    return flat, flat.stride(0)


def param_block(c: int, n: int, max_block_c: int = PARAM_BLOCK_C) -> Tuple[int, int]:
    """(BLOCK_N, BLOCK_C) of the parameter-gradient sums over samples."""
    block_c = min(triton.next_power_of_2(max(c, 1)), max_block_c)
    block_n = min(triton.next_power_of_2(max(n, 1)), max(1, 2048 // block_c))
    return block_n, block_c


def gct_forward(x: torch.Tensor, alpha: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                epsilon: float, mode: str, after_relu: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """GCT forward with Triton: (y = x * g, s per (n, c)), as the op gct_forward.

    Arguments are assumed checked (gct_fused.triton_ops does it). y is torch.empty_like(x);
    s is (N, C) in float32 (float64 for a float64 x)."""
    n, c, l = x.shape[0], x.shape[1], spatial_size(x)
    acc = acc_dtype(x.dtype)
    y = torch.empty_like(x)
    stats = torch.empty((n, c), dtype=acc, device=x.device)
    if n == 0 or c == 0:
        return y, stats
    if l == 0:  # nothing to sum: s = 0, and y has no elements
        return y, stats.zero_()
    xv, xs = input_view(x)
    out = OutputView(y)
    check_index_range(xv, xs, "x")
    tiling = tiling_for(xv, xs)
    mode_code = _mode_code(mode)
    map_kind = MAP_SQUARE if mode == "l2" else (MAP_IDENTITY if after_relu else MAP_ABS)
    eps = split_epsilon(epsilon)
    (alpha, alpha_stride), (gamma, gamma_stride), (beta, beta_stride) = _flat(alpha), _flat(gamma), _flat(beta)

    split = tiling.splits > 1
    if split:
        partial = torch.empty((tiling.splits, n, c), dtype=acc, device=x.device)
        norm = partial  # unused
        channel_reduce(tiling, map_kind, xv, xs, partial)
    else:
        partial = stats
        norm = torch.empty((n, tiling.c_blocks), dtype=acc, device=x.device)
        channel_reduce(tiling, map_kind, xv, xs, stats, norm=norm, alpha=alpha, epsilon=eps, norm_mode=mode_code)
    if split:  # the head combines every channel's partials: [split_block_h, head_block] tiles
        split_block_h = split_block(tiling.splits, 1, budget=64)
        head_block = min(HEAD_BLOCK, triton.next_power_of_2(c), max(1, 4096 // split_block_h))
    else:  # the head adds the reduce's per-channel-block sums
        split_block_h, head_block = 1, min(HEAD_BLOCK, triton.next_power_of_2(tiling.c_blocks))
    launch(gct_forward_apply_kernel, (n * tiling.c_blocks * tiling.splits,),
           xv, out.buffer, partial, norm, stats, alpha, gamma, beta,
           n, c, l, tiling.l_per_split, tiling.c_blocks, tiling.splits,
           *xs, *out.strides, alpha_stride, gamma_stride, beta_stride, eps[0], eps[1],
           MODE=mode_code, SPLIT=split, ACC=tl_acc_dtype(x.dtype),
           BLOCK_C=tiling.block_c, BLOCK_L=tiling.block_l, BLOCK_H=head_block, SPLIT_BLOCK_H=split_block_h,
           SPLIT_BLOCK_C=split_block(tiling.splits, tiling.block_c), num_warps=tiling.num_warps)
    return out.finish(), stats


def gct_backward(dy: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, gamma: torch.Tensor,
                 beta: torch.Tensor, stats: torch.Tensor, epsilon: float, mode: str,
                 after_relu: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """GCT backward with Triton: (dx, dalpha, dgamma, dbeta), as the op gct_backward.

    dx is torch.empty_like(x); parameter gradients have the parameters' shapes and dtypes."""
    n, c, l = x.shape[0], x.shape[1], spatial_size(x)
    acc = acc_dtype(x.dtype)
    dx = torch.empty_like(x)
    grads = [torch.empty(p.shape, dtype=p.dtype, device=p.device) for p in (alpha, gamma, beta)]
    if n == 0 or c == 0 or l == 0:  # G = 0: every parameter gradient is 0, dx has no elements
        return (dx, *[g.zero_() for g in grads])
    xv, xs = input_view(x)
    dyv, dys = input_view(dy)
    out = OutputView(dx)
    check_index_range(xv, xs, "x")
    check_index_range(dyv, dys, "dy")
    tiling = tiling_for(xv, xs)
    mode_code = _mode_code(mode)
    eps = split_epsilon(epsilon)
    (alpha, alpha_stride), (gamma, gamma_stride), (beta, beta_stride) = _flat(alpha), _flat(gamma), _flat(beta)
    stats = stats.contiguous()  # (N, C): a few bytes per channel, normally contiguous already
    acc_tl = tl_acc_dtype(x.dtype)

    grad_partial = torch.empty((tiling.splits, n, c), dtype=acc, device=x.device)
    channel_reduce(tiling, MAP_PRODUCT, dyv, dys, grad_partial, b=xv, b_strides=xs)

    split_block_h = split_block(tiling.splits, 1, budget=64)
    head_block = min(HEAD_BLOCK, triton.next_power_of_2(c), max(1, 4096 // split_block_h))
    per_sample = torch.empty((5, n, c), dtype=acc, device=x.device)
    coef_g, coef_k, dalpha_n, dgamma_n, dbeta_n = per_sample.unbind(0)
    launch(gct_backward_head_kernel, (n,),
           grad_partial, stats, alpha, gamma, beta, coef_g, coef_k, dalpha_n, dgamma_n, dbeta_n,
           n, c, tiling.splits, alpha_stride, gamma_stride, beta_stride, eps[0], eps[1],
           MODE=mode_code, ACC=acc_tl, BLOCK_H=head_block, SPLIT_BLOCK=split_block_h,
           num_warps=4)

    apply_programs = n * tiling.c_blocks * tiling.splits
    block_pn, block_pc = param_block(c, n)
    f_kind = 0 if mode == "l2" else (2 if after_relu else 1)
    launch(gct_backward_apply_kernel, (apply_programs + triton.cdiv(c, block_pc),),
           dyv, xv, out.buffer, coef_g, coef_k, dalpha_n, dgamma_n, dbeta_n, *grads,
           n, c, l, tiling.l_per_split, tiling.c_blocks, tiling.splits, apply_programs,
           *dys, *xs, *out.strides,
           F_KIND=f_kind, ACC=acc_tl, BLOCK_C=tiling.block_c, BLOCK_L=tiling.block_l,
           PARAM_BLOCK_N=block_pn, PARAM_BLOCK_C=block_pc, num_warps=tiling.num_warps)
    return (out.finish(), *grads)
