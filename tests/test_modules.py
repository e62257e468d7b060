"""The nn.Module front-ends: official names/shapes/init, checkpoints, module plumbing."""

import copy
import io
import pickle

import pytest
import torch

import gct_fused
from helpers import FUSED_BACKENDS, backend_device, make_map
from published import OfficialGCT


def test_gct_parameters_match_the_official_module():
    ours, official = gct_fused.GCT(7), OfficialGCT(7)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
        [(k, v.shape) for k, v in official.state_dict().items()]
    assert list(ours.state_dict()) == ["alpha", "gamma", "beta"]
    assert torch.equal(ours.alpha, torch.ones(1, 7, 1, 1))
    assert torch.equal(ours.gamma, torch.zeros(1, 7, 1, 1))
    assert torch.equal(ours.beta, torch.zeros(1, 7, 1, 1))


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_official_checkpoint_loads_and_matches(backend):
    device = backend_device(backend)
    official = OfficialGCT(8, mode="l2")
    with torch.no_grad():
        official.gamma.normal_()
        official.beta.normal_()
        official.alpha.uniform_(0.5, 1.5)
    buffer = io.BytesIO()
    torch.save({"layer.0." + k: v for k, v in official.state_dict().items()}, buffer)
    buffer.seek(0)
    state = {k[len("layer.0."):]: v for k, v in torch.load(buffer).items()}
    ours = gct_fused.GCT(8, backend=backend)
    ours.load_state_dict(state)
    ours, official = ours.to(device), official.to(device)
    x = make_map((2, 8, 6, 6), torch.float32, device)
    torch.testing.assert_close(ours(x), official(x), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_gct_module_identity_at_init(backend):
    device = backend_device(backend)
    x = make_map((2, 3, 5, 5), torch.float32, device, "channels_last")
    assert torch.equal(gct_fused.GCT(3, backend=backend).to(device)(x), x)


def test_squeeze_excite_module():
    se = gct_fused.SqueezeExcite(64)
    assert se.fc1.weight.shape == (8, 64)  # timm's rounding: 64/16 = 4 -> at least 8
    assert list(se.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert list(gct_fused.SqueezeExcite(32, 4, bias=False).state_dict()) == ["fc1.weight", "fc2.weight"]
    x = make_map((2, 64, 4, 4), torch.float32, "cpu")
    expected = gct_fused.reference.squeeze_excite(x, se.fc1.weight, se.fc1.bias, se.fc2.weight, se.fc2.bias)
    torch.testing.assert_close(se(x), expected, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("make", [lambda: gct_fused.GCT(4, mode="l1"), lambda: gct_fused.SqueezeExcite(8, 2)])
def test_module_plumbing(make):
    m = make()
    x = make_map((2, m.fc1.in_features if hasattr(m, "fc1") else 4, 3, 3), torch.float32, "cpu")
    y = m(x)
    for clone in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert torch.equal(clone(x), y)
    fresh = make()
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh(x), y)
    assert m.double()(x.double()).dtype == torch.float64
    m.eval()
    m.train()


def test_module_argument_errors():
    with pytest.raises(ValueError, match="num_channels must be a positive int"):
        gct_fused.GCT(0)
    with pytest.raises(ValueError, match="mode must be one of"):
        gct_fused.GCT(4, mode="l3")
    with pytest.raises(ValueError, match="activation must be one of"):
        gct_fused.SqueezeExcite(8, activation="gelu")
    with pytest.raises(ValueError, match="rd_channels must be a positive int"):
        gct_fused.SqueezeExcite(8, rd_channels=0)
