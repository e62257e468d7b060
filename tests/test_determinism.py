"""Bitwise reproducibility: forward and backward give identical bits on repeated runs and
whatever the number of CPU threads (torch.set_num_threads 1, 2, 3), on shapes that take every
code path of the CPU kernels (csrc/cpu/channel_skeleton.h):

  path kRowsAlongL (NCHW rows; many short rows per tile), kRowsAlongC (channels_last),
  kGeneric (spatial dims that do not merge, stride-0 gradients), both-ways-contiguous maps
  (C = 1 or L = 1); whole samples per thread (sample_parallel: samples that fit a core's L2,
  and, at 2 threads where a core has at most 1 MB of L2, larger samples an even batch of which
  would not fit the L2s as a shared chunk: large_samples_parallel) and chunks of samples
  shared by all threads (one chunk, or several chunks of several samples: 7 samples of 1.3 MB
  in chunks of 3, 3, 1 with 4 MB chunks); rows longer than 32768 split into L-tiles; outputs
  >= 8 MB written with streaming stores; float32, bfloat16 (two vectors per load) and float64.
  Which of the sample paths a shape takes depends on the thread count (1 and 3 threads share
  chunks where 2 take large samples whole), so the comparison across counts is also one
  between those paths.

The Triton kernels (under the interpreter here, on a GPU when there is one) are checked the
same way on small maps, with the reduction forced to split along L.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import gct_fused
from gct_fused import reference
from helpers import backend_device, check_against_reference, interpreted, make_gct_params, make_map, make_se_params

# (id, shape, layout of x, layout of dy, dtype)
CPU_CASES = [
    ("rows_along_L-sample_parallel", (8, 16, 33, 35), "nchw", "nchw", torch.float32),
    ("rows_along_L-short_rows", (16, 96, 7, 7), "nchw", "nchw", torch.bfloat16),
    ("rows_along_C-sample_parallel", (8, 64, 7, 9), "channels_last", "channels_last", torch.float32),
    ("rows_along_C-chunked", (2, 256, 40, 40), "channels_last", "channels_last", torch.bfloat16),
    ("rows_along_L-chunked", (2, 64, 64, 65), "nchw", "nchw", torch.float64),
    ("rows_along_L-several_chunks", (7, 64, 72, 72), "nchw", "nchw", torch.float32),
    ("rows_along_L-large_samples_per_thread", (4, 64, 64, 64), "nchw", "nchw", torch.float32),
    ("rows_along_C-large_samples_per_thread", (4, 256, 32, 32), "channels_last", "channels_last", torch.float32),
    ("generic-unmerged", (4, 8, 20, 21), "padded", "nchw", torch.float32),
    ("generic-expanded_dy", (4, 8, 20, 21), "nchw", "expanded", torch.float32),
    ("both_ways-C1", (8, 1, 32, 32), "nchw", "nchw", torch.float32),
    ("both_ways-L1", (8, 64, 1, 1), "nchw", "channels_last", torch.float32),
    ("split_L_tiles", (2, 3, 200, 201), "nchw", "nchw", torch.float32),
    ("split_L_tiles-one_sample", (1, 2, 70001), "nchw", "nchw", torch.bfloat16),
    ("streaming_stores-nchw", (2, 64, 183, 181), "nchw", "nchw", torch.float32),
    ("streaming_stores-channels_last", (2, 64, 183, 181), "channels_last", "channels_last", torch.float32),
]

THREADS = (1, 2, 3)


@contextlib.contextmanager
def num_threads(n: int):
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _tensor(shape, dtype, layout, seed):
    if layout == "expanded":  # the gradient of y.sum(): one value, strides 0
        return torch.full((), 0.75, dtype=dtype).expand(shape)
    if layout == "padded":  # a slice whose spatial dims do not merge
        big = make_map(tuple(s + 1 for s in shape), dtype, "cpu", seed=seed)
        return big[tuple(slice(1, 1 + s) for s in shape)]
    return make_map(shape, dtype, "cpu", layout, seed=seed)


def _ops(backend, C):
    """(name, fn(x, identity, *params), params) of every op variant, on CPU tensors."""
    gp = make_gct_params(C, torch.float32, "cpu")
    sp = make_se_params(C, max(C // 8, 2), torch.float32, "cpu")
    return [
        ("gct_l2", lambda x, i, *p: gct_fused.gct(x, *p, backend=backend), gp),
        ("gct_l1", lambda x, i, *p: gct_fused.gct(x, *p, mode="l1", backend=backend), gp),
        ("gct_l1_relu", lambda x, i, *p: gct_fused.gct(x, *p, mode="l1", after_relu=True, backend=backend), gp),
        ("se_silu_hardsigmoid", lambda x, i, *p: gct_fused.squeeze_excite(x, *p, "silu", "hardsigmoid",
                                                                          backend=backend), sp),
        ("se_residual_relu", lambda x, i, *p: gct_fused.se_residual(x, i, *p, backend=backend), sp),
    ]


def _run(fn, x, identity, params, dy):
    """Forward and backward: y and the gradients of x, identity (se_residual) and every parameter."""
    leaves = [x.detach().requires_grad_(True), identity.detach().requires_grad_(True)]
    p_leaves = [p.detach().requires_grad_(True) for p in params]
    y = fn(*leaves, *p_leaves)
    grads = torch.autograd.grad(y, leaves + p_leaves, dy, allow_unused=True)
    return [y.detach()] + [g for g in grads if g is not None]


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(-1).view(_INT_OF_SIZE[t.element_size()])


def _assert_bitwise(runs, what):
    """Every run's outputs have the bits of the first run's (NaN-safe; -0.0 != 0.0)."""
    first = runs[0]
    for k, other in enumerate(runs[1:], 1):
        assert len(other) == len(first)
        for j, (a, b) in enumerate(zip(first, other)):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert torch.equal(_bits(a), _bits(b)), f"{what}: output {j} of run {k} differs from run 0 in its bits"


@pytest.mark.parametrize("case", CPU_CASES, ids=[c[0] for c in CPU_CASES])
def test_cpu_bitwise_across_runs_and_thread_counts(case):
    backend_device("cpu")
    _, shape, layout, dy_layout, dtype = case
    x = _tensor(shape, dtype, layout, 1)
    dy = _tensor(shape, dtype, dy_layout, 2)
    identity = _tensor(shape, dtype, layout if layout != "padded" else "nchw", 3)
    for name, fn, params in _ops("cpu", shape[1]):
        params = [None if p is None else p.to(torch.float64 if dtype == torch.float64 else torch.float32)
                  for p in params]
        runs = []
        for threads in THREADS + (THREADS[-1],):  # the last count twice: repeat runs too
            with num_threads(threads):
                runs.append(_run(fn, x, identity, params, dy))
        _assert_bitwise(runs, f"cpu {name} {case[0]} (threads {THREADS + (THREADS[-1],)})")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels,hidden", [(96, 32), (96, 20), (2048, 128)])
def test_cpu_se_mlp_result_of_a_sample_does_not_depend_on_its_batch(channels, hidden, dtype):
    """The SE head's dot products (csrc/cpu/se_cpu.cpp, SeMlp) run in blocks of rows x eight
    samples, finished eight at a time (horizontal_sums8), and the samples left over one by
    one: a sample's gate must have the same bits whichever way it was computed. On 1 x 1
    maps the reduce and the apply are exact per element, so y and dx of each sample of a
    batch of 11 (8 in a block, 3 left over) are compared with that sample run alone."""
    backend_device("cpu")
    n = 11
    x = make_map((n, channels, 1, 1), dtype, "cpu", seed=1)
    dy = make_map((n, channels, 1, 1), dtype, "cpu", seed=2)
    pdtype = torch.float64 if dtype == torch.float64 else torch.float32
    params = make_se_params(channels, hidden, pdtype, "cpu")

    def y_and_dx(xs, dys):
        xs = xs.detach().requires_grad_(True)
        y = gct_fused.squeeze_excite(xs, *params, "silu", "sigmoid", backend="cpu")
        (dx,) = torch.autograd.grad(y, xs, dys)
        return [y.detach(), dx]

    batch = y_and_dx(x, dy)
    for i in (0, 5, 7, 8, 10):
        alone = y_and_dx(x[i:i + 1], dy[i:i + 1])
        _assert_bitwise([[t[i:i + 1] for t in batch], alone], f"sample {i} of {n} against alone")


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_fused_gpu_backends_bitwise_across_runs(backend, layout):
    """Triton (interpreted here) and CUDA: repeated runs, and (on the CPU) thread counts, give
    the same bits; the reduction is forced to split along L (partials combined in order)."""
    device = backend_device(backend)
    from gct_fused.triton_kernels.launch import tiling_overrides
    shape = (2, 3, 5, 9) if interpreted(backend, device) else (8, 96, 61, 67)
    x = make_map(shape, torch.float32, device, layout, seed=1)
    dy = make_map(shape, torch.float32, device, layout, seed=2)
    identity = make_map(shape, torch.float32, device, layout, seed=3)
    split = tiling_overrides(max_l_per_program=32) if backend == "triton" else contextlib.nullcontext()
    ops = _ops(backend, shape[1])
    if interpreted(backend, device):
        ops = [ops[0], ops[4]]
    with split:
        for name, fn, params in ops:
            params = [None if p is None else p.to(device) for p in params]
            runs = []
            for threads in ((1, 2, 2) if device.type == "cpu" else (2, 2, 2)):
                with num_threads(threads):
                    runs.append(_run(fn, x, identity, params, dy))
            _assert_bitwise(runs, f"{backend} {name} {layout}")


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_several_chunks_match_the_reference(layout):
    """Samples processed in several chunks of several samples (7 x 1.3 MB against a 4 MB
    chunk budget: chunks of 3, 3, 1) get their own statistics and gates, forward and
    backward, as the float64 reference computes them."""
    shape = (7, 64, 72, 72)
    x = make_map(shape, torch.float32, "cpu", layout)
    dy = make_map(shape, torch.float32, "cpu", layout, seed=3)
    check_against_reference(lambda *t: gct_fused.gct(*t, backend="cpu"), reference.gct,
                            [x, *make_gct_params(64, torch.float32, "cpu")], dy, torch.float32, "gct")
    check_against_reference(lambda *t: gct_fused.squeeze_excite(*t, backend="cpu"), reference.squeeze_excite,
                            [x, *make_se_params(64, 8, torch.float32, "cpu")], dy, torch.float32, "se")


def test_se_heavy_head_chunks_match_the_reference():
    """SE weights heavy enough that the chunks grow to four times the head's bytes
    (csrc/cpu/channel_skeleton.h, chunk_bytes): C = 2048, R = 256 reads 8 MB of weights per
    backward chunk, so the 24 samples of 1.3 MB (dy and x) go in two chunks of 12 instead
    of eight of 3; forward (4 MB of weights, 0.66 MB samples) in one chunk of 24 instead of
    four of 6. Gates, gradients and parameter gradients as the float64 reference's."""
    shape = (24, 2048, 9, 9)
    x = make_map(shape, torch.float32, "cpu")
    dy = make_map(shape, torch.float32, "cpu", seed=3)
    check_against_reference(lambda *t: gct_fused.squeeze_excite(*t, backend="cpu"), reference.squeeze_excite,
                            [x, *make_se_params(2048, 256, torch.float32, "cpu")], dy, torch.float32, "se")
