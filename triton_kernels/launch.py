"""Host-side plumbing shared by every launcher: the (N, C, L) view of a tensor, the tiling
chosen from shape and strides, and the one place kernels are launched (which counts them).

Every kernel of this package sees a feature map of shape (N, C, *spatial) as (N, C, L)
with element (n, c, l) at n * stride_n + c * stride_c + l * stride_l. That holds without a
copy whenever the spatial dims merge into one stride (NCHW, channels_last, slices along N
or C, a step along the last dim, expanded gradients); each tensor taking part (x, dy, y,
identity, outputs) brings its own three strides, so mixed layouts need no copies either.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import torch
import triton

# Elements of one [BLOCK_C, BLOCK_L] tile: 4096 keeps a float32 accumulator at 16-32
# registers per thread with 4-8 warps, and every load wide enough to be coalesced.
TILE_ELEMS = 4096
# Longest contiguous L-run of a tile (NCHW) and widest C-run (channels_last).
MAX_BLOCK_L = 1024
MAX_BLOCK_C = 256
# A program that reduces part of a row gets at least this many tiles, so splitting
# the reduction only happens where a row is long enough to be worth it.
MIN_TILES_PER_SPLIT = 2
# Reduce/apply programs wanted per streaming multiprocessor before rows are split along L.
PROGRAMS_PER_SM = 4

# ---------------------------------------------------------------------------------------
# Launch accounting


LAUNCHES: "collections.Counter[str]" = collections.Counter()
# When a list, every launch also appends (kernel, grid, args, kwargs) to it (record_launches).
_RECORDING: Optional[list] = None


def kernel_name(kernel) -> str:
    return kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__


def launch(kernel, grid: Tuple[int, ...], *args, **kwargs) -> None:
    """Launches `kernel[grid](*args, **kwargs)` and counts it in LAUNCHES under its name.

    Every launcher of this package goes through here, so a test can count the kernels an
    op runs (see count_launches)."""
    LAUNCHES[kernel_name(kernel)] += 1
    if _RECORDING is not None:
        _RECORDING.append((kernel, grid, args, kwargs))
    kernel[grid](*args, **kwargs)


@contextlib.contextmanager
def record_launches() -> Iterator[list]:
    """Records every launch made inside the block as (kernel, grid, args, kwargs)
    (used by compile_check to compile exactly what the ops launch)."""
    global _RECORDING
    saved, _RECORDING = _RECORDING, []
    try:
        yield _RECORDING
    finally:
        _RECORDING = saved


@contextlib.contextmanager
def count_launches() -> Iterator["collections.Counter[str]"]:
    """Counts the kernel launches made inside the block, by kernel name:

        with count_launches() as launched:
            op(...)
        assert sum(launched.values()) <= 2
    """
    before = LAUNCHES.copy()
    counted: "collections.Counter[str]" = collections.Counter()
    try:
        yield counted
    finally:
        counted.update(LAUNCHES - before)


# ---------------------------------------------------------------------------------------
# Tiling overrides (a real parameter of plan_tiling, settable for a whole op call)


@dataclass
class _Overrides:
    max_l_per_program: Optional[int] = None
    programs_target: Optional[int] = None


_OVERRIDES = _Overrides()


@contextlib.contextmanager
def tiling_overrides(max_l_per_program: Optional[int] = None,
                     programs_target: Optional[int] = None) -> Iterator[None]:
    """Within the block, ops plan their tiling with these values instead of the defaults.

    max_l_per_program: no reduce/apply program covers more than this many positions of L
    (forces the split reduction on small inputs, e.g. under the interpreter).
    programs_target: how many programs a launch should have before rows are split."""
    saved = (_OVERRIDES.max_l_per_program, _OVERRIDES.programs_target)
    _OVERRIDES.max_l_per_program, _OVERRIDES.programs_target = max_l_per_program, programs_target
    try:
        yield
    finally:
        _OVERRIDES.max_l_per_program, _OVERRIDES.programs_target = saved


def interpreting() -> bool:
    """True when kernels run in the Triton interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def device_function(fn):
    """Decorator of the device functions the kernels call: triton.jit, except under the
    interpreter, where the undecorated function runs the same code. (The interpreter
    re-patches triton.language on every call of a jitted helper, a few milliseconds each:
    without this, most of the interpreted test time goes there.)"""
    return fn if interpreting() else triton.jit(fn)


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 1 for the interpreter (CPU tensors),
    which runs programs one after the other."""
    if device.type != "cuda":
        return 1
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def programs_target(device: torch.device) -> int:
    """Programs a streaming launch should have to fill `device`.

    On a GPU: a few per SM. In the interpreter (CPU tensors) programs run one after the
    other, so one program per row is all the parallelism there is: 1."""
    if _OVERRIDES.programs_target is not None:
        return _OVERRIDES.programs_target
    return PROGRAMS_PER_SM * sm_count(device) if device.type == "cuda" else 1


# ---------------------------------------------------------------------------------------
# (N, C, L) views


def channel_strides(t: torch.Tensor) -> Optional[Tuple[int, int, int]]:
    """(stride_n, stride_c, stride_l) of t viewed as (N, C, L), or None when the spatial
    dims of t do not merge into a single stride (e.g. x[..., :-1] of an NCHW tensor)."""
    sizes, strides = [], []
    for size, stride in zip(t.shape[2:], t.stride()[2:]):
        if size != 1:  # a size-1 dim never moves the offset
            sizes.append(size)
            strides.append(stride)
    for i in range(len(sizes) - 1):
        if strides[i] != strides[i + 1] * sizes[i + 1]:
            return None
    return t.stride(0), t.stride(1), (strides[-1] if strides else 1)


def input_view(t: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int, int]]:
    """t (or, if its spatial dims do not merge into one stride, t.contiguous()) and its
    (N, C, L) strides. The copy is the only one this package ever makes of a feature map,
    and only for such unmergeable views (e.g. x[..., :-1] or permuted spatial dims)."""
    strides = channel_strides(t)
    if strides is None:
        t = t.contiguous()
        strides = channel_strides(t)
    return t, strides


class OutputView:
    """An output allocated by the op (torch.empty_like of an input, as the fake
    implementations promise). If its spatial dims do not merge (only for a dense input
    with permuted spatial dims), kernels write a contiguous buffer that finish() copies
    into the output."""

    def __init__(self, out: torch.Tensor):
        self.out = out
        strides = channel_strides(out)
        self.buffer = out if strides is not None else torch.empty(out.shape, dtype=out.dtype,
                                                                   device=out.device)
        self.strides = strides if strides is not None else channel_strides(self.buffer)

    def finish(self) -> torch.Tensor:
        if self.buffer is not self.out:
            self.out.copy_(self.buffer)
        return self.out


def spatial_size(t: torch.Tensor) -> int:
    size = 1
    for s in t.shape[2:]:
        size *= s
    return size


# ---------------------------------------------------------------------------------------
# Tiling


@dataclass(frozen=True)
class ChannelTiling:
    """How a (N, C, L) pass is cut into programs; a function of shape and strides only.

    A program owns BLOCK_C channels of one sample (or, for the SE apply, of a few samples)
    and positions [k * l_per_split, (k + 1) * l_per_split) of L, walked in [BLOCK_C, BLOCK_L]
    tiles. The reduce and the apply use the same cut, so split k of the reduce and of the
    apply touch the same bytes."""
    block_c: int
    block_l: int
    c_blocks: int
    splits: int
    l_per_split: int
    num_warps: int
    l_major: bool


def plan_tiling(n: int, c: int, l: int, stride_c: int, stride_l: int, *, target_programs: int,
                max_l_per_program: Optional[int] = None) -> ChannelTiling:
    """Tile shape, split of L and warps for a pass over an (n, c, l) map.

    Layout: when L is the unit-stride (or smaller-stride) axis (NCHW), tiles are long along
    L and few channels deep; when C is (channels_last), tiles are wide along C and a few
    positions of L deep. Either way each tile is TILE_ELEMS elements at most, and loads
    along the short-stride axis are contiguous.

    Split: a row (one sample, BLOCK_C channels) is reduced by `splits` programs when the
    n * c_blocks rows alone would give fewer than `target_programs` programs (large L, small
    N * C), or when L exceeds `max_l_per_program`. Each split writes its own partial sums;
    consumers add them in split order, so the result does not depend on scheduling."""
    l_major = l > 1 and abs(stride_l) <= abs(stride_c)
    # a program never covers more than max_l_per_program positions, so tiles are no longer
    max_block_l = MAX_BLOCK_L
    if max_l_per_program is not None and max_l_per_program > 0:
        max_block_l = min(max_block_l, 1 << (max_l_per_program.bit_length() - 1))
    if l_major:
        block_l = min(triton.next_power_of_2(l), max_block_l)
        block_c = min(triton.next_power_of_2(c), max(1, TILE_ELEMS // block_l))
    else:
        block_c = min(triton.next_power_of_2(c), MAX_BLOCK_C)
        block_l = min(triton.next_power_of_2(max(l, 1)), max(1, TILE_ELEMS // block_c), max_block_l)
    c_blocks = triton.cdiv(c, block_c)
    rows = n * c_blocks
    tiles = triton.cdiv(max(l, 1), block_l)
    splits = 1
    if rows < target_programs:
        splits = max(1, min(triton.cdiv(target_programs, max(rows, 1)), tiles // MIN_TILES_PER_SPLIT))
    if max_l_per_program is not None and max_l_per_program > 0:
        splits = max(splits, triton.cdiv(l, max_l_per_program))
    l_per_split = triton.cdiv(triton.cdiv(max(l, 1), splits), block_l) * block_l
    splits = triton.cdiv(max(l, 1), l_per_split)
    elems = block_c * block_l
    num_warps = 8 if elems >= 4096 else (4 if elems >= 512 else 2)
    return ChannelTiling(block_c=block_c, block_l=block_l, c_blocks=c_blocks, splits=splits,
                         l_per_split=l_per_split, num_warps=num_warps, l_major=l_major)


def tiling_for(x: torch.Tensor, x_strides: Tuple[int, int, int], *,
               max_l_per_program: Optional[int] = None) -> ChannelTiling:
    """plan_tiling for the map x (its strides pick the layout), with the device's target
    and the active tiling_overrides as defaults."""
    if max_l_per_program is None:
        max_l_per_program = _OVERRIDES.max_l_per_program
    return plan_tiling(x.shape[0], x.shape[1], spatial_size(x), x_strides[1], x_strides[2],
                       target_programs=programs_target(x.device), max_l_per_program=max_l_per_program)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of a map: float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_acc_dtype(dtype: torch.dtype):
    import triton.language as tl
    return tl.float64 if dtype == torch.float64 else tl.float32


def split_epsilon(epsilon: float) -> Tuple[float, float]:
    """epsilon as hi + lo, two float32-representable numbers.

    Triton passes Python floats as float32; the kernels rebuild epsilon in the accumulation
    dtype as hi + lo, which keeps ~48 bits of it for float64 (1e-5 in float32 alone is off
    by 2.5e-8 relative)."""
    import numpy as np
    hi = float(np.float32(epsilon))
    lo = float(np.float32(epsilon - hi))
    return hi, lo


def check_index_range(t: torch.Tensor, strides: Tuple[int, int, int], name: str) -> None:
    """Kernels index within one sample in int32 (sample bases are int64): a sample must
    span fewer than 2**31 elements."""
    n, c, l = t.shape[0], t.shape[1], spatial_size(t)
    span = (c - 1) * abs(strides[1]) + (l - 1) * abs(strides[2]) + 1 if c and l else 0
    if span >= 2 ** 31:
        raise ValueError(f"{name}: one sample spans {span} elements; the Triton kernels support "
                         "fewer than 2**31 per sample")
