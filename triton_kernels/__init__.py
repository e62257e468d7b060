"""Triton kernels of gct_fused and their host launchers (installed as gct_fused.triton_kernels).

No autograd and no nn.Module here: gct_fused.triton_ops registers these launchers as
custom ops. The folder is named triton_kernels in the source tree; it is never importable
under that top-level name, which belongs to a package of the Triton project.

Modules:
    launch          (N, C, L) views, the tiling plan, the counted launch helper
    pointwise       element-wise math shared by the kernels (device functions)
    channel_reduce  stage 1: per-(n, c) sums over L of an element map
    gct             GCT forward (2 launches) and backward (3 launches)
    se              SE / se_residual forward (3 launches) and backward (3 launches)
    compile_check   compiles every launched configuration for a GPU target without a GPU
"""

if __name__ == "triton_kernels":  # pragma: no cover - exercised by tests/test_triton.py
    # Imported by the top-level name, because the repository root is on sys.path (e.g. when
    # running from a checkout). That name belongs to the Triton project's package: hand the
    # import over to it if it is installed, otherwise fail, rather than shadow it.
    import importlib.machinery as _machinery
    import importlib.util as _util
    import os as _os
    import sys as _sys

    _root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    _path = [p for p in _sys.path if _os.path.abspath(p or _os.getcwd()) != _root]
    _spec = _machinery.PathFinder.find_spec("triton_kernels", _path)
    if _spec is None or _spec.loader is None:
        del _sys.modules["triton_kernels"]
        raise ImportError("no module named 'triton_kernels' (the folder triton_kernels/ of gct-fused is "
                          "the package gct_fused.triton_kernels: import it by that name)")
    _module = _util.module_from_spec(_spec)
    _sys.modules["triton_kernels"] = _module
    _spec.loader.exec_module(_module)
