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


@pytest.fixture
def fused_calls(monkeypatch):
    """The names of the fused forward ops that gct_fused.functional calls ("gct_forward",
    "se_forward", "se_residual_forward"), through either of its two paths: the direct C++
    entries (gct_fused._C.gct, ...; recorded when they take the call, i.e. do not return
    None) and fused_op (torch.ops). Both are patched to record them."""
    import gct_fused.functional as functional

    calls = []
    real_op = functional.fused_op

    def recording_op(backend, name):
        calls.append(name)
        return real_op(backend, name)

    monkeypatch.setattr(functional, "fused_op", recording_op)
    direct = functional._DIRECT
    if direct is not None:
        class RecordingDirect:
            def _recorded(self, fn, name):
                def call(*args):
                    y = fn(*args)
                    if y is not None:
                        calls.append(name)
                    return y
                return call

            def __getattr__(self, attr):
                names = {"gct": "gct_forward", "squeeze_excite": "se_forward", "se_residual": "se_residual_forward",
                         "squeeze_excite_conv": "se_forward", "se_residual_conv": "se_residual_forward",
                         "gct_module": "gct_forward", "se_module": "se_forward"}
                return self._recorded(getattr(direct, attr), names[attr])

        monkeypatch.setattr(functional, "_DIRECT", RecordingDirect())
    return calls


@pytest.fixture
def entry_answers(monkeypatch):
    """[(entry name, whether it took the call)] for every call of a direct or module entry of
    gct_fused._C (gct, squeeze_excite, ..., gct_module, se_module), in order."""
    import gct_fused.functional as functional

    direct = functional._DIRECT
    if direct is None:
        pytest.skip("gct_fused._C is not built")
    answers = []

    class Recorder:
        def __getattr__(self, name):
            def call(*args):
                y = getattr(direct, name)(*args)
                answers.append((name, y is not None))
                return y
            return call

    monkeypatch.setattr(functional, "_DIRECT", Recorder())
    return answers


def pytest_collection_modifyitems(config, items):
    """Tests marked `large` need several GB of RAM: they run only when asked for (-m large)."""
    if "large" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="needs several GB of RAM; opt in with `pytest -m large`")
    for item in items:
        if "large" in item.keywords:
            item.add_marker(skip)


# ---- Hypothesis profiles (the property-based tests of test_fuzz.py) -------------------------
# HYPOTHESIS_PROFILE=ci (default): a few hundred cases per backend, derandomized so that a CI
#   run is reproducible (see fuzz_support.EXAMPLES for the per-backend counts).
# HYPOTHESIS_PROFILE=nightly: >= 1,000 cases per backend, new random cases on every run.
# HYPOTHESIS_PROFILE=dev: a handful of cases, while editing the tests.
# The per-backend case counts are in fuzz_support.EXAMPLES (the interpreter gets fewer);
# GCT_FUZZ_EXAMPLES=<n> overrides them all.
try:
    from hypothesis import HealthCheck, settings as _hyp_settings
except ImportError:  # pragma: no cover - hypothesis is in requirements.txt
    _hyp_settings = None
if _hyp_settings is not None:
    _common = dict(deadline=None, print_blob=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    _hyp_settings.register_profile("ci", derandomize=True, **_common)
    _hyp_settings.register_profile("nightly", derandomize=False, **_common)
    _hyp_settings.register_profile("dev", derandomize=True, **_common)
    _hyp_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_terminal_summary(terminalreporter):
    """The fuzz cases each backend ran, and the memory measurements (see fuzz_support.summary_lines)."""
    import sys
    support = sys.modules.get("fuzz_support")
    if support is None:
        return
    for line in support.summary_lines():
        terminalreporter.write_line(line)
