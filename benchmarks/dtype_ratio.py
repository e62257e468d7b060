"""bfloat16 against float32 throughput of the fused forward on CPU, both dtypes timed in one
process, interleaved call by call with the caches evicted before each (as in the benchmark):
a ratio taken across two benchmark runs mixes in the drift of a shared machine.

    python benchmarks/dtype_ratio.py          # GCT and SE, ResNet-50 layer1 (8x256x56x56)

Prints float32 time / bfloat16 time per op and layout (2.0 would be the bytes ratio).
"""

import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gct_fused.bench import Case, CacheFlush, _eager_module, _fused_module, _layout, _stable_allocator  # noqa: E402


def main() -> int:
    _stable_allocator()
    fl = CacheFlush(True)
    for op in ("gct", "se"):
        for layout in ("nchw", "channels_last"):
            case = Case(op, "resnet50.layer1", (8, 256, 56, 56), rd=16)
            fns = {}
            for dt in (torch.float32, torch.bfloat16):
                x = _layout(torch.randn(case.shape).to(dt), layout)
                eager = _eager_module(case, "cpu", dt)
                m = _fused_module(case, eager, "cpu")
                fns[dt] = lambda m=m, x=x: m(x)
            t = {dt: [] for dt in fns}
            with torch.no_grad():
                for f in fns.values():
                    f()
                    f()
                for _ in range(60):
                    for dt, f in fns.items():
                        fl()
                        t0 = time.perf_counter()
                        f()
                        t[dt].append((time.perf_counter() - t0) * 1e3)
            a, b = statistics.median(t[torch.float32]), statistics.median(t[torch.bfloat16])
            print(f"{op} {layout:13s} float32 {a:.3f} ms  bfloat16 {b:.3f} ms  throughput ratio {a / b:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
