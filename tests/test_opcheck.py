"""torch.library.opcheck on every op of every fused family: schema, fake (meta)
implementation, autograd registration and AOT dispatch, with and without requires_grad."""

import pytest
import torch

from gct_fused._backends import fused_op
from helpers import FUSED_BACKENDS, backend_device, make_gct_params, make_map, make_se_params


def _samples(device, dtype=torch.float32):
    """(op name, args) for every op; maps in NCHW and channels_last."""
    out = []
    for layout in ("nchw", "channels_last"):
        x = make_map((2, 6, 3, 5), dtype, device, layout)
        dy = make_map((2, 6, 3, 5), dtype, device, layout, seed=1)
        identity = make_map((2, 6, 3, 5), dtype, device, layout, seed=2)
        gp = make_gct_params(6, dtype, device)
        stats = torch.rand(2, 6, dtype=torch.float32, device=device) + 1.0
        for mode, after_relu in (("l2", False), ("l1", True)):
            out.append(("gct_forward", (x, *gp, 1e-5, mode, after_relu)))
            out.append(("gct_backward", (dy, x, *gp, stats, 1e-5, mode, after_relu)))
        for bias in (True, False):
            w1, b1, w2, b2 = make_se_params(6, 2, dtype, device, bias=bias)
            out.append(("se_forward", (x, w1, b1, w2, b2, "relu", "sigmoid")))
            out.append(("se_backward", (dy, x, w1, b1, w2, b2, stats, "silu", "hardsigmoid")))
            out.append(("se_residual_forward", (x, identity, w1, b1, w2, b2, "relu", "sigmoid", "relu")))
            out.append(("se_residual_backward", (dy, x, identity, w1, b1, w2, b2, stats, "relu", "sigmoid")))
    return out


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_opcheck(backend):
    device = backend_device(backend)
    for name, args in _samples(device):
        op = fused_op(backend, name)
        torch.library.opcheck(op, args)
        if name.endswith("_forward"):
            grad_args = tuple(a.detach().requires_grad_(True) if isinstance(a, torch.Tensor) and a.dtype.is_floating_point
                              else a for a in args)
            torch.library.opcheck(op, grad_args)


FORWARD_OPS = ("gct_forward", "se_forward", "se_residual_forward")


@pytest.mark.parametrize("name", FORWARD_OPS)
def test_cpp_family_autograd_is_the_cpp_kernel(name):
    """The C++ ops' autograd is registered in C++ (csrc/autograd.cpp), not through
    torch.library's Python autograd, which would run Python on every forward call."""
    if "cpu" not in FUSED_BACKENDS:
        pytest.skip("the C++ extension is not built")
    dump = torch._C._dispatch_dump("gct_fused::" + name)
    autograd = [line for line in dump.splitlines() if line.startswith("Autograd")]
    assert len(autograd) == 1 and "csrc/autograd.cpp" in autograd[0], dump


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("bias", [True, False])
def test_forward_graph_only_when_a_gradient_can_be_asked_for(backend, bias):
    """Outputs carry a grad_fn exactly when grad mode is on and some input requires grad;
    the statistics never do; each input that requires grad gets one (None bias: none)."""
    device = backend_device(backend)
    for name, args in _samples(device):
        has_none = any(a is None for a in args)
        if not name.endswith("_forward") or (name != "gct_forward" and has_none == bias):
            continue
        op = fused_op(backend, name)
        y, stats = op(*args)
        assert y.grad_fn is None and not y.requires_grad
        grad_args = tuple(a.detach().requires_grad_(True) if isinstance(a, torch.Tensor) else a for a in args)
        with torch.no_grad():
            y, _ = op(*grad_args)
        assert y.grad_fn is None
        y, stats = op(*grad_args)
        assert y.grad_fn is not None and not stats.requires_grad
        tensors = [a for a in grad_args if isinstance(a, torch.Tensor)]
        grads = torch.autograd.grad(y, tensors, torch.ones_like(y))
        assert all(g is not None and g.shape == t.shape for g, t in zip(grads, tensors))
