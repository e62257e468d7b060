"""Which implementation runs a call: "auto" | "cuda" | "triton" | "cpu" | "reference".

* "reference": the published eager formulas (gct_fused.reference); runs anywhere.
* "cpu": the fused C++ kernels of gct_fused._C on CPU tensors.
* "cuda": the fused CUDA C++ kernels of gct_fused._C on CUDA tensors.
* "triton": the Triton kernels on CUDA tensors (on CPU tensors only under the Triton
  interpreter, TRITON_INTERPRET=1, which is how they are tested without a GPU).
* "auto": the fastest *verified* backend for the tensor's device, or the backend named by
  the environment variable GCT_FUSED_BACKEND when it is set.

Asking for a backend that cannot run raises an error that says why: there is never a
silent fallback.
"""

from __future__ import annotations

import importlib.util
import os
from typing import List, Optional, Union

import torch

BACKENDS = ("auto", "cuda", "triton", "cpu", "reference")
ENV_VAR = "GCT_FUSED_BACKEND"

# The CUDA C++ kernels are compiled in CI but have not yet passed benchmarks/gpu_suite.sh
# on real hardware, so "auto" does not pick them on CUDA tensors (Triton is the default
# there). Flip this only with committed GPU-suite results showing them correct and faster.
CUDA_BACKEND_VERIFIED = False

# Names of the six ops of a backend family, as registered under torch.ops.gct_fused.
OP_NAMES = ("gct_forward", "gct_backward", "se_forward", "se_backward",
            "se_residual_forward", "se_residual_backward")


def _c_extension_error() -> Optional[str]:
    from . import _ops
    return _ops.C_IMPORT_ERROR


def _has_cuda_kernels() -> bool:
    return _c_extension_error() is None and torch._C._dispatch_has_kernel_for_dispatch_key(
        "gct_fused::gct_forward", "CUDA")


def _triton_error() -> Optional[str]:
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    from . import triton_ops  # registers the Triton ops on first use
    return triton_ops.IMPORT_ERROR


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def unavailable_reason(backend: str, device: Union[str, torch.device]) -> Optional[str]:
    """None if `backend` can run on `device`, else a sentence saying why not."""
    device = torch.device(device)
    if backend == "reference":
        return None
    if backend == "cpu":
        if device.type != "cpu":
            return f"the 'cpu' backend runs on CPU tensors, not {device.type}"
        err = _c_extension_error()
        return None if err is None else f"the compiled extension gct_fused._C is missing ({err})"
    if backend == "cuda":
        if device.type != "cuda":
            return f"the 'cuda' backend runs on CUDA tensors, not {device.type}"
        err = _c_extension_error()
        if err is not None:
            return f"the compiled extension gct_fused._C is missing ({err})"
        if not _has_cuda_kernels():
            return "gct_fused._C was built without CUDA kernels (reinstall with GCT_FUSED_CUDA=1)"
        return None
    if backend == "triton":
        if device.type == "cpu" and not _interpreting():
            return "Triton runs on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1)"
        if device.type not in ("cpu", "cuda"):
            return f"Triton does not run on {device.type} tensors"
        return _triton_error()
    raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")


def available_backends(device: Union[str, torch.device] = "cpu") -> List[str]:
    """The backends among "cuda", "triton", "cpu", "reference" that can run on `device`."""
    return [b for b in BACKENDS[1:] if unavailable_reason(b, device) is None]


def _auto(device: torch.device) -> str:
    if device.type == "cpu":
        order = ("cpu", "reference")
    elif device.type == "cuda":
        order = (("cuda", "triton") if CUDA_BACKEND_VERIFIED else ("triton",)) + ("reference",)
    else:
        order = ("reference",)
    for backend in order:
        if unavailable_reason(backend, device) is None:
            return backend
    return "reference"


# Successful resolutions, keyed by everything they depend on. Resolution runs on every
# call of every op, and the checks behind it (imports, dispatcher queries) are slow
# next to the kernels of a small map.
_RESOLVED: dict = {}

# The cache key includes the two environment variables resolution reads, so that setting
# them at run time takes effect. os.environ.get costs three Python frames (key encoding,
# lookup, value decoding): ~20 us per variable with caches cold, as after the layers
# before this one in a network. os.environ keeps its contents in a plain dict, updated on
# every assignment, where a lookup of the encoded key is one dict access; where that dict
# is missing (another Python), os.environ.get does the same.
_ENV_DATA = getattr(os.environ, "_data", None)
try:
    _ENV_KEYS = (os.environ.encodekey(ENV_VAR), os.environ.encodekey("TRITON_INTERPRET"))
except AttributeError:  # pragma: no cover - not CPython's os._Environ
    _ENV_DATA = None


def _environment_key():
    if _ENV_DATA is None:  # pragma: no cover - not CPython's os._Environ
        return os.environ.get(ENV_VAR), os.environ.get("TRITON_INTERPRET")
    return _ENV_DATA.get(_ENV_KEYS[0]), _ENV_DATA.get(_ENV_KEYS[1])


def resolve_backend(backend: str, device: Union[str, torch.device]) -> str:
    """The concrete backend that runs a call on `device`; raises if it cannot run."""
    if torch.compiler.is_compiling():  # traced once, at compile time: no cache needed
        return _resolve(backend, device)
    # (torch.device and str keys both hash; str(device) on every call cost a microsecond.)
    key = (backend, device, _environment_key())
    found = _RESOLVED.get(key)
    if found is None:
        found = _RESOLVED[key] = _resolve(backend, device)
    return found


def _resolve(backend: str, device: Union[str, torch.device]) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    device = torch.device(device)
    if backend == "auto":
        override = os.environ.get(ENV_VAR, "").strip()
        if not override or override == "auto":
            return _auto(device)
        if override not in BACKENDS:
            raise ValueError(f"{ENV_VAR}={override!r} is not a backend; expected one of {list(BACKENDS)}")
        backend = override
    why = unavailable_reason(backend, device)
    if why is not None:
        raise RuntimeError(f"backend {backend!r} cannot run on {device}: {why}")
    return backend


_OPS: dict = {}


def fused_op(backend: str, name: str):
    """The op `name` (one of OP_NAMES) of a fused backend: torch.ops.gct_fused.<name>.default
    for the C++ kernels ("cpu", "cuda"), torch.ops.gct_fused.triton_<name>.default for
    "triton". The overload itself, looked up once: the packet's __call__ and the attribute
    lookups on torch.ops cost ~4 us per call, as much as a small map's kernel."""
    key = (backend == "triton", name)
    op = _OPS.get(key)
    if op is None:
        if backend == "triton":
            from . import triton_ops  # noqa: F401  (registers torch.ops.gct_fused.triton_*)
            op = getattr(torch.ops.gct_fused, "triton_" + name).default
        else:
            op = getattr(torch.ops.gct_fused, name).default
        _OPS[key] = op
    return op
