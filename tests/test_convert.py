"""gct_fused.convert on real torchvision and timm models (built without downloading weights)
and on hand-built ones: what it replaces, what it leaves alone and why, and that the
converted model computes the same outputs and training gradients as the original.

Tolerances (errors are max |converted - original| over the largest |original| of the same
kind: the output, the input gradient, or all parameter gradients together):
* float64 models: 1e-9. Measured: <= 1e-15 (eval) and <= 1e-12 (train mode, where batch
  norm over a few values amplifies rounding), i.e. the same function up to float64 rounding.
* float32 models (the EfficientNet/MobileNet families, whose depthwise convs take minutes in
  float64 on CPU): 5e-5 in eval mode and 5e-4 in train mode. Measured: <= 1.5e-6 (eval) and
  <= 2.5e-5 (train) here, while the original model's own float32 error against float64 is
  2e-6..8e-6 (eval) and up to 3e-4 (train-mode gradients): the conversion stays below the
  model's own float32 rounding noise.
"""

import copy
from functools import partial
import io
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import gct_fused
from gct_fused import dropin
from gct_fused.convert import ConversionRecord
from published import OfficialGCT
from published import SELayer as PublishedSELayer

TOL = {torch.float64: dict(eval=1e-9, train=1e-9), torch.float32: dict(eval=5e-5, train=5e-4)}


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random batch-norm affine parameters and running statistics: freshly built models zero
    some of them (timm's zero_init_last makes every residual branch, SE included, output 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(0.75 + 0.5 * torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.75 + 0.5 * torch.rand(m.running_var.shape, generator=g))
    return model


def _step(model, x):
    """One training-step backward of the loss sum(y * w), w fixed random: output, input
    gradient, parameter gradients by name. The RNG is reseeded so dropout draws the same
    masks in both models."""
    model.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    torch.manual_seed(1234)
    y = model(x)
    weight = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    (y * weight.to(y.dtype)).sum().backward()
    return y.detach(), x.grad, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _relative(a, b, scale):
    return float((a.double() - b.double()).abs().max()) / max(float(scale), 1e-30)


def assert_same_model(original, converted, x, modes=("eval", "train")):
    """Outputs, input gradients and parameter gradients of the two models agree (see TOL)."""
    for mode in modes:
        getattr(original, mode)()
        getattr(converted, mode)()
        y0, dx0, g0 = _step(original, x)
        y1, dx1, g1 = _step(converted, x)
        tol = TOL[x.dtype][mode]
        assert _relative(y1, y0, y0.abs().max()) <= tol, f"{mode} output"
        assert _relative(dx1, dx0, dx0.abs().max()) <= tol, f"{mode} input gradient"
        assert g1.keys() == g0.keys()
        scale = max(float(g.abs().max()) for g in g0.values())
        worst = max(g0, key=lambda n: _relative(g1[n], g0[n], scale))
        assert _relative(g1[worst], g0[worst], scale) <= tol, f"{mode} gradient of {worst}"


def _count(model, type_names):
    return sum(dropin.type_name(m) in type_names for m in model.modules())


def _check_converted(build, dtype, shape, se_types, fused_calls, expected_ops):
    torch.manual_seed(0)
    original = randomize_norms(build()).to(dtype)
    n_se = _count(original, se_types)
    assert n_se > 0
    converted, records = gct_fused.convert(copy.deepcopy(original), report=True)
    replaced = [r for r in records if r.action == "replaced"]
    assert all(isinstance(r, ConversionRecord) for r in records)
    assert _count(converted, se_types) == 0 and len(replaced) >= n_se, [str(r) for r in records]
    assert [r for r in records if r.action != "replaced"] == []
    assert [(k, v.shape) for k, v in converted.state_dict().items()] == \
        [(k, v.shape) for k, v in original.state_dict().items()]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3)).to(dtype)
    fused_calls.clear()
    assert_same_model(original, converted, x)
    assert set(fused_calls) >= set(expected_ops) and "reference" not in fused_calls
    return converted, records


TV_SE = {"torchvision.ops.misc.SqueezeExcitation"}
TIMM_SE = {"timm.layers.squeeze_excite.SEModule", "timm.models._efficientnet_blocks.SqueezeExcite",
           "timm.models.senet.SEModule"}
SE_OPS = ["se_forward"]  # (backward ops are called by autograd, not through fused_op)
RESIDUAL_OPS = ["se_residual_forward"]


@pytest.mark.parametrize("name,dtype", [("regnet_y_400mf", torch.float64), ("efficientnet_b0", torch.float32),
                                        ("mobilenet_v3_large", torch.float32)])
def test_torchvision_models(name, dtype, fused_calls):
    torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed")
    build = getattr(torchvision.models, name)
    _check_converted(lambda: build(weights=None), dtype, (2, 3, 64, 64), TV_SE, fused_calls, SE_OPS)


@pytest.mark.parametrize("name,dtype", [("seresnet18", torch.float64), ("legacy_seresnet18", torch.float64),
                                        ("mobilenetv3_large_100", torch.float32)])
def test_timm_models(name, dtype, fused_calls):
    timm = pytest.importorskip("timm", reason="timm is not installed")
    converted, records = _check_converted(lambda: timm.create_model(name, pretrained=False), dtype,
                                          (2, 3, 64, 64), TIMM_SE, fused_calls,
                                          SE_OPS if name.startswith("mobilenet") else RESIDUAL_OPS)
    if "resnet" in name:  # every SE-ResNet block's tail is one se_residual call
        blocks = [r for r in records if r.replacement and "Fused" in r.replacement]
        assert len(blocks) == 8 and all("se_residual" in r.reason for r in blocks), [str(r) for r in records]
        assert "se_forward" not in fused_calls


# ---- the fused residual epilogue on single blocks (float64) --------------------------------
def _timm_blocks():
    timm = pytest.importorskip("timm", reason="timm is not installed")  # noqa: F841
    from timm.models.resnet import BasicBlock, Bottleneck, downsample_conv
    from timm.models.senet import SEResNetBlock, SEResNetBottleneck, SEResNeXtBottleneck
    return {
        "resnet.Bottleneck": (lambda: Bottleneck(32, 8, attn_layer="se"), dropin.FusedResNetBottleneck),
        "resnet.Bottleneck-stride2": (
            lambda: Bottleneck(16, 8, stride=2, attn_layer="se", downsample=downsample_conv(16, 32, 1, stride=2)),
            dropin.FusedResNetBottleneck),
        "resnet.BasicBlock": (lambda: BasicBlock(16, 16, attn_layer="se"), dropin.FusedResNetBasicBlock),
        "senet.SEResNetBottleneck": (lambda: SEResNetBottleneck(32, 8, groups=1, reduction=4),
                                     dropin.FusedLegacySEBottleneck),
        "senet.SEResNeXtBottleneck": (lambda: SEResNeXtBottleneck(32, 8, groups=4, reduction=4, base_width=8),
                                      dropin.FusedLegacySEBottleneck),
        "senet.SEResNetBlock": (lambda: SEResNetBlock(16, 16, groups=1, reduction=4), dropin.FusedLegacySEResNetBlock),
    }


@pytest.mark.parametrize("name", ["resnet.Bottleneck", "resnet.Bottleneck-stride2", "resnet.BasicBlock",
                                  "senet.SEResNetBottleneck", "senet.SEResNeXtBottleneck", "senet.SEResNetBlock"])
def test_se_resnet_block_epilogue(name, fused_calls):
    build, fused_type = _timm_blocks()[name]
    torch.manual_seed(0)
    original = randomize_norms(build()).double()
    converted, records = gct_fused.convert(copy.deepcopy(original), report=True)
    assert type(converted) is fused_type
    assert [r.action for r in records] == ["replaced", "replaced"]  # the SE module, then the block
    assert records[-1].name == "" and "se_residual" in records[-1].reason
    x = torch.randn(2, original.conv1.in_channels, 6, 6, dtype=torch.float64)
    fused_calls.clear()
    assert_same_model(original, converted, x)
    assert "se_residual_forward" in fused_calls and "se_forward" not in fused_calls
    for clone in (copy.deepcopy(converted), pickle.loads(pickle.dumps(converted))):
        assert type(clone) is fused_type
        torch.testing.assert_close(clone(x), converted(x), rtol=0, atol=0)


def test_block_fusion_is_refused_where_unsafe():
    pytest.importorskip("timm", reason="timm is not installed")
    from timm.layers import DropPath, SEModule
    from timm.models.resnet import BasicBlock, Bottleneck

    class MyBottleneck(Bottleneck):  # another forward: must not be rewritten
        def forward(self, x):
            return super().forward(x) * 2

    cases = {
        "drop_path": (BasicBlock(16, 16, attn_layer="se", drop_path=DropPath(0.1)), "drop_path DropPath"),
        "silu": (BasicBlock(16, 16, attn_layer="se", act_layer=nn.SiLU), "is not ReLU"),
        "maxpool-se": (BasicBlock(16, 16, attn_layer=partial(SEModule, add_maxpool=True)),
                       "its se is not a fused SE module"),
    }
    for case, (block, reason) in cases.items():
        _, records = gct_fused.convert(block, report=True)
        block_record = [r for r in records if r.name == ""]
        assert block_record and block_record[0].action == "left alone" and reason in block_record[0].reason, \
            (case, [str(r) for r in records])
    subclassed, records = gct_fused.convert(MyBottleneck(32, 8, attn_layer="se"), report=True)
    assert type(subclassed) is MyBottleneck and isinstance(subclassed.se, dropin.SEModule)  # SE still fused
    # A block without SE is not a candidate at all.
    plain, records = gct_fused.convert(BasicBlock(16, 16), report=True)
    assert type(plain) is BasicBlock and records == []


def test_report_lists_what_is_left_alone_and_why():
    timm = pytest.importorskip("timm", reason="timm is not installed")
    torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed")
    from timm.layers import EffectiveSEModule, SEModule

    class MySqueezeExcitation(torchvision.ops.SqueezeExcitation):
        pass

    model = nn.Sequential(
        SEModule(16, norm_layer=nn.BatchNorm2d),
        SEModule(16, add_maxpool=True),
        SEModule(16, act_layer=nn.GELU),
        EffectiveSEModule(16, gate_layer="sigmoid"),
        MySqueezeExcitation(16, 4),
        SEModule(16),
        EffectiveSEModule(16),
        torchvision.ops.SqueezeExcitation(16, 4, nn.SiLU, nn.Hardsigmoid),
    )
    before = copy.deepcopy(model)
    converted, records = gct_fused.convert(model, report=True)
    by_name = {r.name: r for r in records}
    assert by_name["0"].action == "left alone" and "norm_layer BatchNorm2d" in by_name["0"].reason
    assert "add_maxpool=True" in by_name["1"].reason
    assert "GELU is not a fused activation" in by_name["2"].reason
    assert "hard-sigmoid" in by_name["3"].reason
    assert "subclass of torchvision.ops.misc.SqueezeExcitation" in by_name["4"].reason
    assert [by_name[k].action for k in "567"] == ["replaced"] * 3
    assert by_name["6"].replacement == "gct_fused.dropin.EffectiveSEModule"
    assert [type(m) for m in converted[:5]] == [type(m) for m in before[:5]]
    assert "left alone" in str(by_name["0"]) and str(by_name["5"]).startswith("5: replaced")
    x = torch.randn(2, 16, 5, 5)
    torch.testing.assert_close(converted.eval()(x), before.eval()(x), rtol=2e-5, atol=2e-6)
    _, again = gct_fused.convert(converted, report=True)  # converting twice changes nothing more
    assert [r.action for r in again] == ["left alone"] * 5
    assert timm is not None


def test_user_code_modules_senet_pytorch_and_official_gct(monkeypatch, fused_calls):
    """senet.pytorch's SELayer (module senet.se_module) and the official GCT (module GCT)
    live in users' code: they are recognised by their module and class names."""
    senet_module = types.ModuleType("senet.se_module")
    gct_module = types.ModuleType("GCT")
    SELayer = type("SELayer", (PublishedSELayer,), {"__module__": "senet.se_module"})
    GCT = type("GCT", (OfficialGCT,), {"__module__": "GCT"})
    senet_module.SELayer, gct_module.GCT = SELayer, GCT
    monkeypatch.setitem(sys.modules, "senet.se_module", senet_module)
    monkeypatch.setitem(sys.modules, "GCT", gct_module)
    torch.manual_seed(0)
    model = nn.Sequential(GCT(16), nn.Conv2d(16, 16, 3, padding=1), SELayer(16, 4), GCT(16, mode="l1")).double()
    with torch.no_grad():
        for m in (model[0], model[3]):
            m.gamma.normal_()
            m.beta.normal_()
    original = copy.deepcopy(model)
    converted, records = gct_fused.convert(model, report=True)
    assert [r.action for r in records] == ["replaced"] * 3
    assert [type(converted[i]) for i in (0, 2, 3)] == [gct_fused.GCT, dropin.SELayer, gct_fused.GCT]
    assert converted[3].mode == "l1" and converted[0].beta is model[0].beta
    fused_calls.clear()
    assert_same_model(original, converted, torch.randn(2, 16, 5, 5, dtype=torch.float64))
    assert {"gct_forward", "se_forward"} <= set(fused_calls)


def test_convert_in_place_keeps_parameters_and_optimizer_state():
    torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), torchvision.ops.SqueezeExcitation(16, 4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 8, 8))
    twin = copy.deepcopy(model)
    x = torch.randn(4, 3, 8, 8)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (model, twin)]
    for m, opt in zip((model, twin), optimizers):  # a step before converting: momentum buffers exist
        m(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    params_before = list(model.parameters())
    converted = gct_fused.convert(model)
    assert converted is model and isinstance(model[1], dropin.SqueezeExcitation)
    assert all(a is b for a, b in zip(converted.parameters(), params_before))  # the same Parameter objects
    for m, opt in zip((converted, twin), optimizers):
        m(x).square().mean().backward()
        opt.step()
    for a, b in zip(converted.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_convert_not_in_place_and_device_dtype():
    torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed")
    model = nn.Sequential(torchvision.ops.SqueezeExcitation(8, 2)).double().eval()
    converted = gct_fused.convert(model, inplace=False, backend="reference")
    assert type(model[0]) is torchvision.ops.SqueezeExcitation  # untouched
    assert isinstance(converted[0], dropin.SqueezeExcitation) and converted[0].backend == "reference"
    assert not converted.training and converted[0].fc1.weight.dtype == torch.float64
    assert converted[0].fc1.weight is not model[0].fc1.weight
    # A model that is itself an SE module comes back as the fused module.
    single = gct_fused.convert(torchvision.ops.SqueezeExcitation(8, 2))
    assert isinstance(single, dropin.SqueezeExcitation)
    buffer = io.BytesIO()
    torch.save(converted, buffer)  # whole-model pickling of converted models
    buffer.seek(0)
    assert isinstance(torch.load(buffer, weights_only=False)[0], dropin.SqueezeExcitation)


def test_convert_argument_errors():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        gct_fused.convert(lambda x: x)
    with pytest.raises(ValueError, match="backend must be one of"):
        gct_fused.convert(nn.Identity(), backend="fast")
    with pytest.raises(TypeError, match="inplace must be a bool"):
        gct_fused.convert(nn.Identity(), inplace="yes")


def test_convert_does_not_import_timm_or_torchvision():
    code = ("import sys, torch, gct_fused\n"
            "m = gct_fused.convert(torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)))\n"
            "bad = [n for n in ('timm', 'torchvision') if n in sys.modules]\n"
            "assert not bad, bad\n")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=root, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
