"""torch.compile(fullgraph=True) traces the fused modules without graph breaks and
matches eager, forward and backward."""

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import gct_fused
from helpers import FUSED_BACKENDS, assert_close, backend_device, grad_tol, make_map


def _module_cases(backend):
    torch.manual_seed(0)
    gct = gct_fused.GCT(8, backend=backend)
    with torch.no_grad():
        gct.gamma.normal_()
        gct.beta.normal_()
    return [
        ("gct", gct),
        ("gct_l1", gct_fused.GCT(8, mode="l1", backend=backend)),
        ("se", gct_fused.SqueezeExcite(8, 4, activation="silu", gate="hardsigmoid", backend=backend)),
    ]


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_compiled_modules_match_eager(backend):
    device = backend_device(backend)
    for name, module in _module_cases(backend):
        module = module.to(device)
        x = make_map((2, 8, 5, 5), torch.float32, device, "channels_last")
        torch._dynamo.reset()
        counters.clear()
        compiled = torch.compile(module, fullgraph=True)

        xe = x.detach().requires_grad_(True)
        ye = module(xe)
        ye.square().sum().backward()
        grads_eager = [xe.grad] + [p.grad.clone() for p in module.parameters()]
        module.zero_grad()

        xc = x.detach().requires_grad_(True)
        yc = compiled(xc)
        yc.square().sum().backward()
        grads_compiled = [xc.grad] + [p.grad.clone() for p in module.parameters()]
        module.zero_grad()

        assert counters["graph_break"].total() == 0, f"{name}: graph breaks {dict(counters['graph_break'])}"
        torch.testing.assert_close(yc, ye, rtol=1e-5, atol=1e-6, msg=f"{name} forward")
        for ge, gc in zip(grads_eager, grads_compiled):
            assert_close(gc, ge, grad_tol(torch.float32, ge), f"{name} backward")


def test_compiled_functional_se_residual_cpu():
    device = backend_device("cpu")
    x = make_map((2, 6, 4, 4), torch.float32, device)
    identity = make_map((2, 6, 4, 4), torch.float32, device, seed=1)
    se = gct_fused.SqueezeExcite(6, 3)

    def block(x, identity):
        return gct_fused.se_residual(x, identity, se.fc1.weight, se.fc1.bias, se.fc2.weight, se.fc2.bias)

    torch._dynamo.reset()
    counters.clear()
    got = torch.compile(block, fullgraph=True)(x, identity)
    assert counters["graph_break"].total() == 0
    torch.testing.assert_close(got, block(x, identity))
