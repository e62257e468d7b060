"""gct_fused.dropin: each drop-in against the module it replaces (published transcriptions,
and the real torchvision/timm classes where installed): the same state_dict keys, shapes and
submodule names, checkpoints that load unchanged, the same outputs and gradients (float64,
to float64 rounding), computed by the fused op; plus the module plumbing."""

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import gct_fused
from gct_fused import dropin
from gct_fused.dropin import UnfusableError
from helpers import FORWARD_TOL, assert_close, grad_tol, make_map
from published import OfficialGCT
from published import SELayer as PublishedSELayer

C = 32  # channels of every case below


def _timm_cases(timm):
    from timm.layers import EffectiveSEModule, SEModule, make_divisible
    from timm.models._efficientnet_blocks import SqueezeExcite
    from timm.models.senet import SEModule as LegacySE

    return {
        "SEModule": (lambda: SEModule(C), lambda: dropin.SEModule(C)),
        "SEModule-silu-hardsigmoid-nobias": (
            lambda: SEModule(C, rd_ratio=0.25, act_layer=nn.SiLU, gate_layer="hard_sigmoid", bias=False),
            lambda: dropin.SEModule(C, rd_ratio=0.25, act_layer=nn.SiLU, gate_layer="hard_sigmoid", bias=False)),
        "SEModule-names": (lambda: SEModule(C, rd_channels=5, act_layer="swish", gate_layer="hard_sigmoid"),
                           lambda: dropin.SEModule(C, rd_channels=5, act_layer="swish", gate_layer="hard_sigmoid")),
        "EffectiveSEModule": (lambda: EffectiveSEModule(C), lambda: dropin.EffectiveSEModule(C)),
        "EfficientNet-SqueezeExcite": (lambda: SqueezeExcite(C, rd_ratio=0.25, act_layer=nn.SiLU),
                                       lambda: dropin.EfficientNetSqueezeExcite(C, rd_ratio=0.25, act_layer=nn.SiLU)),
        "MobileNetV3-SqueezeExcite": (
            lambda: SqueezeExcite(C, gate_layer="hard_sigmoid", force_act_layer=nn.ReLU, rd_round_fn=make_divisible),
            lambda: dropin.EfficientNetSqueezeExcite(C, gate_layer="hard_sigmoid", force_act_layer=nn.ReLU,
                                                     rd_round_fn=make_divisible)),
        "legacy-senet-SEModule": (lambda: LegacySE(C, 4), lambda: dropin.LegacySEModule(C, 4)),
    }


def _torchvision_cases(torchvision):
    tv = torchvision.ops.SqueezeExcitation
    return {
        f"SqueezeExcitation-{act.__name__}-{gate.__name__}": (
            lambda act=act, gate=gate: tv(C, 8, act, gate),
            lambda act=act, gate=gate: dropin.SqueezeExcitation(C, 8, act, gate))
        for act in (nn.ReLU, nn.SiLU) for gate in (nn.Sigmoid, nn.Hardsigmoid)
    }


def _cases(package):
    """{case id: (make original, make drop-in)} for one source package."""
    if package == "senet.pytorch":
        return {"SELayer": (lambda: PublishedSELayer(C, 8), lambda: dropin.SELayer(C, 8))}
    if package == "torchvision":
        return _torchvision_cases(pytest.importorskip("torchvision", reason="torchvision is not installed"))
    return _timm_cases(pytest.importorskip("timm", reason="timm is not installed"))


_CASE_IDS = [("senet.pytorch", "SELayer")] + \
    [("torchvision", f"SqueezeExcitation-{a}-{g}") for a in ("ReLU", "SiLU") for g in ("Sigmoid", "Hardsigmoid")] + \
    [("timm", name) for name in ("SEModule", "SEModule-silu-hardsigmoid-nobias", "SEModule-names",
                                 "EffectiveSEModule", "EfficientNet-SqueezeExcite", "MobileNetV3-SqueezeExcite",
                                 "legacy-senet-SEModule")]


def _pair(package, case):
    make_original, make_ours = _cases(package)[case]
    torch.manual_seed(0)
    original = make_original()
    with torch.no_grad():  # larger weights, so that the gates also saturate somewhere
        for p in original.parameters():
            p.mul_(3.0)
    ours = make_ours()
    ours.load_state_dict(original.state_dict())  # strict: the same keys and shapes
    return original, ours


def _forward_backward(module, x, dy):
    module.zero_grad()
    x = x.detach().requires_grad_(True)
    y = module(x)
    y.backward(dy)
    return y, x.grad, {name: p.grad for name, p in module.named_parameters()}


@pytest.mark.parametrize("package,case", _CASE_IDS, ids=[f"{p}:{c}" for p, c in _CASE_IDS])
def test_dropin_matches_the_original(package, case, fused_calls):
    original, ours = _pair(package, case)
    # The same state_dict keys/shapes and the same submodule names (so key paths match in a model).
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
        [(k, v.shape) for k, v in original.state_dict().items()]
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in original.named_modules()]
    assert ours.backend == "auto"

    dtype = torch.float64
    original, ours = original.to(dtype), ours.to(dtype)
    x = make_map((3, C, 5, 7), dtype, "cpu", "channels_last", scale=2.0)
    dy = make_map((3, C, 5, 7), dtype, "cpu", seed=5)
    y_ref, dx_ref, grads_ref = _forward_backward(original, x, dy)
    fused_calls.clear()
    y, dx, grads = _forward_backward(ours, x, dy)
    assert fused_calls == ["se_forward"], "the fused op must compute the drop-in"
    # float64: the op and eager differ by the order of a few float64 roundings only.
    assert_close(y, y_ref, FORWARD_TOL[dtype], f"{case} output")
    assert_close(dx, dx_ref, _grad_tol(original, dx_ref), f"{case} dx")
    assert grads.keys() == grads_ref.keys()
    for name, g_ref in grads_ref.items():
        assert_close(grads[name], g_ref, _grad_tol(original, g_ref), f"{case} d{name}")


def _grad_tol(original, expected):
    """float64 gradient tolerance. torch's own hardsigmoid backward (nn.Hardsigmoid in the
    original) multiplies by a float32 1/6, a relative error of 1e-8 even in float64, so the
    original's gradients are only that accurate there (the op's are exact)."""
    tol = grad_tol(torch.float64, expected)
    if any(type(m) is nn.Hardsigmoid for m in original.modules()):
        scale = max(float(expected.abs().max()), 1.0)
        tol = dict(rtol=1e-7, atol=1e-7 * scale)
    return tol


@pytest.mark.parametrize("package,case", [_CASE_IDS[0], _CASE_IDS[1], _CASE_IDS[-4]],
                         ids=lambda v: str(v))
def test_dropin_float32_and_from_module(package, case, fused_calls):
    """float32 within the op's own tolerance; from_module shares the original's Parameters."""
    original, _ = _pair(package, case)
    cls = {"SELayer": dropin.SELayer, "EffectiveSEModule": dropin.EffectiveSEModule}.get(
        case, dropin.SqueezeExcitation)
    ours = cls.from_module(copy.deepcopy(original), backend="cpu")
    kept = copy.deepcopy(original)
    x = make_map((2, C, 6, 6), torch.float32, "cpu")
    assert_close(ours(x), kept(x), FORWARD_TOL[torch.float32], case)
    assert fused_calls == ["se_forward"]
    shared = cls.from_module(original)
    assert all(a is b for a, b in zip(shared.parameters(), original.parameters()))


def test_torchvision_unbatched_input(fused_calls):
    tv = pytest.importorskip("torchvision", reason="torchvision is not installed")
    torch.manual_seed(0)
    original = tv.ops.SqueezeExcitation(C, 8, nn.SiLU, nn.Hardsigmoid).double()
    ours = dropin.SqueezeExcitation(C, 8, nn.SiLU, nn.Hardsigmoid).double()
    ours.load_state_dict(original.state_dict())
    x = make_map((C, 5, 4), torch.float64, "cpu")
    y = ours(x)
    assert y.shape == x.shape and fused_calls == ["se_forward"]
    assert_close(y, original(x), FORWARD_TOL[torch.float64], "unbatched")


def test_gct_is_the_official_module():
    assert dropin.GCT is gct_fused.GCT
    ours, official = dropin.GCT(6), OfficialGCT(6)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == \
        [(k, v.shape) for k, v in official.state_dict().items()]


@pytest.mark.parametrize("mode,after_relu", [("l2", False), ("l1", False), ("l1", True)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_gct_zero_gamma_beta_is_exactly_the_identity(mode, after_relu, dtype):
    module = dropin.GCT(5, mode=mode, after_relu=after_relu)
    with torch.no_grad():
        module.alpha.uniform_(0.5, 2.0)  # any alpha: gamma = beta = 0 gives gate = 1 + tanh(0) = 1
    module = module.to(torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype)
    for layout in ("nchw", "channels_last"):
        x = make_map((2, 5, 4, 3), dtype, "cpu", layout, scale=10.0)
        y = module(x)
        assert y.dtype == dtype and torch.equal(y, x), f"{mode} {layout}"


def test_selayer_loads_old_checkpoints_with_biases():
    """senet.pytorch's first version had Linear biases (fc.0.bias, fc.2.bias)."""
    torch.manual_seed(0)
    old = PublishedSELayer(C, 8)
    old.fc[0] = nn.Linear(C, C // 8, bias=True)
    old.fc[2] = nn.Linear(C // 8, C, bias=True)
    buffer = io.BytesIO()
    torch.save(old.state_dict(), buffer)
    buffer.seek(0)
    ours = dropin.SELayer(C, 8)
    assert ours.fc[0].bias is None
    ours.load_state_dict(torch.load(buffer))
    assert list(ours.state_dict()) == ["fc.0.weight", "fc.0.bias", "fc.2.weight", "fc.2.bias"]
    x = make_map((2, C, 4, 4), torch.float32, "cpu")
    assert_close(ours(x), old(x), FORWARD_TOL[torch.float32], "SELayer with biases")


def test_effective_se_fold_is_exact_at_the_kinks():
    """ESE folds as relu(Wp + b + 3) then hard-sigmoid(h - 3): check values across both
    saturation regions and the (sub)gradients there, against timm's formula in float64."""
    torch.manual_seed(0)
    ours = dropin.EffectiveSEModule(4).double()
    with torch.no_grad():
        ours.fc.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
        ours.fc.bias.zero_()
    assert list(ours.state_dict()) == ["fc.weight", "fc.bias"]  # the fold's buffers are not saved
    # Per-channel means of -5 (saturated low), -1, 1 (linear), 5 (saturated high).
    x = torch.tensor([-5.0, -1.0, 1.0, 5.0], dtype=torch.float64).view(1, 4, 1, 1).expand(1, 4, 3, 3).clone()
    x.requires_grad_(True)
    y = ours(x)
    x_ref = x.detach().clone().requires_grad_(True)
    # timm's hard_sigmoid, relu6(v + 3) / 6 (torch's hardsigmoid backward rounds 1/6 to float32)
    y_ref = x_ref * nn.functional.relu6(nn.functional.conv2d(
        x_ref.mean((2, 3), keepdim=True), ours.fc.weight.detach(), ours.fc.bias.detach()) + 3.0) / 6.0
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    y.sum().backward()
    y_ref.sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make,message", [
    (lambda: dropin.SEModule(C, add_maxpool=True), "add_maxpool=True"),
    (lambda: dropin.SEModule(C, norm_layer=nn.BatchNorm2d), "norm_layer"),
    (lambda: dropin.SEModule(C, act_layer=nn.GELU), "act_layer GELU is not a fused activation"),
    (lambda: dropin.SEModule(C, gate_layer="tanh"), "gate_layer='tanh' is not fused"),
    (lambda: dropin.SqueezeExcitation(C, 8, scale_activation=nn.Tanh), "scale_activation Tanh"),
    (lambda: dropin.SqueezeExcitation(C, 8, activation=nn.Hardswish), "activation Hardswish"),
    (lambda: dropin.EffectiveSEModule(C, gate_layer="sigmoid"), "only with the hard-sigmoid gate"),
    (lambda: dropin.EffectiveSEModule(C, add_maxpool=True), "add_maxpool=True"),
    (lambda: dropin.EfficientNetSqueezeExcite(C, act_layer=nn.GELU), "act_layer GELU"),
])
def test_unfusable_configurations_raise(make, message):
    with pytest.raises(UnfusableError, match=message):
        make()


def test_argument_errors():
    with pytest.raises(ValueError, match="backend must be one of"):
        dropin.SEModule(C, backend="gpu")
    with pytest.raises(ValueError, match="reduction must be an int"):
        dropin.SELayer(8, 16)  # hidden width 8 // 16 = 0
    with pytest.raises(ValueError, match="channel must be a positive int"):
        dropin.SELayer(0)
    with pytest.raises(TypeError, match="act_layer must be a layer name, class or module"):
        dropin.SEModule(C, act_layer=3)
    assert issubclass(UnfusableError, ValueError)


_PLUMBING = {
    "GCT": lambda: dropin.GCT(C),
    "SELayer": lambda: dropin.SELayer(C, 8),
    "SqueezeExcitation": lambda: dropin.SqueezeExcitation(C, 8, nn.SiLU, nn.Hardsigmoid),
    "SEModule": lambda: dropin.SEModule(C, bias=False),
    "EffectiveSEModule": lambda: dropin.EffectiveSEModule(C),
    "EfficientNetSqueezeExcite": lambda: dropin.EfficientNetSqueezeExcite(C, act_layer=nn.SiLU),
    "LegacySEModule": lambda: dropin.LegacySEModule(C, 4),
}


@pytest.mark.parametrize("name", list(_PLUMBING))
def test_dropin_plumbing(name):
    """deepcopy, pickling, state_dict round trip, .to(dtype/device), eval()/train()."""
    torch.manual_seed(0)
    module = _PLUMBING[name]()
    if name == "GCT":
        with torch.no_grad():
            module.gamma.normal_()
            module.beta.normal_()
    x = make_map((2, C, 4, 4), torch.float32, "cpu")
    y = module(x)
    for clone in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        assert type(clone) is type(module) and torch.equal(clone(x), y)
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    fresh = _PLUMBING[name]()
    fresh.load_state_dict(torch.load(buffer))
    assert torch.equal(fresh(x), y)
    doubled = copy.deepcopy(module).to(torch.float64)
    assert all(t.dtype == torch.float64 for t in list(doubled.parameters()) + list(doubled.buffers()))
    assert_close(doubled(x.double()), y, FORWARD_TOL[torch.float32], f"{name} float64")
    half = copy.deepcopy(module).to(torch.bfloat16)
    assert half(x.bfloat16()).dtype == torch.bfloat16
    assert module.eval() is module and not module.training and torch.equal(module(x), y)
    assert module.train() is module and module.training
    if torch.cuda.is_available():
        on_gpu = copy.deepcopy(module).to("cuda")
        assert_close(on_gpu(x.cuda()), y, FORWARD_TOL[torch.float32], f"{name} cuda")


def test_effective_se_half_precision_folds_in_float32():
    """With bfloat16 parameters the fold's bias + 3 is formed in float32 (in bfloat16 it would
    round by up to 2^-7), so the result is within one bfloat16 rounding of the exact formula."""
    torch.manual_seed(0)
    ours = dropin.EffectiveSEModule(C).to(torch.bfloat16)
    x = make_map((2, C, 5, 5), torch.bfloat16, "cpu", scale=3.0)
    w, b = (t.detach().double() for t in (ours.fc.weight, ours.fc.bias))
    xd = x.double()
    expected = xd * nn.functional.relu6(nn.functional.conv2d(xd.mean((2, 3), keepdim=True), w, b) + 3.0) / 6.0
    y = ours(x)
    assert y.dtype == torch.bfloat16
    assert_close(y, expected, FORWARD_TOL[torch.bfloat16], "ESE bfloat16")
