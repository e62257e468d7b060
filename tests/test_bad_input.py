"""The bad-input matrix, beyond test_errors.py: every op, public and raw, given wrong ranks,
channel counts, parameter shapes, devices (the "meta" device stands in for a second one),
integer / bool / complex / float8 dtypes, unknown options, and backends that cannot run.
Each must raise a Python exception whose message names the offending argument, and nothing
may crash the process: the raw-op cases run in a subprocess, so a segfault or abort is a
test failure rather than the end of the test run.
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
from gct_fused._backends import unavailable_reason
from helpers import FUSED_BACKENDS, backend_device, make_gct_params, make_map, make_se_params

ALL_BACKENDS = FUSED_BACKENDS + ("reference",)
ERRORS = (ValueError, TypeError, RuntimeError)


def _device(backend):
    return torch.device("cpu") if backend == "reference" else backend_device(backend)


def _expect(fn, *names, exc=ERRORS):
    """fn() raises one of `exc` whose message names (one of) `names`."""
    with pytest.raises(exc) as info:
        fn()
    message = str(info.value)
    assert any(n.lower() in message.lower() for n in names), f"error does not name {names}: {message!r}"
    return message


# ---------------------------------------------------------------------------------------
# Public functions and modules


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_public_functions_bad_input(backend):
    device = _device(backend)
    x = make_map((2, 4, 3, 3), torch.float32, device)
    a, g, b = make_gct_params(4, torch.float32, device)
    w1, b1, w2, b2 = make_se_params(4, 2, torch.float32, device)
    meta = torch.device("meta")

    def gct(*args, **kw):
        return lambda: gct_fused.gct(*args, **kw, backend=backend)

    def se(*args, **kw):
        return lambda: gct_fused.squeeze_excite(*args, **kw, backend=backend)

    def res(*args, **kw):
        return lambda: gct_fused.se_residual(*args, **kw, backend=backend)

    # wrong rank (0-D and 1-D maps) for every op, and for se_residual's identity
    for bad in (x[0, 0, 0, 0], x[0, 0, 0]):
        _expect(gct(bad, a, g, b), "x")
        _expect(se(bad, w1, b1, w2, b2), "x")
        _expect(res(bad, bad, w1, b1, w2, b2), "x")
    _expect(res(x, x[0], w1, b1, w2, b2), "identity")
    # C mismatch and parameters of the wrong shape
    _expect(gct(x, a, g, b[:3]), "beta")
    _expect(gct(x[:, :3], a, g, b), "alpha")
    _expect(se(x, w1.reshape(1, 2, 4), b1, w2, b2), "w1")
    _expect(se(x, w1[0], b1, w2, b2), "w1")
    _expect(se(x, w1, b1, w2[:, :1], b2), "w2")
    _expect(se(x, w1, b1.reshape(2, 1), w2, b2), "b1")
    _expect(se(x, w1, b1, w2, b2.reshape(1, 4)), "b2")
    _expect(se(x[:, :3], w1, b1, w2, b2), "w1")
    # mixed devices, both ways round
    _expect(gct(x, a, g.to(meta), b), "gamma")
    _expect(gct(x.to(meta), a, g, b), "alpha")
    _expect(se(x, w1, b1, w2, b2.to(meta)), "b2")
    _expect(res(x, x.to(meta), w1, b1, w2, b2), "identity")
    # integer, bool, complex and float8 maps and parameters
    for dtype in (torch.int32, torch.int64, torch.bool, torch.complex64, torch.float8_e4m3fn):
        _expect(gct(x.to(dtype), a, g, b), "x")
        _expect(se(x.to(dtype), w1, b1, w2, b2), "x")
    for dtype in (torch.int32, torch.bool, torch.complex64):
        _expect(gct(x, a.to(dtype), g, b), "alpha")
        _expect(se(x, w1, b1.to(dtype), w2, b2), "b1")
        _expect(res(x, x.to(dtype), w1, b1, w2, b2), "identity")
    # non-tensors
    _expect(gct(x.tolist(), a, g, b), "x")
    _expect(gct(x, a.tolist(), g, b), "alpha")
    _expect(se(x, w1, b1, w2.numpy() if device.type == "cpu" else None, b2), "w2")
    # unknown options
    for mode in ("L2", "", None, 2):
        _expect(gct(x, a, g, b, mode=mode), "mode")
    for eps in (-1e-5, float("nan"), "1e-5", None):
        _expect(gct(x, a, g, b, epsilon=eps), "epsilon")
    for after_relu in ("yes", None, 1.0):
        _expect(gct(x, a, g, b, after_relu=after_relu), "after_relu")
    for act in ("ReLU", "gelu", None):
        _expect(se(x, w1, b1, w2, b2, activation=act), "activation")
    for gate in ("Sigmoid", "tanh", None):
        _expect(se(x, w1, b1, w2, b2, gate=gate), "gate")
    for after in ("sigmoid", "", None):
        _expect(res(x, x, w1, b1, w2, b2, activation_after=after), "activation_after")


def test_unknown_backend_and_options():
    x = make_map((2, 4, 3, 3), torch.float32, "cpu")
    a, g, b = make_gct_params(4, torch.float32, "cpu")
    for backend in ("CPU", "gpu", "", None):
        _expect(lambda: gct_fused.gct(x, a, g, b, backend=backend), "backend")
        _expect(lambda: gct_fused.squeeze_excite(x, *make_se_params(4, 2, torch.float32, "cpu"), backend=backend),
                "backend")


def test_backend_unavailable_for_the_device(monkeypatch):
    """A backend that cannot run on the tensors' device says so and why; no fallback."""
    x = make_map((2, 4, 3, 3), torch.float32, "cpu")
    a, g, b = make_gct_params(4, torch.float32, "cpu")
    meta = [t.to("meta") for t in (x, a, g, b)]
    msg = _expect(lambda: gct_fused.gct(*meta, backend="cpu"), "backend 'cpu'")
    assert "meta" in msg
    _expect(lambda: gct_fused.gct(*meta, backend="triton"), "backend 'triton'")
    if not torch.cuda.is_available():
        msg = _expect(lambda: gct_fused.gct(x, a, g, b, backend="cuda"), "backend 'cuda'")
        assert "cpu" in msg
        # Triton on CPU tensors without the interpreter
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        msg = _expect(lambda: gct_fused.gct(x, a, g, b, backend="triton"), "backend 'triton'")
        assert "TRITON_INTERPRET" in msg
        monkeypatch.undo()
    # the environment override: unknown, then unavailable
    monkeypatch.setenv("GCT_FUSED_BACKEND", "fastest")
    _expect(lambda: gct_fused.gct(x, a, g, b), "GCT_FUSED_BACKEND")
    monkeypatch.setenv("GCT_FUSED_BACKEND", "cuda")
    if unavailable_reason("cuda", "cpu") is not None:
        _expect(lambda: gct_fused.gct(x, a, g, b), "backend 'cuda'")
    # on the meta device, "auto" runs the reference formulas (shape inference), no error
    monkeypatch.delenv("GCT_FUSED_BACKEND")
    assert gct_fused.gct(*meta).device.type == "meta"


def test_requires_grad_on_integer_tensors_is_refused_by_torch():
    """An integer tensor cannot require gradients: torch itself refuses, with a clear error,
    before any op of ours sees it (so there is nothing for the ops to check)."""
    with pytest.raises(RuntimeError, match="(?i)only tensors of floating point.* can require gradients"):
        torch.zeros(2, 4, 3, 3, dtype=torch.int32).requires_grad_(True)
    with pytest.raises(RuntimeError, match="(?i)only tensors of floating point.* can require gradients"):
        torch.zeros(4, dtype=torch.int64, requires_grad=True)
    # a complex tensor may require gradients: the ops refuse it by dtype
    x = torch.zeros(2, 4, 3, 3, dtype=torch.complex64, requires_grad=True)
    a, g, b = make_gct_params(4, torch.float32, "cpu")
    _expect(lambda: gct_fused.gct(x, a, g, b), "x")


def test_modules_bad_arguments():
    for bad in (0, -3, 2.5, "4", None):
        _expect(lambda: gct_fused.GCT(bad), "num_channels")
        _expect(lambda: gct_fused.SqueezeExcite(bad), "channels")
    _expect(lambda: gct_fused.GCT(4, mode="l3"), "mode")
    _expect(lambda: gct_fused.GCT(4, backend="fast"), "backend")
    _expect(lambda: gct_fused.SqueezeExcite(8, rd_channels=0), "rd_channels")
    _expect(lambda: gct_fused.SqueezeExcite(8, activation="gelu"), "activation")
    _expect(lambda: gct_fused.SqueezeExcite(8, gate="softmax"), "gate")
    # a module applied to a map with the wrong channel count names the parameter
    _expect(lambda: gct_fused.GCT(4)(torch.randn(2, 5, 3, 3)), "alpha")
    _expect(lambda: gct_fused.SqueezeExcite(8, 2)(torch.randn(2, 5, 3, 3)), "w1")
    _expect(lambda: gct_fused.GCT(4, epsilon=-1.0)(torch.randn(2, 4, 3, 3)), "epsilon")


# ---------------------------------------------------------------------------------------
# Raw ops, in a subprocess

# Each case: (op, arguments as Python source over the names defined in _PRELUDE, the names
# any one of which the error message must contain).
RAW_CASES = [
    # gct_forward(x, alpha, gamma, beta, epsilon, mode, after_relu)
    ("gct_forward", "x[0, 0], a, g, b, 1e-5, 'l2', False", ["x"]),
    ("gct_forward", "x[0, 0, 0, 0], a, g, b, 1e-5, 'l2', False", ["x"]),
    ("gct_forward", "x.int(), a, g, b, 1e-5, 'l2', False", ["x"]),
    ("gct_forward", "x.bool(), a, g, b, 1e-5, 'l2', False", ["x"]),
    ("gct_forward", "x.to(torch.complex64), a, g, b, 1e-5, 'l2', False", ["x"]),
    ("gct_forward", "x.to(torch.float8_e4m3fn), *(p.to(torch.float8_e4m3fn) for p in (a, g, b)), 1e-5, 'l2', False",
     ["x"]),
    ("gct_forward", "x, a[:3], g, b, 1e-5, 'l2', False", ["alpha"]),
    ("gct_forward", "x, a, g.repeat(2), b, 1e-5, 'l2', False", ["gamma"]),
    ("gct_forward", "x, a, g, b[:1], 1e-5, 'l2', False", ["beta"]),
    ("gct_forward", "x, a.int(), g, b, 1e-5, 'l2', False", ["alpha"]),
    ("gct_forward", "x, a.to(torch.complex64), g, b, 1e-5, 'l2', False", ["alpha"]),
    ("gct_forward", "x, a.double(), g, b, 1e-5, 'l2', False", ["alpha"]),
    ("gct_forward", "x.half(), a, g.half(), b, 1e-5, 'l2', False", ["gamma"]),
    ("gct_forward", "x, a.to('meta'), g, b, 1e-5, 'l2', False", ["alpha"]),
    ("gct_forward", "x, a, g, b.to('meta'), 1e-5, 'l2', False", ["beta"]),
    ("gct_forward", "x.to('meta'), a, g, b, 1e-5, 'l2', False", ["alpha"]),
    ("gct_forward", "x, a, g, b, 1e-5, 'L2', False", ["mode"]),
    ("gct_forward", "x, a, g, b, 1e-5, '', False", ["mode"]),
    ("gct_forward", "x, a, g, b, -1.0, 'l2', False", ["epsilon"]),
    ("gct_forward", "x, a, g, b, float('nan'), 'l1', False", ["epsilon"]),
    ("gct_forward", "x, a, g, b, '1e-5', 'l2', False", ["epsilon"]),
    ("gct_forward", "None, a, g, b, 1e-5, 'l2', False", ["x"]),
    ("gct_forward", "x, a, g, b, 1e-5, 'l2', 'yes'", ["after_relu"]),
    # gct_backward(dy, x, alpha, gamma, beta, stats, epsilon, mode, after_relu)
    ("gct_backward", "x[:1], x, a, g, b, stats, 1e-5, 'l2', False", ["dy"]),
    ("gct_backward", "x.double(), x, a, g, b, stats, 1e-5, 'l2', False", ["dy"]),
    ("gct_backward", "x.to('meta'), x, a, g, b, stats, 1e-5, 'l2', False", ["dy"]),
    ("gct_backward", "x, x, a, g, b, stats[:1], 1e-5, 'l2', False", ["stats"]),
    ("gct_backward", "x, x, a, g, b, stats.double(), 1e-5, 'l2', False", ["stats"]),
    ("gct_backward", "x, x, a, g, b, stats.int(), 1e-5, 'l2', False", ["stats"]),
    ("gct_backward", "x, x, a, g, b, stats.to('meta'), 1e-5, 'l2', False", ["stats"]),
    ("gct_backward", "x, x, a, g, b, stats.reshape(-1), 1e-5, 'l2', False", ["stats"]),
    ("gct_backward", "x, x, a[:2], g, b, stats, 1e-5, 'l2', False", ["alpha"]),
    ("gct_backward", "x, x, a, g, b, stats, 1e-5, 'max', False", ["mode"]),
    ("gct_backward", "x, x, a, g, b, stats, -2.0, 'l2', False", ["epsilon"]),
    # se_forward(x, w1, b1, w2, b2, activation, gate)
    ("se_forward", "x, w1[0], b1, w2, b2, 'relu', 'sigmoid'", ["w1"]),
    ("se_forward", "x, w1[None], b1, w2, b2, 'relu', 'sigmoid'", ["w1"]),
    ("se_forward", "x, w1[:, :3], b1, w2, b2, 'relu', 'sigmoid'", ["w1"]),
    ("se_forward", "x, w1, b1, w2.t(), b2, 'relu', 'sigmoid'", ["w2"]),
    ("se_forward", "x, w1, b1, w2[:3], b2, 'relu', 'sigmoid'", ["w2"]),
    ("se_forward", "x, w1, b1[:1], w2, b2, 'relu', 'sigmoid'", ["b1"]),
    ("se_forward", "x, w1, b1[0], w2, b2, 'relu', 'sigmoid'", ["b1"]),
    ("se_forward", "x, w1, b1, w2, b2[None], 'relu', 'sigmoid'", ["b2"]),
    ("se_forward", "x, w1.int(), b1, w2, b2, 'relu', 'sigmoid'", ["w1"]),
    ("se_forward", "x, w1, b1.double(), w2, b2, 'relu', 'sigmoid'", ["b1"]),
    ("se_forward", "x, w1, b1, w2.to('meta'), b2, 'relu', 'sigmoid'", ["w2"]),
    ("se_forward", "x.to(torch.complex64), w1, b1, w2, b2, 'relu', 'sigmoid'", ["x"]),
    ("se_forward", "x[0, 0], w1, b1, w2, b2, 'relu', 'sigmoid'", ["x"]),
    ("se_forward", "x, w1, b1, w2, b2, 'gelu', 'sigmoid'", ["activation"]),
    ("se_forward", "x, w1, b1, w2, b2, 'relu', 'tanh'", ["gate"]),
    # se_backward(dy, x, w1, b1, w2, b2, pooled, activation, gate)
    ("se_backward", "x, x, w1, b1, w2, b2, pooled[:, :3], 'relu', 'sigmoid'", ["pooled"]),
    ("se_backward", "x, x, w1, b1, w2, b2, pooled.half(), 'relu', 'sigmoid'", ["pooled"]),
    ("se_backward", "x, x, w1, b1, w2, b2, pooled.to('meta'), 'relu', 'sigmoid'", ["pooled"]),
    ("se_backward", "x[:, :, :2], x, w1, b1, w2, b2, pooled, 'relu', 'sigmoid'", ["dy"]),
    ("se_backward", "x.to('meta'), x, w1, b1, w2, b2, pooled, 'relu', 'sigmoid'", ["dy"]),
    ("se_backward", "x, x, w1, b1, w2, b2, pooled, 'relu', 'hard'", ["gate"]),
    # se_residual_forward(x, identity, w1, b1, w2, b2, activation, gate, activation_after)
    ("se_residual_forward", "x, x[:1], w1, b1, w2, b2, 'relu', 'sigmoid', 'relu'", ["identity"]),
    ("se_residual_forward", "x, x.double(), w1, b1, w2, b2, 'relu', 'sigmoid', 'relu'", ["identity"]),
    ("se_residual_forward", "x, x.to('meta'), w1, b1, w2, b2, 'relu', 'sigmoid', 'relu'", ["identity"]),
    ("se_residual_forward", "x, x.int(), w1, b1, w2, b2, 'relu', 'sigmoid', 'relu'", ["identity"]),
    ("se_residual_forward", "x, x, w1, b1, w2, b2, 'relu', 'sigmoid', 'gelu'", ["activation_after"]),
    # se_residual_backward(dy, x, y, w1, b1, w2, b2, pooled, activation, gate)
    ("se_residual_backward", "x, x, x[:1], w1, b1, w2, b2, pooled, 'relu', 'sigmoid'", ["y"]),
    ("se_residual_backward", "x, x, x.half(), w1, b1, w2, b2, pooled, 'relu', 'sigmoid'", ["y"]),
    ("se_residual_backward", "x, x, x.to('meta'), w1, b1, w2, b2, pooled, 'relu', 'sigmoid'", ["y"]),
    ("se_residual_backward", "x.to('meta'), x, x, w1, b1, w2, b2, pooled, 'relu', 'sigmoid'", ["dy"]),
    ("se_residual_backward", "x, x, x, w1, b1, w2, b2, pooled.double(), 'relu', 'sigmoid'", ["pooled"]),
]

_PRELUDE = """
import json, os, sys, traceback
import torch
import gct_fused
from gct_fused._backends import fused_op
backend, device = sys.argv[1], torch.device(sys.argv[2])
cases = json.loads(sys.stdin.read())
torch.manual_seed(0)
x = torch.randn(2, 4, 3, 3, device=device)
a, g, b = torch.rand(4, device=device) + 0.5, torch.randn(4, device=device), torch.randn(4, device=device)
stats = torch.rand(2, 4, device=device)
pooled = torch.randn(2, 4, device=device)
w1, b1 = torch.randn(2, 4, device=device), torch.randn(2, device=device)
w2, b2 = torch.randn(4, 2, device=device), torch.randn(4, device=device)
for i, (op, args, names) in enumerate(cases):
    print(json.dumps({"i": i, "start": True}), flush=True)  # the last line before a crash
    try:
        out = eval(f"fused_op(backend, op)({args})")
        if device.type == "cuda":
            torch.cuda.synchronize()
        result = {"i": i, "error": None}
    except Exception as exc:
        result = {"i": i, "error": type(exc).__name__, "message": str(exc).splitlines()[0] if str(exc) else "",
                  "is_expected_type": isinstance(exc, (ValueError, TypeError, RuntimeError))}
    print(json.dumps(result), flush=True)
print(json.dumps({"done": True}), flush=True)
"""


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_raw_ops_bad_input_never_crash(backend):
    """Every raw op (torch.ops.gct_fused.*, bypassing the Python checks) with every bad input
    of RAW_CASES, in a child process: each raises ValueError / TypeError / RuntimeError
    naming the argument, and the process survives all of them."""
    device = backend_device(backend)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(gct_fused.__file__)))]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_PRELUDE), backend, str(device)],
                          input=json.dumps(RAW_CASES), capture_output=True, text=True, env=env, timeout=600)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    finished = [r for r in lines if "error" in r]
    if proc.returncode != 0 or not any(r.get("done") for r in lines):
        started = [r["i"] for r in lines if r.get("start")]
        last = RAW_CASES[started[-1]] if started else None
        pytest.fail(f"the child process died (return code {proc.returncode}) in case {last}:\n"
                    f"{proc.stderr[-3000:]}")
    problems = []
    for r in finished:
        op, args, names = RAW_CASES[r["i"]]
        if r["error"] is None:
            problems.append(f"{op}({args}): no error")
        elif not r["is_expected_type"]:
            problems.append(f"{op}({args}): {r['error']}: {r['message']}")
        elif not any(n.lower() in r["message"].lower() for n in names):
            problems.append(f"{op}({args}): {r['error']} does not name {names}: {r['message']}")
    assert not problems, f"{len(problems)} of {len(RAW_CASES)} bad raw-op calls:\n" + "\n".join(problems)
