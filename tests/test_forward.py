"""Every fused backend's forward against the float64 reference:
backend x dtype x layout x shape x (GCT mode | SE variant | residual epilogue)."""

import pytest
import torch

import gct_fused
from gct_fused import reference
from helpers import (DTYPES, FORWARD_TOL, FUSED_BACKENDS, GCT_MODES, LAYOUTS, SE_VARIANTS, SHAPES,
                     assert_close, backend_device, thin_for_interpreter, f64, make_gct_params, make_map, make_se_params)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode,after_relu", GCT_MODES)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_gct_forward(backend, mode, after_relu, dtype, layout, shape):
    device = backend_device(backend)
    thin_for_interpreter(backend, device, dtype, layout, shape)
    x = make_map(shape, dtype, device, layout)
    params = make_gct_params(shape[1], dtype, device)
    y = gct_fused.gct(x, *params, mode=mode, after_relu=after_relu, backend=backend)
    assert y.dtype == dtype and y.shape == x.shape and y.device == x.device
    if layout != "strided":
        assert y.stride() == x.stride(), "the output keeps the input's memory format"
    expected = reference.gct(f64(x), *map(f64, params), mode=mode, after_relu=after_relu)
    assert_close(y, expected, FORWARD_TOL[dtype], f"gct {mode} after_relu={after_relu}")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation,gate,bias", SE_VARIANTS)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_se_forward(backend, activation, gate, bias, dtype, layout, shape):
    device = backend_device(backend)
    thin_for_interpreter(backend, device, dtype, layout, shape)
    x = make_map(shape, dtype, device, layout)
    params = make_se_params(shape[1], 3, dtype, device, bias=bias)
    y = gct_fused.squeeze_excite(x, *params, activation, gate, backend=backend)
    assert y.dtype == dtype and y.shape == x.shape
    if layout != "strided":
        assert y.stride() == x.stride()
    expected = reference.squeeze_excite(f64(x), *map(f64, params), activation, gate)
    assert_close(y, expected, FORWARD_TOL[dtype], f"se {activation}/{gate} bias={bias}")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation_after", ["relu", "none"])
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_se_residual_forward(backend, activation_after, dtype, layout, shape):
    device = backend_device(backend)
    thin_for_interpreter(backend, device, dtype, layout, shape)
    x = make_map(shape, dtype, device, layout)
    identity = make_map(shape, dtype, device, "nchw", seed=7)  # a layout of its own
    params = make_se_params(shape[1], 4, dtype, device)
    y = gct_fused.se_residual(x, identity, *params, "silu", "sigmoid", activation_after, backend=backend)
    expected = reference.se_residual(f64(x), f64(identity), *map(f64, params), "silu", "sigmoid", activation_after)
    assert_close(y, expected, FORWARD_TOL[dtype], f"se_residual {activation_after}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_float32_parameters_with_half_input(backend, dtype):
    """Mixed precision: float32 parameters, half/bfloat16 map; output keeps x's dtype."""
    device = backend_device(backend)
    x = make_map((2, 6, 5, 5), dtype, device)
    gp = make_gct_params(6, torch.float32, device)
    y = gct_fused.gct(x, *gp, backend=backend)
    assert y.dtype == dtype
    assert_close(y, reference.gct(f64(x), *map(f64, gp)), FORWARD_TOL[dtype], "gct mixed")
    sp = make_se_params(6, 2, torch.float32, device)
    y = gct_fused.squeeze_excite(x, *sp, backend=backend)
    assert y.dtype == dtype
    assert_close(y, reference.squeeze_excite(f64(x), *map(f64, sp)), FORWARD_TOL[dtype], "se mixed")


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_float16_sum_of_squares_beyond_65504(backend):
    """The published formula gives inf/NaN here; the fused kernels accumulate in float32."""
    device = backend_device(backend)
    x = make_map((2, 4, 16, 16), torch.float16, device, scale=20.0)  # sum x^2 ~ 1e5 per channel
    alpha, gamma, beta = make_gct_params(4, torch.float16, device)
    assert not torch.isfinite(reference.gct(x.cpu(), alpha.cpu(), gamma.cpu(), beta.cpu())).all()
    y = gct_fused.gct(x, alpha, gamma, beta, backend=backend)
    assert torch.isfinite(y).all()
    expected = reference.gct(f64(x), f64(alpha), f64(gamma), f64(beta))
    assert_close(y, expected, FORWARD_TOL[torch.float16], "gct fp16 large")


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_gct_identity_at_init_is_exact(backend):
    """gamma = beta = 0 gives gate = 1 + tanh(0) = 1 exactly: y == x bit for bit."""
    device = backend_device(backend)
    for dtype in DTYPES:
        x = make_map((2, 5, 6, 7), dtype, device, "channels_last")
        ones, zeros = torch.ones(5, dtype=dtype, device=device), torch.zeros(5, dtype=dtype, device=device)
        for mode in ("l2", "l1"):
            assert torch.equal(gct_fused.gct(x, ones, zeros, zeros, mode=mode, backend=backend), x)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape,dtype", [((2, 64, 183, 181), torch.float32), ((2, 64, 256, 257), torch.bfloat16),
                                         ((84, 1024, 7, 7), torch.float32)],
                         ids=["fp32-odd-rows", "bf16", "fp32-short-rows"])
def test_maps_larger_than_the_cache_cpu(shape, dtype, layout):
    """Outputs of >= 8 MB take the CPU kernels' streaming-store path (odd row lengths:
    rows start unaligned; bf16: rows longer than one L-tile, whose last tile is a short
    part of a row; 7x7: tiles of whole short rows walked as one flat range); forward and
    backward must match the reference all the same."""
    device = backend_device("cpu")
    x = make_map(shape, dtype, device, layout)
    assert x.numel() * x.element_size() >= 8 << 20
    params = make_gct_params(shape[1], dtype, device)
    y = gct_fused.gct(x, *params, backend="cpu")
    assert_close(y, reference.gct(f64(x), *map(f64, params)), FORWARD_TOL[dtype], "gct large")
    sp = make_se_params(shape[1], 8, dtype, device)
    identity = make_map(shape, dtype, device, layout, seed=5).requires_grad_(True)
    xg = x.detach().requires_grad_(True)
    y = gct_fused.se_residual(xg, identity, *sp, backend="cpu")
    assert_close(y, reference.se_residual(f64(x), f64(identity), *map(f64, sp)), FORWARD_TOL[dtype], "se_residual large")
    y.backward(torch.ones_like(y))
    xr, ir = f64(x).requires_grad_(True), f64(identity).requires_grad_(True)
    reference.se_residual(xr, ir, *map(f64, sp)).backward(torch.ones(shape, dtype=torch.float64))
    from helpers import grad_tol
    assert_close(xg.grad, xr.grad, grad_tol(dtype, xr.grad), "dx large")
    assert_close(identity.grad, ir.grad, grad_tol(dtype, ir.grad), "didentity large")
