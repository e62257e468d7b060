"""Test configuration shared by every test file.

Without a GPU the Triton kernels run on CPU tensors under the Triton interpreter, which
must be switched on before triton is first imported: that happens here, before any test
module imports gct_fused.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The environment variable would change what backend="auto" means in every test.
os.environ.pop("GCT_FUSED_BACKEND", None)


def pytest_collection_modifyitems(config, items):
    """Tests marked `large` need several GB of RAM: they run only when asked for (-m large)."""
    if "large" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="needs several GB of RAM; opt in with `pytest -m large`")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip)
