"""Compiles every kernel configuration the ops launch for a GPU target, without a GPU.

The interpreter (how CI runs the kernels on CPU) is more permissive than the compiler: it
accepts code that fails to lower for a GPU (shapes, dtypes, specialised arguments). This
check closes that gap on a machine without a GPU:

  1. in a child process with TRITON_INTERPRET=1, run the ops on small CPU inputs that take
     every code path (layouts, dtypes, modes, variants, split reduction) and record each
     launch: kernel, argument types and values of the constexprs;
  2. here, without the interpreter, specialise the arguments as Triton's launcher does
     (ints equal to 1 become constants, 16-divisible ints and pointers get the divisibility
     hint) and compile each distinct configuration to a cubin for GPUTarget("cuda", arch)
     with the ptxas Triton ships.

    python -m gct_fused.triton_kernels.compile_check [--arch 90] [--level smoke|full]

Exits non-zero and prints the failing configuration if any kernel fails to compile.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time


# What each level runs, as (layout, dtype, split rows, every variant or one of each op).
# "smoke" takes every kernel and every constexpr branch once (float16 NCHW, all variants),
# plus split rows and a float64 channels_last map; "full" runs every variant everywhere.
LEVELS = {
    "smoke": (("nchw", "float16", False, True), ("nchw", "float16", True, False),
              ("channels_last", "float64", False, False)),
    "full": tuple((layout, dtype, split, True)
                  for layout, dtype in (("nchw", "float16"), ("channels_last", "float32"),
                                        ("strided", "bfloat16"), ("nchw", "float64"), ("channels_last", "float64"))
                  for split in ((False, True) if layout == "nchw" else (False,))),
}


def _record_cases(level: str):
    """Run the ops under the interpreter and return the recorded launch specs."""
    import torch

    from gct_fused import triton_ops  # noqa: F401  (registers the ops)
    from gct_fused.triton_kernels import launch as launch_mod

    ops = torch.ops.gct_fused
    g = torch.Generator().manual_seed(0)

    def rand(*shape, dtype=torch.float32):
        return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)

    def layout(x, name):
        if name == "channels_last":
            return x.movedim(1, -1).contiguous().movedim(-1, 1)
        if name == "strided":
            wide = torch.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype)
            wide[..., ::2] = x
            return wide[..., ::2]
        return x.contiguous()

    with launch_mod.record_launches() as launches:
        for name, dtype_name, split, every_variant in LEVELS[level]:
            dtype = getattr(torch, dtype_name)
            pdtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
            shape = (1, 3, 70) if split else (2, 6, 5, 7)
            gct_modes = (("l2", False), ("l1", False), ("l1", True)) if every_variant else (("l2", False),)
            se_variants = ((("relu", "sigmoid", True), ("silu", "hardsigmoid", False)) if every_variant
                           else (("relu", "sigmoid", True),))
            epilogues = ("relu", "none") if every_variant else ("relu",)
            with launch_mod.tiling_overrides(max_l_per_program=32 if split else None):
                x = layout(rand(*shape, dtype=dtype), name)
                dy = layout(rand(*shape, dtype=dtype), name)
                c = shape[1]
                a, gm, b = (rand(c, dtype=pdtype) for _ in range(3))
                for mode, after_relu in gct_modes:
                    y, stats = ops.triton_gct_forward(x, a, gm, b, 1e-5, mode, after_relu)
                    ops.triton_gct_backward(dy, x, a, gm, b, stats, 1e-5, mode, after_relu)
                w1, b1, w2, b2 = rand(3, c, dtype=pdtype), rand(3, dtype=pdtype), rand(c, 3, dtype=pdtype), \
                    rand(c, dtype=pdtype)
                for act, gate_, bias in se_variants:
                    bb1, bb2 = (b1, b2) if bias else (None, None)
                    y, pooled = ops.triton_se_forward(x, w1, bb1, w2, bb2, act, gate_)
                    ops.triton_se_backward(dy, x, w1, bb1, w2, bb2, pooled, act, gate_)
                for after in epilogues:
                    y, pooled = ops.triton_se_residual_forward(x, dy, w1, b1, w2, b2, "relu", "sigmoid", after)
                ops.triton_se_residual_backward(dy, x, y, w1, b1, w2, b2, pooled, "relu", "sigmoid")
    return [_spec(kernel, args, kwargs) for kernel, _grid, args, kwargs in launches]


def _tag(value):
    import torch
    import triton.language as tl

    if isinstance(value, torch.Tensor):
        names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}
        return {"ptr": names[value.dtype], "aligned": value.data_ptr() % 16 == 0}
    if isinstance(value, tl.dtype):
        return {"tl_dtype": value.name}
    if isinstance(value, bool):
        return {"bool": value}
    if isinstance(value, int):
        return {"int": value}
    if isinstance(value, float):
        return {"float": value}
    raise TypeError(f"cannot record an argument of type {type(value).__name__}")


def _spec(kernel, args, kwargs):
    from gct_fused.triton_kernels.launch import kernel_name

    module = kernel.fn.__module__ if hasattr(kernel, "fn") else kernel.__module__
    return {"module": module, "kernel": kernel_name(kernel), "args": [_tag(a) for a in args],
            "kwargs": {k: _tag(v) for k, v in kwargs.items()}}


def _signature(fn, spec):
    """(signature, constexprs, attrs, options) as Triton's launcher would build them."""
    import triton.language as tl

    values = list(spec["args"])
    kwargs = dict(spec["kwargs"])
    options = {}
    for key in ("num_warps", "num_stages"):
        if key in kwargs:
            options[key] = kwargs.pop(key)["int"]
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(fn.params):
        tag = values[i] if i < len(values) else kwargs[param.name]
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            if "tl_dtype" in tag:
                constexprs[param.name] = getattr(tl, {"fp32": "float32", "fp64": "float64"}[tag["tl_dtype"]])
            else:
                constexprs[param.name] = next(iter(tag.values()))
            continue
        specialize = not param.do_not_specialize
        if "ptr" in tag:
            signature[param.name] = "*" + tag["ptr"]
            if tag["aligned"] and not param.do_not_specialize_on_alignment:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif "bool" in tag:
            signature[param.name] = "u1"
        elif "float" in tag:
            signature[param.name] = "fp32"
        else:
            v = tag["int"]
            if specialize and v == 1:
                signature[param.name] = "constexpr"
                constexprs[param.name] = 1
                continue
            signature[param.name] = "i32" if -2 ** 31 <= v < 2 ** 31 else "i64"
            if specialize and v % 16 == 0 and not param.do_not_specialize_on_alignment:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs, options


def _compile_one(spec_json: str, arch: int):
    """Compiles one spec; returns None or a line describing the failure."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    spec = json.loads(spec_json)
    fn = getattr(importlib.import_module(spec["module"]), spec["kernel"])
    signature, constexprs, attrs, options = _signature(fn, spec)
    try:
        triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", arch, 32),
                       options=options)
    except Exception as exc:  # report every failing configuration, then fail
        return f"FAILED {spec['kernel']} {signature} {constexprs}: {type(exc).__name__}: {exc}"
    return None


def compile_specs(specs, arch: int, workers: int = 0) -> int:
    """Compiles each distinct spec (on `workers` processes, default one per CPU); returns
    the number of failures, each printed."""
    from concurrent.futures import ProcessPoolExecutor

    distinct = sorted({json.dumps(spec, sort_keys=True) for spec in specs})
    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(_compile_one, distinct, [arch] * len(distinct)))
    failures = [r for r in results if r is not None]
    for line in failures:
        print(line)
    print(f"compiled {len(distinct) - len(failures)}/{len(distinct)} kernel configurations for sm_{arch}")
    return len(failures)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 for H100")
    parser.add_argument("--level", choices=sorted(LEVELS), default="full",
                        help="smoke: every kernel and branch once; full: every variant, layout and dtype")
    parser.add_argument("--record", help=argparse.SUPPRESS)  # child: record specs to this file
    args = parser.parse_args(argv)
    if args.record:
        with open(args.record, "w") as f:
            json.dump(_record_cases(args.level), f)
        return 0
    if os.environ.get("TRITON_INTERPRET", "0") == "1":  # compiling needs the real compiler
        env = dict(os.environ)
        env.pop("TRITON_INTERPRET")
        return subprocess.call([sys.executable, "-m", __spec__.name, *(argv or sys.argv[1:])], env=env)
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "specs.json")
        env = dict(os.environ, TRITON_INTERPRET="1")
        child = [sys.executable, "-m", __spec__.name, "--record", path, "--level", args.level]
        subprocess.run(child, env=env, check=True)
        with open(path) as f:
            specs = json.load(f)
    failures = compile_specs(specs, args.arch)
    print(f"compile check took {time.time() - start:.1f}s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
