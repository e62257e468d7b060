"""Ratios between variants of the same fused forward on CPU: bfloat16 against float32
throughput, and channels_last against NCHW time. All four variants of an op (2 dtypes x 2
layouts), and a copy of the float32 map, are timed in one process, interleaved call by
call with the caches evicted before each (as in the benchmark): a ratio taken across two
benchmark runs, or two loops, mixes in the drift of a shared machine (a copy of the same
bytes varied 1.0 -> 1.5 ms between two cases of one benchmark run here).

    python benchmarks/variant_ratios.py            # GCT and SE, ResNet-50 layer1 (8x256x56x56)
    python benchmarks/variant_ratios.py --reps 100
    python benchmarks/variant_ratios.py --shape 8x144x56x56 --op se   # another map, one op

Prints, per op, the median time of each variant, then float32 / bfloat16 time per layout
(the throughput ratio; 2.0 would be the bytes ratio) and channels_last / NCHW time per
dtype (1.0: no slower).
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gct_fused.bench import (Case, CacheFlush, _csv, _eager_module, _fused_module, _layout,  # noqa: E402
                             _map_shape, _stable_allocator)

LAYOUTS = ("nchw", "channels_last")
DTYPES = (torch.float32, torch.bfloat16)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=60, help="timed calls per variant (default 60)")
    parser.add_argument("--shape", default="8x256x56x56", help="N x C x H x W of the map (default 8x256x56x56)")
    parser.add_argument("--op", type=_csv, default=["gct", "se"], help="comma list of gct, se (default both)")
    args = parser.parse_args()
    shape = _map_shape(parser, args.shape)
    if not args.op or any(op not in ("gct", "se") for op in args.op):
        parser.error(f"--op: expected a comma list of gct, se, got {args.op!r}")
    _stable_allocator()
    fl = CacheFlush(True)
    print(f"threads {torch.get_num_threads()}, caches evicted before each call, median of {args.reps}")
    for op in args.op:
        case = Case(op, args.shape, shape, rd=16)
        base = torch.randn(case.shape, generator=torch.Generator().manual_seed(0))
        fns = {}
        for dt in DTYPES:
            eager = _eager_module(case, "cpu", dt)
            m = _fused_module(case, eager, "cpu")
            for layout in LAYOUTS:
                x = _layout(base.to(dt), layout)
                fns[(dt, layout)] = lambda m=m, x=x: m(x)
        x32 = base.clone()
        fns["copy"] = lambda: x32.clone()
        t = {k: [] for k in fns}
        with torch.no_grad():
            for f in fns.values():
                f()
                f()
            for _ in range(args.reps):
                for k, f in fns.items():
                    fl()
                    t0 = time.perf_counter()
                    f()
                    t[k].append((time.perf_counter() - t0) * 1e3)
        med = {k: statistics.median(v) for k, v in t.items()}
        names = {torch.float32: "float32", torch.bfloat16: "bfloat16"}
        print(f"{op}: copy (float32) {med['copy']:.3f} ms; " + "; ".join(
            f"{names[dt]} {layout} {med[(dt, layout)]:.3f} ms" for dt in DTYPES for layout in LAYOUTS))
        for layout in LAYOUTS:
            print(f"  {layout:13s} bfloat16 throughput / float32: "
                  f"{med[(torch.float32, layout)] / med[(torch.bfloat16, layout)]:.2f}")
        for dt in DTYPES:
            print(f"  {names[dt]:13s} channels_last time / NCHW: "
                  f"{med[(dt, 'channels_last')] / med[(dt, 'nchw')]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
