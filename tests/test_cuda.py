"""The CUDA C++ kernels (backend="cuda"): registration, and what the generic test files
(which already run every backend against the float64 reference) do not cover: large L,
large C, bitwise determinism, CUDA-graph capture, torch.compile(mode="reduce-overhead"),
inputs whose spatial dims do not merge, and tensors of >= 2**31 elements (opt-in: -m large)."""

import os

import pytest
import torch

import gct_fused
from gct_fused import reference
from gct_fused._backends import OP_NAMES
from helpers import (BACKWARD_TOL, FORWARD_TOL, assert_close, check_against_reference, f64, grad_tol, grads_of,
                     make_gct_params, make_map, make_se_params)

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _cuda_device():
    """The device of a GPU test, or skip when the built extension has no CUDA kernels."""
    why = gct_fused._backends.unavailable_reason("cuda", "cuda")
    if why is not None:
        pytest.skip(f"backend 'cuda' unavailable: {why}")
    return torch.device("cuda")


# ---------------------------------------------------------------------------------------
# Registration (runs without a GPU)


def test_cuda_kernels_registered_for_every_op():
    """With GCT_FUSED_CUDA=1 (set by .ci/run) the build must contain the CUDA kernels."""
    if os.environ.get("GCT_FUSED_CUDA", "") != "1":
        pytest.skip("GCT_FUSED_CUDA is not '1': the extension may have been built without CUDA kernels")
    from gct_fused import _ops
    assert _ops.C_IMPORT_ERROR is None, f"gct_fused._C did not import: {_ops.C_IMPORT_ERROR}"
    missing = [name for name in OP_NAMES
               if not torch._C._dispatch_has_kernel_for_dispatch_key(f"gct_fused::{name}", "CUDA")]
    assert not missing, f"no CUDA kernel registered for {missing}"


# ---------------------------------------------------------------------------------------
# Helpers of the GPU tests


def _gct_case(shape, dtype, device, layout, mode, after_relu):
    x = make_map(shape, dtype, device, layout)
    if after_relu:
        x = x.abs()
    dy = make_map(shape, dtype, device, layout, seed=3)
    params = make_gct_params(shape[1], dtype, device)
    fused = lambda *t: gct_fused.gct(*t, mode=mode, after_relu=after_relu, backend="cuda")  # noqa: E731
    ref = lambda *t: reference.gct(*t, mode=mode, after_relu=after_relu)  # noqa: E731
    return fused, ref, [x, *params], dy


def _se_case(shape, dtype, device, layout, activation="relu", gate="sigmoid", bias=True):
    x = make_map(shape, dtype, device, layout)
    dy = make_map(shape, dtype, device, layout, seed=3)
    params = make_se_params(shape[1], max(1, shape[1] // 16), dtype, device, bias=bias)
    fused = lambda *t: gct_fused.squeeze_excite(*t, activation, gate, backend="cuda")  # noqa: E731
    ref = lambda *t: reference.squeeze_excite(*t, activation, gate)  # noqa: E731
    return fused, ref, [x, *params], dy


# ---------------------------------------------------------------------------------------
# Shapes the generic files do not reach: reductions split along L, C beyond a block


@needs_gpu
@pytest.mark.parametrize("shape", [(1, 3, 512, 512), (2, 4096, 7, 7), (1, 10000, 2, 3)],
                         ids=["large_L", "large_C", "C_beyond_shared_memory"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_large_shapes_against_reference(shape, layout, dtype):
    device = _cuda_device()
    for mode, after_relu in (("l2", False), ("l1", False), ("l1", True)):
        fused, ref, tensors, dy = _gct_case(shape, dtype, device, layout, mode, after_relu)
        check_against_reference(fused, ref, tensors, dy, dtype, f"gct {mode} relu={after_relu} {shape}")
    for activation, gate in (("relu", "sigmoid"), ("silu", "hardsigmoid")):
        fused, ref, tensors, dy = _se_case(shape, dtype, device, layout, activation, gate)
        check_against_reference(fused, ref, tensors, dy, dtype, f"se {activation}/{gate} {shape}")


@needs_gpu
@pytest.mark.parametrize("activation_after", ["relu", "none"])
def test_se_residual_large_shapes(activation_after):
    device = _cuda_device()
    for shape in ((1, 3, 512, 512), (2, 4096, 7, 7)):
        x = make_map(shape, torch.float32, device, "channels_last")
        identity = make_map(shape, torch.float32, device, "channels_last", seed=5)
        dy = make_map(shape, torch.float32, device, "channels_last", seed=3)
        params = make_se_params(shape[1], max(1, shape[1] // 16), torch.float32, device)
        check_against_reference(
            lambda *t: gct_fused.se_residual(*t, "relu", "sigmoid", activation_after, backend="cuda"),
            lambda *t: reference.se_residual(*t, "relu", "sigmoid", activation_after),
            [x, identity, *params], dy, torch.float32, f"se_residual {activation_after} {shape}")


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_spatial_dims_that_do_not_merge(dtype):
    """Dense permutations of the spatial dims: copied once, the output keeps x's strides."""
    device = _cuda_device()
    x = make_map((2, 6, 5, 7), dtype, device).transpose(2, 3)  # strides that do not merge into one
    dy = make_map((2, 6, 5, 7), dtype, device, seed=3).transpose(2, 3)
    shape = tuple(x.shape)
    for fused, ref, tensors, _ in (_gct_case(shape, dtype, device, "nchw", "l2", False),
                                   _se_case(shape, dtype, device, "nchw")):
        tensors[0] = x
        assert fused(*tensors).stride() == x.stride()
        check_against_reference(fused, ref, tensors, dy, dtype, "spatial dims that do not merge")


# ---------------------------------------------------------------------------------------
# Determinism, CUDA graphs, torch.compile with CUDA graphs


@needs_gpu
@pytest.mark.parametrize("shape,layout", [((2, 8, 128, 128), "nchw"), ((4, 64, 56, 56), "channels_last"),
                                          ((8, 2048, 7, 7), "channels_last"), ((3, 5, 33, 65), "nchw")])
def test_forward_and_backward_are_bitwise_reproducible(shape, layout):
    device = _cuda_device()
    cases = [_gct_case(shape, torch.float32, device, layout, "l2", False),
             _gct_case(shape, torch.bfloat16, device, layout, "l1", False),
             _se_case(shape, torch.float32, device, layout),
             _se_case(shape, torch.bfloat16, device, layout, "silu", "hardsigmoid")]
    for fused, _, tensors, dy in cases:
        runs = []
        for _ in range(2):
            out, grads = grads_of(fused, tensors, dy)
            runs.append([out] + grads)
        for a, b in zip(*runs):
            assert torch.equal(a, b), "two identical calls gave different bits"


def _modules(device):
    torch.manual_seed(0)
    gct = gct_fused.GCT(32, backend="cuda")
    gct_l1 = gct_fused.GCT(32, mode="l1", backend="cuda")
    for m in (gct, gct_l1):
        with torch.no_grad():
            m.gamma.normal_()
            m.beta.normal_()
    se = gct_fused.SqueezeExcite(32, 8, activation="silu", gate="hardsigmoid", backend="cuda")
    return [("gct", gct.to(device)), ("gct_l1", gct_l1.to(device)), ("se", se.to(device))]


def _eager_step(module, x, dy):
    module.zero_grad(set_to_none=True)
    xe = x.detach().requires_grad_(True)
    y = module(xe)
    y.backward(dy)
    return [y.detach().clone(), xe.grad.clone()] + [p.grad.clone() for p in module.parameters()]


@needs_gpu
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_cuda_graph_capture_and_replay(layout):
    device = _cuda_device()
    shape = (4, 32, 20, 20)
    for name, module in _modules(device):
        static_x = make_map(shape, torch.float32, device, layout).detach().requires_grad_(True)
        static_dy = make_map(shape, torch.float32, device, layout, seed=3)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph, as the CUDA-graph docs do
            for _ in range(2):
                module.zero_grad(set_to_none=True)
                static_x.grad = None
                module(static_x).backward(static_dy)
        torch.cuda.current_stream().wait_stream(side)
        module.zero_grad(set_to_none=True)
        static_x.grad = None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_y = module(static_x)
            static_y.backward(static_dy)
        # The gradients allocated during capture are the graph's: replays rewrite them.
        static_outputs = [static_y, static_x.grad] + [p.grad for p in module.parameters()]
        for seed in (11, 12):  # replay on new data, compare with eager on the same data
            new_x = make_map(shape, torch.float32, device, layout, seed=seed)
            new_dy = make_map(shape, torch.float32, device, layout, seed=seed + 100)
            with torch.no_grad():
                static_x.copy_(new_x)
                static_dy.copy_(new_dy)
            graph.replay()
            torch.cuda.synchronize()
            replayed = [t.detach().clone() for t in static_outputs]
            eager = _eager_step(module, new_x, new_dy)
            for a, b in zip(replayed, eager):
                assert torch.equal(a, b), f"{name}: graph replay differs from eager"


@needs_gpu
def test_compile_reduce_overhead_matches_eager():
    import torch._dynamo
    from torch._dynamo.utils import counters
    device = _cuda_device()
    shape = (4, 32, 12, 12)
    for name, module in _modules(device):
        torch._dynamo.reset()
        counters.clear()
        compiled = torch.compile(module, fullgraph=True, mode="reduce-overhead")
        for step in range(4):  # the first calls record, later ones replay CUDA graphs
            x = make_map(shape, torch.float32, device, "channels_last", seed=step)
            dy = make_map(shape, torch.float32, device, "channels_last", seed=step + 50)
            module.zero_grad(set_to_none=True)
            xc = x.detach().requires_grad_(True)
            y = compiled(xc)
            y.backward(dy)
            got = [y.detach().clone(), xc.grad.clone()] + [p.grad.clone() for p in module.parameters()]
            want = _eager_step(module, x, dy)
            for a, b in zip(got, want):
                assert_close(a, b, grad_tol(torch.float32, b), f"{name} step {step}")
        assert counters["graph_break"].total() == 0, f"{name}: graph breaks {dict(counters['graph_break'])}"


# ---------------------------------------------------------------------------------------
# >= 2**31 elements (64-bit offsets): opt-in, about 20 GB of GPU memory


def _chunked(x, rows=1024):
    for h0 in range(0, x.shape[2], rows):
        yield slice(h0, min(h0 + rows, x.shape[2]))


def _assert_close_on_device(actual, expected, rtol, atol, what):
    """|actual - expected| <= atol + rtol |expected| elementwise, computed on the GPU (these
    chunks are too large to compare on the host in reasonable time)."""
    excess = (actual.double() - expected).abs() - (atol + rtol * expected.abs())
    worst = float(excess.max())
    assert worst <= 0, f"{what}: exceeds the tolerance by up to {worst:.3g}"


@needs_gpu
@pytest.mark.large
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_more_than_2_31_elements(layout):
    device = _cuda_device()
    shape = (1, 2, 32768, 32769)  # 2 * 32768 * 32769 > 2**31 elements
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, generator=g, device=device, dtype=torch.bfloat16)
    dy = torch.randn(shape, generator=g, device=device, dtype=torch.bfloat16)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        dy = dy.contiguous(memory_format=torch.channels_last)
    assert x.numel() >= 2 ** 31
    alpha, gamma, beta = make_gct_params(2, torch.float32, device)
    eps = 1e-5

    y, s = torch.ops.gct_fused.gct_forward(x, alpha, gamma, beta, eps, "l2", False)
    # float64 sums, chunk by chunk
    s_ref = torch.zeros(1, 2, dtype=torch.float64, device=device)
    x_sum = torch.zeros(1, 2, dtype=torch.float64, device=device)
    grad_sum = torch.zeros(1, 2, dtype=torch.float64, device=device)
    for rows in _chunked(x):
        xc = x[:, :, rows].double()
        s_ref += xc.square().sum(dim=(2, 3))
        x_sum += xc.sum(dim=(2, 3))
        grad_sum += (dy[:, :, rows].double() * xc).sum(dim=(2, 3))
    assert_close(s, s_ref, dict(rtol=1e-4, atol=0), "sum of squares over 2**31 elements")

    # The gate from the float64 sums, and d loss / d s through it (loss = sum dy * y).
    s_leaf = s_ref.clone().requires_grad_(True)
    a, c_, b = (p.double().view(1, 2) for p in (alpha, gamma, beta))
    e = a * torch.sqrt(s_leaf + eps)
    gate = 1 + torch.tanh(c_ * e / torch.sqrt(e.square().mean(dim=1, keepdim=True) + eps) + b)
    (ds,) = torch.autograd.grad((gate * grad_sum).sum(), s_leaf)
    gate = gate.detach()
    tol = FORWARD_TOL[torch.bfloat16]
    for rows in _chunked(x):
        expected = x[:, :, rows].double() * gate[:, :, None, None]
        _assert_close_on_device(y[:, :, rows], expected, tol["rtol"], tol["atol"], f"y rows {rows}")
    del y

    dx, dalpha, dgamma, dbeta = torch.ops.gct_fused.gct_backward(dy, x, alpha, gamma, beta, s, eps, "l2", False)
    tol = BACKWARD_TOL[torch.bfloat16]
    for rows in _chunked(x):  # dx = g * dy + (d loss / d s) * 2 x
        xc = x[:, :, rows].double()
        expected = gate[:, :, None, None] * dy[:, :, rows].double() + 2 * ds[:, :, None, None] * xc
        scale = max(float(expected.abs().max()), 1.0)
        _assert_close_on_device(dx[:, :, rows], expected, tol["rtol"], tol["atol"] * scale, f"dx rows {rows}")
    assert torch.isfinite(dalpha).all() and torch.isfinite(dgamma).all() and torch.isfinite(dbeta).all()
    del dx

    yse, pooled = torch.ops.gct_fused.se_forward(x, *make_se_params(2, 1, torch.float32, device), "relu", "sigmoid")
    assert_close(pooled, x_sum / (shape[2] * shape[3]), dict(rtol=1e-3, atol=1e-6), "pooled mean")
    assert torch.isfinite(yse[:, :, -1]).all()
