"""Every fused backend's gradients against autograd through the float64 reference:
dx and every parameter gradient, backend x dtype x layout x shape x variant."""

import pytest
import torch

import gct_fused
from gct_fused import reference
from helpers import (DTYPES, FUSED_BACKENDS, GCT_MODES, LAYOUTS, SE_VARIANTS, assert_close, backend_device, thin_for_interpreter,
                     f64, grad_tol, grads_of, make_gct_params, make_map, make_se_params)

SHAPES = ((2, 5, 7, 3), (1, 1, 4, 4), (3, 6, 1, 1), (2, 7, 13), (2, 3, 2, 3, 5), (4, 9))


def _check(fused_fn, reference_fn, tensors, dy, dtype, names):
    out, got = grads_of(fused_fn, tensors, dy)
    _, want = grads_of(reference_fn, [f64(t) for t in tensors], f64(dy))
    for name, g, w in zip(names, got, want):
        if w is None:
            assert g is None
            continue
        assert g is not None, f"{name} has no gradient"
        assert g.dtype == tensors[names.index(name)].dtype and g.shape == w.shape
        assert_close(g, w, grad_tol(dtype, w), f"d{name}")
    return out


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode,after_relu", GCT_MODES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_gct_backward(backend, mode, after_relu, dtype, layout, shape):
    device = backend_device(backend)
    thin_for_interpreter(backend, device, dtype, layout, shape)
    x = make_map(shape, dtype, device, layout)
    dy = make_map(shape, dtype, device, layout, seed=3)
    params = make_gct_params(shape[1], dtype, device)
    _check(lambda *t: gct_fused.gct(*t, mode=mode, after_relu=after_relu, backend=backend),
           lambda *t: reference.gct(*t, mode=mode, after_relu=after_relu),
           [x, *params], dy, dtype, ["x", "alpha", "gamma", "beta"])


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation,gate,bias", SE_VARIANTS)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_se_backward(backend, activation, gate, bias, dtype, layout, shape):
    device = backend_device(backend)
    thin_for_interpreter(backend, device, dtype, layout, shape)
    x = make_map(shape, dtype, device, layout)
    dy = make_map(shape, dtype, device, layout, seed=3)
    params = make_se_params(shape[1], 3, dtype, device, bias=bias)
    _check(lambda *t: gct_fused.squeeze_excite(*t, activation, gate, backend=backend),
           lambda *t: reference.squeeze_excite(*t, activation, gate),
           [x, *params], dy, dtype, ["x", "w1", "b1", "w2", "b2"])


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation_after", ["relu", "none"])
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_se_residual_backward(backend, activation_after, dtype, layout, shape):
    device = backend_device(backend)
    thin_for_interpreter(backend, device, dtype, layout, shape)
    x = make_map(shape, dtype, device, layout)
    identity = make_map(shape, dtype, device, layout, seed=4)
    dy = make_map(shape, dtype, device, "nchw", seed=3)  # the gradient in another layout
    params = make_se_params(shape[1], 3, dtype, device)
    _check(lambda *t: gct_fused.se_residual(*t, "relu", "sigmoid", activation_after, backend=backend),
           lambda *t: reference.se_residual(*t, "relu", "sigmoid", activation_after),
           [x, identity, *params], dy, dtype, ["x", "identity", "w1", "b1", "w2", "b2"])


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_backward_with_expanded_gradient(backend):
    """y.sum().backward() hands the op a stride-0 (expanded) dy: handled without error."""
    device = backend_device(backend)
    x = make_map((2, 4, 5, 5), torch.float64, device, "channels_last")
    params = make_gct_params(4, torch.float64, device)
    leaves = [t.detach().requires_grad_(True) for t in (x, *params)]
    gct_fused.gct(*leaves, backend=backend).sum().backward()
    ref_leaves = [f64(t).requires_grad_(True) for t in (x, *params)]
    reference.gct(*ref_leaves).sum().backward()
    for a, b in zip(leaves, ref_leaves):
        assert_close(a.grad, b.grad, grad_tol(torch.float64, b.grad), "expanded dy")


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_backward_is_bitwise_reproducible(backend):
    device = backend_device(backend)
    x = make_map((3, 16, 9, 9), torch.float32, device, "channels_last")
    dy = make_map((3, 16, 9, 9), torch.float32, device, "channels_last", seed=9)
    gp = make_gct_params(16, torch.float32, device)
    sp = make_se_params(16, 4, torch.float32, device)
    runs = []
    for _ in range(2):
        _, g1 = grads_of(lambda *t: gct_fused.gct(*t, backend=backend), [x, *gp], dy)
        _, g2 = grads_of(lambda *t: gct_fused.squeeze_excite(*t, backend=backend), [x, *sp], dy)
        runs.append(g1 + g2)
    for a, b in zip(*runs):
        assert torch.equal(a, b)
