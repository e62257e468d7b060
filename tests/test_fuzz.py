"""Property-based tests: every fused backend against the float64 reference, forward and
backward, on inputs drawn by Hypothesis.

A case draws: N, C and 0-3 spatial dims (sizes 1, small primes, powers of two and their
neighbours; on the CPU and CUDA also, one case in sixteen, rows longer than the CPU kernels'
32768-element tile); a dtype (float64/32, bfloat16, float16; float32 parameters with a half map); a layout
for x, another for dy (and for se_residual's identity) among those of fuzz_support.arrange
(NCHW, channels_last, any permutation of the dims, transposed spatial dims, padded and
stepped slices, C-row slices, stride-0 broadcasts, the expanded scalar of y.sum().backward());
the parameter shapes ((C,), (1, C, 1, 1), strided views; transposed SE weights); and
parameter values over several orders of magnitude, gamma < 0 and alpha up to 1000 included.

Checked: y against the reference (dtype, shape, and the strides torch.empty_like(x) gives,
as the fake implementation promises); dx and every parameter gradient against autograd
through the reference. Tolerances: helpers.FORWARD_TOL / BACKWARD_TOL plus, element by element,
the first-order rounding-error bound of error_bounds.py (which grows where the result is the
small difference of large terms; see fuzz_support.check_against_reference). For se_residual
with a relu, the mask y > 0 comes from the fused output, as in eager PyTorch.

Cases per backend come from the Hypothesis profile (see fuzz_support.py and conftest.py):
the default "ci" profile runs 200 per op on the CPU, 40 per op under the Triton interpreter
and 500 per op on a GPU, derandomized; `HYPOTHESIS_PROFILE=nightly pytest tests/test_fuzz.py`
runs 2,000 per op on the CPU (6,000 per backend), 400 per op under the interpreter and 5,000
per op on a GPU, with fresh random cases each time. The counts actually run are printed at the
end of the pytest run. A failure prints the case and a @reproduce_failure blob.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gct_fused
from gct_fused import reference
from error_bounds import gct_error_scales, se_error_scales
from fuzz_support import (BUDGET, GRAD_LAYOUTS, LONG_ROWS, MAP_LAYOUTS, arrange, check_against_reference, examples_for,
                          numel, record_case)
from helpers import FUSED_BACKENDS, backend_device

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
CHANNELS = (1, 2, 3, 4, 5, 7, 8, 11, 13, 16, 17, 31, 32, 33, 64, 67)
SPATIAL = (1, 2, 3, 4, 5, 7, 8, 11, 13, 16, 17, 29, 31, 32, 33, 64, 127)
BATCH = (1, 2, 3, 4, 5, 8)
# Spatial shapes of L > 32768 (the CPU kernels split such rows into tiles), on few channels.
LONG_SPATIAL = ((32769,), (40000,), (181, 191), (3, 107, 107), (256, 257))


# ---------------------------------------------------------------------------------------
# Strategies


@st.composite
def map_shapes(draw, backend: str):
    budget = BUDGET[backend]
    if LONG_ROWS[backend] and draw(st.integers(0, 15)) == 0:
        n = draw(st.sampled_from((1, 2)))
        c = draw(st.sampled_from((1, 2, 3)))
        return (n, c) + draw(st.sampled_from(LONG_SPATIAL))
    n = draw(st.sampled_from(BATCH))
    c = draw(st.sampled_from([c for c in CHANNELS if n * c <= budget]))
    shape = [n, c]
    for _ in range(draw(st.integers(0, 3))):
        room = budget // numel(shape)
        shape.append(draw(st.sampled_from([s for s in SPATIAL if s <= room])))
    return tuple(shape)


@st.composite
def common(draw, backend: str):
    """Shape, dtypes, layouts and seed shared by every op's cases."""
    shape = draw(map_shapes(backend))
    dtype = draw(st.sampled_from(DTYPES))
    half = dtype in (torch.float16, torch.bfloat16)
    return dict(
        shape=shape, dtype=dtype,
        param_dtype=torch.float32 if half and draw(st.booleans()) else dtype,
        x_layout=draw(st.sampled_from(MAP_LAYOUTS)),
        dy_layout=draw(st.sampled_from(GRAD_LAYOUTS)),
        perm=draw(st.permutations(range(len(shape)))),
        x_scale=draw(st.sampled_from((1.0, 0.01, 30.0))),
        seed=draw(st.integers(0, 2 ** 32 - 1)),
    )


@st.composite
def gct_cases(draw, backend: str):
    case = draw(common(backend))
    mode, after_relu = draw(st.sampled_from((("l2", False), ("l1", False), ("l1", True))))
    case.update(
        mode=mode, after_relu=after_relu,
        relu_input=after_relu and draw(st.booleans()),  # after_relu's premise x >= 0, or not
        epsilon=draw(st.sampled_from((1e-5, 1e-3, 0.5))),
        alpha_scale=draw(st.sampled_from((1.0, 0.1, 10.0, 1000.0))),
        alpha_signed=draw(st.booleans()),
        gamma_scale=draw(st.sampled_from((1.0, 0.0, 0.1, 5.0))),
        beta_scale=draw(st.sampled_from((0.5, 0.0, 3.0))),
        param_shape=draw(st.sampled_from(("C", "1C11", "strided"))),
    )
    return case


@st.composite
def se_cases(draw, backend: str, residual: bool = False):
    case = draw(common(backend))
    case.update(
        hidden=draw(st.sampled_from((1, 2, 3, 4, 8, 16))),
        activation=draw(st.sampled_from(("relu", "silu"))),
        gate=draw(st.sampled_from(("sigmoid", "hardsigmoid"))),
        bias=draw(st.booleans()),
        w_scale=draw(st.sampled_from((1.0, 0.1, 4.0))),
        b_scale=draw(st.sampled_from((0.1, 2.0))),
        transposed_weights=draw(st.booleans()),
    )
    if residual:
        case.update(identity_layout=draw(st.sampled_from(MAP_LAYOUTS)),
                    activation_after=draw(st.sampled_from(("relu", "none"))))
    return case


# ---------------------------------------------------------------------------------------
# Inputs of a case


def _generator(case, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed((case["seed"] + 7919 * salt) % 2 ** 63)


def _map(case, device, layout, salt, scale=None, relu=False):
    return arrange(case["shape"], case["dtype"], device, layout, _generator(case, salt),
                   scale=case["x_scale"] if scale is None else scale, perm=case["perm"], relu=relu)


def _per_channel(values: torch.Tensor, shape_kind: str, dtype, device) -> torch.Tensor:
    c = values.numel()
    if shape_kind == "1C11":
        return values.reshape(1, c, 1, 1).to(dtype).to(device)
    if shape_kind == "strided":  # every other element of a buffer twice as long
        return torch.stack([values, values + 1]).t().reshape(-1).to(dtype).to(device)[::2]
    return values.to(dtype).to(device)


def gct_inputs(case, device):
    c = case["shape"][1]
    g = _generator(case, 1)
    alpha = case["alpha_scale"] * (torch.randn(c, generator=g, dtype=torch.float64) if case["alpha_signed"]
                                   else 0.5 + torch.rand(c, generator=g, dtype=torch.float64))
    gamma = case["gamma_scale"] * torch.randn(c, generator=g, dtype=torch.float64)
    beta = case["beta_scale"] * torch.randn(c, generator=g, dtype=torch.float64)
    params = [_per_channel(p, case["param_shape"], case["param_dtype"], device) for p in (alpha, gamma, beta)]
    x = _map(case, device, case["x_layout"], 2, relu=case["relu_input"])
    dy = _map(case, device, case["dy_layout"], 3, scale=1.0)
    return x, params, dy


def se_inputs(case, device):
    c, r = case["shape"][1], case["hidden"]
    g = _generator(case, 1)
    w1 = case["w_scale"] * torch.randn(r, c, generator=g, dtype=torch.float64) / c ** 0.5
    w2 = case["w_scale"] * torch.randn(c, r, generator=g, dtype=torch.float64) / r ** 0.5
    b1 = case["b_scale"] * torch.randn(r, generator=g, dtype=torch.float64)
    b2 = case["b_scale"] * torch.randn(c, generator=g, dtype=torch.float64)

    def weight(w):
        w = w.to(case["param_dtype"]).to(device)
        return w.t().contiguous().t() if case["transposed_weights"] else w  # column-major weights

    params = [weight(w1), b1.to(case["param_dtype"]).to(device) if case["bias"] else None,
              weight(w2), b2.to(case["param_dtype"]).to(device) if case["bias"] else None]
    x = _map(case, device, case["x_layout"], 2)
    dy = _map(case, device, case["dy_layout"], 3, scale=1.0)
    identity = _map(case, device, case["identity_layout"], 4) if "identity_layout" in case else None
    return x, params, dy, identity


# ---------------------------------------------------------------------------------------
# The property


def _describe(case) -> str:
    return ", ".join(f"{k}={v}" for k, v in case.items())


def _run(backend: str, test: str, strategy, body):
    device = backend_device(backend)

    @settings(max_examples=examples_for(backend), deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(case=strategy(backend))
    def prop(case):
        record_case(backend, test)
        body(case, device)

    prop()


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_fuzz_gct(backend):
    def body(case, device):
        x, params, dy = gct_inputs(case, device)
        opts = dict(epsilon=case["epsilon"], mode=case["mode"], after_relu=case["after_relu"])
        check_against_reference(
            lambda *t: gct_fused.gct(*t, **opts, backend=backend), lambda *t: reference.gct(*t, **opts),
            [x, *params], ["x", "alpha", "gamma", "beta"], dy, case["dtype"], f"gct[{_describe(case)}]",
            lambda t, dy64, mask=None: gct_error_scales(*t, dy64, **opts))

    _run(backend, "gct", gct_cases, body)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_fuzz_squeeze_excite(backend):
    def body(case, device):
        x, params, dy, _ = se_inputs(case, device)
        opts = (case["activation"], case["gate"])
        check_against_reference(
            lambda *t: gct_fused.squeeze_excite(*t, *opts, backend=backend),
            lambda *t: reference.squeeze_excite(*t, *opts),
            [x, *params], ["x", "w1", "b1", "w2", "b2"], dy, case["dtype"], f"se[{_describe(case)}]",
            lambda t, dy64, mask=None: se_error_scales(*t, dy64, *opts))

    _run(backend, "squeeze_excite", se_cases, body)


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_fuzz_se_residual(backend):
    def body(case, device):
        x, params, dy, identity = se_inputs(case, device)
        opts = (case["activation"], case["gate"], case["activation_after"])
        check_against_reference(
            lambda x_, i_, *p: gct_fused.se_residual(x_, i_, *p, *opts, backend=backend),
            lambda x_, i_, *p: reference.se_residual(x_, i_, *p, *opts),
            [x, identity, *params], ["x", "identity", "w1", "b1", "w2", "b2"], dy, case["dtype"],
            f"se_residual[{_describe(case)}]",
            lambda t, dy64, mask=None: se_error_scales(t[0], *t[2:], dy64, *opts[:2], identity=t[1], mask=mask),
            relu_epilogue=(lambda x_, i_, *p: reference.se_residual(x_, i_, *p, *opts[:2], "none"))
            if opts[2] == "relu" else None)

    _run(backend, "se_residual", lambda b: se_cases(b, residual=True), body)
