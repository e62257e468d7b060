"""The microbenchmark: fused GCT/SE vs the published eager modules vs torch.compile of them,
with a copy of the same tensor as the floor, on the best device present.

    python -m gct_fused.bench                      # everything, on CUDA if present, else CPU
    python -m gct_fused.bench --quick              # a few seconds (CI's smoke test)
    python -m gct_fused.bench --op gct --dtype bfloat16 --json out.json --markdown out.md --plot out.png

For every case (op, shape, layout, dtype, mode) and provider it reports the median time and
its spread (20th-80th percentile), the achieved bandwidth on the minimal bytes (forward: read
x, write y; forward+backward: that plus read x and dy, write dx), the time as a multiple of a
copy of the same tensor (x.clone(), one read + one write), the speedup of each fused backend
over eager and over torch.compile, and the peak memory allocated during one call beyond the
inputs. CPU timings interleave the providers repetition by repetition (so drift of a shared
machine hits all alike) and evict the CPU caches before every timed call (--warm keeps them).
Forward cases run with autograd off (one torch.no_grad() around all of a case's calls, as in
inference); forward+backward cases time module(x).backward(dy). CUDA timings use
triton.testing.do_bench, which flushes L2 between repetitions. The run ends with a summary per
fused backend (in how many cases it beat eager and torch.compile, the least speedup and where,
every case it did not win, its time as a multiple of the copy per mode), also written to the
markdown and JSON outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import glob
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

import gct_fused
from gct_fused import reference

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MODES = ("fwd", "fwdbwd")
LAYOUTS = ("nchw", "channels_last")


@dataclass(frozen=True)
class Case:
    op: str            # "gct" or "se"
    name: str          # where the shape comes from
    shape: tuple       # (N, C, *spatial)
    rd: int = 0        # SE hidden width
    activation: str = "relu"
    gate: str = "sigmoid"


def _cases(quick: bool) -> List[Case]:
    if quick:
        return [Case("gct", "tiny", (2, 64, 16, 16)), Case("se", "tiny", (2, 64, 16, 16), rd=16)]
    resnet = [("resnet50.layer1", (8, 256, 56, 56)), ("resnet50.layer2", (8, 512, 28, 28)),
              ("resnet50.layer3", (8, 1024, 14, 14)), ("resnet50.layer4", (8, 2048, 7, 7))]
    cases = [Case("gct", name, shape) for name, shape in resnet]
    cases.append(Case("gct", "video.r3d", (2, 64, 8, 56, 56)))
    # SE: SE-ResNet-50 (r=16), EfficientNet-B0 (SiLU, rd = block input / 4), MobileNetV3-L
    # (ReLU, hardsigmoid), and a video block.
    cases += [Case("se", name, shape, rd=shape[1] // 16) for name, shape in resnet]
    cases += [
        Case("se", "efficientnet_b0.stage2", (8, 144, 56, 56), rd=6, activation="silu"),
        Case("se", "efficientnet_b0.stage5", (8, 672, 14, 14), rd=28, activation="silu"),
        Case("se", "mobilenet_v3_large.block6", (8, 120, 28, 28), rd=32, gate="hardsigmoid"),
        Case("se", "video.r3d", (2, 64, 8, 56, 56), rd=4),
    ]
    return cases


# ---------------------------------------------------------------------------- providers

def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "nchw":
        return x.contiguous()
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
    return x.contiguous(memory_format=fmt) if fmt else x.movedim(1, -1).contiguous().movedim(-1, 1)


def _eager_module(case: Case, device, dtype) -> torch.nn.Module:
    """The published module, as users run it today (parameters in the map's dtype)."""
    channels = case.shape[1]
    if case.op == "gct":
        module = reference.GCT(channels)
        with torch.no_grad():  # trained-looking parameters: a non-trivial gate
            module.gamma.normal_(0, 0.5)
            module.beta.normal_(0, 0.5)
    else:
        module = reference.SqueezeExcite(channels, case.rd, case.activation, case.gate)
    return module.to(device=device, dtype=dtype)


def _fused_module(case: Case, eager: torch.nn.Module, backend: str) -> torch.nn.Module:
    channels = case.shape[1]
    if case.op == "gct":
        module = gct_fused.GCT(channels, backend=backend)
    else:
        module = gct_fused.SqueezeExcite(channels, case.rd, activation=case.activation, gate=case.gate,
                                         backend=backend)
    module = module.to(device=next(eager.parameters()).device, dtype=next(eager.parameters()).dtype)
    module.load_state_dict(eager.state_dict())
    return module


@dataclass
class Runner:
    """One provider's callable for a case: runs forward (and backward) once."""
    provider: str
    call: Callable[[], None]


def _fwdbwd_call(module: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor) -> Callable[[], None]:
    """module(x).backward(dy) on a leaf copy of x, with x's and the parameters' gradients
    reset before each call (so that no call accumulates into the previous one's)."""
    xg = x.detach().requires_grad_(True)
    params = list(module.parameters())

    def run():
        xg.grad = None
        for p in params:
            p.grad = None
        module(xg).backward(dy)
    return run


def _map_shape(parser: argparse.ArgumentParser, text: str) -> tuple:
    """N x C x H x W from a string such as 8x256x56x56 (a parser error otherwise); for the
    scripts under benchmarks/."""
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        parser.error(f"--shape: expected N x C x H x W such as 8x256x56x56, got {text!r}")
    if len(shape) != 4 or min(shape) < 1:
        parser.error(f"--shape: expected four positive sizes N x C x H x W, got {text!r}")
    return shape


def _runners(case: Case, layout: str, dtype, mode: str, device, backends: List[str], compile_: bool):
    g = torch.Generator(device="cpu").manual_seed(0)
    x = _layout(torch.randn(case.shape, generator=g).to(device=device, dtype=dtype), layout)
    dy = _layout(torch.randn(case.shape, generator=g).to(device=device, dtype=dtype), layout)
    eager = _eager_module(case, device, dtype)
    modules: Dict[str, torch.nn.Module] = {b: _fused_module(case, eager, b) for b in backends}
    modules["eager"] = eager
    if compile_:
        modules["compile"] = torch.compile(eager)

    def make(module):
        if mode == "fwd":  # run under the no_grad that _measure holds around all the calls
            def run():
                module(x)
            return run
        return _fwdbwd_call(module, x, dy)

    runners = [Runner("copy", lambda: x.clone())]
    runners += [Runner(name, make(module)) for name, module in modules.items()]
    return x, runners


# ---------------------------------------------------------------------------- measuring

@contextlib.contextmanager
def _quiet_native_stderr():
    """The profiler's native code prints a start/stop line per session straight to file
    descriptor 2; keep those out of the table (Python-level errors still raise)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _peak_extra_bytes(fn: Callable[[], None], device) -> Optional[int]:
    """Peak bytes allocated during one call beyond what was allocated before it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile
    with _quiet_native_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def _quantiles(samples: List[float]):
    ordered = sorted(samples)

    def q(p):
        i = p * (len(ordered) - 1)
        lo, hi = math.floor(i), math.ceil(i)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (i - lo)

    return q(0.5), q(0.2), q(0.8)


def _cpu_caches() -> List[Tuple[str, str, str]]:
    """(level, type, size) of each cache of CPU 0 as sysfs names them, e.g. ("3", "Unified",
    "32768K"); empty where sysfs does not say."""
    def read(path, name):
        with open(os.path.join(path, name)) as f:
            return f.read().strip()

    caches = []
    for path in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            caches.append((read(path, "level"), read(path, "type"), read(path, "size")))
        except OSError:
            continue
    return caches


def _last_level_cache_bytes() -> int:
    """Size of the largest CPU cache this process sees (sysfs), 32 MB if unknown."""
    sizes = []
    for _, _, text in _cpu_caches():
        text = text.upper()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes) if sizes else 32 * 2**20


class CacheFlush:
    """Evicts the CPU caches before each timed call, as triton.testing.do_bench flushes the
    GPU's L2: every provider then starts with x, dy and the output buffers in DRAM, so a
    provider is not helped (or hurt) by what the one timed before it left in the shared L3.
    It reads (never writes) a buffer of four times the last-level cache (after a read of
    twice its size, a 4 MB tensor still read 1.5x faster than after 256 MB, on the AMD
    machines we use), so the evicted lines are clean and no write-back of the flush itself
    falls into the timed call.

    The read is capped at 512 MB: in a VM, sysfs may report the host's whole L3 (480 MB on
    an Intel Xeon VM with 2 vCPUs), of which this process keeps far less. There, tensors of
    3.2 and 25.7 MB read back from DRAM as slowly after a 256 MB read as after 1920 MB
    (within 10%), but a 1920 MB read costs 74 ms before every call and left 3 repetitions
    per case."""

    MAX_BYTES = 512 * 2**20

    def __init__(self, enabled: bool):
        self.bytes = min(max(4 * _last_level_cache_bytes(), 128 * 2**20), self.MAX_BYTES) if enabled else 0
        self._buffer = torch.ones(self.bytes // 4, dtype=torch.float32) if enabled else None

    def __call__(self) -> None:
        if self._buffer is not None:
            self._buffer.sum()


def _stable_allocator() -> Optional[str]:
    """Keeps glibc from returning freed output buffers to the OS between calls.

    With glibc's default, adaptive thresholds, whether a freed 10-30 MB tensor is kept or
    unmapped depends on the sizes the other providers allocated just before; an unmapped one
    costs one page fault per 4 KB page on the next call (6,000+ faults, several ms on a VM),
    which showed up as 5x spikes in a fifth of the repetitions of every provider. Fixed
    thresholds make every call reuse pages (the steady state of a training loop)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 32 * 2**20) and libc.mallopt(m_trim_threshold, 2**30)
    except (OSError, AttributeError):
        return None
    return "glibc mallopt(M_MMAP_THRESHOLD=32 MB, M_TRIM_THRESHOLD=1 GB)" if ok else None


def _time_cpu(runners: List[Runner], min_time: float, min_reps: int, flush: CacheFlush) -> Dict[str, tuple]:
    for r in runners:  # warm-up (compiles, caches, first-touch allocations)
        r.call()
        r.call()
    samples: Dict[str, List[float]] = {r.provider: [] for r in runners}
    start = time.perf_counter()
    while True:
        for r in runners:
            flush()
            t0 = time.perf_counter()
            r.call()
            samples[r.provider].append((time.perf_counter() - t0) * 1e3)
        reps = len(samples[runners[0].provider])
        if reps >= min_reps and time.perf_counter() - start >= min_time:
            break
    return {p: _quantiles(s) + (len(s),) for p, s in samples.items()}


def _time_cuda(runners: List[Runner]) -> Dict[str, tuple]:
    import triton.testing
    out = {}
    for r in runners:
        r.call()
        torch.cuda.synchronize()
        q50, q20, q80 = triton.testing.do_bench(r.call, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
        out[r.provider] = (q50, q20, q80, None)
    return out


@dataclass
class Row:
    op: str
    case: str
    shape: str
    layout: str
    dtype: str
    mode: str
    provider: str
    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: Optional[int]
    gbps: float
    x_copy: float
    speedup_vs_eager: Optional[float] = None
    speedup_vs_compile: Optional[float] = None
    peak_extra_mb: Optional[float] = None


def _measure(case: Case, layout: str, dtype_name: str, mode: str, device, backends, compile_, min_time,
             min_reps, flush: CacheFlush) -> List[Row]:
    dtype = DTYPES[dtype_name]
    x, runners = _runners(case, layout, dtype, mode, device, backends, compile_)
    # Forward runs without autograd, as inference does: grad mode is switched off once around
    # every call of the case, not entered per call. A `with torch.no_grad()` per call is
    # harness time that every provider but the copy would pay: 33-39 us with the caches
    # evicted (Zen 4 VM), 15% of a copy of a 3.2 MB map.
    grad_mode = torch.no_grad() if mode == "fwd" else contextlib.nullcontext()
    with grad_mode:
        timings = _time_cuda(runners) if device.type == "cuda" else _time_cpu(runners, min_time, min_reps, flush)
        peaks = {r.provider: _peak_extra_bytes(r.call, device) for r in runners}
    passes = 2 if mode == "fwd" else 5  # fwd: read x, write y; bwd adds read x, dy, write dx
    min_bytes = passes * x.numel() * x.element_size()
    copy_ms = timings["copy"][0]
    rows = []
    for r in runners:
        q50, q20, q80, reps = timings[r.provider]
        peak = peaks[r.provider]
        rows.append(Row(case.op, case.name, "x".join(map(str, case.shape)), layout, dtype_name, mode, r.provider,
                        q50, q20, q80, reps, (2 * x.numel() * x.element_size() if r.provider == "copy" else min_bytes)
                        / (q50 * 1e-3) / 1e9, q50 / copy_ms, peak_extra_mb=None if peak is None else peak / 2**20))
    by = {row.provider: row for row in rows}
    for row in rows:
        if row.provider in backends:
            row.speedup_vs_eager = by["eager"].median_ms / row.median_ms
            if "compile" in by:
                row.speedup_vs_compile = by["compile"].median_ms / row.median_ms
    return rows


# ---------------------------------------------------------------------------- reporting

def _device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def _cpu_details() -> Optional[str]:
    """Family/model, vector ISA and cache sizes of this CPU (Linux), e.g. "family 26 model 2,
    AVX-512, L2 1024K, L3 32768K": machines of one name can differ in all of these."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("cpu family", "model", "flags") and key not in fields:
                    fields[key] = value.strip()
                if len(fields) == 3:
                    break
    except OSError:
        return None
    flags = fields.get("flags", "").split()
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    caches = [f"L{level} {size}" for level, kind, size in _cpu_caches()
              if kind != "Instruction" and level in ("2", "3")]
    return ", ".join([f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')}", isa] + caches)


def _metadata(device, args, flush: CacheFlush, allocator: Optional[str]) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__)), timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "device": _device_name(device), "device_type": device.type,
        "cpu": _cpu_details() if device.type == "cpu" else None, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "triton": triton_version, "python": platform.python_version(),
        "gct_fused": gct_fused.__version__, "commit": commit,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "timer": "triton.testing.do_bench (L2 flushed), median" if device.type == "cuda"
        else "perf_counter, providers interleaved per repetition, median, forward under one no_grad, " + (
            f"caches evicted before each call (read of {flush.bytes >> 20} MB)" if flush.bytes
            else "warm caches (--warm)"),
        "allocator": allocator if device.type == "cpu" else None,
        "command": "python -m gct_fused.bench " + " ".join(sys.argv[1:]),
    }


COLUMNS = [("op", "op"), ("case", "case"), ("shape", "shape"), ("layout", "layout"), ("dtype", "dtype"),
           ("mode", "mode"), ("provider", "provider"), ("median_ms", "median ms"), ("spread", "p20-p80 ms"),
           ("gbps", "GB/s"), ("x_copy", "x copy"), ("speedup_vs_eager", "vs eager"),
           ("speedup_vs_compile", "vs compile"), ("peak_extra_mb", "peak MB")]


def _cells(row: Row) -> List[str]:
    def num(v, fmt):
        return "" if v is None else format(v, fmt)
    d = asdict(row)
    d["spread"] = f"{row.p20_ms:.3f}-{row.p80_ms:.3f}"
    out = []
    for key, _ in COLUMNS:
        v = d[key]
        if key in ("median_ms",):
            out.append(num(v, ".3f"))
        elif key in ("gbps",):
            out.append(num(v, ".1f"))
        elif key in ("x_copy", "speedup_vs_eager", "speedup_vs_compile"):
            out.append("" if v is None else f"{v:.2f}x")
        elif key == "peak_extra_mb":
            out.append(num(v, ".1f"))
        else:
            out.append(str(v))
    return out


def summary(rows: List[Row]) -> List[str]:
    """A few lines per fused backend: in how many cases it beat eager and torch.compile, the
    least of those speedups and where, every case it lost, and its time as a multiple of the
    copy (median and range) per mode."""
    lines = []
    baselines = {"eager": "speedup_vs_eager", "compile": "speedup_vs_compile"}
    for backend in dict.fromkeys(r.provider for r in rows if r.provider not in ("copy", *baselines)):
        mine = [r for r in rows if r.provider == backend]
        for name, key in baselines.items():
            timed = [r for r in mine if getattr(r, key) is not None]
            if not timed:
                continue
            worst = min(timed, key=lambda r: getattr(r, key))
            won = sum(getattr(r, key) > 1 for r in timed)
            label = "torch.compile" if name == "compile" else name
            line = (f"{backend}: faster than {label} in {won} of {len(timed)} cases (least "
                    f"{getattr(worst, key):.2f}x: {_where(worst)})")
            lost = [r for r in timed if getattr(r, key) <= 1]
            if lost:
                line += "; not faster in " + ", ".join(f"{_where(r)} ({getattr(r, key):.2f}x)" for r in lost)
            lines.append(line)
        for mode in MODES:
            ratios = sorted(r.x_copy for r in mine if r.mode == mode)
            if ratios:
                lines.append(f"{backend} {mode}: {statistics.median(ratios):.2f}x a copy of x (median; "
                             f"{ratios[0]:.2f}-{ratios[-1]:.2f}x over {len(ratios)} case{'s' if len(ratios) != 1 else ''})")
    return lines


def _where(row: Row) -> str:
    return f"{row.op} {row.case} {row.shape} {row.layout} {row.dtype} {row.mode}"


def to_markdown(meta: dict, rows: List[Row]) -> str:
    lines = [f"# gct-fused benchmark: {meta['device']}", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", "Bandwidth counts the minimal bytes: forward reads x and writes y; forward+backward also "
              "reads x and dy and writes dx. `x copy` is the time over x.clone() of the same tensor. "
              "`vs eager` / `vs compile`: speedup of the fused backend over the published eager module and "
              "over torch.compile of it. `peak MB`: peak allocation during one call beyond what existed "
              "before it (outputs and saved tensors included).", ""]
    lines += ["Summary:", ""] + [f"- {line}" for line in summary(rows)] + [""]
    lines.append("| " + " | ".join(h for _, h in COLUMNS) + " |")
    lines.append("|" + "---|" * len(COLUMNS))
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _print_table(meta: dict, rows: List[Row]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(to_markdown(meta, rows))
        return
    console = Console()
    if not console.is_terminal:  # piped into a log: do not squeeze the table into 80 columns
        console = Console(width=200)
    table = Table(title=f"gct-fused on {meta['device']} (torch {meta['torch']}, triton {meta['triton']})")
    headers = ["case", "layout dtype mode"] + [h for key, h in COLUMNS[6:]]
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i < 3 else "right", no_wrap=i < 3)
    previous = None
    for r in rows:
        key = (r.op, r.case, r.layout, r.dtype, r.mode)
        if previous is not None and key != previous:
            table.add_section()
        first = key != previous
        previous = key
        cells = _cells(r)
        lead = [f"{r.op} {r.case} {r.shape}" if first else "", f"{r.layout} {r.dtype} {r.mode}" if first else ""]
        style = "bold green" if r.provider not in ("copy", "eager", "compile") else None
        table.add_row(*lead, *cells[6:], style=style)
    console.print(table)


def plot(rows: List[Row], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fused = [r for r in rows if r.speedup_vs_eager is not None]
    labels = [f"{r.op} {r.case}\n{r.layout} {r.dtype} {r.mode} [{r.provider}]" for r in fused]
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(fused)), 6))
    xs = range(len(fused))
    ax.bar([i - 0.2 for i in xs], [r.speedup_vs_eager for r in fused], width=0.4, label="vs eager")
    ax.bar([i + 0.2 for i in xs], [r.speedup_vs_compile or 0 for r in fused], width=0.4, label="vs torch.compile")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=90, fontsize=6)
    ax.set_ylabel("speedup (higher is better)")
    ax.set_title("gct-fused speedup per case and provider")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------- CLI

def _csv(value: str) -> List[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gct_fused.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu or cuda")
    parser.add_argument("--op", type=_csv, default=["gct", "se"], help="comma list of gct, se")
    parser.add_argument("--dtype", type=_csv, default=None,
                        help="comma list of float32, bfloat16, float16 (default: all three)")
    parser.add_argument("--mode", type=_csv, default=list(MODES), help="comma list of fwd, fwdbwd")
    parser.add_argument("--layout", type=_csv, default=list(LAYOUTS), help="comma list of nchw, channels_last")
    parser.add_argument("--backend", type=_csv, default=None,
                        help="fused backends to time (default: every one available on the device but reference)")
    parser.add_argument("--case", default="", help="only cases whose name contains this string")
    parser.add_argument("--quick", action="store_true", help="a few seconds: tiny shapes, float32, no torch.compile")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile provider")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    parser.add_argument("--warm", action="store_true",
                        help="CPU: keep the caches warm between repetitions (default: evict them before each call)")
    parser.add_argument("--min-time", type=float, default=None, help="CPU: seconds per case (default 1.0, quick 0.05)")
    parser.add_argument("--min-reps", type=int, default=None,
                        help="CPU: repetitions per provider at least (default 10, quick 3)")
    parser.add_argument("--json", dest="json_path", help="write the rows and metadata as JSON here")
    parser.add_argument("--markdown", dest="markdown_path", help="write a markdown table here")
    parser.add_argument("--plot", dest="plot_path", help="draw speedups to this PNG")
    args = parser.parse_args(argv)

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda but no CUDA GPU is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    bad = [v for v in args.op if v not in ("gct", "se")] + [v for v in args.mode if v not in MODES] + \
        [v for v in args.layout if v not in LAYOUTS] + [v for v in (args.dtype or []) if v not in DTYPES]
    if bad:
        parser.error(f"unknown values: {bad}")
    dtypes = args.dtype or (["float32"] if args.quick else list(DTYPES))
    available = [b for b in gct_fused.available_backends(device) if b != "reference"]
    if device.type == "cpu":
        available = [b for b in available if b != "triton"]  # the interpreter is not a CPU backend
    backends = args.backend or available
    missing = [b for b in backends if b not in available]
    if missing:
        parser.error(f"backend(s) {missing} cannot run on {device}; available: {available}")
    compile_ = not (args.no_compile or args.quick)
    min_time = args.min_time if args.min_time is not None else (0.05 if args.quick else 1.0)
    min_reps = args.min_reps if args.min_reps is not None else (3 if args.quick else 10)
    if min_reps < 1:
        parser.error(f"--min-reps must be at least 1, got {min_reps}")
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    if compile_ and device.type == "cpu":
        # Inductor compiles in a pool of worker processes by default; on a machine with few
        # cores the pool's start-up and compiles run beside the first timed cases (they
        # measured up to 4x slower than the same case later in the run). Compile in-process.
        import torch._inductor.config as inductor_config
        inductor_config.compile_threads = 1

    work = [(c, layout, dt, mode) for c in _cases(args.quick) if c.op in args.op and args.case in c.name
            for layout in args.layout for dt in dtypes for mode in args.mode]
    flush = CacheFlush(device.type == "cpu" and not args.warm)
    allocator = _stable_allocator() if device.type == "cpu" else None
    meta = _metadata(device, args, flush, allocator)
    meta["providers"] = ["copy", *backends, "eager"] + (["compile"] if compile_ else [])
    rows: List[Row] = []
    try:
        from rich.progress import Progress
        progress = Progress(transient=True)
    except ImportError:
        progress = None
    if progress is not None:
        with progress:
            task = progress.add_task("benchmarking", total=len(work))
            for c, layout, dt, mode in work:
                progress.update(task, description=f"{c.op} {c.name} {layout} {dt} {mode}")
                rows += _measure(c, layout, dt, mode, device, backends, compile_, min_time, min_reps, flush)
                progress.advance(task)
    else:
        for i, (c, layout, dt, mode) in enumerate(work):
            print(f"[{i + 1}/{len(work)}] {c.op} {c.name} {layout} {dt} {mode}", file=sys.stderr)
            rows += _measure(c, layout, dt, mode, device, backends, compile_, min_time, min_reps, flush)

    _print_table(meta, rows)
    summary_lines = summary(rows)
    print("\n".join(summary_lines))
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"metadata": meta, "summary": summary_lines, "rows": [asdict(r) for r in rows]}, f, indent=1)
    if args.markdown_path:
        with open(args.markdown_path, "w") as f:
            f.write(to_markdown(meta, rows))
    if args.plot_path:
        plot(rows, args.plot_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
