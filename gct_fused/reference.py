"""The published formulas in eager PyTorch: the ground truth of every test and the
"reference" backend.

* GCT: Yang et al., "Gated Channel Transformation for Visual Recognition" (CVPR 2020),
  written as the official code (z-x-yang/GCT, PyTorch/GCT.py) computes it, including where
  each epsilon sits, generalised from NCHW to (N, C, *spatial).
* SE: Hu et al., "Squeeze-and-Excitation Networks": mean over the spatial dims, a two-layer
  MLP, a gate, and a channel-wise product.

These compute in the input's dtype, exactly as the published code does (so the GCT
formula overflows in float16 once sum(x^2) > 65504; the fused kernels accumulate in
float32). The result always has x's dtype.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import _validate


def _spatial_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over the spatial dims (2, 3, ...) keeping them; identity for (N, C) input.

    (torch.sum over an empty tuple of dims would reduce over every dim.)"""
    return t.sum(dim=tuple(range(2, t.dim())), keepdim=True) if t.dim() > 2 else t


def _per_channel(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return p.reshape((1, x.shape[1]) + (1,) * (x.dim() - 2))


def gct(x: torch.Tensor, alpha: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
        epsilon: float = 1e-5, mode: str = "l2", after_relu: bool = False) -> torch.Tensor:
    """GCT as published: y = x * (1 + tanh(gamma * embedding / norm + beta))."""
    _validate.check_gct(x, alpha, gamma, beta, epsilon, mode, after_relu)
    alpha, gamma, beta = (_per_channel(p, x) for p in (alpha, gamma, beta))
    if mode == "l2":
        embedding = (_spatial_sum(x.pow(2)) + epsilon).pow(0.5) * alpha
        norm = gamma / (embedding.pow(2).mean(dim=1, keepdim=True) + epsilon).pow(0.5)
    else:
        _x = x if after_relu else torch.abs(x)
        embedding = _spatial_sum(_x) * alpha
        norm = gamma / (torch.abs(embedding).mean(dim=1, keepdim=True) + epsilon)
    gate = 1.0 + torch.tanh(embedding * norm + beta)
    return (x * gate).to(x.dtype)


def _activation(name: str, v: torch.Tensor) -> torch.Tensor:
    return F.relu(v) if name == "relu" else F.silu(v)


def _gate(name: str, v: torch.Tensor) -> torch.Tensor:
    # hardsigmoid as relu6(v + 3) / 6 (timm's formula): the same values as F.hardsigmoid, but
    # its float64 gradient is exact, whereas torch's hardsigmoid_backward multiplies by a
    # float32 1/6 (relative error 1e-8) — too coarse for a float64 ground truth.
    return torch.sigmoid(v) if name == "sigmoid" else F.relu6(v + 3.0) / 6.0


def se_scale(x: torch.Tensor, w1: torch.Tensor, b1: Optional[torch.Tensor], w2: torch.Tensor,
             b2: Optional[torch.Tensor], activation: str = "relu", gate: str = "sigmoid") -> torch.Tensor:
    """The SE excitation s (N, C, 1, ...): gate(W2 act(W1 mean(x) + b1) + b2), computed in
    the weights' dtype (float32 weights with a half input: mixed precision)."""
    pooled = x.mean(dim=tuple(range(2, x.dim()))) if x.dim() > 2 else x
    hidden = _activation(activation, F.linear(pooled.to(w1.dtype), w1, b1))
    scale = _gate(gate, F.linear(hidden, w2, b2))
    return scale.to(x.dtype).reshape(x.shape[:2] + (1,) * (x.dim() - 2))


def squeeze_excite(x: torch.Tensor, w1: torch.Tensor, b1: Optional[torch.Tensor], w2: torch.Tensor,
                   b2: Optional[torch.Tensor], activation: str = "relu",
                   gate: str = "sigmoid") -> torch.Tensor:
    """SE as published: y = x * gate(W2 act(W1 mean_hw(x) + b1) + b2)."""
    _validate.check_se(x, w1, b1, w2, b2, activation, gate)
    return x * se_scale(x, w1, b1, w2, b2, activation, gate)


def se_residual(x: torch.Tensor, identity: torch.Tensor, w1: torch.Tensor, b1: Optional[torch.Tensor],
                w2: torch.Tensor, b2: Optional[torch.Tensor], activation: str = "relu",
                gate: str = "sigmoid", activation_after: str = "relu") -> torch.Tensor:
    """The tail of an SE-ResNet block: act_after(se(x) + identity)."""
    _validate.check_se(x, w1, b1, w2, b2, activation, gate, fn="se_residual")
    _validate.check_same_map(x, identity, "identity", "se_residual")
    _validate.check_choice(activation_after, _validate.ACTIVATIONS_AFTER, "activation_after", "se_residual")
    out = x * se_scale(x, w1, b1, w2, b2, activation, gate) + identity
    return F.relu(out) if activation_after == "relu" else out


class GCT(nn.Module):
    """The official GCT module (z-x-yang/GCT), same parameters, names, shapes and init,
    for inputs of shape (N, C, *spatial). The eager baseline of the benchmark."""

    def __init__(self, num_channels: int, epsilon: float = 1e-5, mode: str = "l2", after_relu: bool = False):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, num_channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, num_channels, 1, 1))
        self.epsilon = epsilon
        self.mode = mode
        self.after_relu = after_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gct(x, self.alpha, self.gamma, self.beta, self.epsilon, self.mode, self.after_relu)


class SqueezeExcite(nn.Module):
    """SE in eager PyTorch as senet.pytorch / torchvision write it (pool, Linear, act,
    Linear, gate, multiply). The eager baseline of the benchmark."""

    def __init__(self, channels: int, rd_channels: int, activation: str = "relu", gate: str = "sigmoid",
                 bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(channels, rd_channels, bias=bias)
        self.fc2 = nn.Linear(rd_channels, channels, bias=bias)
        self.activation = activation
        self.gate = gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return squeeze_excite(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                              self.activation, self.gate)
