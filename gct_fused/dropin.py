"""Drop-in replacements for the SE / GCT modules people already use, computed by the fused ops.

Each class mirrors one existing module's constructor, submodule names and state_dict
keys/shapes exactly, so its checkpoints load unchanged and its outputs match:

===============================  =====================================================
class here                       replaces
===============================  =====================================================
GCT                              the official GCT (z-x-yang/GCT, ``PyTorch/GCT.py``)
SELayer                          senet.pytorch ``senet.se_module.SELayer``
SqueezeExcitation                ``torchvision.ops.SqueezeExcitation``
SEModule                         timm ``timm.layers.SEModule`` (alias ``SqueezeExcite``)
EffectiveSEModule                timm ``timm.layers.EffectiveSEModule``
EfficientNetSqueezeExcite        timm ``timm.models._efficientnet_blocks.SqueezeExcite``
LegacySEModule                   timm ``timm.models.senet.SEModule``
FusedResNetBasicBlock,           timm ``timm.models.resnet.BasicBlock`` / ``Bottleneck`` with
FusedResNetBottleneck            an SE module: the block's tail relu(se(x) + shortcut) is
                                 one ``se_residual`` call
FusedLegacySEBottleneck,         timm ``timm.models.senet`` blocks (SE-ResNet/ResNeXt
FusedLegacySEResNetBlock         bottlenecks, SE-ResNet basic block), likewise
===============================  =====================================================

Every SE class takes ``backend`` ("auto" | "cpu" | "triton" | "cuda" | "reference", default
"auto") and keeps the original's submodules (the 1x1 convs or Linears, the activation and
gate modules, pooling modules) so that ``state_dict``, ``repr`` and ``named_modules`` look the
same. The activation and gate *modules* are read once, at construction, and mapped onto the
op's strings ("relu" | "silu", "sigmoid" | "hardsigmoid"); the forward never calls them.
A configuration the op cannot compute (another activation such as GELU, ``add_maxpool``,
a norm layer inside SE, a non-1x1 conv) raises :class:`UnfusableError` (a ValueError)
naming the argument; :func:`gct_fused.convert` leaves such modules alone and reports why.

``from_module(module, backend)`` builds a fused module around an existing module's own
submodules and Parameter objects (nothing is copied), which is what ``convert()`` uses.
"""

from __future__ import annotations

import inspect
import operator
from typing import Callable, List, Optional, Tuple, Union

import torch
from torch import nn

from . import functional
from .functional import se_residual, squeeze_excite
from .modules import _ABSENT, GCT, _check_backend, _EntryModule, make_divisible

__all__ = [
    "GCT", "SELayer", "SqueezeExcitation", "SEModule", "EffectiveSEModule", "EfficientNetSqueezeExcite",
    "LegacySEModule", "FusedResNetBasicBlock", "FusedResNetBottleneck", "FusedLegacySEBottleneck",
    "FusedLegacySEResNetBlock", "UnfusableError", "activation_name", "gate_name", "type_name",
]


class UnfusableError(ValueError):
    """A module (or constructor argument) describes something the fused op does not compute."""


# ---- activation / gate modules -> the op's strings ------------------------------------------
# Keyed by "module.qualname" of the module's exact type, so timm's classes are recognised
# without importing timm. Only stateless modules whose numerics equal the op's formula.
_ACTIVATIONS = {
    "torch.nn.modules.activation.ReLU": "relu",
    "torch.nn.modules.activation.SiLU": "silu",
    "timm.layers.activations.Swish": "silu",
    "timm.layers.activations_me.SwishMe": "silu",
}
_GATES = {
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "timm.layers.activations.Sigmoid": "sigmoid",
    "torch.nn.modules.activation.Hardsigmoid": "hardsigmoid",
    "timm.layers.activations.HardSigmoid": "hardsigmoid",
    "timm.layers.activations_me.HardSigmoidMe": "hardsigmoid",
}
# Layer names accepted where the original accepts a string (timm's create_act_layer names).
_LAYER_BY_NAME = {
    "relu": nn.ReLU, "silu": nn.SiLU, "swish": nn.SiLU, "sigmoid": nn.Sigmoid,
    "hard_sigmoid": nn.Hardsigmoid, "hardsigmoid": nn.Hardsigmoid,
}


def type_name(obj) -> str:
    """"module.qualname" of obj's exact type (what convert() and the tables here match on)."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def activation_name(module: Optional[nn.Module]) -> Optional[str]:
    """The op's activation string ("relu" | "silu") computing the same as `module`, else None."""
    return _ACTIVATIONS.get(type_name(module))


def gate_name(module: Optional[nn.Module]) -> Optional[str]:
    """The op's gate string ("sigmoid" | "hardsigmoid") computing the same as `module`, else None."""
    return _GATES.get(type_name(module))


def _make_layer(spec, argument: str, owner: str, inplace: Optional[bool]) -> nn.Module:
    """An activation/gate module from a timm/torchvision-style spec: a name, a class (called
    as timm's create_act_layer does: with inplace= when it takes it) or a module."""
    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, str):
        layer = _LAYER_BY_NAME.get(spec.lower())
        if layer is None:
            raise UnfusableError(f"{owner}: {argument}={spec!r} is not fused; fused names are "
                                 f"{sorted(_LAYER_BY_NAME)}")
        spec = layer
    if not callable(spec):
        raise TypeError(f"{owner}: {argument} must be a layer name, class or module, got {spec!r}")
    if inplace is None:
        return spec()
    try:
        return spec(inplace=inplace)
    except TypeError:
        return spec()


def _require_activation(module, argument: str, owner: str) -> str:
    name = activation_name(module)
    if name is None:
        raise UnfusableError(f"{owner}: {argument} {type(module).__name__} is not a fused activation "
                             "(fused: ReLU, SiLU/Swish)")
    return name


def _require_gate(module, argument: str, owner: str) -> str:
    name = gate_name(module)
    if name is None:
        raise UnfusableError(f"{owner}: {argument} {type(module).__name__} is not a fused gate "
                             "(fused: Sigmoid, Hardsigmoid)")
    return name


def _require_pointwise(layer, argument: str, owner: str) -> None:
    """layer must be a Linear or a 1x1, ungrouped, unpadded Conv2d: a matrix on the pooled vector."""
    if type(layer) is nn.Linear:
        return
    if type(layer) is nn.Conv2d:
        # ("same"/"valid" padding is none at all for a 1x1 kernel; stride and dilation do
        # nothing on the 1x1 pooled map.)
        padding = layer.padding
        if layer.kernel_size == (1, 1) and layer.groups == 1 and (
                isinstance(padding, str) or all(p == 0 for p in padding)):
            return
        raise UnfusableError(f"{owner}: {argument} must be a 1x1 Conv2d without groups or padding, got "
                             f"kernel_size={layer.kernel_size}, groups={layer.groups}, padding={layer.padding}")
    raise UnfusableError(f"{owner}: {argument} must be nn.Linear or a 1x1 nn.Conv2d, got {type(layer).__name__}")


def _matrix(layer: nn.Module) -> torch.Tensor:
    """The (out, in) matrix of a Linear or 1x1 Conv2d: a view of its weight (gradients flow to it)."""
    weight = layer.weight
    return weight if weight.dim() == 2 else weight.flatten(1)


def _parameters_at(module: nn.Module, path: str) -> dict:
    """The _parameters of the submodule at a dotted path ("fc.0"), read through _modules
    ({} if there is none)."""
    for name in path.split("."):
        module = module._modules.get(name)
        if module is None:
            return {}
    return module._parameters


def _adopt(cls, module: nn.Module):
    """An instance of cls that takes over module's state (submodules, Parameters, buffers,
    hooks, attributes, training flag) without copying a tensor: the same Parameter objects,
    so an optimizer built on the original keeps working."""
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    for key, value in module.__dict__.items():
        new.__dict__[key] = value.copy() if isinstance(value, (dict, set)) else value
    return new


# ---- the shared SE plumbing -------------------------------------------------------------------
class _FusedSE(_EntryModule):
    """Base of the SE drop-ins: the submodule paths of each part, the check that they are
    fusable, and the forward over gct_fused.squeeze_excite / se_residual.

    Subclasses set _reduce, _expand (paths of the two Linear/1x1-conv layers), _act, _gate
    (paths of the activation and gate modules) and _arguments (the constructor argument
    names of those parts, for error messages)."""

    _entry = "se_module"  # see _register_module_entries
    _reduce = "fc1"
    _act = "act"
    _expand = "fc2"
    _gate = "gate"
    _arguments = {"act": "act_layer", "gate": "gate_layer"}
    fused_activation: str
    fused_gate: str
    backend: str

    @classmethod
    def check_fusable(cls, module: nn.Module) -> Tuple[str, str]:
        """(activation, gate) strings of the op for `module` (an original or a drop-in);
        raises UnfusableError naming what the op does not compute."""
        owner = cls.__name__
        get = operator.attrgetter
        _require_pointwise(get(cls._reduce)(module), cls._reduce, owner)
        _require_pointwise(get(cls._expand)(module), cls._expand, owner)
        return (_require_activation(get(cls._act)(module), cls._arguments["act"], owner),
                _require_gate(get(cls._gate)(module), cls._arguments["gate"], owner))

    def _init_fused(self, backend: str) -> None:
        _check_backend(backend)
        self.fused_activation, self.fused_gate = self.check_fusable(self)
        self.backend = backend

    @classmethod
    def from_module(cls, module: nn.Module, backend: str = "auto"):
        """A fused module sharing `module`'s submodules and Parameters (convert() uses this);
        raises UnfusableError (before touching anything) if `module` is not fusable."""
        _check_backend(backend)
        cls.check_fusable(module)
        new = _adopt(cls, module)
        new._init_fused(backend)
        return new

    def se_weights(self) -> Tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor, Optional[torch.Tensor]]:
        """(w1 (R, C), b1 (R,) or None, w2 (C, R), b2 (C,) or None): views of the layers' Parameters."""
        reduce = operator.attrgetter(self._reduce)(self)
        expand = operator.attrgetter(self._expand)(self)
        return _matrix(reduce), reduce.bias, _matrix(expand), expand.bias

    # Whether se_weights() are the layers' own weights and biases, so that the forwards may
    # pass them to the C++ entries straight from _parameters (every drop-in but ESE, which
    # folds its one layer into the op's two).
    _weights_are_the_layers = True

    def _layer_parameters(self) -> tuple:
        """se_weights() as the direct C++ entries (`gct_fused._C.squeeze_excite_conv`,
        `se_residual_conv`) take them: the layers' Parameters from their _parameters, a 1x1
        convolution's weight as its (out, in, 1, 1) self (the entry views it as (out, in)).
        With the caches cold, se_weights() (attribute lookups, flatten(1)) cost ~100 us per
        call, as much as the rest of a call on a small map. A parameter not in _parameters
        (parametrized) is _ABSENT, which the entries hand back to the full path."""
        p1, p2 = _parameters_at(self, self._reduce), _parameters_at(self, self._expand)
        return p1.get("weight", _ABSENT), p1.get("bias", _ABSENT), p2.get("weight", _ABSENT), p2.get("bias", _ABSENT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        direct = functional._DIRECT
        if direct is not None and self._weights_are_the_layers and not functional._is_dynamo_compiling():
            y = direct.squeeze_excite_conv(x, *self._layer_parameters(), self.fused_activation, self.fused_gate,
                                           self.backend)
            if y is not None:
                return y
        w1, b1, w2, b2 = self.se_weights()
        return squeeze_excite(x, w1, b1, w2, b2, self.fused_activation, self.fused_gate, self.backend)

    def forward_residual(self, x: torch.Tensor, identity: torch.Tensor,
                         activation_after: str = "relu") -> torch.Tensor:
        """activation_after(self(x) + identity) in one fused pass (gct_fused.se_residual)."""
        direct = functional._DIRECT
        if direct is not None and self._weights_are_the_layers and not functional._is_dynamo_compiling():
            y = direct.se_residual_conv(x, identity, *self._layer_parameters(), self.fused_activation,
                                        self.fused_gate, activation_after, self.backend)
            if y is not None:
                return y
        w1, b1, w2, b2 = self.se_weights()
        return se_residual(x, identity, w1, b1, w2, b2, self.fused_activation, self.fused_gate,
                           activation_after, self.backend)

    def extra_repr(self) -> str:
        return (f"fused: activation={self.fused_activation!r}, gate={self.fused_gate!r}, "
                f"backend={self.backend!r}")


class SELayer(_FusedSE):
    """senet.pytorch's ``SELayer(channel, reduction=16)``, fused.

    Submodules ``avg_pool`` and ``fc = Sequential(Linear(C, C//r), ReLU, Linear(C//r, C),
    Sigmoid)``; keys ``fc.0.weight`` (C//r, C), ``fc.2.weight`` (C, C//r). The Linears have no
    bias unless bias=True; a checkpoint of the first senet.pytorch version (with ``fc.0.bias``
    and ``fc.2.bias``) also loads into a bias-free SELayer: the biases are added on load (so
    build the optimizer after loading such a checkpoint).
    """

    _reduce, _act, _expand, _gate = "fc.0", "fc.1", "fc.2", "fc.3"
    _arguments = {"act": "fc.1", "gate": "fc.3"}

    def __init__(self, channel: int, reduction: int = 16, bias: bool = False, backend: str = "auto"):
        super().__init__()
        if not isinstance(channel, int) or channel < 1:
            raise ValueError(f"SELayer: channel must be a positive int, got {channel!r}")
        if not isinstance(reduction, int) or not 1 <= reduction <= channel:
            raise ValueError(f"SELayer: reduction must be an int in [1, channel={channel}] "
                             f"(the hidden width is channel // reduction), got {reduction!r}")
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channel, channel // reduction, bias=bias),
            nn.ReLU(inplace=True),
            nn.Linear(channel // reduction, channel, bias=bias),
            nn.Sigmoid(),
        )
        self._init_fused(backend)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Checkpoints older than senet.pytorch 9d279ec have Linear biases: add them.
        for index in (0, 2):
            layer = self.fc[index]
            if f"{prefix}fc.{index}.bias" in state_dict and layer.bias is None:
                layer.bias = nn.Parameter(layer.weight.new_empty(layer.out_features))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


class SqueezeExcitation(_FusedSE):
    """torchvision's ``SqueezeExcitation(input_channels, squeeze_channels, activation=nn.ReLU,
    scale_activation=nn.Sigmoid)``, fused.

    Submodules ``avgpool``, ``fc1`` = Conv2d(C, S, 1), ``fc2`` = Conv2d(S, C, 1) (both with
    bias), ``activation``, ``scale_activation``; the same keys and shapes. activation: ReLU or
    SiLU; scale_activation: Sigmoid or Hardsigmoid. Accepts (N, C, H, W) and unbatched
    (C, H, W) input, like the original.
    """

    _act, _gate = "activation", "scale_activation"
    _arguments = {"act": "activation", "gate": "scale_activation"}

    def __init__(self, input_channels: int, squeeze_channels: int,
                 activation: Callable[..., nn.Module] = nn.ReLU,
                 scale_activation: Callable[..., nn.Module] = nn.Sigmoid, backend: str = "auto"):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = _make_layer(activation, "activation", "SqueezeExcitation", None)
        self.scale_activation = _make_layer(scale_activation, "scale_activation", "SqueezeExcitation", None)
        self._init_fused(backend)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() == 3:  # unbatched (C, H, W), as torchvision accepts
            return super().forward(input.unsqueeze(0)).squeeze(0)
        return super().forward(input)


class SEModule(_FusedSE):
    """timm's ``SEModule`` (alias ``SqueezeExcite``, attn name 'se'), fused.

    Same constructor and keys: ``fc1`` = Conv2d(C, rd, 1), ``bn`` (Identity), ``act``,
    ``fc2`` = Conv2d(rd, C, 1), ``gate``; biases unless bias=False; rd_channels defaults to
    make_divisible(channels * rd_ratio, rd_divisor, round_limit=0). act_layer: ReLU or SiLU;
    gate_layer: sigmoid or hard_sigmoid. ``add_maxpool=True`` and ``norm_layer`` are not fused
    (UnfusableError): keep timm's module for those (convert() leaves them alone).
    """

    @classmethod
    def check_fusable(cls, module):
        if getattr(module, "add_maxpool", False):
            raise UnfusableError(f"{cls.__name__}: add_maxpool=True (squeeze = 0.5*mean + 0.5*max) is not fused")
        bn = getattr(module, "bn", None)
        if bn is not None and type(bn) is not nn.Identity:
            raise UnfusableError(f"{cls.__name__}: norm_layer {type(bn).__name__} between fc1 and act is not fused")
        return super().check_fusable(module)

    def __init__(self, channels: int, rd_ratio: float = 1. / 16, rd_channels: Optional[int] = None,
                 rd_divisor: int = 8, add_maxpool: bool = False, bias: bool = True,
                 act_layer: Union[str, Callable[..., nn.Module]] = nn.ReLU,
                 norm_layer: Optional[Callable[..., nn.Module]] = None,
                 gate_layer: Union[str, Callable[..., nn.Module]] = "sigmoid",
                 device=None, dtype=None, backend: str = "auto"):
        super().__init__()
        if add_maxpool:
            raise UnfusableError("SEModule: add_maxpool=True (squeeze = 0.5*mean + 0.5*max) is not fused; "
                                 "use timm.layers.SEModule for it")
        if norm_layer is not None:
            raise UnfusableError("SEModule: norm_layer (a norm between fc1 and act) is not fused; "
                                 "use timm.layers.SEModule for it")
        self.add_maxpool = add_maxpool
        if not rd_channels:
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.)
        self.fc1 = nn.Conv2d(channels, rd_channels, kernel_size=1, bias=bias, device=device, dtype=dtype)
        self.bn = nn.Identity()
        self.act = _make_layer(act_layer, "act_layer", "SEModule", True)
        self.fc2 = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=bias, device=device, dtype=dtype)
        self.gate = _make_layer(gate_layer, "gate_layer", "SEModule", None)
        self._init_fused(backend)


class EfficientNetSqueezeExcite(_FusedSE):
    """timm's EfficientNet/MobileNetV3-family ``SqueezeExcite`` (timm.models._efficientnet_blocks),
    fused.

    Same constructor and keys: ``conv_reduce`` = Conv2d(in_chs, rd, 1), ``act1``,
    ``conv_expand`` = Conv2d(rd, in_chs, 1) (both with bias), ``gate``; rd_channels defaults to
    rd_round_fn(in_chs * rd_ratio) (Python round by default); force_act_layer overrides act_layer.
    """

    _reduce, _act, _expand, _gate = "conv_reduce", "act1", "conv_expand", "gate"

    def __init__(self, in_chs: int, rd_ratio: float = 0.25, rd_channels: Optional[int] = None,
                 act_layer: Union[str, Callable[..., nn.Module]] = nn.ReLU,
                 gate_layer: Union[str, Callable[..., nn.Module]] = nn.Sigmoid,
                 force_act_layer: Optional[Callable[..., nn.Module]] = None,
                 rd_round_fn: Optional[Callable[[float], int]] = None,
                 device=None, dtype=None, backend: str = "auto"):
        super().__init__()
        if rd_channels is None:
            rd_channels = (rd_round_fn or round)(in_chs * rd_ratio)
        act_layer = force_act_layer or act_layer
        self.conv_reduce = nn.Conv2d(in_chs, rd_channels, 1, bias=True, device=device, dtype=dtype)
        self.act1 = _make_layer(act_layer, "act_layer", "EfficientNetSqueezeExcite", True)
        self.conv_expand = nn.Conv2d(rd_channels, in_chs, 1, bias=True, device=device, dtype=dtype)
        self.gate = _make_layer(gate_layer, "gate_layer", "EfficientNetSqueezeExcite", None)
        self._init_fused(backend)


class LegacySEModule(_FusedSE):
    """timm's legacy ``timm.models.senet.SEModule(channels, reduction)`` (Cadene's SENet), fused:
    ``fc1`` = Conv2d(C, C//reduction, 1), ``relu``, ``fc2`` = Conv2d(C//reduction, C, 1),
    ``sigmoid``, biases on."""

    _act, _gate = "relu", "sigmoid"
    _arguments = {"act": "relu", "gate": "sigmoid"}

    def __init__(self, channels: int, reduction: int, device=None, dtype=None, backend: str = "auto"):
        super().__init__()
        if not isinstance(reduction, int) or not 1 <= reduction <= channels:
            raise ValueError(f"LegacySEModule: reduction must be an int in [1, channels={channels}], "
                             f"got {reduction!r}")
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, device=device, dtype=dtype)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, device=device, dtype=dtype)
        self.sigmoid = nn.Sigmoid()
        self._init_fused(backend)


class EffectiveSEModule(_FusedSE):
    """timm's ``EffectiveSEModule`` (ESE, attn name 'ese'), fused: y = x * hard_sigmoid(fc(mean x)).

    Same constructor and keys: ``fc`` = Conv2d(C, C, 1) with bias, ``gate``. ESE has one
    linear layer and no activation, while the op computes gate(W2 act(W1 p + b1) + b2). The
    hard-sigmoid gate makes an exact fold possible: with h = relu(W p + b + 3), W2 = I and
    b2 = -3, gate(W2 h + b2) = relu6(h)/6 = relu6(W p + b + 3)/6, the same function and the same
    (sub)gradients as hard_sigmoid(W p + b) (relu's kink at -3 is hard-sigmoid's own). The
    identity matrix is a non-persistent buffer (not in state_dict). Only the hard-sigmoid gate
    folds this way: gate_layer='sigmoid' and add_maxpool=True raise UnfusableError.
    """

    _reduce, _expand = "fc", "fc"
    _weights_are_the_layers = False  # se_weights() folds fc into the op's two layers

    @classmethod
    def check_fusable(cls, module):
        owner = cls.__name__
        if getattr(module, "add_maxpool", False):
            raise UnfusableError(f"{owner}: add_maxpool=True (squeeze = 0.5*mean + 0.5*max) is not fused")
        _require_pointwise(module.fc, "fc", owner)
        if module.fc.bias is None:
            raise UnfusableError(f"{owner}: fc must have a bias")
        if _require_gate(module.gate, "gate_layer", owner) != "hardsigmoid":
            raise UnfusableError(f"{owner}: gate_layer {type(module.gate).__name__} is not fused for ESE: its one "
                                 "linear layer folds into the op's two-layer MLP only with the hard-sigmoid gate")
        return "relu", "hardsigmoid"

    def __init__(self, channels: int, add_maxpool: bool = False,
                 gate_layer: Union[str, Callable[..., nn.Module]] = "hard_sigmoid",
                 device=None, dtype=None, backend: str = "auto", **_):
        super().__init__()
        self.add_maxpool = add_maxpool
        self.fc = nn.Conv2d(channels, channels, kernel_size=1, padding=0, device=device, dtype=dtype)
        self.gate = _make_layer(gate_layer, "gate_layer", "EffectiveSEModule", None)
        self._init_fused(backend)

    def _init_fused(self, backend: str) -> None:
        super()._init_fused(backend)
        weight = self.fc.weight
        channels = weight.shape[0]
        self.register_buffer("_fold_w2", torch.eye(channels, device=weight.device, dtype=weight.dtype),
                             persistent=False)
        self.register_buffer("_fold_b2", torch.full((channels,), -3.0, device=weight.device, dtype=weight.dtype),
                             persistent=False)

    def se_weights(self):
        w1, bias = _matrix(self.fc), self.fc.bias
        if w1.dtype in (torch.float16, torch.bfloat16):
            # bias + 3 would round to the half type (ulp(3) = 2^-6 in bfloat16): fold in
            # float32, which the op takes with a half-precision x.
            w1, bias = w1.float(), bias.float()
        return w1, bias + 3.0, self._fold_w2.to(w1), self._fold_b2.to(w1)


# ---- SE-ResNet blocks with the fused residual epilogue ----------------------------------------
def _source_lines(function) -> Optional[List[str]]:
    """function's source as stripped lines without blanks or comments (None if unreadable)."""
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return None
    return [line.strip() for line in source.splitlines() if line.strip() and not line.strip().startswith("#")]


class _FusedSEResidualBlock(nn.Module):
    """Base of the blocks whose tail relu(se(x) + shortcut) runs as one se_residual call.

    A block is fused only when its class's forward source is exactly the one the subclass's
    forward was written from (_ORIGINAL_FORWARD), so the order of operations is known."""

    _ORIGINAL_FORWARD: List[str] = []
    _se_attr = "se"
    _act_attr = "act"
    backend: str

    @classmethod
    def check_fusable(cls, block: nn.Module) -> None:
        """Raises UnfusableError unless block's tail can run as one se_residual."""
        owner = cls.__name__
        lines = _source_lines(type(block).forward)
        if lines is None:
            raise UnfusableError(f"{owner}: cannot read {type(block).__qualname__}.forward's source to "
                                 "confirm the order of operations")
        if lines != cls._ORIGINAL_FORWARD:
            raise UnfusableError(f"{owner}: {type(block).__qualname__}.forward differs from the version "
                                 "this fusion was written for")
        if type(getattr(block, cls._act_attr)) is not nn.ReLU:
            raise UnfusableError(f"{owner}: the activation after the residual add ({cls._act_attr}: "
                                 f"{type(getattr(block, cls._act_attr)).__name__}) is not ReLU")
        drop_path = getattr(block, "drop_path", None)
        if drop_path is not None and type(drop_path) is not nn.Identity:
            raise UnfusableError(f"{owner}: drop_path {type(drop_path).__name__} sits between se and the add")
        if not isinstance(getattr(block, cls._se_attr), _FusedSE):
            raise UnfusableError(f"{owner}: its {cls._se_attr} is not a fused SE module")

    @classmethod
    def from_module(cls, block: nn.Module, backend: str = "auto"):
        """A fused block sharing `block`'s submodules and Parameters; block's SE module must
        already be a fused drop-in (convert() swaps it first). Raises UnfusableError if the
        block is not safe to fuse."""
        _check_backend(backend)
        cls.check_fusable(block)
        new = _adopt(cls, block)
        new.backend = backend
        return new

    def _tail(self, x: torch.Tensor, shortcut: torch.Tensor, promote: bool) -> torch.Tensor:
        if shortcut.dtype != x.dtype:
            # `x += shortcut` keeps x's dtype; `se(x) + shortcut` promotes.
            dtype = torch.promote_types(x.dtype, shortcut.dtype) if promote else x.dtype
            x, shortcut = x.to(dtype), shortcut.to(dtype)
        return getattr(self, self._se_attr).forward_residual(x, shortcut, "relu")

    def extra_repr(self) -> str:
        return f"fused tail: relu({self._se_attr}(x) + shortcut), backend={self.backend!r}"


class FusedResNetBasicBlock(_FusedSEResidualBlock):
    """timm.models.resnet.BasicBlock with an SE module, its tail relu(se(x) + shortcut) fused.
    Built by convert() (from_module); same submodules and state_dict keys as the original."""

    _act_attr = "act2"
    _ORIGINAL_FORWARD = [
        'def forward(self, x: torch.Tensor) -> torch.Tensor:', 'shortcut = x', 'x = self.conv1(x)',
        'x = self.bn1(x)', 'x = self.drop_block(x)', 'x = self.act1(x)', 'x = self.aa(x)',
        'x = self.conv2(x)', 'x = self.bn2(x)', 'if self.se is not None:', 'x = self.se(x)',
        'if self.drop_path is not None:', 'x = self.drop_path(x)', 'if self.downsample is not None:',
        'shortcut = self.downsample(shortcut)', 'x += shortcut', 'x = self.act2(x)', 'return x']

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.drop_block(x)
        x = self.act1(x)
        x = self.aa(x)
        x = self.conv2(x)
        x = self.bn2(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self._tail(x, shortcut, promote=False)


class FusedResNetBottleneck(_FusedSEResidualBlock):
    """timm.models.resnet.Bottleneck with an SE module, its tail relu(se(x) + shortcut) fused.
    Built by convert() (from_module); same submodules and state_dict keys as the original."""

    _act_attr = "act3"
    _ORIGINAL_FORWARD = [
        'def forward(self, x: torch.Tensor) -> torch.Tensor:', 'shortcut = x', 'x = self.conv1(x)',
        'x = self.bn1(x)', 'x = self.act1(x)', 'x = self.conv2(x)', 'x = self.bn2(x)',
        'x = self.drop_block(x)', 'x = self.act2(x)', 'x = self.aa(x)', 'x = self.conv3(x)',
        'x = self.bn3(x)', 'if self.se is not None:', 'x = self.se(x)', 'if self.drop_path is not None:',
        'x = self.drop_path(x)', 'if self.downsample is not None:', 'shortcut = self.downsample(shortcut)',
        'x += shortcut', 'x = self.act3(x)', 'return x']

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.act1(x)
        x = self.conv2(x)
        x = self.bn2(x)
        x = self.drop_block(x)
        x = self.act2(x)
        x = self.aa(x)
        x = self.conv3(x)
        x = self.bn3(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self._tail(x, shortcut, promote=False)


class FusedLegacySEBottleneck(_FusedSEResidualBlock):
    """timm.models.senet's SEBottleneck / SEResNetBottleneck / SEResNeXtBottleneck (their
    shared Bottleneck.forward), tail relu(se_module(out) + shortcut) fused. Built by convert()."""

    _se_attr, _act_attr = "se_module", "relu"
    _ORIGINAL_FORWARD = [
        'def forward(self, x):', 'shortcut = x', 'out = self.conv1(x)', 'out = self.bn1(out)',
        'out = self.relu(out)', 'out = self.conv2(out)', 'out = self.bn2(out)', 'out = self.relu(out)',
        'out = self.conv3(out)', 'out = self.bn3(out)', 'if self.downsample is not None:',
        'shortcut = self.downsample(x)', 'out = self.se_module(out) + shortcut', 'out = self.relu(out)',
        'return out']

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv3(out)
        out = self.bn3(out)
        if self.downsample is not None:
            shortcut = self.downsample(x)
        return self._tail(out, shortcut, promote=True)


class FusedLegacySEResNetBlock(_FusedSEResidualBlock):
    """timm.models.senet.SEResNetBlock, tail relu(se_module(out) + shortcut) fused. Built by convert()."""

    _se_attr, _act_attr = "se_module", "relu"
    _ORIGINAL_FORWARD = [
        'def forward(self, x):', 'shortcut = x', 'out = self.conv1(x)', 'out = self.bn1(out)',
        'out = self.relu(out)', 'out = self.conv2(out)', 'out = self.bn2(out)', 'out = self.relu(out)',
        'if self.downsample is not None:', 'shortcut = self.downsample(x)',
        'out = self.se_module(out) + shortcut', 'out = self.relu(out)', 'return out']

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)
        if self.downsample is not None:
            shortcut = self.downsample(x)
        return self._tail(out, shortcut, promote=True)


def _register_module_entries() -> None:
    """Registers the SE drop-ins whose layers' Parameters are the op's weights with the C++
    module entry (gct_fused._C.se_module), which their call tries first: as for
    gct_fused.SqueezeExcite (modules._module_entry), it reads the layers' Parameters and the fused
    options from the module's __dict__ and skips nn.Module.__call__'s Python frames, only where
    that call would run nothing but forward (the class itself, no hooks, no Module.compile(),
    forward not replaced). Cold, interleaved in one process (float32 NCHW, no_grad, Zen 4 VM),
    nn.Module.__call__ -> entry: SEModule 8x672x14x14 502 -> 456 us and 564 -> 531 us,
    8x2048x7x7 584 -> 560 us and 556 -> 514 us; SqueezeExcitation 1x72x28x28 162 -> 120 us and
    184 -> 143 us. Each class's forward must be _FusedSE.forward, except
    SqueezeExcitation's, which only adds the unbatched 3-D case: the entry leaves 3-D input to
    it. EffectiveSEModule folds its weights in Python and is not registered."""
    if functional._DIRECT is None:
        return
    for cls in (SELayer, SqueezeExcitation, SEModule, EfficientNetSqueezeExcite, LegacySEModule):
        unbatched_3d = cls is SqueezeExcitation
        assert cls._weights_are_the_layers and (cls.forward is _FusedSE.forward or unbatched_3d), cls
        functional._DIRECT.register_se_module(cls, tuple(cls._reduce.split(".")), tuple(cls._expand.split(".")),
                                              "fused_activation", "fused_gate", True, unbatched_3d)


_register_module_entries()
