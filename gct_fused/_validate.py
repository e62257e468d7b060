"""Argument checks shared by every backend, raising errors that name the argument.

The compiled ops check the same things (TORCH_CHECK_VALUE / TORCH_CHECK_TYPE), but the
reference and Triton paths need them too, and a Python error is clearer: it is raised
before any kernel runs, whatever the backend.
"""

from __future__ import annotations

from typing import Optional

import torch

GCT_MODES = ("l2", "l1")
ACTIVATIONS = ("relu", "silu")
GATES = ("sigmoid", "hardsigmoid")
ACTIVATIONS_AFTER = ("relu", "none")

_FLOATING = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_HALF = (torch.float16, torch.bfloat16)
# Types the fast paths below accept as they are (modules pass nn.Parameter); anything else,
# tensor subclasses included, takes the full checks.
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def check_choice(value, choices, name: str, fn: str) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{fn}: {name} must be one of {list(choices)}, got {value!r}")


def check_feature_map(x, name: str, fn: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(
            f"{fn}: {name} must have shape (N, C, *spatial) with rank >= 2, got shape {tuple(x.shape)}")
    if x.dtype not in _FLOATING:
        raise TypeError(
            f"{fn}: {name} must be float32, float64, float16 or bfloat16, got {x.dtype}")


def check_same_map(x: torch.Tensor, other, name: str, fn: str) -> None:
    if not isinstance(other, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(other).__name__}")
    if other.shape != x.shape:
        raise ValueError(f"{fn}: {name} must have the shape of x {tuple(x.shape)}, got {tuple(other.shape)}")
    if other.device != x.device:
        raise ValueError(f"{fn}: {name} is on {other.device} but x is on {x.device}")
    if other.dtype != x.dtype:
        raise TypeError(f"{fn}: {name} has dtype {other.dtype} but x has {x.dtype}")


def check_parameter(x: torch.Tensor, p, name: str, fn: str, numel: Optional[int] = None,
                    shape: Optional[tuple] = None) -> None:
    """A parameter must be a floating tensor on x's device whose dtype mixes with x's:
    the same dtype, or float32 parameters with a float16/bfloat16 x (mixed precision)."""
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(p).__name__}")
    if p.device != x.device:
        raise ValueError(f"{fn}: {name} is on {p.device} but x is on {x.device}")
    if p.dtype not in _FLOATING:
        raise TypeError(f"{fn}: {name} must be a floating tensor, got {p.dtype}")
    if not (p.dtype == x.dtype or (p.dtype == torch.float32 and x.dtype in (torch.float16, torch.bfloat16))):
        raise TypeError(
            f"{fn}: {name} has dtype {p.dtype}, which cannot be used with x of dtype {x.dtype}: "
            "use x's dtype, or float32 parameters with a float16/bfloat16 x")
    if numel is not None and p.numel() != numel:
        raise ValueError(
            f"{fn}: {name} must hold {numel} values (one per channel of x), got shape {tuple(p.shape)}")
    if shape is not None and tuple(p.shape) != shape:
        raise ValueError(f"{fn}: {name} must have shape {shape}, got {tuple(p.shape)}")


def check_same_dtype(params: dict, fn: str) -> None:
    present = {k: v for k, v in params.items() if v is not None}
    dtypes = {v.dtype for v in present.values()}
    if len(dtypes) > 1:
        listed = ", ".join(f"{k}: {v.dtype}" for k, v in present.items())
        raise TypeError(f"{fn}: parameters must share one dtype, got {listed}")


def _gct_ok(x, alpha, gamma, beta, epsilon, mode, after_relu) -> bool:
    """The common case in a few cheap tests; check_gct explains any failure."""
    if not (type(x) in _PLAIN_TENSORS and type(alpha) in _PLAIN_TENSORS and type(gamma) in _PLAIN_TENSORS
            and type(beta) in _PLAIN_TENSORS):
        return False
    dtype, pdtype, device = x.dtype, alpha.dtype, x.device
    return (x.dim() >= 2 and dtype in _FLOATING and gamma.dtype == pdtype and beta.dtype == pdtype
            and (pdtype == dtype or (pdtype == torch.float32 and dtype in _HALF))
            and alpha.device == device and gamma.device == device and beta.device == device
            and alpha.numel() == x.shape[1] and gamma.numel() == x.shape[1] and beta.numel() == x.shape[1]
            and mode in GCT_MODES and type(after_relu) is bool and type(epsilon) in (int, float)
            and epsilon >= 0)


def check_gct(x, alpha, gamma, beta, epsilon, mode, after_relu) -> None:
    if _gct_ok(x, alpha, gamma, beta, epsilon, mode, after_relu):
        return
    fn = "gct"
    check_feature_map(x, "x", fn)
    for name, p in (("alpha", alpha), ("gamma", gamma), ("beta", beta)):
        check_parameter(x, p, name, fn, numel=x.shape[1])
    check_same_dtype({"alpha": alpha, "gamma": gamma, "beta": beta}, fn)
    check_choice(mode, GCT_MODES, "mode", fn)
    if not isinstance(epsilon, (int, float)) or not epsilon >= 0:
        raise ValueError(f"{fn}: epsilon must be a non-negative number, got {epsilon!r}")
    if not isinstance(after_relu, bool):
        raise TypeError(f"{fn}: after_relu must be a bool, got {type(after_relu).__name__}")


def _se_ok(x, w1, b1, w2, b2, activation, gate) -> bool:
    """The common case in a few cheap tests; check_se explains any failure."""
    if not (type(x) in _PLAIN_TENSORS and type(w1) in _PLAIN_TENSORS and type(w2) in _PLAIN_TENSORS):
        return False
    dtype, pdtype, device = x.dtype, w1.dtype, x.device
    if not (x.dim() >= 2 and dtype in _FLOATING and w2.dtype == pdtype
            and (pdtype == dtype or (pdtype == torch.float32 and dtype in _HALF))
            and w1.device == device and w2.device == device and w1.dim() == 2 and w2.dim() == 2
            and w1.shape[1] == x.shape[1] and w2.shape[0] == x.shape[1] and w2.shape[1] == w1.shape[0]
            and activation in ACTIVATIONS and gate in GATES):
        return False
    for bias, size in ((b1, w1.shape[0]), (b2, w2.shape[0])):
        if bias is not None and not (type(bias) in _PLAIN_TENSORS and bias.dtype == pdtype
                                     and bias.device == device and bias.dim() == 1 and bias.shape[0] == size):
            return False
    return True


def check_se(x, w1, b1, w2, b2, activation, gate, fn: str = "squeeze_excite") -> None:
    if _se_ok(x, w1, b1, w2, b2, activation, gate):
        return
    check_feature_map(x, "x", fn)
    channels = x.shape[1]
    if not isinstance(w1, torch.Tensor) or w1.dim() != 2 or w1.shape[1] != channels:
        got = tuple(w1.shape) if isinstance(w1, torch.Tensor) else type(w1).__name__
        raise ValueError(f"{fn}: w1 must have shape (R, C) with C = {channels} (the channels of x), got {got}")
    hidden = w1.shape[0]
    check_parameter(x, w1, "w1", fn)
    check_parameter(x, w2, "w2", fn, shape=(channels, hidden))
    if b1 is not None:
        check_parameter(x, b1, "b1", fn, shape=(hidden,))
    if b2 is not None:
        check_parameter(x, b2, "b2", fn, shape=(channels,))
    check_same_dtype({"w1": w1, "b1": b1, "w2": w2, "b2": b2}, fn)
    check_choice(activation, ACTIVATIONS, "activation", fn)
    check_choice(gate, GATES, "gate", fn)
