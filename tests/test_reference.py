"""gct_fused.reference is the published formulas: checked against verbatim transcriptions."""

import pytest
import torch
from torch import nn

from gct_fused import reference
from helpers import GCT_MODES, make_gct_params, make_map, make_se_params
from published import OfficialGCT, SELayer, SqueezeExcitation


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mode,after_relu", GCT_MODES)
def test_gct_reference_is_the_official_code(dtype, mode, after_relu):
    x = make_map((3, 8, 5, 7), dtype, "cpu")
    official = OfficialGCT(8, mode=mode, after_relu=after_relu).to(dtype)
    with torch.no_grad():
        for p, v in zip((official.alpha, official.gamma, official.beta), make_gct_params(8, dtype, "cpu")):
            p.copy_(v.reshape(1, 8, 1, 1))
    expected = official(x)
    got = reference.gct(x, official.alpha, official.gamma, official.beta, 1e-5, mode, after_relu)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("mode,after_relu", GCT_MODES)
def test_gct_reference_nd_equals_flattened_4d(mode, after_relu):
    """The N-D generalisation sums over every spatial dim: 3-D and 5-D input equal 4-D views."""
    params = make_gct_params(4, torch.float64, "cpu")
    x5 = make_map((2, 4, 3, 5, 6), torch.float64, "cpu")
    want = reference.gct(x5.reshape(2, 4, 15, 6), *params, mode=mode, after_relu=after_relu)
    got5 = reference.gct(x5, *params, mode=mode, after_relu=after_relu)
    got3 = reference.gct(x5.reshape(2, 4, 90), *params, mode=mode, after_relu=after_relu)
    torch.testing.assert_close(got5.reshape(want.shape), want, rtol=1e-13, atol=0)
    torch.testing.assert_close(got3.reshape(want.shape), want, rtol=1e-13, atol=0)


def test_gct_reference_without_spatial_dims():
    """(N, C) input: L = 1, the spatial 'sum' is the element itself (not a sum over all dims)."""
    x = make_map((3, 6), torch.float64, "cpu")
    params = make_gct_params(6, torch.float64, "cpu")
    torch.testing.assert_close(reference.gct(x, *params), reference.gct(x[:, :, None, None], *params)[:, :, 0, 0])


def test_gct_reference_identity_at_init():
    x = make_map((2, 5, 4, 4), torch.float32, "cpu")
    m = reference.GCT(5)
    assert torch.equal(m(x), x)


def test_se_reference_is_senet_pytorch_selayer():
    x = make_map((2, 32, 5, 5), torch.float64, "cpu")
    se = SELayer(32, reduction=16).double()
    got = reference.squeeze_excite(x, se.fc[0].weight, None, se.fc[2].weight, None, "relu", "sigmoid")
    torch.testing.assert_close(got, se(x), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("activation,act_cls", [("relu", nn.ReLU), ("silu", nn.SiLU)])
@pytest.mark.parametrize("gate,gate_cls", [("sigmoid", nn.Sigmoid), ("hardsigmoid", nn.Hardsigmoid)])
def test_se_reference_is_torchvision_squeeze_excitation(activation, act_cls, gate, gate_cls):
    x = make_map((2, 12, 6, 5), torch.float64, "cpu")
    se = SqueezeExcitation(12, 4, act_cls, gate_cls).double()
    got = reference.squeeze_excite(x, se.fc1.weight[:, :, 0, 0], se.fc1.bias, se.fc2.weight[:, :, 0, 0],
                                   se.fc2.bias, activation, gate)
    torch.testing.assert_close(got, se(x), rtol=1e-13, atol=1e-14)


def test_se_residual_reference():
    x = make_map((2, 6, 4, 4), torch.float64, "cpu")
    identity = make_map((2, 6, 4, 4), torch.float64, "cpu", seed=5)
    w1, b1, w2, b2 = make_se_params(6, 3, torch.float64, "cpu")
    se = reference.squeeze_excite(x, w1, b1, w2, b2)
    assert torch.equal(reference.se_residual(x, identity, w1, b1, w2, b2), torch.relu(se + identity))
    assert torch.equal(reference.se_residual(x, identity, w1, b1, w2, b2, activation_after="none"), se + identity)


def test_published_gct_overflows_in_float16():
    """The motivation for fp32 accumulation: sum x^2 > 65504 is inf in float16."""
    x = torch.full((1, 2, 16, 16), 20.0, dtype=torch.float16)  # sum x^2 = 102400
    alpha, gamma, beta = (torch.full((2,), v, dtype=torch.float16) for v in (1.0, 1.0, 0.0))
    assert not torch.isfinite(reference.gct(x, alpha, gamma, beta)).all()
