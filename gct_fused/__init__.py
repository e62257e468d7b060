"""gct-fused: fused CPU, CUDA and Triton kernels for GCT (Gated Channel Transformation)
and SE (Squeeze-and-Excitation), as drop-in PyTorch modules and autograd ops.

    import gct_fused
    y = gct_fused.gct(x, alpha, gamma, beta)                 # functional
    m = gct_fused.GCT(256)                                    # module, official checkpoint keys
    gct_fused.available_backends(x.device)                    # which backends can run here
    model = gct_fused.convert(model)                          # swap a model's SE/GCT modules

Backends: "auto" | "cuda" | "triton" | "cpu" | "reference"; gct_fused.reference holds the
published eager formulas that every backend is tested against.
"""

from . import _ops  # noqa: F401  (loads gct_fused._C and registers autograd/fake impls)
from . import reference
from ._backends import BACKENDS, ENV_VAR, available_backends
from .functional import gct, se_residual, squeeze_excite
from .modules import GCT, SqueezeExcite, make_divisible
from . import dropin
from .convert import ConversionRecord, convert

__version__ = "0.1.0"

__all__ = [
    "BACKENDS", "ENV_VAR", "GCT", "SqueezeExcite", "available_backends", "gct", "make_divisible",
    "reference", "se_residual", "squeeze_excite", "dropin", "convert", "ConversionRecord",
]
