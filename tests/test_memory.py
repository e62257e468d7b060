"""Peak extra memory of the fused ops: O(N * C) beyond their inputs and outputs, forward and
backward, against eager PyTorch (the reference formulas), whose GCT allocates several
full-size temporaries.

Two measurements on the CPU:
  * torch's allocator, through the profiler's [memory] events (gct_fused.bench's
    _peak_extra_bytes, the number `gct_fused.bench` reports), for fused and eager alike;
  * the process's resident set (VmHWM after resetting it through /proc/self/clear_refs), in a
    child process: it also sees what the C++ kernels allocate outside torch's allocator
    (std::vector scratch: partial sums, offset tables), which the profiler does not.
On a GPU: torch.cuda.max_memory_allocated.

The ratios fused / eager are recorded and printed at the end of the pytest run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import gct_fused
from gct_fused import reference
from gct_fused.bench import _peak_extra_bytes
from fuzz_support import record_report
from helpers import FUSED_BACKENDS, backend_device, make_gct_params, make_map, make_se_params

# Slack on top of the outputs: per (n, c) statistics and coefficients (a few float32/float64
# values each), the SE MLP's (N, R) vectors and weight copies, and fixed overheads.
PER_NC_BYTES = 128
FIXED_BYTES = 1 << 20


def _slack(n, c, extra=0):
    return PER_NC_BYTES * n * c + FIXED_BYTES + extra


def _measure(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    return _peak_extra_bytes(fn, device)


def _op_calls(op, backend, x, dy, identity, params):
    """(forward, backward) callables of one op through autograd, and the bytes of the
    outputs each allocates (y; dx, plus didentity for se_residual)."""
    leaves = [x.detach().requires_grad_(True)] + ([identity.detach().requires_grad_(True)] if identity is not None else [])
    p_leaves = [None if p is None else p.detach().requires_grad_(True) for p in params]
    if op == "gct":
        fn = (lambda *t: gct_fused.gct(*t, backend=backend)) if backend != "eager" else reference.gct
    elif op == "se":
        fn = (lambda *t: gct_fused.squeeze_excite(*t, backend=backend)) if backend != "eager" else reference.squeeze_excite
    else:
        fn = (lambda *t: gct_fused.se_residual(*t, backend=backend)) if backend != "eager" else reference.se_residual
    state = {}

    def forward():
        state["y"] = fn(*leaves, *p_leaves)

    def backward():
        wanted = leaves + [p for p in p_leaves if p is not None]
        state["grads"] = torch.autograd.grad(state["y"], wanted, dy)

    map_bytes = x.numel() * x.element_size()
    return forward, backward, map_bytes, map_bytes * len(leaves)


SHAPES = [((8, 64, 32, 32), "nchw"), ((8, 64, 32, 32), "channels_last"), ((2, 8, 256, 256), "nchw"),
          ((16, 256, 7, 7), "channels_last")]


@pytest.mark.parametrize("op", ["gct", "se", "se_residual"])
@pytest.mark.parametrize("shape,layout", SHAPES, ids=[f"{'x'.join(map(str, s))}-{l}" for s, l in SHAPES])
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_peak_extra_memory_is_outputs_plus_O_NC(backend, op, shape, layout):
    """Peak bytes allocated (torch's allocator) while running forward, then backward: at most
    the outputs plus O(N * C); and never more than eager (the ratio is recorded)."""
    device = backend_device(backend)
    if backend == "triton" and device.type == "cpu":
        if shape != SHAPES[0][0] or layout != "nchw":
            pytest.skip("Triton interpreter: one shape (all of them on a GPU)")
    dtype = torch.float32
    n, c = shape[:2]
    x = make_map(shape, dtype, device, layout)
    dy = make_map(shape, dtype, device, layout, seed=3)
    identity = make_map(shape, dtype, device, layout, seed=4) if op == "se_residual" else None
    params = make_gct_params(c, dtype, device) if op == "gct" else make_se_params(c, max(c // 16, 2), dtype, device)
    peaks = {}
    for who in (backend, "eager"):
        forward, backward, y_bytes, dx_bytes = _op_calls(op, who, x, dy, identity, params)
        forward()  # warm-up: first-call allocations (thread pools, caches) are not the op's
        backward()
        peaks[who] = (_measure(forward, device), _measure(backward, device), y_bytes, dx_bytes)
    f_fwd, f_bwd, y_bytes, dx_bytes = peaks[backend]
    e_fwd, e_bwd = peaks["eager"][:2]
    # Triton's unmergeable-view copy is the only full-size temporary it may make; none here.
    assert f_fwd <= y_bytes + _slack(n, c), f"forward peak {f_fwd} > y {y_bytes} + O(N*C)"
    assert f_bwd <= dx_bytes + _slack(n, c), f"backward peak {f_bwd} > dx {dx_bytes} + O(N*C)"
    # never more than eager: both allocate y (forward), eager's backward full-size temporaries
    assert f_fwd <= e_fwd + PER_NC_BYTES * n * c and f_bwd <= e_bwd
    record_report(f"memory {backend:6s} {op:11s} {'x'.join(map(str, shape)):12s} {layout:13s} "
                  f"fwd {f_fwd / 2**20:7.2f} MiB (eager {e_fwd / 2**20:7.2f}, ratio {f_fwd / e_fwd:.2f})  "
                  f"bwd {f_bwd / 2**20:7.2f} MiB (eager {e_bwd / 2**20:7.2f}, ratio {f_bwd / e_bwd:.2f})")


# ---------------------------------------------------------------------------------------
# Resident memory of the CPU kernels (what the profiler cannot see), in a child process

_RSS_CHILD = r"""
import json, sys
import torch
import gct_fused
from gct_fused._backends import fused_op
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])

def hwm_reset():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)

def make(shape, layout, seed):
    g = torch.Generator().manual_seed(seed)
    if layout == "expanded":
        return torch.randn((), generator=g).expand(shape)
    t = torch.randn(shape, generator=g)
    if layout == "channels_last":
        t = t.movedim(1, -1).contiguous().movedim(-1, 1)
    elif layout == "padded":
        big = torch.randn([s + 1 for s in shape], generator=g)
        t = big[tuple(slice(0, s) for s in shape)]
    return t

shape = spec["shape"]
n, c = shape[:2]
x = make(shape, spec["layout"], 0)
dy = make(shape, spec["dy_layout"], 1)
a, g, b = torch.rand(c) + 0.5, torch.randn(c), torch.randn(c)
w1, w2 = torch.randn(max(c // 16, 2), c), torch.randn(c, max(c // 16, 2))
def run(t, d):
    if spec["op"] == "gct":
        y, stats = fused_op("cpu", "gct_forward")(t, a, g, b, 1e-5, "l2", False)
        if spec["phase"] == "bwd":
            del y
            return fused_op("cpu", "gct_backward")(d, t, a, g, b, stats, 1e-5, "l2", False)
        return y
    y, pooled = fused_op("cpu", "se_forward")(t, w1, None, w2, None, "relu", "sigmoid")
    if spec["phase"] == "bwd":
        del y
        return fused_op("cpu", "se_backward")(d, t, w1, None, w2, None, pooled, "relu", "sigmoid")
    return y
# warm-up on a small map of the same layouts (thread pool, code pages)
run(make([2, c] + [4] * (len(shape) - 2), spec["layout"], 0), make([2, c] + [4] * (len(shape) - 2), spec["dy_layout"], 1))
base = status("VmRSS")
hwm_reset()
out = run(x, dy)
peak = status("VmHWM")
print(json.dumps({"extra": peak - base}))
"""


RSS_CASES = [
    # (op, phase, shape, x layout, dy layout)
    ("gct", "fwd", [4, 32, 256, 256], "nchw", "nchw"),
    ("gct", "bwd", [4, 32, 256, 256], "channels_last", "channels_last"),
    ("gct", "bwd", [1, 4, 2048, 2048], "nchw", "expanded"),  # y.sum().backward(): stride-0 dy
    ("se", "bwd", [1, 4, 2048, 2048], "nchw", "expanded"),
    ("gct", "fwd", [1, 4, 2048, 2048], "padded", "nchw"),  # spatial dims that do not merge
]


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc/self/clear_refs")
@pytest.mark.parametrize("op,phase,shape,layout,dy_layout", RSS_CASES,
                         ids=[f"{o}-{p}-{'x'.join(map(str, s))}-{l}-dy_{d}" for o, p, s, l, d in RSS_CASES])
def test_cpu_resident_memory(op, phase, shape, layout, dy_layout):
    """Resident-memory growth of one raw CPU op call (forward: y; backward: dx) beyond its
    output: O(N * C) plus a few MB of allocator and thread overhead, whatever the layout;
    in particular no O(L) offset tables for merged (e.g. stride-0) views."""
    backend_device("cpu")
    spec = dict(op=op, phase=phase, shape=shape, layout=layout, dy_layout=dy_layout, threads=torch.get_num_threads())
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(gct_fused.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_RSS_CHILD), json.dumps(spec)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    extra = json.loads(proc.stdout.strip().splitlines()[-1])["extra"]
    n, c = shape[:2]
    out_bytes = n * c * int(torch.tensor(shape[2:]).prod()) * 4
    # spatial dims that do not merge (x here; y is dense): one int64 offset per spatial position
    tables = 8 * int(torch.tensor(shape[2:]).prod()) if layout == "padded" else 0
    limit = out_bytes + _slack(n, c, extra=8 << 20) + tables
    record_report(f"rss    cpu    {op:4s} {phase} {'x'.join(map(str, shape)):14s} x {layout:13s} dy {dy_layout:9s} "
                  f"extra {extra / 2**20:7.2f} MiB, output {out_bytes / 2**20:7.2f} MiB")
    assert extra <= limit, (f"resident memory grew by {extra / 2**20:.1f} MiB for an output of "
                            f"{out_bytes / 2**20:.1f} MiB (limit {limit / 2**20:.1f} MiB)")
