"""Derivatives beyond the first reverse-mode one. The fused backward ops have no derivative
of their own and the ops have no forward-mode formula:

- a gradient taken with create_graph=True must still be right to first order, and
  differentiating it again must raise (naming the way out, backend="reference") rather
  than silently add zero, whichever tensor the second derivative is taken towards;
- a dual tensor (forward-mode AD) must raise rather than have its tangent dropped, also
  when nothing requires grad;
- the reference backend, the recommended fallback, must get both right (gradgradcheck,
  and tangents against central differences, in float64)."""

import pytest
import torch
from torch.autograd import forward_ad

import gct_fused
from gct_fused import reference
from helpers import (FUSED_BACKENDS, assert_close, backend_device, f64, grad_tol, make_gct_params, make_map,
                     make_se_params)

SHAPE = (2, 5, 3, 4)


def _case(op, device):
    """(fused fn of a backend, reference fn, input tensors, their names) for one op."""
    x = make_map(SHAPE, torch.float64, device, "channels_last")
    if op == "gct":
        return (lambda backend: (lambda *t: gct_fused.gct(*t, backend=backend)),
                reference.gct, [x, *make_gct_params(SHAPE[1], torch.float64, device)],
                ["x", "alpha", "gamma", "beta"])
    if op == "se":
        return (lambda backend: (lambda *t: gct_fused.squeeze_excite(*t, "silu", "sigmoid", backend=backend)),
                lambda *t: reference.squeeze_excite(*t, "silu", "sigmoid"),
                [x, *make_se_params(SHAPE[1], 3, torch.float64, device)], ["x", "w1", "b1", "w2", "b2"])
    identity = make_map(SHAPE, torch.float64, device, seed=4)
    return (lambda backend: (lambda *t: gct_fused.se_residual(*t, backend=backend)),
            reference.se_residual, [x, identity, *make_se_params(SHAPE[1], 3, torch.float64, device)],
            ["x", "identity", "w1", "b1", "w2", "b2"])


def _first_grads(fn, leaves):
    """d/d(leaves) of sum(fn(leaves)^2), with create_graph=True (so dy = 2y requires grad)."""
    y = fn(*leaves)
    return torch.autograd.grad((y * y).sum(), leaves, create_graph=True)


@pytest.mark.parametrize("towards", ["x", "last parameter", "backward()"])
@pytest.mark.parametrize("op", ["gct", "se", "se_residual"])
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_double_backward_raises_instead_of_returning_zero(backend, op, towards):
    device = backend_device(backend)
    fused, ref, tensors, names = _case(op, device)
    leaves = [t.detach().requires_grad_(True) for t in tensors]
    ref_leaves = [f64(t).requires_grad_(True) for t in tensors]
    got = _first_grads(fused(backend), leaves)
    want = _first_grads(ref, ref_leaves)
    for name, g, w in zip(names, got, want):  # first order: still right under create_graph
        assert_close(g, w, grad_tol(torch.float64, w), f"d{name} (create_graph=True)")
    second = sum((g * g).sum() for g in got)  # depends on every input through dy = 2y and x
    with pytest.raises(RuntimeError, match='not differentiable.*backend="reference"'):
        if towards == "backward()":
            second.backward()
        else:
            target = leaves[0] if towards == "x" else leaves[-1]
            torch.autograd.grad(second, target, allow_unused=True)


@pytest.mark.parametrize("op", ["gct", "se", "se_residual"])
def test_reference_backend_has_second_derivatives(op):
    fused, _, tensors, _ = _case(op, torch.device("cpu"))
    leaves = [t.detach().requires_grad_(True) for t in tensors]
    assert torch.autograd.gradgradcheck(fused("reference"), leaves)


@pytest.mark.parametrize("tangent_on", ["x", "last parameter"])
@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("op", ["gct", "se", "se_residual"])
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_forward_mode_ad_raises_instead_of_dropping_the_tangent(backend, op, requires_grad, tangent_on):
    device = backend_device(backend)
    fused, _, tensors, _ = _case(op, device)
    inputs = [t.detach().requires_grad_(requires_grad) for t in tensors]
    where = 0 if tangent_on == "x" else len(inputs) - 1
    with forward_ad.dual_level():
        inputs[where] = forward_ad.make_dual(inputs[where], torch.randn_like(inputs[where]))
        # Ours names the way out; with a graph, the Triton family's Python autograd.Function
        # may reject the dual tensor first, with PyTorch's own "forward mode AD" message.
        match = 'forward.mode AD' if backend == "triton" and requires_grad else 'forward-mode AD.*backend="reference"'
        with pytest.raises(NotImplementedError, match=match):
            fused(backend)(*inputs)


@pytest.mark.parametrize("op", ["gct", "se", "se_residual"])
def test_reference_backend_has_forward_mode_ad(op):
    fused, _, tensors, _ = _case(op, torch.device("cpu"))
    fn = fused("reference")
    tangent = make_map(SHAPE, torch.float64, "cpu", seed=11)
    with forward_ad.dual_level():
        got = forward_ad.unpack_dual(fn(forward_ad.make_dual(tensors[0], tangent), *tensors[1:])).tangent
    h = 1e-6
    want = (fn(tensors[0] + h * tangent, *tensors[1:]) - fn(tensors[0] - h * tangent, *tensors[1:])) / (2 * h)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-8)
