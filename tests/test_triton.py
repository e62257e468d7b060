"""What is specific to the Triton backend (the generic test files cover its numerics):
launch counts per op, the split reduction for large L and the tiling for large C against
the float64 reference, bitwise reproducibility, unmergeable layouts, the package name, and
that every launched kernel configuration compiles for a GPU (sm_90) even without one.

The GPU compile check takes ~50 s on a cold Triton cache (~15 s warm); it and the 512 x 512
case are marked slow (deselect with -m "not slow")."""

import importlib
import os
import subprocess
import sys

import pytest
import torch

import gct_fused
from gct_fused import reference
from helpers import (FORWARD_TOL, assert_close, backend_device, f64, grad_tol, make_gct_params, make_map,
                     make_se_params)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def device():
    return backend_device("triton")


@pytest.fixture
def kernels(device):
    from gct_fused.triton_kernels import launch
    return launch


class _Ops:
    """torch.ops.gct_fused.triton_<op> as attributes named <op>."""

    def __getattr__(self, name):
        from gct_fused import triton_ops  # noqa: F401  (registers the ops)
        return getattr(torch.ops.gct_fused, "triton_" + name)


def _ops():
    return _Ops()


def _gct_call(x, dy, params, mode="l2", after_relu=False):
    """Forward and backward ops of GCT: (y, stats, dx, dalpha, dgamma, dbeta)."""
    ops = _ops()
    y, stats = ops.gct_forward(x, *params, 1e-5, mode, after_relu)
    return (y, stats) + tuple(ops.gct_backward(dy, x, *params, stats, 1e-5, mode, after_relu))


def _se_call(x, dy, params, activation="silu", gate="sigmoid"):
    ops = _ops()
    y, pooled = ops.se_forward(x, *params, activation, gate)
    return (y, pooled) + tuple(ops.se_backward(dy, x, *params, pooled, activation, gate))


def _residual_call(x, identity, dy, params):
    ops = _ops()
    y, pooled = ops.se_residual_forward(x, identity, *params, "relu", "hardsigmoid", "relu")
    return (y, pooled) + tuple(ops.se_residual_backward(dy, x, y, *params, pooled, "relu", "hardsigmoid"))


# ---------------------------------------------------------------------------------------
# Launch counts


@pytest.mark.parametrize("split", [False, True], ids=["whole_rows", "split_rows"])
def test_launch_counts(device, kernels, split):
    """GCT forward 2 launches (reduce, apply with the head folded in), backward 3; SE and
    se_residual forward 3 (reduce, MLP head, apply), backward 3. The same with the
    reduction split over L."""
    x = make_map((2, 6, 5, 7), torch.float32, device)
    dy = make_map((2, 6, 5, 7), torch.float32, device, seed=1)
    gp = make_gct_params(6, torch.float32, device)
    sp = make_se_params(6, 3, torch.float32, device)
    ops = _ops()
    expected = {
        "gct_forward": ("channel_reduce_kernel", "gct_forward_apply_kernel"),
        "gct_backward": ("channel_reduce_kernel", "gct_backward_head_kernel", "gct_backward_apply_kernel"),
        "se_forward": ("channel_reduce_kernel", "se_forward_head_kernel", "se_forward_apply_kernel"),
        "se_backward": ("channel_reduce_kernel", "se_backward_head_kernel", "se_backward_apply_kernel"),
    }
    expected["se_residual_forward"] = expected["se_forward"]
    expected["se_residual_backward"] = expected["se_backward"]
    with kernels.tiling_overrides(max_l_per_program=16 if split else None):
        assert kernels.tiling_for(x, kernels.channel_strides(x)).splits == (3 if split else 1)
        calls = {}
        with kernels.count_launches() as n:
            y, stats = ops.gct_forward(x, *gp, 1e-5, "l2", False)
        calls["gct_forward"] = n
        with kernels.count_launches() as n:
            ops.gct_backward(dy, x, *gp, stats, 1e-5, "l2", False)
        calls["gct_backward"] = n
        with kernels.count_launches() as n:
            y, pooled = ops.se_forward(x, *sp, "relu", "sigmoid")
        calls["se_forward"] = n
        with kernels.count_launches() as n:
            ops.se_backward(dy, x, *sp, pooled, "relu", "sigmoid")
        calls["se_backward"] = n
        with kernels.count_launches() as n:
            y, pooled = ops.se_residual_forward(x, dy, *sp, "relu", "sigmoid", "relu")
        calls["se_residual_forward"] = n
        with kernels.count_launches() as n:
            ops.se_residual_backward(dy, x, y, *sp, pooled, "relu", "sigmoid")
        calls["se_residual_backward"] = n
    for op, launched in calls.items():
        assert sorted(launched.elements()) == sorted(expected[op]), f"{op}: {dict(launched)}"


def test_launch_counts_through_autograd(device, kernels):
    """A training step of GCT through the functional API: 2 launches forward, 3 backward."""
    x = make_map((2, 4, 3, 3), torch.float32, device).requires_grad_(True)
    params = [p.requires_grad_(True) for p in make_gct_params(4, torch.float32, device)]
    with kernels.count_launches() as launched:
        gct_fused.gct(x, *params, backend="triton").sum().backward()
    assert sum(launched.values()) == 5, dict(launched)


def test_empty_maps_launch_nothing(device, kernels):
    x = torch.zeros((2, 4, 0, 3), device=device)
    gp = make_gct_params(4, torch.float32, device)
    with kernels.count_launches() as launched:
        y, stats = _ops().gct_forward(x, *gp, 1e-5, "l2", False)
    assert sum(launched.values()) == 0 and torch.equal(stats, torch.zeros(2, 4, device=device))


# ---------------------------------------------------------------------------------------
# Tiling


def test_tiling_follows_layout_and_splits_long_rows(kernels):
    plan = kernels.plan_tiling
    # NCHW: long tiles along L; channels_last: wide tiles along C
    nchw = plan(32, 256, 56 * 56, 56 * 56, 1, target_programs=528)
    assert nchw.l_major and nchw.block_l == kernels.MAX_BLOCK_L and nchw.splits == 1
    cl = plan(32, 256, 56 * 56, 1, 256, target_programs=528)
    assert not cl.l_major and cl.block_c == 256
    # large C, small L (2 x 4096 x 7 x 7): many channel blocks, no split
    big_c = plan(2, 4096, 49, 49, 1, target_programs=528)
    assert big_c.block_l == 64 and big_c.c_blocks * big_c.block_c >= 4096 and big_c.splits == 1
    # large L, few rows (1 x 3 x 512 x 512): the reduction is split across programs
    big_l = plan(1, 3, 512 * 512, 512 * 512, 1, target_programs=528)
    assert big_l.splits > 1
    for t in (nchw, cl, big_c, big_l):
        assert t.block_c * t.block_l <= kernels.TILE_ELEMS
        assert t.l_per_split % t.block_l == 0
    for l in (1, 35, 70000, 512 * 512):
        for max_l in (16, 4096):
            t = plan(1, 2, l, l, 1, target_programs=1, max_l_per_program=max_l)
            assert (t.splits - 1) * t.l_per_split < l <= t.splits * t.l_per_split
            assert t.l_per_split <= max_l


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_split_reduction_matches_reference(device, kernels, layout):
    """Rows long enough to be split over many programs (L = 70000, split every 8192, as a
    GPU would split 512 x 512 maps), forward and backward, GCT, SE and se_residual."""
    shape = (1, 3, 70000) if layout == "nchw" else (1, 3, 200, 350)
    x = make_map(shape, torch.float32, device, layout)
    dy = make_map(shape, torch.float32, device, layout, seed=1)
    identity = make_map(shape, torch.float32, device, layout, seed=2)
    gp = make_gct_params(3, torch.float32, device)
    sp = make_se_params(3, 2, torch.float32, device)
    with kernels.tiling_overrides(max_l_per_program=8192):
        assert kernels.tiling_for(x, kernels.channel_strides(x)).splits >= 8
        gct_out = _gct_call(x, dy, gp)
        se_out = _se_call(x, dy, sp)
        res_out = _residual_call(x, identity, dy, sp)
    _check_gct(x, dy, gp, gct_out, torch.float32)
    _check_se(x, dy, sp, se_out, torch.float32)
    _check_residual(x, identity, dy, sp, res_out, torch.float32)
    # the unsplit reduction gives the same statistics (up to float32 summation order)
    torch.testing.assert_close(_ops().gct_forward(x, *gp, 1e-5, "l2", False)[1], gct_out[1], rtol=1e-5, atol=0)


@pytest.mark.slow
def test_512x512_map_with_gpu_tiling(device, kernels):
    """1 x 3 x 512 x 512 with the tiling an H100 (132 SMs) would get: a 128-way split."""
    x = make_map((1, 3, 512, 512), torch.float32, device)
    dy = make_map((1, 3, 512, 512), torch.float32, device, seed=1)
    gp = make_gct_params(3, torch.float32, device)
    with kernels.tiling_overrides(programs_target=kernels.PROGRAMS_PER_SM * 132):
        assert kernels.tiling_for(x, kernels.channel_strides(x)).splits == 128
        out = _gct_call(x, dy, gp, mode="l1")
    _check_gct(x, dy, gp, out, torch.float32, mode="l1")


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_large_channel_count(device, layout):
    """C = 4096, L = 49: 64 (NCHW) or 16 (channels_last) channel blocks per sample, the GCT
    normaliser gathered across them, and (channels_last) SE with a 4096-wide head."""
    shape = (2, 4096, 7, 7) if layout == "channels_last" else (1, 4096, 7, 7)
    x = make_map(shape, torch.float32, device, layout)
    dy = make_map(shape, torch.float32, device, layout, seed=1)
    gp = make_gct_params(4096, torch.float32, device)
    _check_gct(x, dy, gp, _gct_call(x, dy, gp), torch.float32)
    if layout == "channels_last":
        sp = make_se_params(4096, 16, torch.float32, device)
        _check_se(x, dy, sp, _se_call(x, dy, sp), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=str)
def test_many_samples_per_se_program(device, dtype):
    """L = 1 with a wide hidden layer: SE programs take blocks of 16 samples (and the
    backward head its largest blocks), including a partial last block."""
    shape = (37, 24, 1, 1)
    x = make_map(shape, dtype, device, "channels_last")
    dy = make_map(shape, dtype, device, "channels_last", seed=1)
    pdtype = torch.float32 if dtype == torch.float16 else dtype
    sp = make_se_params(24, 40, pdtype, device)
    _check_se(x, dy, sp, _se_call(x, dy, sp, "relu", "hardsigmoid"), dtype, "relu", "hardsigmoid")


# ---------------------------------------------------------------------------------------
# Layouts without a merged spatial stride, mixed layouts


@pytest.mark.parametrize("kind", ["sliced", "permuted"])
def test_unmergeable_spatial_dims(device, kind):
    """x[..., :-1] (not dense: the one case where the input is copied) and a dense map with
    permuted spatial dims (the output keeps x's strides and is written through a buffer)."""
    base = make_map((2, 5, 6, 7), torch.float64, device)
    x = base[..., :-1] if kind == "sliced" else base.permute(0, 1, 3, 2)
    dy = make_map(tuple(x.shape), torch.float64, device, seed=1)
    gp = make_gct_params(5, torch.float64, device)
    sp = make_se_params(5, 2, torch.float64, device)
    out = _gct_call(x, dy, gp)
    if kind == "permuted":
        assert out[0].stride() == x.stride() and out[2].stride() == x.stride()
    _check_gct(x, dy, gp, out, torch.float64)
    _check_se(x, dy, sp, _se_call(x, dy, sp), torch.float64)


def test_mixed_layouts(device):
    """x channels_last, dy and identity NCHW, y strided: every tensor brings its own strides."""
    x = make_map((2, 6, 4, 5), torch.float64, device, "channels_last")
    dy = make_map((2, 6, 4, 5), torch.float64, device, "nchw", seed=1)
    identity = make_map((2, 6, 4, 5), torch.float64, device, "strided", seed=2)
    gp = make_gct_params(6, torch.float64, device)
    sp = make_se_params(6, 3, torch.float64, device)
    _check_gct(x, dy, gp, _gct_call(x, dy, gp, "l1"), torch.float64, mode="l1")
    _check_residual(x, identity, dy, sp, _residual_call(x, identity, dy, sp), torch.float64)


# ---------------------------------------------------------------------------------------
# Reproducibility


def test_forward_and_backward_are_bitwise_reproducible(device, kernels):
    """Parameter gradients are sums over samples in a fixed order (no atomics): two runs
    give identical bits, with whole and with split rows."""
    x = make_map((5, 12, 9, 11), torch.float32, device, "channels_last")
    dy = make_map((5, 12, 9, 11), torch.float32, device, "channels_last", seed=1)
    identity = make_map((5, 12, 9, 11), torch.float32, device, seed=2)
    gp = make_gct_params(12, torch.float32, device)
    sp = make_se_params(12, 4, torch.float32, device)
    for max_l in (None, 32):
        with kernels.tiling_overrides(max_l_per_program=max_l):
            runs = [_gct_call(x, dy, gp) + _se_call(x, dy, sp) + _residual_call(x, identity, dy, sp)
                    for _ in range(2)]
        for a, b in zip(*runs):
            assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------
# Packaging, backend choice, GPU compilation


def test_triton_kernels_is_only_ours_as_gct_fused_triton_kernels(tmp_path):
    """The kernels import as gct_fused.triton_kernels. The top-level name triton_kernels
    belongs to the Triton project: even with this repository's root on sys.path, importing
    it never gives our folder (it gives the Triton package if installed, else fails)."""
    pytest.importorskip("triton")
    import gct_fused.triton_kernels as ours
    assert ours.__name__ == "gct_fused.triton_kernels"
    assert importlib.import_module("gct_fused.triton_kernels.gct").gct_forward is not None

    saved_path, saved_module = list(sys.path), sys.modules.pop("triton_kernels", None)
    try:
        sys.path.insert(0, REPO_ROOT)
        with pytest.raises(ImportError, match="gct_fused.triton_kernels"):
            importlib.import_module("triton_kernels")
        assert "triton_kernels" not in sys.modules
        # a package owning the name (stand-in for Triton's), later on the path, wins
        other = tmp_path / "triton_kernels"
        other.mkdir()
        (other / "__init__.py").write_text("OWNER = 'triton'\n")
        sys.path.append(str(tmp_path))
        module = importlib.import_module("triton_kernels")
        assert getattr(module, "OWNER", None) == "triton"
    finally:
        sys.path[:] = saved_path
        sys.modules.pop("triton_kernels", None)
        if saved_module is not None:
            sys.modules["triton_kernels"] = saved_module


def test_auto_uses_triton_on_cuda_tensors():
    """Until the CUDA C++ kernels are verified faster on hardware, "auto" on a CUDA tensor
    means Triton (decided without a GPU: the triton ops import and register)."""
    from gct_fused import _backends
    if _backends.CUDA_BACKEND_VERIFIED:
        pytest.skip("the CUDA C++ backend is the verified default")
    if _backends.unavailable_reason("triton", torch.device("cuda")) is not None:
        pytest.skip("Triton is not usable here")
    assert _backends.resolve_backend("auto", torch.device("cuda")) == "triton"


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU every configuration is compiled by the tests")
def test_kernels_compile_for_sm90_without_a_gpu():
    """Every configuration launched for a set of inputs covering every code path (layouts,
    dtypes, modes, variants, split rows) compiles to a cubin for sm_90 with Triton's ptxas.
    The interpreter alone would not catch code that fails to lower for a GPU."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "gct_fused.triton_kernels.compile_check", "--level", "smoke"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]


# ---------------------------------------------------------------------------------------
# Reference checks


def _grads_of_reference(fn, tensors, dy):
    leaves = [None if t is None else f64(t).requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    out.backward(f64(dy))
    return out, [None if t is None else t.grad for t in leaves]


def _check_gct(x, dy, params, got, dtype, mode="l2", after_relu=False):
    y, stats, dx, *dparams = got
    want_y, want = _grads_of_reference(lambda *t: reference.gct(*t, mode=mode, after_relu=after_relu),
                                       [x, *params], dy)
    assert_close(y, want_y, FORWARD_TOL[dtype], "gct y")
    for name, g, w in zip(("x", "alpha", "gamma", "beta"), [dx, *dparams], want):
        assert_close(g, w, grad_tol(dtype, w), f"gct d{name}")


def _check_se(x, dy, params, got, dtype, activation="silu", gate="sigmoid"):
    y, pooled, dx, dw1, db1, dw2, db2 = got
    want_y, want = _grads_of_reference(lambda *t: reference.squeeze_excite(*t, activation, gate), [x, *params], dy)
    assert_close(y, want_y, FORWARD_TOL[dtype], "se y")
    spatial = tuple(range(2, x.dim()))
    assert_close(pooled, f64(x).mean(dim=spatial) if spatial else f64(x), FORWARD_TOL[dtype], "se pooled")
    for name, g, w in zip(("x", "w1", "b1", "w2", "b2"), [dx, dw1, db1, dw2, db2], want):
        assert_close(g, w, grad_tol(dtype, w), f"se d{name}")


def _check_residual(x, identity, dy, params, got, dtype):
    y, pooled, dx, didentity, dw1, db1, dw2, db2 = got
    want_y, want = _grads_of_reference(
        lambda *t: reference.se_residual(*t, "relu", "hardsigmoid", "relu"), [x, identity, *params], dy)
    assert_close(y, want_y, FORWARD_TOL[dtype], "se_residual y")
    for name, g, w in zip(("x", "identity", "w1", "b1", "w2", "b2"), [dx, didentity, dw1, db1, dw2, db2], want):
        assert_close(g, w, grad_tol(dtype, w), f"se_residual d{name}")
