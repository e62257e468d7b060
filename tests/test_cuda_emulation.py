"""The CUDA kernels' logic, checked without a GPU.

csrc/cuda/emulation compiles the kernels of csrc/cuda as host C++ with every CUDA thread
as a fiber (real __syncthreads and warp-shuffle barriers, NaN-poisoned shared memory and
outputs) and compares each op with the CPU kernels on the same inputs: indexing, tiling,
reductions split along L, channel rows, vector paths, edge tensors and NaN propagation.
CI runs the edge tensors plus the first four shapes of the --quick list (about two
minutes on 2 cores); `python csrc/cuda/emulation/check_emulation.py` runs them all.
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "csrc", "cuda", "emulation", "check_emulation.py")
CUDA_HOME = os.environ.get("CUDA_HOME", "/usr/local/cuda")


@pytest.mark.skipif(not os.path.exists(os.path.join(CUDA_HOME, "include", "cuda_runtime_api.h")),
                    reason=f"the emulator needs the CUDA headers (cuda_runtime_api.h under {CUDA_HOME}/include)")
def test_emulated_cuda_kernels_match_cpu_kernels(tmp_path):
    env = dict(os.environ, CUDA_HOME=CUDA_HOME, GCT_FUSED_EMULATION_BUILD=str(tmp_path / "build"))
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--max-shapes", "4"], capture_output=True,
                          text=True, env=env, timeout=1200)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "all emulated CUDA ops match the CPU kernels" in proc.stdout, out[-4000:]
    assert proc.stdout.count(": ok") == 5, proc.stdout  # edge tensors + 4 shapes
