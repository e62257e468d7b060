"""Runs the CUDA kernels of csrc/cuda on the CPU emulator and compares every op with the
CPU kernels of gct_fused._C (same inputs, all outputs, output strides, and bitwise
repeatability), over shapes and layouts chosen to reach every tiling path: warp and block
rows, reductions split along L, channel rows with and without vectors and with few or
many channels, vectors that cross rows, GCT gates staged in shared memory or not, inputs
whose spatial dims do not merge, and mixed layouts.

    python csrc/cuda/emulation/check_emulation.py [--quick] [--sms 4] [--filter gct]

Needs the repository's gct_fused importable (the CPU build) and the CUDA headers (for
cuda_runtime_api.h); no GPU. Every empty tensor is filled with NaN
(torch.use_deterministic_algorithms), so an output element a kernel forgets shows up.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

import torch
from torch.utils import cpp_extension

HERE = os.path.dirname(os.path.abspath(__file__))
CUDA_DIR = os.path.dirname(HERE)
CSRC = os.path.dirname(CUDA_DIR)
ROOT = os.path.dirname(CSRC)


def build(verbose: bool = False) -> None:
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    sources = [os.path.join(CSRC, "op_common.cpp"), os.path.join(CUDA_DIR, "channel_plan.cpp"),
               os.path.join(CUDA_DIR, "op_helpers.cpp")]
    sources += sorted(os.path.join(HERE, f) for f in os.listdir(HERE) if f.endswith(".cpp"))
    build_dir = os.environ.get("GCT_FUSED_EMULATION_BUILD", "/tmp/gct_fused_cuda_emulation")
    os.makedirs(build_dir, exist_ok=True)
    cflags = ["-O2", "-g", "-DGCT_FUSED_CUDA_EMULATION", "-include", os.path.join(HERE, "cuda_emulation.h"),
              "-Wall", "-Wno-unknown-pragmas"]
    ldflags = []
    if os.environ.get("GCT_FUSED_EMULATION_ASAN") == "1":
        # Out-of-bounds accesses of the kernels (what compute-sanitizer's memcheck finds on a
        # GPU). Run python with LD_PRELOAD=$(gcc -print-file-name=libasan.so) and
        # ASAN_OPTIONS=detect_leaks=0.
        cflags += ["-fsanitize=address", "-fno-omit-frame-pointer"]
        ldflags += ["-fsanitize=address"]
    cpp_extension.load(
        name="gct_fused_cuda_emulation", sources=sources, is_python_module=False, verbose=verbose,
        build_directory=build_dir, extra_cflags=cflags, extra_ldflags=ldflags,
        extra_include_paths=[CSRC, os.path.join(CSRC, "include"), CUDA_DIR, os.path.join(cuda_home, "include")])


# ------------------------------------------------------------------------------ inputs

def layout(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "nchw":
        return x.contiguous()
    if name == "channels_last":
        return x.movedim(1, -1).contiguous().movedim(-1, 1)
    if name == "strided":  # every other element of a twice-as-long last dim
        wide = torch.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype)
        wide[..., ::2] = x
        return wide[..., ::2]
    if name == "transposed":  # dense, spatial dims that do not merge
        if x.dim() < 4:
            return x.contiguous()
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    if name == "expanded":  # stride 0 everywhere (the gradient of y.sum())
        if x.numel() == 0:
            return x
        return x.flatten()[:1].reshape((1,) * x.dim()).expand(x.shape)
    raise ValueError(name)


def rand(shape, dtype, name, seed, positive=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if positive:
        x = x.abs()
    return layout(x.to(dtype), name)


def gct_params(c, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(0.5 + torch.rand(c, generator=g, dtype=torch.float64)).to(dtype),
            torch.randn(c, generator=g, dtype=torch.float64).to(dtype),
            (0.5 * torch.randn(c, generator=g, dtype=torch.float64)).to(dtype)]


def se_params(c, r, dtype, bias, seed=2):
    g = torch.Generator().manual_seed(seed)
    w1 = (torch.randn(r, c, generator=g, dtype=torch.float64) / c ** 0.5).to(dtype)
    w2 = (torch.randn(c, r, generator=g, dtype=torch.float64) / r ** 0.5).to(dtype)
    b1 = (0.1 * torch.randn(r, generator=g, dtype=torch.float64)).to(dtype) if bias else None
    b2 = (0.1 * torch.randn(c, generator=g, dtype=torch.float64)).to(dtype) if bias else None
    return [w1, b1, w2, b2]


TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (2e-5, 2e-5), torch.bfloat16: (2 ** -7, 2e-2),
       torch.float16: (2 ** -10, 2e-3)}


def compare(name, got, want, dtype):
    rtol, atol = TOL[dtype]
    for i, (g, w) in enumerate(zip(got, want)):
        if w is None:
            continue
        if g.shape != w.shape or g.dtype != w.dtype:
            raise AssertionError(f"{name}: output {i}: shape/dtype {tuple(g.shape)} {g.dtype} "
                                 f"vs {tuple(w.shape)} {w.dtype}")
        if w.dim() >= 2 and w.shape[0] > 0 and g.stride() != w.stride():
            raise AssertionError(f"{name}: output {i}: strides {g.stride()} vs {w.stride()}")
        if torch.isnan(g).any() and not torch.isnan(w).any():
            raise AssertionError(f"{name}: output {i}: NaN (an element never written?)")
        finite = w.double()[torch.isfinite(w.double())]
        scale = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
        torch.testing.assert_close(g.double(), w.double(), rtol=rtol, atol=atol * scale, equal_nan=True,
                                   msg=lambda m: f"{name}: output {i}: {m}")


def call_both(op, args, dtype, name):
    want = getattr(torch.ops.gct_fused, op)(*args)
    got = getattr(torch.ops.gct_fused_emu, op)(*args)
    again = getattr(torch.ops.gct_fused_emu, op)(*args)
    compare(f"{name} {op}", got, want, dtype)
    for i, (a, b) in enumerate(zip(got, again)):
        if not torch.equal(a.nan_to_num(), b.nan_to_num()):
            raise AssertionError(f"{name} {op}: output {i} differs between two identical calls")
    return want


# ------------------------------------------------------------------------------ cases

SHAPES = [
    (2, 5, 7, 3), (1, 1, 4, 4), (3, 6, 1, 1), (2, 7, 13), (2, 3, 2, 3, 5), (4, 9), (1, 16, 9, 9),
    (2, 24, 33, 33),   # warp rows; channel rows with vectors
    (1, 3, 80, 80),    # rows longer than a warp's: block rows, split along L
    (1, 40, 70, 70),   # block rows, no split
    (2, 2048, 2, 3),   # >= 256 channel groups per pass (channels_last)
    (3, 8, 1, 3),      # L < vector width: vectors cross rows
    (1, 9000, 1, 2),   # GCT gates beyond the shared-memory staging (channels_last)
    (10, 256, 2, 3),   # SE head as batched products (C * R >= 16384), two blocks of samples
]
QUICK_SHAPES = [(2, 5, 7, 3), (2, 24, 33, 33), (1, 3, 80, 80), (3, 8, 1, 3), (10, 256, 2, 3)]
LAYOUTS = ["nchw", "channels_last", "strided", "transposed"]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def gct_cases(shape, dtype, lay):
    c = shape[1]
    alpha, gamma, beta = gct_params(c, dtype)
    for mode, relu in (("l2", False), ("l1", False), ("l1", True)):
        name = f"gct {mode}{'+relu' if relu else ''} {shape} {lay} {dtype}"
        x = rand(shape, dtype, lay, 0, positive=relu)
        y, stats = call_both("gct_forward", (x, alpha, gamma, beta, 1e-5, mode, relu), dtype, name)
        for dy_layout in (lay, "nchw", "expanded"):
            dy = rand(shape, dtype, dy_layout, 3)
            call_both("gct_backward", (dy, x, alpha, gamma, beta, stats, 1e-5, mode, relu), dtype,
                      f"{name} dy:{dy_layout}")
    if dtype in (torch.bfloat16, torch.float16):  # float32 parameters with a half map
        x = rand(shape, dtype, lay, 0)
        p32 = gct_params(c, torch.float32)
        y, stats = call_both("gct_forward", (x, *p32, 1e-5, "l2", False), dtype, f"gct fp32-params {shape}")
        call_both("gct_backward", (rand(shape, dtype, lay, 3), x, *p32, stats, 1e-5, "l2", False), dtype,
                  f"gct fp32-params {shape}")


def se_cases(shape, dtype, lay):
    c = shape[1]
    r = max(1, min(c // 4, 64))
    x = rand(shape, dtype, lay, 0)
    dy = rand(shape, dtype, lay, 3)
    variants = [("relu", "sigmoid", True), ("silu", "hardsigmoid", False)]
    if dtype in (torch.bfloat16, torch.float16):
        variants.append(("silu", "sigmoid", "fp32"))
    for act, gate, bias in variants:
        pdtype = torch.float32 if bias == "fp32" else dtype
        w = se_params(c, r, pdtype, bias is not False)
        name = f"se {act}/{gate} bias={bias} {shape} {lay} {dtype}"
        y, pooled = call_both("se_forward", (x, *w, act, gate), dtype, name)
        call_both("se_backward", (dy, x, *w, pooled, act, gate), dtype, name)
        for dy_layout in ("nchw", "expanded"):
            call_both("se_backward", (rand(shape, dtype, dy_layout, 4), x, *w, pooled, act, gate), dtype,
                      f"{name} dy:{dy_layout}")
    w = se_params(c, r, dtype, True)
    identity = rand(shape, dtype, "nchw", 5)
    for after in ("relu", "none"):
        name = f"se_residual {after} {shape} {lay} {dtype}"
        y, pooled = call_both("se_residual_forward", (x, identity, *w, "relu", "sigmoid", after), dtype, name)
        if after == "relu":
            call_both("se_residual_backward", (dy, x, y, *w, pooled, "relu", "sigmoid"), dtype, name)


# Edge tensors: empty maps, C = 1, L = 1, NaN / inf in x, subnormal x.
EDGE_SHAPES = [(0, 3, 4, 4), (2, 3, 0, 4), (2, 0, 4, 4), (0, 0), (2, 3, 0), (0, 3), (2, 0), (1, 3, 2, 0, 2),
               (1, 1), (1, 1, 1, 1), (3, 1, 5, 5), (4, 7, 1, 1)]


def edge_cases():
    for shape in EDGE_SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            for lay in ("nchw", "channels_last") if len(shape) == 4 else ("nchw",):
                gct_cases(shape, dtype, lay)
                se_cases(shape, dtype, lay)
    for value in (float("nan"), float("inf"), float("-inf")):
        for lay in ("nchw", "channels_last"):
            x = rand((3, 64, 4, 5), torch.float32, "nchw", 0)
            x[1, 2, 3, 4] = value
            x = layout(x, lay)
            dy = rand(x.shape, torch.float32, lay, 3)
            name = f"x[1,2,3,4]={value} {lay}"
            for mode, relu in (("l2", False), ("l1", False), ("l1", True)):
                p = gct_params(64, torch.float32)
                y, stats = call_both("gct_forward", (x, *p, 1e-5, mode, relu), torch.float32, f"gct {mode} {name}")
                call_both("gct_backward", (dy, x, *p, stats, 1e-5, mode, relu), torch.float32, f"gct {mode} {name}")
            for act, gate in (("relu", "sigmoid"), ("silu", "hardsigmoid"), ("relu", "hardsigmoid")):
                w = se_params(64, 4, torch.float32, True)
                y, pooled = call_both("se_forward", (x, *w, act, gate), torch.float32, f"se {name}")
                call_both("se_backward", (dy, x, *w, pooled, act, gate), torch.float32, f"se {name}")
                identity = rand(x.shape, torch.float32, "nchw", 5)
                y, pooled = call_both("se_residual_forward", (x, identity, *w, act, gate, "relu"), torch.float32,
                                      f"se_residual {name}")
                call_both("se_residual_backward", (dy, x, y, *w, pooled, act, gate), torch.float32,
                          f"se_residual {name}")
    for dtype in (torch.float32, torch.float64):  # subnormal maps are not flushed to zero
        tiny = torch.finfo(dtype).smallest_normal
        x = (rand((2, 5, 4, 3), torch.float64, "nchw", 31).clamp(-3, 3) * (tiny / 4)).to(dtype)
        gct_cases_x = gct_params(5, dtype)
        y, stats = call_both("gct_forward", (x, *gct_cases_x, 1e-5, "l1", False), dtype, "gct subnormal")
        assert (y != 0).any(), "subnormal outputs flushed to zero"
        y, pooled = call_both("se_forward", (x, *se_params(5, 2, dtype, True), "silu", "hardsigmoid"), dtype,
                              "se subnormal")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few shapes, float32 and bfloat16")
    parser.add_argument("--sms", default="4", help="comma list of SM counts the plans assume (default 4)")
    parser.add_argument("--filter", default="", help="only ops whose name starts with this (gct, se)")
    parser.add_argument("--first-shape", type=int, default=0, help="start at this index of the shape list")
    parser.add_argument("--max-shapes", type=int, default=None,
                        help="stop after this many shapes of the list (CI runs --quick --max-shapes 4)")
    parser.add_argument("--edges-only", action="store_true", help="only the edge tensors (empty, NaN, ...)")
    parser.add_argument("--verbose-build", action="store_true")
    args = parser.parse_args(argv)

    sys.path.insert(0, ROOT)
    import gct_fused  # noqa: F401  (the CPU kernels: torch.ops.gct_fused)
    build(args.verbose_build)
    torch.use_deterministic_algorithms(True)  # empty tensors are filled with NaN
    torch.set_num_threads(1)

    edge_cases()
    print("edge tensors: ok", flush=True)
    if args.edges_only:
        return 0
    shapes = (QUICK_SHAPES if args.quick else SHAPES)[args.first_shape:]
    if args.max_shapes is not None:
        shapes = shapes[:args.max_shapes]
    dtypes = [torch.float32, torch.bfloat16] if args.quick else DTYPES
    count, t0 = 0, time.time()
    for sms in args.sms.split(","):
        os.environ["GCT_FUSED_EMULATED_SMS"] = sms
        for shape in shapes:
            for lay, dtype in itertools.product(LAYOUTS, dtypes):
                if shape[1] >= 2048 and (lay in ("strided", "transposed") or dtype == torch.float64):
                    continue  # the slow scalar paths are covered by the small shapes
                for prefix, fn in (("gct", gct_cases), ("se", se_cases)):
                    if prefix.startswith(args.filter) or args.filter.startswith(prefix):
                        fn(shape, dtype, lay)
                        count += 1
            print(f"sms={sms} {shape}: ok ({count} case groups, {time.time() - t0:.0f} s)", flush=True)
    print("all emulated CUDA ops match the CPU kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
