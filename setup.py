"""Builds gct_fused._C: the CPU kernels always, the CUDA kernels when possible.

Environment flags (the pattern of flash-attention's and extension-cpp's setup.py):
  GCT_FUSED_CUDA=auto|0|1   auto (default): build the CUDA kernels when torch has CUDA and
                            nvcc is found; 0: never; 1: required (an error if impossible).
  TORCH_CUDA_ARCH_LIST      honoured; when unset and no GPU is visible, defaults to
                            DEFAULT_ARCH_LIST below (printed).
  GCT_FUSED_CPU_ARCH        native (default) | avx512 | avx2 | generic: the ISA the CPU
                            kernels are compiled for. `native` suits a source build for the
                            machine it runs on; use avx2 or generic for a portable binary.
  MAX_JOBS, NVCC_THREADS    parallel compile jobs; nvcc threads per job.
  GCT_FUSED_DEBUG=1         -O0 -g.
CUDA_HOME is found by itself (env, then /usr/local/cuda, then nvcc on PATH), and the
headers that ATen's CUDA headers need from the `nvidia` wheels (cuBLAS, cuSPARSE, ...)
are put on the include path.
"""

import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;9.0"


def _log(msg):
    print(f"[gct_fused setup] {msg}", file=sys.stderr)


def _find_cuda_home():
    """CUDA_HOME, found before torch.utils.cpp_extension reads it at import time.

    The `nvcc` on PATH may be a wrapper script, from which torch guesses a wrong home, so a
    real toolkit at /usr/local/cuda is preferred to PATH."""
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if candidate and os.path.isfile(os.path.join(candidate, "bin", "nvcc")):
            return os.path.realpath(candidate)
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.isdir(os.path.join(home, "include")):
            return home
    return None


_cuda_mode = os.environ.get("GCT_FUSED_CUDA", "auto").lower()
if _cuda_mode not in ("auto", "0", "1"):
    raise SystemExit(f"GCT_FUSED_CUDA must be auto, 0 or 1, got {_cuda_mode!r}")
_cuda_home = _find_cuda_home() if _cuda_mode != "0" else None
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _want_cuda():
    if _cuda_mode == "0":
        return False, "GCT_FUSED_CUDA=0"
    problems = []
    if torch.version.cuda is None:
        problems.append("this torch has no CUDA")
    if _cuda_home is None:
        problems.append("no nvcc found (set CUDA_HOME)")
    if not glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")):
        problems.append("no CUDA sources in csrc/cuda")
    if problems and _cuda_mode == "1":
        raise SystemExit("GCT_FUSED_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(problems))
    return not problems, "; ".join(problems) or f"CUDA_HOME={_cuda_home}"


def _nvidia_wheel_includes():
    """Include dirs of the nvidia-* wheels next to torch (cuBLAS, cuSPARSE, ... headers)."""
    site = os.path.dirname(os.path.dirname(torch.__file__))
    dirs = sorted(glob.glob(os.path.join(site, "nvidia", "cu*", "include")))
    dirs += sorted(glob.glob(os.path.join(site, "nvidia", "*", "include")))
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def _cpu_arch_flags():
    arch = os.environ.get("GCT_FUSED_CPU_ARCH", "native").lower()
    flags = {
        "native": ["-march=native"],
        "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"],
        "avx2": ["-mavx2", "-mfma", "-mf16c"],
        "generic": [],
    }
    if arch not in flags:
        raise SystemExit(f"GCT_FUSED_CPU_ARCH must be one of {sorted(flags)}, got {arch!r}")
    return flags[arch]


def _extension():
    debug = os.environ.get("GCT_FUSED_DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3"]
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")]
    # -ffp-contract=off: GCC would otherwise fuse a*b + c into an FMA where it sees fit, and it
    # may decide differently in two inlined copies of the same code (e.g. a head run by the
    # calling thread and by a worker), which broke bitwise equality across thread counts.
    # FMAs the kernels want are written out (at::vec::fmadd, std::fma).
    cxx = opt + ["-fopenmp", "-fvisibility=hidden", "-fno-math-errno", "-ffp-contract=off"] + _cpu_arch_flags()
    with_cuda, why = _want_cuda()
    if not with_cuda:
        _log(f"building CPU kernels only ({why})")
        return CppExtension(
            "gct_fused._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"],
        )
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
    _log(f"building CPU and CUDA kernels ({why}; TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']})")
    sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
    include_dirs += _nvidia_wheel_includes()
    nvcc = opt + ["-lineinfo", "--expt-relaxed-constexpr", "-DGCT_FUSED_WITH_CUDA"]
    nvcc += ["--threads", os.environ.get("NVCC_THREADS", "4")]
    return CUDAExtension(
        "gct_fused._C", sources, include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx + ["-DGCT_FUSED_WITH_CUDA"], "nvcc": nvcc},
        extra_link_args=["-fopenmp"],
    )


setup(
    name="gct_fused",
    version="0.1.0",
    description="Fused CPU, CUDA and Triton kernels for GCT and Squeeze-and-Excitation",
    packages=["gct_fused", "gct_fused.triton_kernels"],
    package_dir={"gct_fused": "gct_fused", "gct_fused.triton_kernels": "triton_kernels"},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.10",
    install_requires=["torch>=2.6"],
)
