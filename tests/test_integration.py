"""The fused modules with the rest of PyTorch: torch.compile, torch.export, ONNX export
(run in onnxruntime), autocast (AMP) and 2-process DistributedDataParallel."""

import copy
import os
import socket
import tempfile

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.utils import counters

import gct_fused
from gct_fused import dropin, reference
from helpers import FORWARD_TOL, assert_close, make_map


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random batch-norm statistics/affine and GCT gamma/beta, so every part matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(0.75 + 0.5 * torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.75 + 0.5 * torch.rand(m.running_var.shape, generator=g))
            if isinstance(m, gct_fused.GCT):
                m.gamma.copy_(torch.randn(m.gamma.shape, generator=g))
                m.beta.copy_(0.5 * torch.randn(m.beta.shape, generator=g))
    return model


def _converted_mobilenet():
    torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed")
    torch.manual_seed(0)
    model = _randomize(torchvision.models.mobilenet_v3_small(weights=None))
    return gct_fused.convert(model).eval()


class SmallNet(nn.Module):
    """Every fused module kind without timm/torchvision: GCT (l2 and l1), the SE drop-ins
    (ReLU/SiLU, sigmoid/hard-sigmoid, ESE) and an SE-residual tail."""

    def __init__(self, channels: int = 16, classes: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.gct = gct_fused.GCT(channels)
        self.se_tv = dropin.SqueezeExcitation(channels, 4)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.se_timm = dropin.SEModule(channels, rd_channels=4, act_layer=nn.SiLU, gate_layer="hard_sigmoid")
        self.ese = dropin.EffectiveSEModule(channels)
        self.gct_l1 = gct_fused.GCT(channels, mode="l1")
        self.se_tail = dropin.LegacySEModule(channels, 4)
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        x = F.relu(self.gct(self.stem(x)))
        identity = self.se_tv(x)
        x = self.se_timm(self.conv(identity))
        x = self.gct_l1(self.ese(x))
        x = self.se_tail.forward_residual(x, identity)  # relu(se(x) + identity)
        return self.head(x.mean((2, 3)))


def _small_net(dtype=torch.float32):
    torch.manual_seed(0)
    return _randomize(SmallNet()).to(dtype)


# ---- torch.compile -------------------------------------------------------------------------------
def test_compile_converted_torchvision_model_fullgraph():
    """Dynamo traces a converted MobileNetV3 without a graph break, forward and backward.
    (backend="aot_eager" runs dynamo and AOTAutograd, which is where graph breaks and fake-
    tensor problems show, without Inductor's code generation: that takes minutes for a whole
    MobileNet on 2 cores. Inductor runs on SmallNet below and in test_compile.py.)"""
    model = _converted_mobilenet()
    for m in model.modules():  # no random dropout masks: the two runs must see the same function
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    x = torch.randn(2, 3, 64, 64)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
    model.train()
    x.requires_grad_(True)
    compiled(x).square().sum().backward()
    dx_compiled = x.grad
    x.grad = None
    model(x).square().sum().backward()
    assert counters["graph_break"].total() == 0, dict(counters["graph_break"])
    torch.testing.assert_close(dx_compiled, x.grad, rtol=1e-4, atol=1e-6 * float(x.grad.abs().max()))


def test_compile_inductor_small_net():
    model = _small_net()
    x = make_map((2, 3, 8, 8), torch.float32, "cpu")
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, fullgraph=True)
    xc = x.clone().requires_grad_(True)
    xe = x.clone().requires_grad_(True)
    yc, ye = compiled(xc), model(xe)
    yc.square().sum().backward()
    grads_compiled = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    ye.square().sum().backward()
    assert counters["graph_break"].total() == 0, dict(counters["graph_break"])
    torch.testing.assert_close(yc, ye, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(xc.grad, xe.grad, rtol=1e-4, atol=1e-6)
    for gc, ge in zip(grads_compiled, (p.grad for p in model.parameters())):
        torch.testing.assert_close(gc, ge, rtol=1e-4, atol=1e-5 * max(1.0, float(ge.abs().max())))


# ---- torch.export --------------------------------------------------------------------------------
def _fused_targets(exported):
    return {str(n.target) for n in exported.graph.nodes if "gct_fused" in str(n.target)}


def test_export_small_net_keeps_the_fused_ops():
    model = _small_net().eval()
    x = make_map((2, 3, 8, 8), torch.float32, "cpu")
    exported = torch.export.export(model, (x,))
    assert _fused_targets(exported) >= {"gct_fused.gct_forward.default", "gct_fused.se_forward.default",
                                        "gct_fused.se_residual_forward.default"}
    torch.testing.assert_close(exported.module()(x), model(x), rtol=0, atol=0)
    x2 = make_map((2, 3, 8, 8), torch.float32, "cpu", seed=9)
    torch.testing.assert_close(exported.module()(x2), model(x2), rtol=0, atol=0)


def test_export_converted_torchvision_model():
    model = _converted_mobilenet()
    x = torch.randn(1, 3, 64, 64)
    exported = torch.export.export(model, (x,))
    assert _fused_targets(exported) == {"gct_fused.se_forward.default"}
    torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-6, atol=1e-7)


# ---- ONNX ------------------------------------------------------------------------------------------
def _onnx_runtime():
    pytest.importorskip("onnx", reason="onnx is not installed")
    return pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")


def _run_onnx(ort, path, x):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # shape checks, traced as constants
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
@pytest.mark.parametrize("which", ["small_net", "mobilenet_v3_small"])
def test_onnx_export_runs_in_onnxruntime(which, dynamo):
    """While exporting, the fused ops trace the reference formulas (plain aten ops), so the
    ONNX graph is standard ops only and runs anywhere."""
    ort = _onnx_runtime()
    if dynamo:
        pytest.importorskip("onnxscript", reason="the dynamo ONNX exporter needs onnxscript")
    model = _small_net().eval() if which == "small_net" else _converted_mobilenet()
    x = torch.randn(2, 3, 8, 8) if which == "small_net" else torch.randn(1, 3, 64, 64)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        torch.onnx.export(model, (x,), path, dynamo=dynamo, input_names=["x"])
        import onnx
        graph = onnx.load(path).graph
        assert not [n.op_type for n in graph.node if n.domain not in ("", "ai.onnx")], "custom ONNX ops"
        got = _run_onnx(ort, path, x)
    assert not torch.onnx.is_in_onnx_export()
    with torch.no_grad():
        want = model(x)
    # float32 through a different runtime's kernels: relative to the output's scale.
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


# ---- AMP ---------------------------------------------------------------------------------------------
def _amp_devices():
    cases = [("cpu", torch.bfloat16)]
    cases += [("cuda", torch.float16), ("cuda", torch.bfloat16)]
    return cases


def _amp_device(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA autocast needs a GPU")
    return torch.device(device)


@pytest.mark.parametrize("device,dtype", _amp_devices(), ids=lambda v: str(v))
def test_autocast_se_and_gct(device, dtype):
    """Under autocast a half-precision map (a conv's output) meets float32 parameters: the
    output keeps x's dtype, the op's statistics are float32, and the result matches the
    reference computed in float32 on the same input values, within one rounding of dtype."""
    device = _amp_device(device)
    torch.manual_seed(0)
    se = dropin.SEModule(16, rd_channels=4, act_layer=nn.SiLU, gate_layer="hard_sigmoid").to(device)
    gct = _randomize(gct_fused.GCT(16)).to(device)
    x = make_map((2, 16, 6, 6), dtype, device, "channels_last")
    identity = make_map((2, 16, 6, 6), dtype, device, seed=4)
    w1, b1, w2, b2 = se.se_weights()
    with torch.autocast(device.type, dtype=dtype):
        y_se, y_gct = se(x), gct(x)
        y_res = se.forward_residual(x, identity)
        backend = gct_fused._backends.resolve_backend("auto", device)
        _, pooled = gct_fused._backends.fused_op(backend, "se_forward")(x, w1, b1, w2, b2, "silu", "hardsigmoid")
        _, gct_stats = gct_fused._backends.fused_op(backend, "gct_forward")(
            x, gct.alpha, gct.gamma, gct.beta, 1e-5, "l2", False)
        y_float = se(x.float())  # float32 input: stays float32 (autocast does not touch the op)
    assert y_se.dtype == y_gct.dtype == y_res.dtype == dtype and y_float.dtype == torch.float32
    assert pooled.dtype == gct_stats.dtype == torch.float32
    xf, idf = x.float(), identity.float()
    tol = FORWARD_TOL[dtype]
    assert_close(y_se, reference.squeeze_excite(xf, w1, b1, w2, b2, "silu", "hardsigmoid"), tol, "SE")
    assert_close(y_gct, reference.gct(xf, gct.alpha, gct.gamma, gct.beta), tol, "GCT")
    assert_close(y_res, reference.se_residual(xf, idf, w1, b1, w2, b2, "silu", "hardsigmoid"), tol, "se_residual")
    assert_close(pooled, xf.mean((2, 3)), FORWARD_TOL[torch.float32], "pooled statistics")
    # Backward under autocast: parameter gradients in the parameters' float32, dx in x's dtype.
    xg = x.detach().requires_grad_(True)
    with torch.autocast(device.type, dtype=dtype):
        se(xg).float().square().sum().backward()
    assert xg.grad.dtype == dtype and se.fc1.weight.grad.dtype == torch.float32


def test_autocast_converted_model_cpu():
    """A converted torchvision model under CPU autocast returns what the original does, in its dtype."""
    torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed")
    torch.manual_seed(0)
    original = _randomize(torchvision.models.mobilenet_v3_small(weights=None)).eval()
    converted = gct_fused.convert(original, inplace=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        full = original(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_original, y_converted = original(x), converted(x)
    assert y_converted.dtype == y_original.dtype
    # The fused SE computes its head in float32 where the original's 1x1 convs run in bfloat16,
    # so the converted model is at least as close to the float32 result.
    scale = float(full.abs().max())
    err_converted = float((y_converted.float() - full).abs().max()) / scale
    err_original = float((y_original.float() - full).abs().max()) / scale
    assert err_converted < 0.1 and err_converted <= 2 * err_original + 1e-3, (err_converted, err_original)


# ---- DistributedDataParallel -------------------------------------------------------------------
DDP_STEPS, DDP_BATCH = 3, 8


def _ddp_data():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(DDP_STEPS, DDP_BATCH, 3, 8, 8, generator=g, dtype=torch.float64)
    target = torch.randn(DDP_STEPS, DDP_BATCH, 3, generator=g, dtype=torch.float64)
    return x, target


def _train(model, x, target, rank=0, world=1):
    """DDP_STEPS SGD steps on this rank's share of each global batch; returns the gradients
    of every step and the final parameters."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    share = DDP_BATCH // world
    grads = []
    for step in range(DDP_STEPS):
        xb = x[step, rank * share:(rank + 1) * share]
        tb = target[step, rank * share:(rank + 1) * share]
        optimizer.zero_grad()
        F.mse_loss(model(xb), tb).backward()
        grads.append([p.grad.detach().clone() for p in model.parameters()])
        optimizer.step()
    return grads, [p.detach().clone() for p in model.parameters()]


def _ddp_worker(rank, world, port, out_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = DistributedDataParallel(_small_net(torch.float64))
        x, target = _ddp_data()
        grads, params = _train(model, x, target, rank, world)
        if rank == 0:
            torch.save({"grads": grads, "params": params}, out_path)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_match_one():
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with the gloo backend is not available")
    with tempfile.TemporaryDirectory() as folder:
        out_path = os.path.join(folder, "rank0.pt")
        mp.spawn(_ddp_worker, args=(2, _free_port(), out_path), nprocs=2, join=True)
        distributed = torch.load(out_path)
    x, target = _ddp_data()
    grads, params = _train(_small_net(torch.float64), x, target)
    # float64: the all-reduced mean of two half-batch gradients equals the full-batch gradient
    # up to the order of float64 additions.
    for step, (g_ddp, g_single) in enumerate(zip(distributed["grads"], grads)):
        for a, b in zip(g_ddp, g_single):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=lambda m: f"step {step}: {m}")
    for a, b in zip(distributed["params"], params):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


# ---- module plumbing of a converted model -----------------------------------------------------
def test_converted_model_deepcopy_pickle_state_dict_to():
    import io
    import pickle

    model = _small_net()
    x = make_map((2, 3, 8, 8), torch.float32, "cpu")
    y = model(x)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        torch.testing.assert_close(clone(x), y, rtol=0, atol=0)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(5)
    fresh = SmallNet()
    fresh.load_state_dict(torch.load(buffer))
    torch.testing.assert_close(fresh(x), y, rtol=0, atol=0)
    doubled = copy.deepcopy(model).double()
    assert_close(doubled(x.double()), y, FORWARD_TOL[torch.float32], "float64 copy")
    model.eval()
    assert not any(m.training for m in model.modules())
