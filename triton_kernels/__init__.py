"""Triton kernels of gct_fused and their host launchers (installed as gct_fused.triton_kernels).

No autograd and no nn.Module here: gct_fused.triton_ops registers these launchers as
custom ops. The folder is named triton_kernels in the source tree; it is never importable
under that top-level name, which belongs to a package of the Triton project.
"""
