"""nn.Module front-ends of the fused ops."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from . import _validate, functional
from ._backends import BACKENDS
from .functional import gct, squeeze_excite

# What the modules' forwards pass to a direct entry for a parameter that is not in
# `_parameters` (parametrized, or replaced by a plain attribute): not a tensor and not
# None, so the entry hands the call back and the full path reads the attribute.
_ABSENT = object()


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")


def make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None, round_limit: float = 0.9) -> int:
    """timm's channel rounding: the nearest multiple of `divisor` (at least `min_value`,
    default `divisor`), bumped up once if that loses more than 1 - round_limit of v."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


class _EntryModule(nn.Module):
    """An nn.Module whose call first tries a C++ module entry: `_entry` names a function of
    gct_fused._C taking (module, x) that runs module(x) where nn.Module.__call__ would run
    nothing but forward, and answers None otherwise (see _module_entry). Calls with other
    arguments, calls it declines and calls while Dynamo traces take nn.Module.__call__."""

    _entry: str

    def __call__(self, *args, **kwargs):
        if len(args) == 1 and not kwargs and functional._DIRECT is not None and not functional._is_dynamo_compiling():
            y = getattr(functional._DIRECT, self._entry)(self, args[0])
            if y is not None:
                return y
        return nn.Module.__call__(self, *args, **kwargs)


class GCT(_EntryModule):
    """Gated Channel Transformation, a drop-in for the official module (z-x-yang/GCT).

    Parameters alpha, gamma, beta have shape (1, C, 1, 1) and start at 1, 0, 0 (so the
    module starts as an exact identity) — the official names, shapes and init, so its
    checkpoints load unchanged, and `beta` keeps the name training scripts use to exclude
    it from weight decay. Accepts (N, C, *spatial) input; see gct_fused.gct for the math.
    """

    _entry = "gct_module"

    def __init__(self, num_channels: int, epsilon: float = 1e-5, mode: str = "l2",
                 after_relu: bool = False, backend: str = "auto"):
        super().__init__()
        if not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(f"GCT: num_channels must be a positive int, got {num_channels!r}")
        _validate.check_choice(mode, _validate.GCT_MODES, "mode", "GCT")
        _check_backend(backend)
        self.alpha = nn.Parameter(torch.ones(1, num_channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.epsilon = epsilon
        self.mode = mode
        self.after_relu = after_relu
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The common call goes straight to the C++ entry (functional._DIRECT, looked up here
        # at call time), its parameters read from _parameters rather than through
        # nn.Module.__getattr__: with the caches cold that is ~25 us less per call than
        # functional.gct with self.alpha etc. (8x2048x1x1: 202 -> 175 us; the whole call
        # on 8x2048x7x7 takes ~400 us).
        # Any call the entry hands back (None) takes the full path below.
        direct = functional._DIRECT
        if direct is not None and not functional._is_dynamo_compiling():
            p = self._parameters
            y = direct.gct(x, p.get("alpha", _ABSENT), p.get("gamma", _ABSENT), p.get("beta", _ABSENT),
                           self.epsilon, self.mode, self.after_relu, self.backend)
            if y is not None:
                return y
        return gct(x, self.alpha, self.gamma, self.beta, self.epsilon, self.mode, self.after_relu,
                   self.backend)

    def extra_repr(self) -> str:
        return (f"{self.alpha.shape[1]}, epsilon={self.epsilon}, mode={self.mode!r}, "
                f"after_relu={self.after_relu}, backend={self.backend!r}")


class SqueezeExcite(_EntryModule):
    """Squeeze-and-Excitation: y = x * gate(fc2(act(fc1(mean_spatial(x))))).

    fc1 = Linear(channels, rd_channels) and fc2 = Linear(rd_channels, channels), with bias
    unless bias=False (the keys of timm's SqueezeExciteCl: fc1.weight (R, C), fc1.bias,
    fc2.weight (C, R), fc2.bias). rd_channels defaults to timm's rule,
    make_divisible(channels * rd_ratio, 8, round_limit=0). activation: "relu" | "silu";
    gate: "sigmoid" | "hardsigmoid". Accepts (N, C, *spatial) input in any memory format.
    """

    _entry = "se_module"

    def __init__(self, channels: int, rd_channels: Optional[int] = None, rd_ratio: float = 1 / 16,
                 activation: str = "relu", gate: str = "sigmoid", bias: bool = True,
                 backend: str = "auto"):
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"SqueezeExcite: channels must be a positive int, got {channels!r}")
        if rd_channels is None:
            rd_channels = make_divisible(channels * rd_ratio, 8, round_limit=0.0)
        if not isinstance(rd_channels, int) or rd_channels < 1:
            raise ValueError(f"SqueezeExcite: rd_channels must be a positive int, got {rd_channels!r}")
        _validate.check_choice(activation, _validate.ACTIVATIONS, "activation", "SqueezeExcite")
        _validate.check_choice(gate, _validate.GATES, "gate", "SqueezeExcite")
        _check_backend(backend)
        self.fc1 = nn.Linear(channels, rd_channels, bias=bias)
        self.fc2 = nn.Linear(rd_channels, channels, bias=bias)
        self.activation = activation
        self.gate = gate
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As GCT.forward: straight to the C++ entry where it takes the call. A bias that is
        # not in _parameters passes as _ABSENT, never as None (which would mean no bias).
        direct = functional._DIRECT
        if direct is not None and not functional._is_dynamo_compiling():
            p1, p2 = self.fc1._parameters, self.fc2._parameters
            y = direct.squeeze_excite(x, p1.get("weight", _ABSENT), p1.get("bias", _ABSENT),
                                      p2.get("weight", _ABSENT), p2.get("bias", _ABSENT),
                                      self.activation, self.gate, self.backend)
            if y is not None:
                return y
        return squeeze_excite(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                              self.activation, self.gate, self.backend)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, gate={self.gate!r}, backend={self.backend!r}"


def _module_entry() -> None:
    """Registers GCT and SqueezeExcite with the C++ module entries (gct_fused._C.gct_module,
    se_module), which their __call__ tries first.

    With the caches cold, as in a network whose other layers evicted them, a module call's
    Python frames (nn.Module.__call__, _wrapped_call_impl, _call_impl, forward and its
    attribute lookups) cost 25-65 us before the op starts. Zen 4 VM, caches evicted, both
    ways interleaved in one process (float32 NCHW, no_grad), nn.Module.__call__ -> entry:
    GCT 8x2048x7x7 364 -> 338 us, 8x16x1x1 107 -> 84 us, 8x256x56x56 1197 -> 1155 us; SE
    8x2048x7x7 484 -> 444 us, 8x16x1x1 114 -> 71 us, 8x256x56x56 1341 -> 1292 us.

    The entries read the module's parameters and options from its __dict__ in C++ and run
    the op through the same direct entry as forward. They take the call only where
    nn.Module.__call__ would run nothing but forward: an instance of the class itself (not a subclass or a parametrized module), no
    module or global hooks, no Module.compile(), forward not replaced; otherwise, and for
    every call the direct entry declines, nn.Module.__call__ runs as usual. While Dynamo
    traces, __call__ goes to nn.Module.__call__ directly."""
    if functional._DIRECT is not None:
        functional._DIRECT.register_gct_module(GCT)
        functional._DIRECT.register_se_module(SqueezeExcite, ("fc1",), ("fc2",), "activation", "gate", False, False)


_module_entry()
