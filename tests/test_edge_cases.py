"""Edge tensors, every backend: empty maps (N = 0, C = 0, a zero spatial dim), C = 1, L = 1, a
single element, NaN / inf in x (propagated where the reference propagates them, never
silently zeroed), denormals (not flushed to zero), all-zero maps (GCT: epsilon keeps them
finite), and, opt-in (`pytest -m large`, ~9 GB of RAM), maps of more than 2**31 elements on the
CPU (64-bit indexing).

test_errors.py has the first empty-map test (GCT and SE, forward + backward); this file adds
se_residual, C = 0, every GCT mode, channels_last, and exact zero parameter gradients.
"""

from __future__ import annotations

import gc

import pytest
import torch

import gct_fused
from gct_fused import reference
from gct_fused._backends import fused_op
from error_bounds import gct_error_scales, se_error_scales
from fuzz_support import check_against_reference
from helpers import (FORWARD_TOL, FUSED_BACKENDS, GCT_MODES, SE_VARIANTS, backend_device, f64, grads_of,
                     make_gct_params, make_map, make_se_params)

ALL_BACKENDS = FUSED_BACKENDS + ("reference",)
HALF = (torch.float16, torch.bfloat16)


def _device(backend):
    return torch.device("cpu") if backend == "reference" else backend_device(backend)


def _leaves(tensors):
    return [None if t is None else t.detach().requires_grad_(True) for t in tensors]


def _grads(y, leaves, dy):
    wanted = [t for t in leaves if t is not None]
    got = iter(torch.autograd.grad(y, wanted, dy, allow_unused=True))
    return [None if t is None else next(got) for t in leaves]


# ---------------------------------------------------------------------------------------
# Empty maps


EMPTY_SHAPES = [(0, 3, 4, 4), (2, 3, 0, 4), (2, 0, 4, 4), (0, 0), (2, 3, 0), (0, 3), (2, 0), (1, 3, 2, 0, 2)]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape", EMPTY_SHAPES, ids=str)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_empty_maps_every_op(backend, shape, layout):
    """Every op on a map with no elements: an empty output of x's shape, dtype and strides,
    an empty dx, and parameter gradients that are exactly zero (the loss does not depend on
    the parameters when there is no output); stats/pooled of shape (N, C) from the raw ops."""
    device = _device(backend)
    if layout == "channels_last" and len(shape) != 4:
        pytest.skip("channels_last needs a 4-D map")
    x = torch.zeros(shape, device=device)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    C = shape[1]
    dy = torch.zeros_like(x)

    def check(y, leaves, grads, skip_params=False):
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
        assert grads[0].shape == x.shape
        for leaf, g in zip(leaves[1:], grads[1:]):
            if leaf is None or g is None:
                continue
            assert g.shape == leaf.shape
            if not skip_params:
                assert torch.equal(g, torch.zeros_like(g)), f"gradient {g} of an empty map is not 0"

    for mode, after_relu in GCT_MODES:
        leaves = _leaves([x, *make_gct_params(C, torch.float32, device)])
        y = gct_fused.gct(*leaves, mode=mode, after_relu=after_relu, backend=backend)
        check(y, leaves, _grads(y, leaves, dy))
    # the reference's mean over an empty map is NaN (0 / 0), the fused ops' 0 (see test_errors)
    lenient = backend == "reference"
    for bias in (True, False):
        leaves = _leaves([x, *make_se_params(C, 2, torch.float32, device, bias=bias)])
        y = gct_fused.squeeze_excite(*leaves, backend=backend)
        check(y, leaves, _grads(y, leaves, dy), skip_params=lenient)
        for after in ("relu", "none"):
            leaves = _leaves([x, torch.zeros_like(x), *make_se_params(C, 2, torch.float32, device, bias=bias)])
            y = gct_fused.se_residual(*leaves, activation_after=after, backend=backend)
            grads = _grads(y, leaves, dy)
            assert grads[1].shape == x.shape
            check(y, leaves[:1] + leaves[2:], grads[:1] + grads[2:], skip_params=lenient)
    if backend != "reference":  # the raw ops: statistics (N, C) in the accumulation dtype
        a, g, b = make_gct_params(C, torch.float32, device)
        y, stats = fused_op(backend, "gct_forward")(x, a, g, b, 1e-5, "l2", False)
        assert stats.shape == (shape[0], C) and stats.dtype == torch.float32
        dx, da, dg, db = fused_op(backend, "gct_backward")(dy, x, a, g, b, stats, 1e-5, "l2", False)
        assert dx.shape == x.shape and da.shape == a.shape
        w1, b1, w2, b2 = make_se_params(C, 2, torch.float32, device)
        y, pooled = fused_op(backend, "se_forward")(x, w1, b1, w2, b2, "relu", "sigmoid")
        assert pooled.shape == (shape[0], C)
        out = fused_op(backend, "se_backward")(dy, x, w1, b1, w2, b2, pooled, "relu", "sigmoid")
        assert [t.shape for t in out] == [x.shape, w1.shape, b1.shape, w2.shape, b2.shape]


# ---------------------------------------------------------------------------------------
# Tiny maps: C = 1, L = 1, a single element


TINY_SHAPES = [(1, 1), (1, 1, 1, 1), (3, 1), (1, 5), (1, 1, 7), (4, 1, 1, 1, 1), (2, 3, 1), (1, 1, 1, 1, 9)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", TINY_SHAPES, ids=str)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_tiny_maps(backend, shape, dtype):
    """C = 1 (GCT's normaliser over one channel), L = 1 (SE's mean of one value), both, N > 1:
    every GCT mode, every SE variant and se_residual, forward and backward, vs the reference."""
    device = backend_device(backend)
    if backend == "triton" and device.type == "cpu" and dtype != torch.float32:
        pytest.skip("Triton interpreter: float32 only (the GPU runs every dtype)")
    C = shape[1]
    x = make_map(shape, dtype, device, seed=11)
    dy = make_map(shape, dtype, device, seed=12)
    for mode, after_relu in GCT_MODES:
        params = make_gct_params(C, dtype, device)
        opts = dict(epsilon=1e-5, mode=mode, after_relu=after_relu)
        check_against_reference(lambda *t: gct_fused.gct(*t, **opts, backend=backend),
                                lambda *t: reference.gct(*t, **opts), [x, *params], ["x", "alpha", "gamma", "beta"],
                                dy, dtype, f"gct {mode} {after_relu}",
                                lambda t, dy64, mask=None: gct_error_scales(*t, dy64, **opts))
    variants = SE_VARIANTS if backend != "triton" or device.type != "cpu" else SE_VARIANTS[::3]
    for act, gate, bias in variants:
        params = make_se_params(C, 2, dtype, device, bias=bias)
        check_against_reference(lambda *t: gct_fused.squeeze_excite(*t, act, gate, backend=backend),
                                lambda *t: reference.squeeze_excite(*t, act, gate), [x, *params],
                                ["x", "w1", "b1", "w2", "b2"], dy, dtype, f"se {act} {gate} {bias}",
                                lambda t, dy64, mask=None: se_error_scales(*t, dy64, act, gate))
    identity = make_map(shape, dtype, device, seed=13)
    params = make_se_params(C, 2, dtype, device)
    for after in ("relu", "none"):
        check_against_reference(
            lambda x_, i_, *p: gct_fused.se_residual(x_, i_, *p, "relu", "sigmoid", after, backend=backend),
            lambda x_, i_, *p: reference.se_residual(x_, i_, *p, "relu", "sigmoid", after),
            [x, identity, *params], ["x", "identity", "w1", "b1", "w2", "b2"], dy, dtype, f"se_residual {after}",
            lambda t, dy64, mask=None: se_error_scales(t[0], *t[2:], dy64, "relu", "sigmoid", identity=t[1], mask=mask),
            relu_epilogue=(lambda x_, i_, *p: reference.se_residual(x_, i_, *p, "relu", "sigmoid", "none"))
            if after == "relu" else None)


# ---------------------------------------------------------------------------------------
# NaN and inf


def _assert_same_nonfinite(got, want, what):
    """NaN exactly where the reference has NaN, the same infinities, finite values close."""
    got, want = f64(got), f64(want)
    assert torch.equal(got.isnan(), want.isnan()), (
        f"{what}: NaN at {got.isnan().nonzero().tolist()[:8]} (of {int(got.isnan().sum())}), "
        f"reference NaN at {want.isnan().nonzero().tolist()[:8]} (of {int(want.isnan().sum())})")
    torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-4, atol=1e-5, msg=lambda m: f"{what}: {m}")


def _poisoned_map(value, layout, device, dtype=torch.float32, channels=4):
    x = make_map((3, channels, 5, 6), torch.float64, "cpu", seed=21)
    x[1, 2, 3, 4] = value
    x = x.to(dtype).to(device)
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


NONFINITE = [float("nan"), float("inf"), float("-inf")]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("value", NONFINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_nonfinite_input_gct(backend, value, layout):
    """One NaN / inf in x: y and every gradient have NaN and inf exactly where the reference
    (float64, same values) has them; everything else matches it."""
    device = backend_device(backend)
    x = _poisoned_map(value, layout, device)
    dy = make_map(x.shape, torch.float32, device, seed=22)
    for mode, after_relu in GCT_MODES:
        params = make_gct_params(4, torch.float32, device)
        leaves = _leaves([x, *params])
        ref_leaves = _leaves([f64(t) for t in (x, *params)])
        y = gct_fused.gct(*leaves, mode=mode, after_relu=after_relu, backend=backend)
        y_ref = reference.gct(*ref_leaves, mode=mode, after_relu=after_relu)
        what = f"gct {mode} after_relu={after_relu} x[1,2,3,4]={value}"
        _assert_same_nonfinite(y, y_ref, f"{what}: y")
        assert torch.isnan(f64(y)[1]).any() or not torch.isfinite(f64(y)).all(), f"{what}: non-finite x vanished"
        for name, g, w in zip(["x", "alpha", "gamma", "beta"], _grads(y, leaves, dy), _grads(y_ref, ref_leaves, f64(dy))):
            _assert_same_nonfinite(g, w, f"{what}: d{name}")


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("value", NONFINITE, ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_nonfinite_input_se(backend, value, layout):
    """As test_nonfinite_input_gct for every SE variant and se_residual. In the backward the
    derivative of relu below 0 and of hardsigmoid outside (-3, 3) is 0 by selection (as in
    autograd), so an infinite G there gives 0, not inf * 0 = NaN.

    64 channels: the reference's hardsigmoid backward at a NaN pre-activation is 0 in torch's
    vectorized hardtanh_backward but grad / 6 in its scalar loop over a tensor's last few
    elements; with (3, 64) pre-activations every element takes the vector loop, on AVX2 and
    AVX-512 alike, so the reference is well defined (the fused ops give 0)."""
    device = backend_device(backend)
    x = _poisoned_map(value, layout, device, channels=64)
    dy = make_map(x.shape, torch.float32, device, seed=22)
    identity = make_map(x.shape, torch.float32, device, seed=23)
    C = x.shape[1]
    variants = SE_VARIANTS if not (backend == "triton" and device.type == "cpu") else SE_VARIANTS[::2]
    for act, gate, bias in variants:
        for residual in (None, "relu", "none"):
            params = make_se_params(C, 4, torch.float32, device, bias=bias, seed=24)
            inputs = [x, *params] if residual is None else [x, identity, *params]
            leaves = _leaves(inputs)
            ref_leaves = _leaves([None if t is None else f64(t) for t in inputs])
            if residual is None:
                y = gct_fused.squeeze_excite(*leaves, act, gate, backend=backend)
                y_ref = reference.squeeze_excite(*ref_leaves, act, gate)
            else:
                y = gct_fused.se_residual(*leaves, act, gate, residual, backend=backend)
                y_ref = reference.se_residual(*ref_leaves, act, gate, residual)
            what = f"se {act}/{gate} bias={bias} residual={residual} x[1,2,3,4]={value}"
            _assert_same_nonfinite(y, y_ref, f"{what}: y")
            for leaf, g, w in zip(leaves, _grads(y, leaves, dy), _grads(y_ref, ref_leaves, f64(dy))):
                if leaf is not None:
                    _assert_same_nonfinite(g, w, f"{what}: gradient of a {tuple(leaf.shape)} input")


# ---------------------------------------------------------------------------------------
# Denormals, all-zero maps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_denormal_input(backend, dtype):
    """A map of subnormal numbers: y = x * gate keeps them (no flush to zero), to within one
    subnormal step of the reference; gradients match the reference."""
    device = backend_device(backend)
    if backend == "triton" and device.type == "cpu" and dtype in HALF:
        pytest.skip("Triton interpreter: float32/float64 only")
    assert not torch.get_default_dtype() == torch.float16
    info = torch.finfo(dtype)
    tiny = info.smallest_normal
    subnormal_step = tiny * info.eps  # the spacing of subnormals
    shape = (2, 5, 4, 3)
    x = (make_map(shape, torch.float64, "cpu", seed=31).clamp(-3, 3) * (tiny / 4)).to(dtype)
    assert (x != 0).any() and (x.abs() < tiny).all(), "the map must be subnormal"
    x = x.to(device)
    dy = make_map(shape, dtype, device, seed=32)
    tol = dict(rtol=FORWARD_TOL[dtype]["rtol"], atol=2 * subnormal_step)
    for mode, after_relu in GCT_MODES:
        params = make_gct_params(5, dtype, device)
        y = gct_fused.gct(x, *params, mode=mode, after_relu=after_relu, backend=backend)
        expected = reference.gct(f64(x), *map(f64, params), mode=mode, after_relu=after_relu)
        torch.testing.assert_close(f64(y), expected, **tol, msg=lambda m: f"gct {mode} denormals: {m}")
        assert (y != 0).sum() >= (expected.abs() > 2 * subnormal_step).sum(), "subnormal outputs flushed to 0"
        opts = dict(epsilon=1e-5, mode=mode, after_relu=after_relu)
        check_against_reference(lambda *t: gct_fused.gct(*t, **opts, backend=backend),
                                lambda *t: reference.gct(*t, **opts), [x, *params], ["x", "alpha", "gamma", "beta"],
                                dy, dtype, f"gct {mode} denormals",
                                lambda t, dy64, mask=None: gct_error_scales(*t, dy64, **opts))
    params = make_se_params(5, 2, dtype, device)
    y = gct_fused.squeeze_excite(x, *params, "silu", "hardsigmoid", backend=backend)
    expected = reference.squeeze_excite(f64(x), *map(f64, params), "silu", "hardsigmoid")
    torch.testing.assert_close(f64(y), expected, **tol, msg=lambda m: f"se denormals: {m}")
    assert (y != 0).sum() >= (expected.abs() > 2 * subnormal_step).sum(), "subnormal outputs flushed to 0"
    check_against_reference(lambda *t: gct_fused.squeeze_excite(*t, "silu", "hardsigmoid", backend=backend),
                            lambda *t: reference.squeeze_excite(*t, "silu", "hardsigmoid"), [x, *params],
                            ["x", "w1", "b1", "w2", "b2"], dy, dtype, "se denormals",
                            lambda t, dy64, mask=None: se_error_scales(*t, dy64, "silu", "hardsigmoid"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_all_zero_map(backend, dtype):
    """x = 0: GCT's epsilon keeps everything finite (y = 0, dx = g * dy, finite parameter
    gradients), as in the reference; SE gives y = 0 and finite gradients."""
    device = backend_device(backend)
    if backend == "triton" and device.type == "cpu" and dtype in HALF:
        pytest.skip("Triton interpreter: float32/float64 only")
    shape = (2, 6, 5, 5)
    x = torch.zeros(shape, dtype=dtype, device=device)
    dy = make_map(shape, dtype, device, seed=41)
    for mode, after_relu in GCT_MODES:
        params = make_gct_params(6, dtype, device)
        opts = dict(epsilon=1e-5, mode=mode, after_relu=after_relu)
        leaves = _leaves([x, *params])
        y = gct_fused.gct(*leaves, **opts, backend=backend)
        assert torch.equal(y, torch.zeros_like(y))
        for g in _grads(y, leaves, dy):
            assert torch.isfinite(g).all(), f"gct {mode}: non-finite gradient of an all-zero map"
        check_against_reference(lambda *t: gct_fused.gct(*t, **opts, backend=backend),
                                lambda *t: reference.gct(*t, **opts), [x, *params], ["x", "alpha", "gamma", "beta"],
                                dy, dtype, f"gct {mode} zeros",
                                lambda t, dy64, mask=None: gct_error_scales(*t, dy64, **opts))
    for act, gate, bias in SE_VARIANTS[::3]:
        params = make_se_params(6, 2, dtype, device, bias=bias)
        check_against_reference(lambda *t: gct_fused.squeeze_excite(*t, act, gate, backend=backend),
                                lambda *t: reference.squeeze_excite(*t, act, gate), [x, *params],
                                ["x", "w1", "b1", "w2", "b2"], dy, dtype, f"se {act} {gate} zeros",
                                lambda t, dy64, mask=None: se_error_scales(*t, dy64, act, gate))


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_all_zero_map_without_epsilon_is_nan_like_the_reference(backend):
    """With epsilon = 0 an all-zero map has 0 / 0 in GCT's normaliser: the published formula
    gives NaN, and so must the fused ops (no silent 0)."""
    device = backend_device(backend)
    x = torch.zeros(2, 3, 4, 4, device=device)
    params = make_gct_params(3, torch.float32, device)
    for mode in ("l2", "l1"):
        y = gct_fused.gct(x, *params, epsilon=0.0, mode=mode, backend=backend)
        expected = reference.gct(f64(x), *map(f64, params), epsilon=0.0, mode=mode)
        assert expected.isnan().all()
        _assert_same_nonfinite(y, expected, f"gct {mode} epsilon=0 zeros")


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("dtype,param_dtype", [(torch.float32, torch.float32), (torch.float64, torch.float64),
                                               (torch.bfloat16, torch.float32), (torch.float16, torch.float16)],
                         ids=["float32", "float64", "bfloat16-fp32-params", "float16"])
def test_gct_parameters_given_as_views(backend, dtype, param_dtype):
    """Parameters that are views (every other element of a longer tensor; a slice at a storage
    offset; an expanded scalar) give what their contiguous copies give, bit for bit, values and
    gradients: the CPU ops read contiguous parameters of the accumulation dtype in place and
    convert the others (param_utils.h, AccValues)."""
    device = backend_device(backend)
    channels, shape = 12, (2, 12, 5, 3)
    x = make_map(shape, dtype, device)
    dy = make_map(shape, dtype, device, seed=4)
    alpha, gamma, beta = make_gct_params(channels, param_dtype, device)
    strided = torch.stack([alpha, torch.full_like(alpha, float("nan"))], 1).reshape(-1)[::2]
    offset = torch.cat([torch.full((3,), float("nan"), dtype=param_dtype, device=device), gamma])[3:]
    expanded = beta[:1].expand(channels)
    assert not strided.is_contiguous() and offset.storage_offset() == 3 and expanded.stride() == (0,)
    views = [strided, offset, expanded]
    copies = [v.clone() for v in views]
    got, want = (grads_of(lambda *t: gct_fused.gct(*t, backend=backend), [x] + ps, dy) for ps in (views, copies))
    for i, (u, v) in enumerate(zip([got[0]] + got[1], [want[0]] + want[1])):
        assert u.shape == v.shape and u.dtype == v.dtype and torch.equal(u, v), i


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_gct_gate_keeps_its_relative_accuracy_in_the_tails(backend, dtype):
    """With gamma = 0 the preactivation is z = beta exactly, so y = g * x and dx = g * dy with
    g = 1 + tanh(beta), and dbeta = sum_n G_n (1 - tanh(beta)^2), G_n = sum_l dy * x. Over
    z in [-12, 12] the gate spans 8e-11 .. 2 and must be right to a few ulp relative
    everywhere: 1 + tanh(z) computed in the map's dtype cancels where tanh(z) is near -1
    (float32: 0 instead of 7.6e-11 at z = -12), and so does 1 - tanh(z)^2 for dbeta. The
    expected values come from the dtype-rounded beta, through sigmoids in float64
    (1 + tanh(z) = 2 sigmoid(2z), 1 - tanh(z)^2 = 4 sigmoid(2z) sigmoid(-2z))."""
    device = backend_device(backend)
    channels, shape = 97, (2, 97, 3, 5)
    beta = torch.linspace(-12, 12, channels, dtype=torch.float64).to(dtype)
    alpha = make_gct_params(channels, dtype, "cpu")[0]
    gamma = torch.zeros(channels, dtype=dtype)
    x, dy = make_map(shape, dtype, "cpu"), make_map(shape, dtype, "cpu", seed=3)
    leaves = [t.to(device).requires_grad_(True) for t in (x, alpha, gamma, beta)]
    y = gct_fused.gct(*leaves, backend=backend)
    y.backward(dy.to(device))
    z = beta.double()
    gate = 2 * torch.sigmoid(2 * z)
    slope = 4 * torch.sigmoid(2 * z) * torch.sigmoid(-2 * z)
    u = 2.0 ** -24 if dtype == torch.float32 else 2.0 ** -53
    g4 = gate.reshape(1, channels, 1, 1)
    for got, want, what in ((y, g4 * x.double(), "y"), (leaves[0].grad, g4 * dy.double(), "dx")):
        err = (got.detach().cpu().double() - want).abs()
        assert (err <= 8 * u * want.abs()).all(), f"{what}: relative error {(err / want.abs()).max().item():.2e}"
    terms = (dy.double() * x.double()).flatten(2)
    want = (terms.sum(-1) * slope).sum(0)
    bound = 32 * u * (terms.abs().sum(-1) * slope).sum(0)
    err = (leaves[3].grad.cpu().double() - want).abs()
    assert (err <= bound).all(), f"dbeta: error {(err / bound).max().item():.1f}x the bound"


# ---------------------------------------------------------------------------------------
# More than 2**31 elements (opt-in: pytest -m large)


def _reference_sums(x: torch.Tensor, kind: str, chunk: int = 1 << 26) -> torch.Tensor:
    """sum over L of x^2 / |x| / x per (n, c) in float64, chunk by chunk (x is (N, C, L))."""
    n, c, l = x.shape
    out = torch.zeros(n, c, dtype=torch.float64)
    for l0 in range(0, l, chunk):
        part = x[:, :, l0:l0 + chunk].to(torch.float64)
        out += (part * part if kind == "sq" else part.abs() if kind == "abs" else part).sum(-1)
    return out


def _gate_from_sums(s, alpha, gamma, beta, eps):
    """GCT l2's gate from sum x^2 (the published formula, float64)."""
    e = (s + eps).sqrt() * alpha
    norm = gamma / ((e * e).mean(dim=1, keepdim=True) + eps).sqrt()
    return 1 + torch.tanh(e * norm + beta)


def _large_windows(l):
    """Positions of L to check: the start, both sides of 2**31 / C boundaries, the end."""
    width = 4096
    starts = {0, max(0, l // 2 - width), max(0, l - width)}
    for boundary in (2 ** 30, 2 ** 31):
        if boundary < l:
            starts.add(max(0, boundary - width // 2))
    return [slice(s, min(l, s + width)) for s in sorted(starts)]


LARGE_CASES = [((1, 1, 2 ** 31 + 17), "nchw"), ((1, 2, 2 ** 30 + 7), "nchw"), ((1, 2, 2 ** 30 + 7), "channels_last")]


@pytest.mark.large
@pytest.mark.parametrize("shape,layout", LARGE_CASES,
                         ids=["one_row_over_2^31", "offsets_over_2^31", "channels_last_offsets_over_2^31"])
def test_more_than_2_31_elements_cpu(shape, layout):
    """bfloat16 maps of > 2**31 elements (4 GB; ~9 GB of RAM at the peak) on the CPU backend:
    GCT's statistics against float64 sums computed chunk by chunk, y on windows at the start,
    around offsets 2**30 and 2**31 and at the end against the published formula applied with
    those sums; GCT's backward with the expanded-scalar dy of y.sum().backward() on the same
    windows; SE's pooled means and y the same way.

    The sums of 2**30-2**31 float32 terms are checked to 1e-3 relative: the kernels add
    32768-element tile sums one after the other, which measured 1.0e-4 to 1.5e-4 here."""
    try:
        _check_more_than_2_31_elements(shape, layout)
    except AssertionError as exc:  # fail without keeping the 4 GB tensors alive in the traceback
        message = str(exc)
    else:
        return
    gc.collect()
    pytest.fail(message, pytrace=False)


def _check_more_than_2_31_elements(shape, layout):
    backend_device("cpu")
    n, c, l = shape
    g = torch.Generator().manual_seed(5)
    if layout == "nchw":
        x = torch.empty(shape, dtype=torch.bfloat16)
    else:  # memory order (N, L, C): element (n, c, l) at l * C + c
        x = torch.empty((n, l, c), dtype=torch.bfloat16).transpose(1, 2)
    # a random block tiled over the map (filling 2**31 values with randn would take minutes)
    block = (torch.randn(1 << 20, generator=g) + 0.5).to(torch.bfloat16)
    flat = x.transpose(1, 2).reshape(-1) if layout != "nchw" else x.view(-1)
    for start in range(0, flat.numel(), block.numel()):
        part = flat[start:start + block.numel()]
        part.copy_(block[:part.numel()])
    assert x.numel() > 2 ** 31 and x.shape == shape
    alpha = torch.linspace(0.5, 1.5, c)
    gamma = torch.linspace(-1.0, 1.0, c) if c > 1 else torch.tensor([0.7])
    beta = torch.full((c,), 0.25)
    eps = 1e-5

    y, stats = fused_op("cpu", "gct_forward")(x, alpha, gamma, beta, eps, "l2", False)
    s_ref = _reference_sums(x, "sq")
    torch.testing.assert_close(stats.double(), s_ref, rtol=1e-3, atol=0, msg=lambda m: f"sum x^2: {m}")
    gate = _gate_from_sums(s_ref, alpha.double(), gamma.double(), beta.double(), eps)  # (N, C)
    for w in _large_windows(l):
        expected = x[:, :, w].double() * gate[:, :, None]
        torch.testing.assert_close(y[:, :, w].double(), expected, **FORWARD_TOL[torch.bfloat16],
                                   msg=lambda m: f"y[..., {w}]: {m}")
    del y

    dy = torch.ones((), dtype=torch.bfloat16).expand(shape)  # y.sum().backward()
    dx, dalpha, dgamma, dbeta = fused_op("cpu", "gct_backward")(dy, x, alpha, gamma, beta, stats, eps, "l2", False)
    # G = sum x (dy = 1); then the reference backward on the (N, C) statistics alone
    G = _reference_sums(x, "id")
    s64 = s_ref.clone().requires_grad_(True)
    a64, g64, b64 = (p.double().requires_grad_(True) for p in (alpha, gamma, beta))
    gate64 = _gate_from_sums(s64, a64, g64, b64, eps)
    # y = x * gate: dL/dgate = G, dL/ds through the gate; dx = gate * dy + 2 x * dL/ds
    d_s, d_a, d_g, d_b = torch.autograd.grad(gate64, [s64, a64, g64, b64], G)
    # dalpha = sum_n de * sqrt(s + eps), de = dz*gamma*r - Q*r^3*e/C: the two terms of de (each
    # ~ |dz*gamma*r|, i.e. ~ |dgamma * gamma / alpha|) cancel exactly for C = 1 (GCT is then
    # invariant to alpha), so its float32 error scales with them, not with the result
    terms = (d_g.abs() * g64.detach().abs() / a64.detach().abs()).max()
    for got, want, name, scale in ((dalpha, d_a, "dalpha", terms), (dgamma, d_g, "dgamma", 0.0),
                                   (dbeta, d_b, "dbeta", 0.0)):
        atol = 1e-3 * max(float(want.abs().max()), float(scale))
        torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=atol, msg=lambda m: f"{name}: {m}")
    for w in _large_windows(l):
        expected = gate[:, :, None] + 2 * x[:, :, w].double() * d_s[:, :, None]
        torch.testing.assert_close(dx[:, :, w].double(), expected, rtol=2 ** -7, atol=2 ** -7,
                                   msg=lambda m: f"dx[..., {w}]: {m}")
    del dx

    w1 = torch.linspace(-1, 1, 3 * c).reshape(3, c)
    w2 = torch.linspace(1, -1, 3 * c).reshape(c, 3)
    y, pooled = fused_op("cpu", "se_forward")(x, w1, None, w2, None, "relu", "sigmoid")
    mean_ref = _reference_sums(x, "id") / l
    torch.testing.assert_close(pooled.double(), mean_ref, rtol=1e-3, atol=1e-6, msg=lambda m: f"pooled: {m}")
    scale = torch.sigmoid(torch.relu(mean_ref @ w1.double().t()) @ w2.double().t())
    for w in _large_windows(l):
        torch.testing.assert_close(y[:, :, w].double(), x[:, :, w].double() * scale[:, :, None],
                                   **FORWARD_TOL[torch.bfloat16], msg=lambda m: f"se y[..., {w}]: {m}")
