"""Inputs, layouts, backends and tolerances shared by the tests.

Every comparison is against gct_fused.reference evaluated in float64 on the *same* input
values (the low-precision inputs upcast), so the only errors measured are the kernel's own.
"""

from __future__ import annotations

import os

import pytest
import torch

import gct_fused
from gct_fused._backends import unavailable_reason

FUSED_BACKENDS = ("cpu", "triton", "cuda")
DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
LAYOUTS = ("nchw", "channels_last", "strided")
GCT_MODES = (("l2", False), ("l1", False), ("l1", True))
SE_VARIANTS = tuple((act, gate, bias) for act in ("relu", "silu") for gate in ("sigmoid", "hardsigmoid")
                    for bias in (True, False))

# Shapes (N, C, *spatial): C=1, L=1, odd sizes, N=1, no/1D/2D/3D spatial.
SHAPES = (
    (2, 5, 7, 3),
    (1, 1, 4, 4),
    (3, 6, 1, 1),
    (2, 7, 13),
    (2, 3, 2, 3, 5),
    (4, 9),
    (1, 16, 9, 9),
)

# Relative / absolute tolerances against the float64 reference, by dtype.
# float64: the kernels accumulate in float64, so only rounding of a few operations
#   separates them from the reference: 1e-10 relative is far above that.
# float32: sums over L and C accumulate in float32 (relative error ~ sqrt(L) * 6e-8 for
#   random data, L <= a few hundred here), then one more rounding of y: 2e-5 covers it.
# bfloat16 / float16: the kernel computes in float32 and rounds y once, so the error is
#   within one unit in the last place of the output dtype: 2^-8 (bf16), 2^-11 (fp16)
#   relative, i.e. rtol = 2 * that to allow the float32 head's own error on top.
FORWARD_TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=2e-5, atol=2e-6),
    torch.bfloat16: dict(rtol=2 ** -7, atol=1e-3),
    torch.float16: dict(rtol=2 ** -10, atol=1e-4),
}
# Gradients add one fp32 reduction (sum dy*x) and a cancellation in
# dx = a*dy + k*f(x), so they get an absolute floor scaled by the gradient's magnitude.
BACKWARD_TOL = {
    torch.float64: dict(rtol=1e-9, atol=1e-11),
    torch.float32: dict(rtol=1e-4, atol=1e-5),
    torch.bfloat16: dict(rtol=2 ** -6, atol=2 ** -7),
    torch.float16: dict(rtol=2 ** -9, atol=2 ** -10),
}


def backend_device(backend: str) -> torch.device:
    """The device a backend's tests run on, or skip (with the reason) where it cannot run."""
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        device = torch.device("cuda")
    else:
        device = torch.device("cpu")
    if backend in ("cuda",) and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    why = unavailable_reason(backend, device)
    if why is not None:
        pytest.skip(f"backend {backend!r} unavailable on {device}: {why}")
    return device


def interpreted(backend: str, device: torch.device) -> bool:
    """True for Triton kernels run by the (slow) interpreter on CPU tensors."""
    return backend == "triton" and device.type == "cpu"


def thin_for_interpreter(backend: str, device: torch.device, dtype, layout: str, shape) -> None:
    """The Triton interpreter is ~1000x slower than a GPU: interpreted runs keep a covering
    subset of the dtype x layout x shape cube (every pair of values still meets), the GPU
    runs all of it."""
    if interpreted(backend, device) and (DTYPES.index(dtype) + LAYOUTS.index(layout) + hash_shape(shape)) % 3:
        pytest.skip("Triton interpreter: covering subset of dtype x layout x shape (full cube on a GPU)")


def hash_shape(shape) -> int:
    return sum(shape) + len(shape)


def to_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout (never changes values or shape).

    nchw: contiguous. channels_last: C innermost (channels_last / channels_last_3d for 4-D / 5-D,
    the same permutation for other ranks). strided: a non-contiguous view (every other element
    of a twice-as-long last dim)."""
    if layout == "nchw":
        return x.contiguous()
    if layout == "channels_last":
        return x.movedim(1, -1).contiguous().movedim(-1, 1)
    if layout == "strided":
        wide = torch.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype, device=x.device)
        wide[..., ::2] = x
        return wide[..., ::2]
    raise ValueError(layout)


def make_map(shape, dtype, device, layout="nchw", seed=0, scale=1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    return to_layout(x.to(device), layout)


def make_gct_params(channels, dtype, device, seed=1):
    """Random alpha, gamma (including negative values), beta, as (C,) tensors."""
    g = torch.Generator().manual_seed(seed)
    alpha = 0.5 + torch.rand(channels, generator=g, dtype=torch.float64)
    gamma = torch.randn(channels, generator=g, dtype=torch.float64)
    beta = 0.5 * torch.randn(channels, generator=g, dtype=torch.float64)
    return [p.to(dtype).to(device) for p in (alpha, gamma, beta)]


def make_se_params(channels, hidden, dtype, device, bias=True, seed=2):
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(hidden, channels, generator=g, dtype=torch.float64) / channels ** 0.5
    b1 = 0.1 * torch.randn(hidden, generator=g, dtype=torch.float64)
    w2 = torch.randn(channels, hidden, generator=g, dtype=torch.float64) / hidden ** 0.5
    b2 = 0.1 * torch.randn(channels, generator=g, dtype=torch.float64)
    params = [w1, b1 if bias else None, w2, b2 if bias else None]
    return [None if p is None else p.to(dtype).to(device) for p in params]


def f64(t):
    return None if t is None else t.detach().to(torch.float64).cpu()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: dict, what: str) -> None:
    """actual (any dtype/device) vs a float64 expected, with a helpful message."""
    torch.testing.assert_close(f64(actual), f64(expected), check_dtype=False, msg=lambda m: f"{what}: {m}",
                               **tol)


def grad_tol(dtype: torch.dtype, expected: torch.Tensor) -> dict:
    """BACKWARD_TOL with its absolute part scaled by the gradient's magnitude."""
    tol = dict(BACKWARD_TOL[dtype])
    scale = float(f64(expected).abs().max()) if expected.numel() else 1.0
    tol["atol"] = tol["atol"] * max(scale, 1.0)
    return tol


def grads_of(fn, tensors, dy):
    """fn(*tensors) backpropagated with dy: (the output, detached; the gradient of every
    tensor, None for None)."""
    leaves = [None if t is None else t.detach().requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    out.backward(dy)
    return out.detach(), [None if t is None else t.grad for t in leaves]


def check_against_reference(fused_fn, reference_fn, tensors, dy, dtype, what) -> None:
    """fused_fn(*tensors) and its gradients (dy) against reference_fn on the float64 values:
    the forward within FORWARD_TOL, every gradient within grad_tol and of its tensor's dtype."""
    out, got = grads_of(fused_fn, tensors, dy)
    ref_out, want = grads_of(reference_fn, [f64(t) for t in tensors], f64(dy))
    assert_close(out, ref_out, FORWARD_TOL[dtype], f"{what}: forward")
    for i, (g, w) in enumerate(zip(got, want)):
        if w is None:
            continue
        assert g is not None and g.dtype == tensors[i].dtype, f"{what}: gradient {i}"
        assert_close(g, w, grad_tol(dtype, w), f"{what}: gradient {i}")


def has_env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


__all__ = [n for n in dir() if not n.startswith("_")] + ["gct_fused"]
