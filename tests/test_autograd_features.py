"""The fused ops inside PyTorch's autograd machinery, as training code uses it: a graph kept
for a second backward (retain_graph), saved-tensor hooks (what activation offloading and
torch.autograd.graph.save_on_cpu build on), activation checkpointing, anomaly mode, and a
backward through a graph whose saved input was modified in place (which must raise, not
compute with the new values). Each backend family against the same computation without
the feature, or against the reference backend.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import gct_fused
from helpers import backend_device, make_gct_params, make_map, make_se_params

BACKENDS = ["cpu", "cuda", "triton"]
SHAPE = (2, 8, 5, 6)


def _setup(backend):
    device = backend_device(backend)  # skips, saying why, where the backend cannot run
    x = make_map(SHAPE, torch.float64, device).requires_grad_()
    gct_params = [p.requires_grad_() for p in make_gct_params(SHAPE[1], torch.float64, device)]
    se_params = [p.requires_grad_() for p in make_se_params(SHAPE[1], 4, torch.float64, device)]
    dy = make_map(SHAPE, torch.float64, device, seed=4)
    return x, gct_params, se_params, dy


def _block(backend, gct_params, se_params):
    """GCT then SE then se_residual: all three forward ops in one graph."""
    def run(x):
        y = gct_fused.gct(x, *gct_params, backend=backend)
        y = gct_fused.squeeze_excite(y, *se_params, backend=backend)
        return gct_fused.se_residual(y, x, *se_params, backend=backend)
    return run


def _grads(leaves):
    return [t.grad.clone() for t in leaves]


def _zero(leaves):
    for t in leaves:
        t.grad = None


@pytest.mark.parametrize("backend", BACKENDS)
def test_retain_graph_then_second_backward(backend):
    x, gp, sp, dy = _setup(backend)
    leaves = [x] + gp + [p for p in sp if p is not None]
    y = _block(backend, gp, sp)(x)
    y.backward(dy, retain_graph=True)
    once = _grads(leaves)
    y.backward(dy)
    for g1, g2 in zip(once, _grads(leaves)):
        torch.testing.assert_close(g2, 2 * g1, rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        y.backward(dy)


def _same_gradients_with(backend, forward_backward):
    """Runs `forward_backward(block, x, dy)` (a forward and backward of the GCT -> SE ->
    se_residual block under some autograd feature, returning the output) and checks every
    gradient against a plain forward and backward. Returns (plain output, that output)."""
    x, gp, sp, dy = _setup(backend)
    leaves = [x] + gp + [p for p in sp if p is not None]
    block = _block(backend, gp, sp)
    y_plain = block(x)
    y_plain.backward(dy)
    expected = _grads(leaves)
    _zero(leaves)
    y = forward_backward(block, x, dy)
    for g, e in zip(_grads(leaves), expected):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
    return y_plain, y


@pytest.mark.parametrize("backend", BACKENDS)
def test_saved_tensor_hooks_see_every_saved_tensor(backend):
    packed, unpacked = [], []

    def pack(t):
        packed.append(t.shape)
        return t.detach().clone()  # a copy, as an offloading hook returns

    def unpack(t):
        unpacked.append(t.shape)
        return t

    def forward_backward(block, x, dy):
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            y = block(x)
        assert x.shape in packed, "the input map must be saved through the hooks"
        y.backward(dy)
        return y

    _same_gradients_with(backend, forward_backward)
    assert len(unpacked) == len(packed) > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_save_on_cpu(backend):
    def forward_backward(block, x, dy):
        with torch.autograd.graph.save_on_cpu():
            y = block(x)
        y.backward(dy)
        return y

    _same_gradients_with(backend, forward_backward)


@pytest.mark.parametrize("use_reentrant", [False, True], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_activation_checkpointing(backend, use_reentrant):
    def forward_backward(block, x, dy):
        y = checkpoint(block, x, use_reentrant=use_reentrant)
        y.backward(dy)
        return y

    y_plain, y = _same_gradients_with(backend, forward_backward)
    assert torch.equal(y, y_plain)


@pytest.mark.parametrize("backend", BACKENDS)
def test_anomaly_mode(backend):
    def forward_backward(block, x, dy):
        with torch.autograd.detect_anomaly(check_nan=True):
            y = block(x)
            y.backward(dy)
        return y

    _same_gradients_with(backend, forward_backward)


@pytest.mark.parametrize("op", ["gct", "squeeze_excite"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_saved_input_modified_in_place_raises(backend, op):
    x, gp, sp, dy = _setup(backend)
    x_in = x.detach().clone().requires_grad_()
    inner = x_in * 1.0  # a non-leaf, so that it can be modified in place
    y = gct_fused.gct(inner, *gp, backend=backend) if op == "gct" else \
        gct_fused.squeeze_excite(inner, *sp, backend=backend)
    with torch.no_grad():
        inner.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward(dy)
