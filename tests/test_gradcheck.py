"""torch.autograd.gradcheck in float64 through each fused backend: the input and every
parameter, every GCT mode and SE variant (on CPU: the C++ kernels and the Triton
interpreter; on a GPU also the CUDA kernels and native Triton)."""

import pytest
import torch

import gct_fused
from helpers import (FUSED_BACKENDS, GCT_MODES, SE_VARIANTS, backend_device, interpreted, make_gct_params, make_map,
                     make_se_params)


def _gradcheck(fn, inputs, backend, device):
    # Under the Triton interpreter the full Jacobian takes minutes per case; fast mode
    # (a random projection of it, torch's own option) checks the same formulas.
    return torch.autograd.gradcheck(fn, inputs, fast_mode=interpreted(backend, device))


def _leaves(tensors):
    return [None if t is None else t.detach().requires_grad_(True) for t in tensors]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("mode,after_relu", GCT_MODES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_gct_gradcheck(backend, mode, after_relu, layout):
    device = backend_device(backend)
    x = make_map((2, 4, 3, 5), torch.float64, device, layout)
    # (1, C, 1, 1) parameters, as the module holds them
    params = [p.reshape(1, 4, 1, 1) for p in make_gct_params(4, torch.float64, device)]
    fn = lambda *t: gct_fused.gct(*t, mode=mode, after_relu=after_relu, backend=backend)  # noqa: E731
    assert _gradcheck(fn, _leaves([x, *params]), backend, device)


@pytest.mark.parametrize("activation,gate,bias", SE_VARIANTS)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_se_gradcheck(backend, activation, gate, bias):
    device = backend_device(backend)
    x = make_map((2, 6, 3, 4), torch.float64, device, "channels_last")
    params = make_se_params(6, 3, torch.float64, device, bias=bias)
    fn = lambda *t: gct_fused.squeeze_excite(*t, activation, gate, backend=backend)  # noqa: E731
    assert _gradcheck(fn, _leaves([x, *params]), backend, device)


@pytest.mark.parametrize("activation_after", ["relu", "none"])
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_se_residual_gradcheck(backend, activation_after):
    device = backend_device(backend)
    x = make_map((2, 5, 3, 3), torch.float64, device)
    identity = make_map((2, 5, 3, 3), torch.float64, device, seed=8)
    params = make_se_params(5, 2, torch.float64, device)
    fn = lambda *t: gct_fused.se_residual(*t, "silu", "hardsigmoid", activation_after, backend=backend)  # noqa: E731
    assert _gradcheck(fn, _leaves([x, identity, *params]), backend, device)
