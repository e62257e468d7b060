"""The "triton" backend: the six ops of gct_fused as torch.ops.gct_fused.triton_<op>, with
the schemas of the C++ ops (csrc/gct_fused.cpp), implemented by the Triton kernels of
gct_fused.triton_kernels; fake implementations and autograd come from register_family.

They are torch.library.custom_op ops, not triton_op: under the Triton interpreter (CPU
tensors, how CI tests them) triton_op's fake-tensor tracing fails, so only custom_op passes
torch.compile and opcheck there; on a GPU custom_op works the same (Inductor calls the op
as one opaque kernel).

IMPORT_ERROR is None when the ops are registered, else a sentence saying why not.
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch
from torch.autograd import forward_ad

IMPORT_ERROR: Optional[str] = None

try:
    import triton  # noqa: F401

    from .triton_kernels import gct as _gct
    from .triton_kernels import se as _se
except Exception as exc:  # pragma: no cover - only without a usable Triton
    IMPORT_ERROR = f"Triton kernels unavailable ({type(exc).__name__}: {exc})"


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _on_device(x: torch.Tensor, fn: str):
    """Checks that Triton can run on x's device and returns a context that makes it the
    current device (Triton launches on the current CUDA device, whatever x's)."""
    if x.device.type == "cuda":
        return torch.cuda.device(x.device)
    if x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1":
        return contextlib.nullcontext()
    raise RuntimeError(f"{fn}: the Triton ops run on CUDA tensors (CPU tensors only under the Triton "
                       f"interpreter, TRITON_INTERPRET=1 set before triton is imported); got a tensor on {x.device}")


def _check_option(value, choices, name: str, fn: str) -> None:
    """Option strings, worded as the C++ ops word them (e.g. "mode must be 'l2' or 'l1'")."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{fn}: {name} must be '{choices[0]}' or '{choices[1]}', got {value!r}")


def _check_gct_options(mode, fn: str = "gct") -> None:
    _check_option(mode, ("l2", "l1"), "mode", fn)


def _check_se_options(activation, gate, fn: str) -> None:
    _check_option(activation, ("relu", "silu"), "activation", fn)
    _check_option(gate, ("sigmoid", "hardsigmoid"), "gate", fn)


def _check_no_tangents(fn: str, *tensors) -> None:
    """Forward-mode AD has no formula here: a dual-tensor input raises rather than having its
    tangent silently dropped (as the C++ ops do, csrc/autograd.cpp)."""
    # No dual_level open: no tensor can carry a tangent. (A private attribute: where a torch
    # release lacks it, every call checks its tensors.)
    if getattr(forward_ad, "_current_level", 0) < 0:
        return
    for t in tensors:
        if t is not None and forward_ad.unpack_dual(t).tangent is not None:
            raise NotImplementedError(
                f"{fn}: forward-mode AD (dual tensors, jvp) is not supported by the fused backends; "
                'call the op with backend="reference" for it')


def _check_stats(x: torch.Tensor, stats, name: str, fn: str) -> None:
    if not isinstance(stats, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(stats).__name__}")
    if tuple(stats.shape) != (x.shape[0], x.shape[1]):
        raise ValueError(f"{fn}: {name} must have shape (N, C) = {(x.shape[0], x.shape[1])}, got {tuple(stats.shape)}")
    if stats.device != x.device:
        raise ValueError(f"{fn}: {name} is on {stats.device} but x is on {x.device}")
    if stats.dtype != _acc_dtype(x.dtype):
        raise TypeError(f"{fn}: {name} must be {_acc_dtype(x.dtype)}, got {stats.dtype}")


if IMPORT_ERROR is None:
    from . import _validate
    from ._registration import register_family

    @torch.library.custom_op(
        "gct_fused::triton_gct_forward", mutates_args=(),
        schema="(Tensor x, Tensor alpha, Tensor gamma, Tensor beta, float epsilon, str mode, "
               "bool after_relu) -> (Tensor y, Tensor stats)")
    def triton_gct_forward(x, alpha, gamma, beta, epsilon, mode, after_relu):
        """GCT forward: (y, s per (n, c)); see gct_fused.triton_kernels.gct."""
        _check_gct_options(mode)
        _validate.check_gct(x, alpha, gamma, beta, epsilon, mode, after_relu)
        _check_no_tangents("gct", x, alpha, gamma, beta)
        with _on_device(x, "gct"):
            return _gct.gct_forward(x, alpha, gamma, beta, epsilon, mode, after_relu)

    @torch.library.custom_op(
        "gct_fused::triton_gct_backward", mutates_args=(),
        schema="(Tensor dy, Tensor x, Tensor alpha, Tensor gamma, Tensor beta, Tensor stats, "
               "float epsilon, str mode, bool after_relu) -> (Tensor dx, Tensor dalpha, Tensor dgamma, "
               "Tensor dbeta)")
    def triton_gct_backward(dy, x, alpha, gamma, beta, stats, epsilon, mode, after_relu):
        """GCT backward: (dx, dalpha, dgamma, dbeta)."""
        _check_gct_options(mode)
        _validate.check_gct(x, alpha, gamma, beta, epsilon, mode, after_relu)
        _validate.check_same_map(x, dy, "dy", "gct")
        _check_stats(x, stats, "stats", "gct")
        with _on_device(x, "gct"):
            return _gct.gct_backward(dy, x, alpha, gamma, beta, stats, epsilon, mode, after_relu)

    @torch.library.custom_op(
        "gct_fused::triton_se_forward", mutates_args=(),
        schema="(Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, str activation, "
               "str gate) -> (Tensor y, Tensor pooled)")
    def triton_se_forward(x, w1, b1, w2, b2, activation, gate):
        """SE forward: (y, pooled mean per (n, c)); see gct_fused.triton_kernels.se."""
        _check_se_options(activation, gate, "squeeze_excite")
        _validate.check_se(x, w1, b1, w2, b2, activation, gate)
        _check_no_tangents("squeeze_excite", x, w1, b1, w2, b2)
        with _on_device(x, "squeeze_excite"):
            return _se.se_forward(x, w1, b1, w2, b2, activation, gate)

    @torch.library.custom_op(
        "gct_fused::triton_se_backward", mutates_args=(),
        schema="(Tensor dy, Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
               "Tensor pooled, str activation, str gate) -> (Tensor dx, Tensor dw1, Tensor db1, "
               "Tensor dw2, Tensor db2)")
    def triton_se_backward(dy, x, w1, b1, w2, b2, pooled, activation, gate):
        """SE backward: (dx, dw1, db1, dw2, db2); bias gradients even without biases."""
        _check_se_options(activation, gate, "squeeze_excite")
        _validate.check_se(x, w1, b1, w2, b2, activation, gate)
        _validate.check_same_map(x, dy, "dy", "squeeze_excite")
        _check_stats(x, pooled, "pooled", "squeeze_excite")
        with _on_device(x, "squeeze_excite"):
            return _se.se_backward(dy, x, w1, b1, w2, b2, pooled, activation, gate)

    @torch.library.custom_op(
        "gct_fused::triton_se_residual_forward", mutates_args=(),
        schema="(Tensor x, Tensor identity, Tensor w1, Tensor? b1, Tensor w2, "
               "Tensor? b2, str activation, str gate, str activation_after) -> (Tensor y, Tensor pooled)")
    def triton_se_residual_forward(x, identity, w1, b1, w2, b2, activation, gate, activation_after):
        """act_after(se(x) + identity) in one pass: (y, pooled)."""
        _check_se_options(activation, gate, "se_residual")
        _validate.check_se(x, w1, b1, w2, b2, activation, gate, fn="se_residual")
        _validate.check_same_map(x, identity, "identity", "se_residual")
        _check_option(activation_after, ("relu", "none"), "activation_after", "se_residual")
        _check_no_tangents("se_residual", x, identity, w1, b1, w2, b2)
        with _on_device(x, "se_residual"):
            return _se.se_forward(x, w1, b1, w2, b2, activation, gate, identity=identity,
                                  activation_after=activation_after)

    @torch.library.custom_op(
        "gct_fused::triton_se_residual_backward", mutates_args=(),
        schema="(Tensor dy, Tensor x, Tensor y, Tensor w1, Tensor? b1, Tensor w2, "
               "Tensor? b2, Tensor pooled, str activation, str gate) -> (Tensor dx, Tensor didentity, "
               "Tensor dw1, Tensor db1, Tensor dw2, Tensor db2)")
    def triton_se_residual_backward(dy, x, y, w1, b1, w2, b2, pooled, activation, gate):
        """Backward of se_residual with a relu epilogue (y > 0 is relu's mask):
        (dx, didentity, dw1, db1, dw2, db2)."""
        _check_se_options(activation, gate, "se_residual")
        _validate.check_se(x, w1, b1, w2, b2, activation, gate, fn="se_residual")
        _validate.check_same_map(x, dy, "dy", "se_residual")
        _validate.check_same_map(x, y, "y", "se_residual")
        _check_stats(x, pooled, "pooled", "se_residual")
        with _on_device(x, "se_residual"):
            return _se.se_backward(dy, x, w1, b1, w2, b2, pooled, activation, gate, y=y)

    register_family("triton_")
