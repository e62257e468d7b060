"""Shared pieces of the reliability tests (test_fuzz.py, test_edge_cases.py, test_memory.py):
how many cases each backend runs under the active Hypothesis profile, a counter of the cases
actually run and other lines for the end-of-run summary (printed by conftest.py), tensors
laid out in arbitrary ways, and the comparison of an op, forward and backward, with the
float64 reference under conditioning-aware tolerances (check_against_reference).

Profiles (registered in conftest.py, selected with HYPOTHESIS_PROFILE=<name>):
  ci       (default)  200 cases per op on the CPU, 40 under the Triton interpreter, 500 on a
                      GPU (EXAMPLES below); about 1.5 minutes on a 2-core CPU, the interpreter's
                      share included. Derandomized: a CI run is reproducible.
  nightly             2,000 per op on the CPU (6,000 per backend), 400 under the interpreter
                      (1,200), 5,000 on a GPU; fresh random cases on every run.
  dev                 a handful of cases, for editing the tests themselves.
GCT_FUZZ_EXAMPLES=<n> overrides the per-op count of every backend.
"""

from __future__ import annotations

import collections
import math
import os
from typing import Dict, List, Optional, Sequence

import torch

from error_bounds import ERROR_FACTOR, unit_roundoff
from helpers import FORWARD_TOL, f64, grad_tol

# Examples per (profile, backend) for each of the three fuzz tests (gct, squeeze_excite,
# se_residual). The Triton interpreter runs ~1000x slower than a GPU, hence its share.
EXAMPLES: Dict[str, Dict[str, int]] = {
    "ci": {"cpu": 200, "triton": 40, "cuda": 500},
    "nightly": {"cpu": 2000, "triton": 400, "cuda": 5000},
    "dev": {"cpu": 10, "triton": 3, "cuda": 10},
}
# Overrides every entry of the table above (e.g. GCT_FUZZ_EXAMPLES=5000 for a one-off soak).
EXAMPLES_ENV = "GCT_FUZZ_EXAMPLES"

# Elements of one fuzzed map, per backend (the interpreter's cost grows with the tile count).
BUDGET = {"cpu": 16_000, "triton": 1_200, "cuda": 400_000}
# Whether a backend's fuzzing also draws "long rows": L beyond the CPU kernels' 32768-element
# tile, on few channels (the split-L paths).
LONG_ROWS = {"cpu": True, "triton": False, "cuda": True}

# Cases run, by (backend, test): every call of the property, shrinking included.
CASES: "collections.Counter[tuple]" = collections.Counter()


def profile_name() -> str:
    return os.environ.get("HYPOTHESIS_PROFILE", "ci")


def examples_for(backend: str) -> int:
    override = os.environ.get(EXAMPLES_ENV)
    if override:
        return int(override)
    table = EXAMPLES.get(profile_name(), EXAMPLES["ci"])
    return table[backend]


def record_case(backend: str, test: str) -> None:
    CASES[(backend, test)] += 1


# Lines other tests want in the end-of-run summary (memory ratios, ...).
REPORT: List[str] = []


def record_report(line: str) -> None:
    REPORT.append(line)


def summary_lines() -> List[str]:
    lines = list(REPORT)
    if not CASES:
        return lines
    lines.append(f"fuzz cases run (profile {profile_name()!r}):")
    per_backend: "collections.Counter[str]" = collections.Counter()
    for (backend, test), count in sorted(CASES.items()):
        lines.append(f"  {backend:8s} {test:14s} {count:6d}")
        per_backend[backend] += count
    for backend, count in sorted(per_backend.items()):
        lines.append(f"  {backend:8s} {'total':14s} {count:6d}")
    return lines


# ---------------------------------------------------------------------------------------
# Tensors in arbitrary layouts. Every arrangement returns a tensor of the requested shape
# whose values are fixed by the generator; only the strides (and storage offset) vary.

# Layouts of a map: the names are the strategies' vocabulary (test ids and shrinking).
MAP_LAYOUTS = ("contiguous", "channels_last", "permuted", "spatial_transpose", "padded", "stepped",
               "channel_slice", "broadcast")
# A gradient dy may also be the expanded scalar y.sum().backward() produces.
GRAD_LAYOUTS = MAP_LAYOUTS + ("expanded_scalar",)


def _inverse(perm: Sequence[int]) -> List[int]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return inv


def _randn(shape, gen: torch.Generator, scale: float) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64) * scale


def arrange(shape: Sequence[int], dtype: torch.dtype, device, layout: str, gen: torch.Generator,
            scale: float = 1.0, perm: Optional[Sequence[int]] = None, relu: bool = False) -> torch.Tensor:
    """A tensor of `shape` with values N(0, scale^2) (>= 0 with relu), in `layout`:

    contiguous         NCHW
    channels_last      C innermost (channels_last / channels_last_3d and their analogues)
    permuted           dense, dims in the order `perm` in memory (e.g. C outermost)
    spatial_transpose  dense with the last two spatial dims swapped in memory
    padded             a slice [1:1+size] along every dim of a larger buffer (offset, gaps)
    stepped            every other element along the last dim (or C) of a buffer
    channel_slice      channels_last, but a slice of twice as many channels (C-rows with gaps)
    broadcast          stride 0 along every dim drawn as size-1 in the values (dims of a
                       random subset; the values are constant along them)
    expanded_scalar    one value expanded to the whole shape (all strides 0)
    """
    shape = tuple(shape)
    rank = len(shape)
    base_shape, view = shape, lambda b: b
    if layout == "expanded_scalar":
        base_shape, view = (), lambda b: b.expand(shape)
    elif layout == "broadcast":
        # constant along the first half of the dims of perm (at least one dim)
        dims = set((list(perm) if perm is not None else list(range(rank)))[: max(1, rank // 2)])
        base_shape = tuple(1 if d in dims else s for d, s in enumerate(shape))
        view = lambda b: b.expand(shape)  # noqa: E731
    elif layout == "channels_last":
        view = lambda b: b.movedim(1, -1).contiguous().movedim(-1, 1)  # noqa: E731
    elif layout == "permuted":
        order = list(perm) if perm is not None else list(range(rank))
        view = lambda b: b.permute(order).contiguous().permute(_inverse(order))  # noqa: E731
    elif layout == "spatial_transpose" and rank >= 4:
        view = lambda b: b.transpose(-1, -2).contiguous().transpose(-1, -2)  # noqa: E731
    elif layout == "padded":
        base_shape = tuple(s + 2 for s in shape)
        view = lambda b: b[tuple(slice(1, 1 + s) for s in shape)]  # noqa: E731
    elif layout == "stepped":
        base_shape = shape[:-1] + (2 * shape[-1],)
        view = lambda b: b[..., ::2]  # noqa: E731
    elif layout == "channel_slice":
        base_shape = (shape[0], 2 * shape[1]) + shape[2:]
        view = lambda b: b.movedim(1, -1).contiguous().movedim(-1, 1)[:, 1::2]  # noqa: E731
    base = _randn(base_shape, gen, scale)
    if relu:
        base = base.clamp_min(0)
    t = view(base.to(dtype).to(device))
    assert tuple(t.shape) == shape, (layout, t.shape, shape)
    return t


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


# ---------------------------------------------------------------------------------------
# Checking a result against the float64 reference


def assert_within(actual, expected, tol: dict, scale: Optional[torch.Tensor], unit: float, what: str) -> None:
    """|actual - expected| <= atol + rtol * |expected| + ERROR_FACTOR * unit * scale, element
    by element (scale: error_bounds' first-order bound of the element, or None); NaN and inf
    must sit where the reference has them."""
    a, e = f64(actual), f64(expected)
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    if a.numel() == 0:
        return
    torch.testing.assert_close(a.isnan(), e.isnan(), msg=lambda m: f"{what}: NaN pattern differs: {m}")
    finite = e.isfinite()
    torch.testing.assert_close(a[~finite & ~e.isnan()], e[~finite & ~e.isnan()], msg=lambda m: f"{what}: inf: {m}")
    allowed = tol["atol"] + tol["rtol"] * e.abs()
    if scale is not None:
        allowed = allowed + ERROR_FACTOR * unit * f64(scale).reshape(e.shape)
    err = (a - e).abs()
    bad = finite & ~(err <= allowed)
    if bad.any():
        i = int(torch.argmax(torch.where(bad, err / allowed, torch.zeros_like(err))))
        idx = tuple(int(k) for k in torch.unravel_index(torch.tensor(i), e.shape))
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {e.numel()} elements outside the tolerance; worst at {idx}: "
            f"got {a[idx].item()!r}, expected {e[idx].item()!r}, |diff| {err[idx].item():.3g} > allowed "
            f"{allowed[idx].item():.3g} (rtol {tol['rtol']}, atol {tol['atol']:.3g}"
            + ("" if scale is None else f", error scale {f64(scale).reshape(e.shape)[idx].item():.3g}") + ")")


def _grads(y, leaves, dy):
    wanted = [t for t in leaves if t is not None]
    got = iter(torch.autograd.grad(y, wanted, dy))
    return [None if t is None else next(got) for t in leaves]


def check_against_reference(fused, ref, inputs, names, dy, dtype, what, scales_fn, relu_epilogue=None):
    """fused(*inputs) against ref(*inputs in float64): the output and every gradient, with
    tolerances from helpers.py plus the first-order error bound scales_fn(inputs64, dy64[, mask])
    of error_bounds.py.

    relu_epilogue: for se_residual(activation_after="relu"), the reference without the relu.
    The fused backward takes relu's mask from its own y (y > 0, as eager PyTorch does), which
    may differ from the float64 reference's where |y| is below y's rounding error (an output
    that rounds to 0 in float16, say). So the mask is checked against the reference's up to
    that error, and the gradients against the reference backpropagated through the fused
    output's mask."""
    unit = unit_roundoff(dtype)
    leaves = [None if t is None else t.detach().requires_grad_(True) for t in inputs]
    ref_leaves = [None if t is None else f64(t).requires_grad_(True) for t in inputs]
    y = fused(*leaves)
    x = inputs[0]
    assert y.dtype == x.dtype and y.shape == x.shape and y.device == x.device, what
    if y.numel() > 1:
        assert y.stride() == torch.empty_like(x).stride(), f"{what}: y strides {y.stride()}, " \
            f"torch.empty_like(x) (the fake implementation) gives {torch.empty_like(x).stride()}"
    y_ref = ref(*ref_leaves)
    forward_scale = scales_fn([f64(t) for t in inputs], None)["y"]
    assert_within(y, y_ref, FORWARD_TOL[dtype], forward_scale, unit, f"{what}: y")

    ref_dy = f64(dy)
    mask = None
    if relu_epilogue is not None:
        mask = f64(y) > 0
        y_ref = relu_epilogue(*ref_leaves)  # the pre-activation
        tol = FORWARD_TOL[dtype]
        ambiguous = y_ref.detach().abs() <= tol["atol"] + tol["rtol"] * y_ref.detach().abs() + ERROR_FACTOR * unit * forward_scale
        flipped = (mask != (y_ref.detach() > 0)) & ~ambiguous
        assert not flipped.any(), f"{what}: relu mask differs from the reference's at {int(flipped.sum())} elements"
        ref_dy = ref_dy * mask
    got = _grads(y, leaves, dy)
    want = _grads(y_ref, ref_leaves, ref_dy)
    scales = scales_fn([f64(t) for t in inputs], f64(dy), mask)
    for name, leaf, g, w in zip(names, leaves, got, want):
        if leaf is None:
            continue
        assert g.dtype == leaf.dtype and g.shape == leaf.shape, f"{what}: d{name} {g.dtype} {tuple(g.shape)}"
        assert_within(g, w, grad_tol(dtype, w), scales[name], unit, f"{what}: d{name}")
