"""available_backends, backend="auto" and the GCT_FUSED_BACKEND override."""

import subprocess
import sys

import pytest
import torch

import gct_fused
from gct_fused import _backends
from helpers import make_gct_params, make_map


def test_available_backends_on_cpu():
    backends = gct_fused.available_backends("cpu")
    assert "reference" in backends and "cpu" in backends
    assert "cuda" not in backends
    assert set(backends) <= {"cuda", "triton", "cpu", "reference"}


def test_fresh_interpreter_loads_the_extension():
    """`import gct_fused` alone (torch not imported first) must load the compiled kernels."""
    code = "import gct_fused; print(gct_fused.available_backends('cpu'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "'cpu'" in out.stdout, out.stdout + out.stderr


def test_auto_picks_the_cpu_kernels_on_cpu():
    assert _backends.resolve_backend("auto", "cpu") == "cpu"


def test_auto_never_picks_unverified_cuda_kernels():
    assert _backends.CUDA_BACKEND_VERIFIED is False
    if torch.cuda.is_available():
        assert _backends.resolve_backend("auto", "cuda") in ("triton", "reference")


def test_environment_variable_overrides_auto(monkeypatch):
    x = make_map((2, 4, 3, 3), torch.float32, "cpu")
    params = make_gct_params(4, torch.float32, "cpu")
    monkeypatch.setenv(_backends.ENV_VAR, "reference")
    assert _backends.resolve_backend("auto", "cpu") == "reference"
    # An explicit backend wins over the variable.
    assert _backends.resolve_backend("cpu", "cpu") == "cpu"
    monkeypatch.setenv(_backends.ENV_VAR, "cuda")
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run on cpu"):
        gct_fused.gct(x, *params)
    monkeypatch.setenv(_backends.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="GCT_FUSED_BACKEND='fastest' is not a backend"):
        gct_fused.gct(x, *params)


def test_reference_backend_is_the_reference():
    x = make_map((2, 4, 3, 3), torch.float32, "cpu")
    params = make_gct_params(4, torch.float32, "cpu")
    assert torch.equal(gct_fused.gct(x, *params, backend="reference"), gct_fused.reference.gct(x, *params))
