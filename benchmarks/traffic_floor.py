"""The DRAM traffic floor of a fused forward+backward on CPU, and what it leaves against
torch.compile.

The forward reads x and writes y; the backward reads x and dy and writes dx. With the caches
evicted before each call (as in the benchmark) none of those five passes over the map can
cost less than the same pass on its own, so no forward+backward can take less than

    floor = 3 reads + 2 writes of the map

each timed here: a read (`x.sum()`) and a write (`fill_` of a tensor of the map's size),
against the benchmark's unit, a copy (`x.clone()`, one read and one write). Timed in the same
process, interleaved call by call with the caches evicted: those three, the fused forward
(under `no_grad`), the fused backward alone (`autograd.backward` of a kept forward output),
forward+backward as the benchmark times it, and `torch.compile` of the published eager module
(forward+backward). `compile / floor` is then the most that any forward+backward could be
faster than torch.compile on this machine in this run.

    python benchmarks/traffic_floor.py                  # GCT and SE, 8x256x56x56, both layouts
    python benchmarks/traffic_floor.py --op se --layout channels_last --reps 60
    python benchmarks/traffic_floor.py --no-compile     # seconds, not a minute

Prints per op and layout the median of each as a multiple of the copy, the floor, and the
ratios between them.
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gct_fused.bench import (Case, CacheFlush, _csv, _eager_module, _fused_module, _fwdbwd_call,  # noqa: E402
                             _layout, _map_shape, _stable_allocator)

LAYOUTS = ("nchw", "channels_last")


def _backward_only(module, x, dy):
    """The backward of one kept forward output (graph retained), gradients fresh each call."""
    xg = x.detach().requires_grad_(True)
    params = list(module.parameters())
    y = module(xg)

    def run():
        xg.grad = None
        for p in params:
            p.grad = None
        torch.autograd.backward(y, dy, retain_graph=True)
    return run


def _time(fns, reps, flush):
    """Median seconds of each callable: interleaved call by call, caches evicted before each.
    Entries marked no_grad run under one no_grad held around their calls."""
    t = {k: [] for k in fns}
    for f, _ in fns.values():  # warm-up: compiles, first-touch allocations
        f()
        f()
    for _ in range(reps):
        for k, (f, no_grad) in fns.items():
            flush()
            with torch.no_grad() if no_grad else torch.enable_grad():
                t0 = time.perf_counter()
                f()
                t[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in t.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=40, help="timed calls per callable (default 40)")
    parser.add_argument("--shape", default="8x256x56x56", help="N x C x H x W of the map (default 8x256x56x56)")
    parser.add_argument("--op", type=_csv, default=["gct", "se"], help="comma list of gct, se (default both)")
    parser.add_argument("--layout", type=_csv, default=list(LAYOUTS),
                        help="comma list of nchw, channels_last (default both)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    args = parser.parse_args()
    shape = _map_shape(parser, args.shape)
    if args.reps < 1:
        parser.error(f"--reps: expected a positive integer, got {args.reps}")
    if not args.op or any(op not in ("gct", "se") for op in args.op):
        parser.error(f"--op: expected a comma list of gct, se, got {args.op!r}")
    if not args.layout or any(layout not in LAYOUTS for layout in args.layout):
        parser.error(f"--layout: expected a comma list of nchw, channels_last, got {args.layout!r}")
    _stable_allocator()
    flush = CacheFlush(True)
    print(f"threads {torch.get_num_threads()}, float32, caches evicted before each call, "
          f"median of {args.reps}, as a multiple of a copy of the map")
    g = torch.Generator().manual_seed(0)
    base, dy_base = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    for op in args.op:
        case = Case(op, args.shape, shape, rd=max(shape[1] // 16, 1))
        eager = _eager_module(case, "cpu", torch.float32)
        fused = _fused_module(case, eager, "cpu")
        compiled = None if args.no_compile else torch.compile(eager)
        for layout in args.layout:
            x, dy = _layout(base, layout), _layout(dy_base, layout)
            out = torch.empty_like(x)
            fns = {
                "copy": (lambda: x.clone(), True),
                "read": (lambda: x.sum(), True),
                "write": (lambda: out.fill_(0.5), True),
                "fwd": (lambda: fused(x), True),
                "bwd": (_backward_only(fused, x, dy), False),
                "fwd+bwd": (_fwdbwd_call(fused, x, dy), False),
            }
            if compiled is not None:
                fns["compile fwd+bwd"] = (_fwdbwd_call(compiled, x, dy), False)
            med = _time(fns, args.reps, flush)
            r = {k: v / med["copy"] for k, v in med.items()}
            floor = 3 * r["read"] + 2 * r["write"]
            print(f"{op} {args.shape} {layout}: copy {med['copy'] * 1e3:.3f} ms")
            print("  " + "  ".join(f"{k} {v:.2f}" for k, v in r.items() if k != "copy"))
            line = (f"  floor (3 reads + 2 writes) {floor:.2f}; fused fwd+bwd {r['fwd+bwd'] / floor:.2f}x the floor "
                    f"(fwd {r['fwd'] / (r['read'] + r['write']):.2f}x its 1 read + 1 write, "
                    f"bwd {r['bwd'] / (2 * r['read'] + r['write']):.2f}x its 2 reads + 1 write)")
            if compiled is not None:
                line += (f"; compile / fused {r['compile fwd+bwd'] / r['fwd+bwd']:.2f}x, "
                         f"compile / floor {r['compile fwd+bwd'] / floor:.2f}x")
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
