"""Loads the compiled extension gct_fused._C (which defines the op schemas and the CPU
and CUDA kernels, and their autograd) and registers fake implementations for its ops.

If the extension is missing (not built), C_IMPORT_ERROR says why and the "cpu"/"cuda"
backends report themselves unavailable; the reference (and Triton) backends still work.
"""

from __future__ import annotations

from typing import Optional

import torch  # noqa: F401  (loads libtorch/libc10, which gct_fused._C links against)

C_IMPORT_ERROR: Optional[str] = None

try:
    from . import _C  # noqa: F401  (importing runs the TORCH_LIBRARY registrations)
except ImportError as exc:  # pragma: no cover - exercised only without a build
    C_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
else:
    from ._registration import register_family

    register_family("", autograd=False)  # autograd: csrc/autograd.cpp
