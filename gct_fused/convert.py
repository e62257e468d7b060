"""convert(model): swap the SE / GCT modules of an existing model for the fused drop-ins.

    model = gct_fused.convert(model)                       # in place; returns the model
    model, report = gct_fused.convert(model, report=True)  # and what it did, module by module

Modules are found by their exact type, named "module.qualname" (see RULES), so neither
timm nor torchvision is imported here: a model can only hold their modules if they are
already imported. A subclass of a known type is left alone (its forward may differ).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple, Union

from torch import nn

from . import dropin
from ._validate import GCT_MODES
from .dropin import UnfusableError, type_name
from .modules import GCT, _check_backend

__all__ = ["convert", "ConversionRecord", "RULES"]


@dataclass(frozen=True)
class ConversionRecord:
    """What convert() did with one module: `name` (its path in the model, "" for the model
    itself), `original` (its type, "module.qualname"), `action` ("replaced" or "left alone"),
    `replacement` (the fused type, or None) and `reason` (why, in words)."""

    name: str
    original: str
    action: str
    replacement: Optional[str]
    reason: str

    def __str__(self) -> str:
        target = f" -> {self.replacement}" if self.replacement else ""
        return f"{self.name or '<model>'}: {self.action} {self.original}{target} ({self.reason})"


def _gct_from_official(module: nn.Module, backend: str) -> nn.Module:
    """The official GCT (z-x-yang/GCT, imported as `from GCT import GCT`) -> gct_fused.GCT."""
    for name in ("alpha", "gamma", "beta"):
        p = getattr(module, name, None)
        if not isinstance(p, nn.Parameter) or p.dim() != 4 or p.shape[0] != 1 or p.shape[2:] != (1, 1):
            raise UnfusableError(f"GCT: {name} is not a (1, C, 1, 1) Parameter")
    if getattr(module, "mode", None) not in GCT_MODES:
        raise UnfusableError(f"GCT: mode {getattr(module, 'mode', None)!r} is not one of {list(GCT_MODES)}")
    if not isinstance(getattr(module, "after_relu", None), bool) or \
            not isinstance(getattr(module, "epsilon", None), (int, float)):
        raise UnfusableError("GCT: after_relu (bool) or epsilon (number) is missing")
    new = dropin._adopt(GCT, module)
    new.backend = backend
    return new


# Exact type ("module.qualname") -> (what it is, how to build the fused module).
# An SE-ResNet block's rule fuses its tail only after its SE module has been fused.
RULES: Dict[str, Tuple[str, Callable[[nn.Module, str], nn.Module]]] = {
    "torchvision.ops.misc.SqueezeExcitation": ("SE", dropin.SqueezeExcitation.from_module),
    "timm.layers.squeeze_excite.SEModule": ("SE", dropin.SEModule.from_module),
    "timm.layers.squeeze_excite.EffectiveSEModule": ("SE", dropin.EffectiveSEModule.from_module),
    "timm.models._efficientnet_blocks.SqueezeExcite": ("SE", dropin.EfficientNetSqueezeExcite.from_module),
    "timm.models.senet.SEModule": ("SE", dropin.LegacySEModule.from_module),
    "senet.se_module.SELayer": ("SE", dropin.SELayer.from_module),
    "GCT.GCT": ("GCT", _gct_from_official),
    "timm.models.resnet.BasicBlock": ("block", dropin.FusedResNetBasicBlock.from_module),
    "timm.models.resnet.Bottleneck": ("block", dropin.FusedResNetBottleneck.from_module),
    "timm.models.senet.SEBottleneck": ("block", dropin.FusedLegacySEBottleneck.from_module),
    "timm.models.senet.SEResNetBottleneck": ("block", dropin.FusedLegacySEBottleneck.from_module),
    "timm.models.senet.SEResNeXtBottleneck": ("block", dropin.FusedLegacySEBottleneck.from_module),
    "timm.models.senet.SEResNetBlock": ("block", dropin.FusedLegacySEResNetBlock.from_module),
}
_BLOCK_SE_ATTR = {"timm.models.resnet": "se", "timm.models.senet": "se_module"}


def _known_base(module: nn.Module) -> Optional[str]:
    """The known SE/GCT type that module's type subclasses (not is), if any."""
    for cls in type(module).__mro__[1:]:
        name = f"{cls.__module__}.{cls.__qualname__}"
        if name in RULES and RULES[name][0] != "block":
            return name
    return None


def _describe(kind: str, replacement: nn.Module) -> str:
    if kind == "block":
        return "SE + residual add + ReLU in one fused se_residual call"
    if isinstance(replacement, dropin.EffectiveSEModule):
        return "fused squeeze_excite (ESE folded into the op's MLP exactly)"
    return f"fused {'gct' if kind == 'GCT' else 'squeeze_excite'}"


def convert(model: nn.Module, backend: str = "auto", inplace: bool = True,
            report: bool = False) -> Union[nn.Module, Tuple[nn.Module, List[ConversionRecord]]]:
    """Swaps the SE and GCT modules of `model` for fused drop-ins computing the same function.

    Replaced, by exact type: torchvision.ops.SqueezeExcitation; timm's SEModule,
    EffectiveSEModule (hard-sigmoid gate), EfficientNet-family SqueezeExcite and legacy
    senet SEModule; senet.pytorch's SELayer (senet.se_module) and the official GCT
    (module GCT). In timm SE-ResNet blocks (timm.models.resnet BasicBlock/Bottleneck with an
    SE module, timm.models.senet SE-ResNet/ResNeXt blocks) the tail relu(se(x) + shortcut)
    becomes one gct_fused.se_residual call, when the block's forward is the known one, its
    final activation is ReLU and there is no drop_path. A module the ops cannot compute
    exactly (another activation such as GELU, add_maxpool, a norm layer inside SE, a subclass
    of a known type) is left alone, and the report says why.

    The fused modules take over the originals' own submodules and Parameter objects (no
    copy): state_dict keys, device, dtype, train/eval mode and hooks stay as they were, and an
    optimizer built on the model's parameters keeps working. With inplace=False the model is
    deep-copied first and the copy converted. Always use the returned model (a model that is
    itself an SE module is returned as a new object).

    backend: the backend of every fused module ("auto" | "cpu" | "triton" | "cuda" |
    "reference"). report: also return a list of ConversionRecord, one per module that
    convert() replaced or deliberately left alone.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: model must be a torch.nn.Module, got {type(model).__name__}")
    _check_backend(backend)
    if not isinstance(inplace, bool):
        raise TypeError(f"convert: inplace must be a bool, got {inplace!r}")
    if not inplace:
        model = copy.deepcopy(model)
    records: List[ConversionRecord] = []
    model = _convert_module(model, "", backend, records)
    return (model, records) if report else model


def _convert_module(module: nn.Module, name: str, backend: str, records: List[ConversionRecord]) -> nn.Module:
    """module, or its fused replacement, with its children converted."""
    key = type_name(module)
    rule = RULES.get(key)
    if rule is not None and rule[0] == "block":
        se_attr = _BLOCK_SE_ATTR[type(module).__module__]
        if getattr(module, se_attr, None) is None:
            rule = None  # a plain (non-SE) block: nothing of ours inside it but its children
    if rule is None:
        base = _known_base(module)
        if base is not None:
            records.append(ConversionRecord(name, key, "left alone", None,
                                            f"subclass of {base}: its forward may differ"))
        for child_name, child in list(module._modules.items()):
            if child is not None:
                module._modules[child_name] = _convert_module(
                    child, f"{name}.{child_name}" if name else child_name, backend, records)
        return module

    kind, build = rule
    if kind == "block":
        # The SE module first (recorded on its own), then the block's tail if that is safe.
        prefix = f"{name}." if name else ""
        for child_name, child in list(module._modules.items()):
            if child is not None:
                module._modules[child_name] = _convert_module(child, prefix + child_name, backend, records)
    try:
        replacement = build(module, backend)
    except UnfusableError as why:
        records.append(ConversionRecord(name, key, "left alone", None, str(why)))
        if kind != "block":  # (a block's children are converted above)
            for child_name, child in list(module._modules.items()):
                if child is not None:
                    module._modules[child_name] = _convert_module(
                        child, f"{name}.{child_name}" if name else child_name, backend, records)
        return module
    records.append(ConversionRecord(name, key, "replaced", type_name(replacement), _describe(kind, replacement)))
    return replacement
