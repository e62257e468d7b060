"""Bad input raises a clear error naming the problem, for every backend; empty tensors
return empty, defined results."""

import pytest
import torch

import gct_fused
from gct_fused._backends import fused_op
from helpers import FUSED_BACKENDS, backend_device, make_gct_params, make_map, make_se_params

ALL_BACKENDS = FUSED_BACKENDS + ("reference",)


def _device(backend):
    return torch.device("cpu") if backend == "reference" else backend_device(backend)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_gct_bad_input(backend):
    device = _device(backend)
    x = make_map((2, 4, 3, 3), torch.float32, device)
    a, g, b = make_gct_params(4, torch.float32, device)
    cases = [
        ((x[0, 0, 0],), ValueError, "rank >= 2"),
        ((x, a[:3], g, b), ValueError, "alpha must hold 4 values"),
        ((x, a, g.repeat(2), b), ValueError, "gamma must hold 4 values"),
        ((x.to(torch.int32), a, g, b), TypeError, "x must be float32, float64, float16 or bfloat16"),
        ((x.to(torch.complex64), a, g, b), TypeError, "x must be float32"),
        ((x, a.double(), g, b), TypeError, "alpha has dtype torch.float64"),
        ((x, a.int(), g, b), TypeError, "alpha must be a floating tensor"),
        ((x.half(), a.double(), g.double(), b.double()), TypeError, "cannot be used with x of dtype"),
        ((x.half(), a.half(), g, b), TypeError, "parameters must share one dtype"),
        ((x, a.to("meta"), g, b), ValueError, "alpha is on meta"),
    ]
    for args, exc, message in cases:
        full = args if len(args) == 4 else args + (a, g, b)
        with pytest.raises(exc, match=message):
            gct_fused.gct(*full, backend=backend)
    with pytest.raises(ValueError, match="mode must be one of"):
        gct_fused.gct(x, a, g, b, mode="l3", backend=backend)
    with pytest.raises(ValueError, match="epsilon must be a non-negative number"):
        gct_fused.gct(x, a, g, b, epsilon=-1.0, backend=backend)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_se_bad_input(backend):
    device = _device(backend)
    x = make_map((2, 6, 3, 3), torch.float32, device)
    w1, b1, w2, b2 = make_se_params(6, 2, torch.float32, device)
    cases = [
        ((x[0, 0, 0], w1, b1, w2, b2), ValueError, "rank >= 2"),
        ((x, w1[:, :5], b1, w2, b2), ValueError, r"w1 must have shape \(R, C\) with C = 6"),
        ((x, w1, b1, w2.t(), b2), ValueError, r"w2 must have shape \(6, 2\)"),
        ((x, w1, b1[:1], w2, b2), ValueError, r"b1 must have shape \(2,\)"),
        ((x, w1, b1, w2, b2[:5]), ValueError, r"b2 must have shape \(6,\)"),
        ((x, w1.double(), b1, w2, b2), TypeError, "w1 has dtype torch.float64"),
        ((x, w1, b1.half(), w2, b2), TypeError, "b1 has dtype torch.float16"),
        ((x.to(torch.int64), w1, b1, w2, b2), TypeError, "x must be float32"),
        ((x, w1.to("meta"), b1, w2, b2), ValueError, "w1 is on meta"),
    ]
    for args, exc, message in cases:
        with pytest.raises(exc, match=message):
            gct_fused.squeeze_excite(*args, backend=backend)
    with pytest.raises(ValueError, match="activation must be one of"):
        gct_fused.squeeze_excite(x, w1, b1, w2, b2, activation="gelu", backend=backend)
    with pytest.raises(ValueError, match="gate must be one of"):
        gct_fused.squeeze_excite(x, w1, b1, w2, b2, gate="tanh", backend=backend)
    with pytest.raises(ValueError, match="identity must have the shape of x"):
        gct_fused.se_residual(x, x[:1], w1, b1, w2, b2, backend=backend)
    with pytest.raises(TypeError, match="identity has dtype torch.float64"):
        gct_fused.se_residual(x, x.double(), w1, b1, w2, b2, backend=backend)
    with pytest.raises(ValueError, match="activation_after must be one of"):
        gct_fused.se_residual(x, x, w1, b1, w2, b2, activation_after="gelu", backend=backend)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_ops_check_their_arguments_too(backend):
    """Calling the registered ops directly (bypassing the Python checks) still raises
    errors that name the argument, never crashes."""
    device = backend_device(backend)
    x = make_map((2, 4, 3, 3), torch.float32, device)
    a, g, b = make_gct_params(4, torch.float32, device)
    with pytest.raises(ValueError, match="alpha must hold 4 values"):
        fused_op(backend, "gct_forward")(x, a[:2], g, b, 1e-5, "l2", False)
    with pytest.raises(ValueError, match="mode must be 'l2' or 'l1'"):
        fused_op(backend, "gct_forward")(x, a, g, b, 1e-5, "max", False)
    with pytest.raises(ValueError, match="stats must have shape"):
        fused_op(backend, "gct_backward")(x, x, a, g, b, torch.zeros(3, 4, device=device), 1e-5, "l2", False)
    w1, b1, w2, b2 = make_se_params(4, 2, torch.float32, device)
    with pytest.raises(ValueError, match="w2 must have shape"):
        fused_op(backend, "se_forward")(x, w1, b1, w1, b2, "relu", "sigmoid")
    with pytest.raises(ValueError, match="gate must be 'sigmoid' or 'hardsigmoid'"):
        fused_op(backend, "se_forward")(x, w1, b1, w2, b2, "relu", "softmax")


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_ops_accept_the_option_names_of_the_python_checks(backend):
    """Each op's string options: the names the Python checks accept (gct_fused._validate) are
    the ones the op accepts, listed in the same order in its error. (The C++ ops and their
    direct entries share one table per option, csrc/op_common.h.)"""
    from gct_fused import _validate
    device = backend_device(backend)
    x = make_map((2, 4, 3, 3), torch.float32, device)
    gct_params = make_gct_params(4, torch.float32, device)
    w1, b1, w2, b2 = make_se_params(4, 2, torch.float32, device)
    options = {
        ("gct", "mode"): (_validate.GCT_MODES, lambda v: fused_op(backend, "gct_forward")(x, *gct_params, 1e-5, v,
                                                                                          False)),
        ("squeeze_excite", "activation"): (_validate.ACTIVATIONS, lambda v: fused_op(backend, "se_forward")(
            x, w1, b1, w2, b2, v, "sigmoid")),
        ("squeeze_excite", "gate"): (_validate.GATES, lambda v: fused_op(backend, "se_forward")(
            x, w1, b1, w2, b2, "relu", v)),
        ("se_residual", "activation_after"): (_validate.ACTIVATIONS_AFTER, lambda v: fused_op(
            backend, "se_residual_forward")(x, x, w1, b1, w2, b2, "relu", "sigmoid", v)),
    }
    for (op, arg), (names, call) in options.items():
        for name in names:
            call(name)
        listed = ", ".join(f"'{n}'" for n in names[:-1]) + f" or '{names[-1]}'"
        with pytest.raises(ValueError, match=f"^{op}: {arg} must be {listed}, got 'nope'"):
            call("nope")


def test_unknown_and_unavailable_backends():
    x = make_map((2, 4, 3, 3), torch.float32, "cpu")
    a, g, b = make_gct_params(4, torch.float32, "cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        gct_fused.gct(x, a, g, b, backend="tpu")
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run on cpu"):
        gct_fused.gct(x, a, g, b, backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        gct_fused.GCT(4, backend="fast")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (2, 4, 0, 3), (2, 4, 0), (0, 4)], ids=str)
def test_empty_tensors(backend, shape):
    device = _device(backend)
    x = torch.zeros(shape, device=device, requires_grad=True)
    gp = [p.requires_grad_(True) for p in make_gct_params(4, torch.float32, device)]
    y = gct_fused.gct(x, *gp, backend=backend)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    for p in gp:
        assert p.grad is not None and torch.isfinite(p.grad).all()
    sp = [p.requires_grad_(True) for p in make_se_params(4, 2, torch.float32, device)]
    y = gct_fused.squeeze_excite(x, *sp, backend=backend)
    assert y.shape == x.shape
    y.sum().backward()
    if backend != "reference":  # the reference's mean over an empty map is NaN; ours is 0
        for p in sp:
            assert torch.isfinite(p.grad).all()
