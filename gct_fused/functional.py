"""The functional API: gct, squeeze_excite and se_residual, each dispatching to a backend."""

from __future__ import annotations

import sys
from typing import Optional

import torch

from . import _ops, _validate, reference
from ._backends import fused_op, resolve_backend

# The direct C++ entries of the forward ops (csrc/python_calls.cpp): for the common call
# (plain tensors on CPU, valid arguments, backend "auto"/"cpu") they check the arguments
# and call the op without the Python layers below, which cost ~100 us with caches cold;
# they return None for every other call, which then takes the full path. Skipped while
# Dynamo traces (it records the torch.ops call of the full path instead); None when the
# extension is not built. is_dynamo_compiling rather than is_compiling: it is one plain
# call (is_compiling also calls torch.jit.is_scripting; 10 against 1-2 us with the
# caches cold), and what else sets is_compiling (non-strict torch.export, AOTAutograd)
# traces FakeTensors or functional tensors, subclasses the entries hand back anyway.
_DIRECT = _ops._C if _ops.C_IMPORT_ERROR is None else None
_is_dynamo_compiling = torch.compiler.is_dynamo_compiling


def _backend_for(backend: str, device: torch.device) -> str:
    """resolve_backend, except while torch.onnx.export traces the model: the fused ops have
    no ONNX form, so the exporter traces the published formulas (plain aten ops) instead.
    (torch.onnx is imported by any export; while it is not, nothing is being exported.)"""
    if "torch.onnx" in sys.modules and torch.onnx.is_in_onnx_export():
        return "reference"
    return resolve_backend(backend, device)


def gct(x: torch.Tensor, alpha: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
        epsilon: float = 1e-5, mode: str = "l2", after_relu: bool = False,
        backend: str = "auto") -> torch.Tensor:
    """Gated Channel Transformation of x, shape (N, C, *spatial) with any number of spatial dims.

    y = x * (1 + tanh(gamma * e / norm + beta)) where, per sample and channel,
    e = alpha * sqrt(sum x^2 + epsilon) and norm = sqrt(mean_C(e^2) + epsilon) (mode "l2"), or
    e = alpha * sum |x| (sum x if after_relu) and norm = mean_C |e| + epsilon (mode "l1").

    alpha, gamma, beta hold C values each (any shape, e.g. (C,) or (1, C, 1, 1)); they may be
    float32 while x is float16/bfloat16. Statistics accumulate in float32 (float64 for a
    float64 x), so large float16 maps do not overflow as the published formula does.
    `backend` is one of "auto", "cuda", "triton", "cpu", "reference" (see
    gct_fused.available_backends). Returns a tensor of x's shape, dtype and memory format.

    The fused backends are differentiable once (reverse mode): a second derivative through
    their gradients, or a forward-mode dual tensor, raises; backend="reference" has both.
    """
    if _DIRECT is not None and not _is_dynamo_compiling():
        y = _DIRECT.gct(x, alpha, gamma, beta, epsilon, mode, after_relu, backend)
        if y is not None:
            return y
    _validate.check_gct(x, alpha, gamma, beta, epsilon, mode, after_relu)
    name = _backend_for(backend, x.device)
    if name == "reference":
        return reference.gct(x, alpha, gamma, beta, epsilon, mode, after_relu)
    # The ops take parameters of any shape holding C values, (1, C, 1, 1) included, and
    # return their gradients in that shape: no reshape needed here.
    y, _ = fused_op(name, "gct_forward")(x, alpha, gamma, beta, float(epsilon), mode, after_relu)
    return y


def squeeze_excite(x: torch.Tensor, w1: torch.Tensor, b1: Optional[torch.Tensor], w2: torch.Tensor,
                   b2: Optional[torch.Tensor], activation: str = "relu", gate: str = "sigmoid",
                   backend: str = "auto") -> torch.Tensor:
    """Squeeze-and-Excitation of x, shape (N, C, *spatial).

    y = x * gate(w2 @ act(w1 @ mean_spatial(x) + b1) + b2), with w1 (R, C), b1 (R,) or None,
    w2 (C, R), b2 (C,) or None, activation "relu" or "silu", gate "sigmoid" or
    "hardsigmoid". Weights may be float32 while x is float16/bfloat16; the pooled means and
    the MLP run in float32 (float64 for a float64 x). See gct() for `backend` and for
    derivatives beyond the first.
    """
    if _DIRECT is not None and not _is_dynamo_compiling():
        y = _DIRECT.squeeze_excite(x, w1, b1, w2, b2, activation, gate, backend)
        if y is not None:
            return y
    _validate.check_se(x, w1, b1, w2, b2, activation, gate)
    name = _backend_for(backend, x.device)
    if name == "reference":
        return reference.squeeze_excite(x, w1, b1, w2, b2, activation, gate)
    y, _ = fused_op(name, "se_forward")(x, w1, b1, w2, b2, activation, gate)
    return y


def se_residual(x: torch.Tensor, identity: torch.Tensor, w1: torch.Tensor, b1: Optional[torch.Tensor],
                w2: torch.Tensor, b2: Optional[torch.Tensor], activation: str = "relu",
                gate: str = "sigmoid", activation_after: str = "relu",
                backend: str = "auto") -> torch.Tensor:
    """The tail of an SE-ResNet block in one pass: activation_after(squeeze_excite(x) + identity).

    identity must have x's shape and dtype; activation_after is "relu" (SE-ResNet) or
    "none". Eager PyTorch makes three full passes (scale, add, relu); this makes one.
    Other arguments (and derivatives beyond the first) as in squeeze_excite().
    """
    if _DIRECT is not None and not _is_dynamo_compiling():
        y = _DIRECT.se_residual(x, identity, w1, b1, w2, b2, activation, gate, activation_after, backend)
        if y is not None:
            return y
    _validate.check_se(x, w1, b1, w2, b2, activation, gate, fn="se_residual")
    _validate.check_same_map(x, identity, "identity", "se_residual")
    _validate.check_choice(activation_after, _validate.ACTIVATIONS_AFTER, "activation_after", "se_residual")
    name = _backend_for(backend, x.device)
    if name == "reference":
        return reference.se_residual(x, identity, w1, b1, w2, b2, activation, gate, activation_after)
    y, _ = fused_op(name, "se_residual_forward")(x, identity, w1, b1, w2, b2, activation, gate,
                                             activation_after)
    return y
