"""A whole network before and after gct_fused.convert(): how much of a model's time the
fused SE/GCT blocks save end to end, on CPU, in inference (torch.inference_mode).

    python benchmarks/whole_network.py                                  # EfficientNet-B0, batch 1
    python benchmarks/whole_network.py --model seresnet50 --batch 8     # a timm model
    python benchmarks/whole_network.py --model mobilenet_v3_large --reps 100

Times the original model, the converted one, and the converted one with the direct C++
entries of the forward ops switched off (gct_fused.functional._DIRECT = None: every call
through the Python checks and torch.ops, as before commit cd74589), interleaved call by call
in shuffled order, caches warm (a network's own layers are what evicts them). Random
weights (no download): the time does not depend on their values. Prints the median of each
and its speed relative to the original; the outputs are checked to agree first.

The share of a network's time in its SE blocks is small (convolutions dominate), so the
end-to-end gain is a few percent; gct_fused.bench measures the blocks themselves.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gct_fused  # noqa: E402
from gct_fused import functional  # noqa: E402

TORCHVISION_MODELS = ("efficientnet_b0", "mobilenet_v3_large", "mobilenet_v3_small", "regnet_y_400mf")


def build(name: str) -> torch.nn.Module:
    """A torchvision model by name (see TORCHVISION_MODELS), else a timm model, random weights."""
    if name in TORCHVISION_MODELS:
        import torchvision
        return getattr(torchvision.models, name)(weights=None)
    import timm
    return timm.create_model(name, pretrained=False)


def measure(name: str, batch: int, resolution: int, reps: int, seed: int = 0) -> dict:
    """Median seconds per forward of each variant, and the number of blocks convert() replaced."""
    torch.manual_seed(seed)
    original = build(name).eval()
    converted, records = gct_fused.convert(copy.deepcopy(original), report=True)
    converted.eval()
    replaced = sum(r.action == "replaced" for r in records)
    x = torch.randn(batch, 3, resolution, resolution)
    direct = functional._DIRECT

    def python_path():
        functional._DIRECT = None
        try:
            return converted(x)
        finally:
            functional._DIRECT = direct

    variants = {"original": lambda: original(x), "converted": lambda: converted(x)}
    if direct is not None:
        variants["converted, Python path"] = python_path
    with torch.inference_mode():
        expected = original(x)
        for run in variants.values():
            torch.testing.assert_close(run(), expected, rtol=1e-4, atol=1e-4)
            run()  # warm-up
        samples = {k: [] for k in variants}
        for _ in range(reps):
            order = list(variants)
            random.shuffle(order)
            for k in order:
                t0 = time.perf_counter()
                variants[k]()
                samples[k].append(time.perf_counter() - t0)
    return {"replaced": replaced, "median_s": {k: statistics.median(v) for k, v in samples.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_b0",
                        help=f"torchvision ({', '.join(TORCHVISION_MODELS)}) or timm model name")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument("--resolution", type=int, default=224, help="input height and width (default 224)")
    parser.add_argument("--reps", type=int, default=40, help="timed forwards per variant (default 40)")
    args = parser.parse_args(argv)
    for flag in ("batch", "resolution", "reps"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag}: expected a positive integer, got {getattr(args, flag)}")
    result = measure(args.model, args.batch, args.resolution, args.reps)
    base = result["median_s"]["original"]
    print(f"{args.model}, batch {args.batch}, {args.resolution}x{args.resolution}, float32, "
          f"{torch.get_num_threads()} threads, inference_mode, {result['replaced']} blocks replaced, "
          f"median of {args.reps}")
    for k, m in result["median_s"].items():
        print(f"  {k:24s} {m * 1e3:9.2f} ms  {base / m:.3f}x the original's speed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
