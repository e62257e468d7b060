"""Memory-system facts of this CPU that bound the fused kernels: how fast a tensor is read
from DRAM (caches evicted first, as the benchmark does), how fast it is read again right
after (from the last-level cache when it fits), and a copy and a write-only pass of it.

    python benchmarks/cpu_memory.py            # sizes of the benchmark's maps, 2 threads

A fused reduce -> head -> apply forward reads x twice (the second time from cache when the
chunk fits) and writes y once; x.clone() reads once and writes once. So the fused forward
costs about copy + re-read: its ratio to the copy is bounded below by
1 + (re-read time / copy time), which this script measures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gct_fused.bench import CacheFlush, _stable_allocator  # noqa: E402


def _median_ms(fn, before, reps):
    times = []
    for _ in range(reps):
        before()
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, nargs="*", default=[3.2, 6.4, 12.8, 25.7],
                        help="tensor sizes in MB (default: the benchmark's 7x7 ... 56x56 maps)")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    _stable_allocator()
    flush = CacheFlush(True)
    print(f"threads {torch.get_num_threads()}, caches evicted by reading {flush.bytes >> 20} MB")
    print("| MB | read, cold (GB/s) | read again at once (GB/s) | copy, cold (GB/s, r+w) | write only, cold (GB/s) "
          "| re-read / copy |")
    print("|---|---|---|---|---|---|")
    for mb in args.mb:
        x = torch.ones(int(mb * 1e6) // 4)
        y = torch.empty_like(x)
        nbytes = x.numel() * 4
        cold = _median_ms(lambda: x.sum(), flush, args.reps)
        again = _median_ms(lambda: x.sum(), lambda: (flush(), x.sum()), args.reps)
        copy = _median_ms(lambda: y.copy_(x), flush, args.reps)
        write = _median_ms(lambda: y.fill_(1.0), flush, args.reps)

        def gbps(ms, passes=1):
            return passes * nbytes / (ms * 1e-3) / 1e9

        print(f"| {mb} | {cold:.3f} ms ({gbps(cold):.0f}) | {again:.3f} ms ({gbps(again):.0f}) | "
              f"{copy:.3f} ms ({gbps(copy, 2):.0f}) | {write:.3f} ms ({gbps(write):.0f}) | {again / copy:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
