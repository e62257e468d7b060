"""Stage 1 of every op: per-(n, c) sums over L of an element map, in the accumulation dtype.

    MAP_SQUARE        sum x^2             GCT l2 forward
    MAP_ABS           sum |x|             GCT l1 forward
    MAP_IDENTITY      sum x               GCT l1 after relu, SE squeeze
    MAP_PRODUCT       sum dy * x          every backward (G)
    MAP_MASKED_PRODUCT sum dy * [y > 0] * x   se_residual backward (relu epilogue)

Grid (N * c_blocks, splits): program (n, c-block, k) reduces positions
[k * l_per_split, (k + 1) * l_per_split) of its BLOCK_C channels and writes partial[k, n, c].
Consumers add the partials of a channel in the order k = 0, 1, ... (no atomics), so results
are bitwise reproducible. The tile is accumulated element-wise in registers across the loop
and reduced along L once at the end (as in the Triton fused layer-norm tutorial): the loop
body has no cross-thread traffic.

With NORM_MODE >= 0 (GCT forward, unsplit reduction only) each program also writes the
sum over its channels of the GCT normaliser term (e^2 or |e|), so the apply kernel finds
the sample's normaliser from c_blocks numbers instead of C.
"""

import triton
import triton.language as tl

from .launch import ChannelTiling, device_function, launch, spatial_size, tl_acc_dtype
from .pointwise import epsilon_in, gct_embedding, gct_norm_term, sum_along

MAP_SQUARE = 0
MAP_ABS = 1
MAP_IDENTITY = 2
MAP_PRODUCT = 3
MAP_MASKED_PRODUCT = 4


@device_function
def _mapped_tile(a_rows, b_rows, m_rows, l, mask, a_sl, b_sl, m_sl, MAP: tl.constexpr, ACC: tl.constexpr):
    """map(inputs) over one [BLOCK_C, BLOCK_L] tile, 0 where masked; *_rows point at the
    tile's channels ([BLOCK_C, 1]) at l = 0."""
    va = tl.load(a_rows + l[None, :] * a_sl, mask=mask, other=0.0).to(ACC)
    if MAP == 0:
        v = va * va
    elif MAP == 1:
        v = tl.abs(va)
    elif MAP == 2:
        v = va
    elif MAP == 3:
        vb = tl.load(b_rows + l[None, :] * b_sl, mask=mask, other=0.0).to(ACC)
        v = va * vb
    else:
        vb = tl.load(b_rows + l[None, :] * b_sl, mask=mask, other=0.0).to(ACC)
        vm = tl.load(m_rows + l[None, :] * m_sl, mask=mask, other=0.0)
        v = tl.where(vm <= 0, 0.0, va) * vb  # relu backward at y (0 where y <= 0, NaN y passes), times x
    return v


@triton.jit(do_not_specialize=["N", "C", "L", "l_per_split", "c_blocks"])
def channel_reduce_kernel(
    a_ptr, b_ptr, m_ptr, partial_ptr, norm_ptr, alpha_ptr,
    N, C, L, l_per_split, c_blocks,
    a_sn, a_sc, a_sl, b_sn, b_sc, b_sl, m_sn, m_sc, m_sl, alpha_stride,
    eps_hi, eps_lo,
    MAP: tl.constexpr, NORM_MODE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr,
):
    row = tl.program_id(0)
    k = tl.program_id(1)
    n = row // c_blocks
    cb = row % c_blocks
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    n64 = n.to(tl.int64)
    # per-channel row starts, hoisted out of the loop
    a_rows = a_ptr + n64 * a_sn + c[:, None] * a_sc
    b_rows = a_rows
    m_rows = a_rows
    if MAP >= 3:
        b_rows = b_ptr + n64 * b_sn + c[:, None] * b_sc
    if MAP == 4:
        m_rows = m_ptr + n64 * m_sn + c[:, None] * m_sc
    l_begin = k * l_per_split
    l_end = tl.minimum(L, l_begin + l_per_split)

    acc = tl.full([BLOCK_C, BLOCK_L], 0.0, ACC)
    for l0 in range(l_begin, l_end, BLOCK_L):
        l = l0 + tl.arange(0, BLOCK_L)
        mask = c_mask[:, None] & (l < l_end)[None, :]
        acc += _mapped_tile(a_rows, b_rows, m_rows, l, mask, a_sl, b_sl, m_sl, MAP, ACC)
    total = sum_along(acc, 1)
    tl.store(partial_ptr + (k * N + n).to(tl.int64) * C + c, total, mask=c_mask)

    if NORM_MODE >= 0:
        eps = epsilon_in(eps_hi, eps_lo, ACC)
        alpha = tl.load(alpha_ptr + c * alpha_stride, mask=c_mask, other=0.0).to(ACC)
        term = gct_norm_term(gct_embedding(total, alpha, eps, NORM_MODE), NORM_MODE)
        tl.store(norm_ptr + n64 * c_blocks + cb, sum_along(tl.where(c_mask, term, 0.0), 0))


@device_function
def combine_partials(partial_ptr, n, N, C, c, mask, splits, ACC: tl.constexpr, SPLIT_BLOCK: tl.constexpr):
    """sum_k partial[k, n, c] over the splits of the reduce, for channels c of sample n.

    SPLIT_BLOCK splits are loaded at once and reduced as a tile, chunks added in order:
    a fixed summation order (the same bits in every program that combines them) and one
    memory round trip per SPLIT_BLOCK splits instead of one per split."""
    k = tl.arange(0, SPLIT_BLOCK)
    total = tl.full(c.shape, 0.0, ACC)
    for k0 in range(0, splits, SPLIT_BLOCK):
        kk = k0 + k
        offs = ((kk * N + n).to(tl.int64) * C)[:, None] + c[None, :]
        tile = tl.load(partial_ptr + offs, mask=(kk < splits)[:, None] & mask[None, :], other=0.0)
        total += sum_along(tile, 0)
    return total


@device_function
def combine_partial_rows(partial_ptr, rows, cols, row_mask, col_mask, N, C, splits, ACC: tl.constexpr,
                         SPLIT_BLOCK: tl.constexpr):
    """combine_partials for a [rows, cols] tile of (sample, channel) pairs."""
    k = tl.arange(0, SPLIT_BLOCK)
    mask = row_mask[:, None] & col_mask[None, :]
    total = tl.full([rows.shape[0], cols.shape[0]], 0.0, ACC)
    for k0 in range(0, splits, SPLIT_BLOCK):
        kk = k0 + k
        offs = (kk[:, None, None] * N + rows[None, :, None]).to(tl.int64) * C + cols[None, None, :]
        tile = tl.load(partial_ptr + offs, mask=(kk < splits)[:, None, None] & mask[None, :, :], other=0.0)
        total += sum_along(tile, 0)
    return total


def split_block(splits: int, elems: int, budget: int = 4096) -> int:
    """SPLIT_BLOCK for combining `splits` partials of `elems` values at once, within a
    tile of about `budget` elements."""
    return min(triton.next_power_of_2(max(splits, 1)), max(1, budget // max(elems, 1)))


def channel_reduce(tiling: ChannelTiling, map_kind: int, a, a_strides, partial, *, b=None, b_strides=None,
                   m=None, m_strides=None, norm=None, alpha=None, epsilon=(0.0, 0.0), norm_mode=-1) -> None:
    """Launches the reduce: partial[k, n, c] = sum over split k of map(a[, b, m]).

    partial: (splits, N, C) (or (N, C) when unsplit) in the accumulation dtype of `a`.
    norm/alpha/norm_mode: the GCT normaliser epilogue (norm is (N, c_blocks)); only valid
    with tiling.splits == 1."""
    n, c = a.shape[0], a.shape[1]
    b = a if b is None else b
    b_strides = a_strides if b_strides is None else b_strides
    m = a if m is None else m
    m_strides = a_strides if m_strides is None else m_strides
    if norm_mode >= 0:
        assert tiling.splits == 1 and norm is not None and alpha is not None
    norm = partial if norm is None else norm
    alpha = partial if alpha is None else alpha
    alpha_stride = alpha.stride(0) if alpha.dim() == 1 else 1
    grid = (n * tiling.c_blocks, tiling.splits)
    launch(channel_reduce_kernel, grid,
           a, b, m, partial, norm, alpha,
           n, c, spatial_size(a), tiling.l_per_split, tiling.c_blocks,
           *a_strides, *b_strides, *m_strides, alpha_stride,
           epsilon[0], epsilon[1],
           MAP=map_kind, NORM_MODE=norm_mode, ACC=tl_acc_dtype(a.dtype),
           BLOCK_C=tiling.block_c, BLOCK_L=tiling.block_l, num_warps=tiling.num_warps)
