"""torch.library.opcheck on every op of every fused family: schema, fake (meta)
implementation, autograd registration and AOT dispatch, with and without requires_grad."""

import pytest
import torch

from gct_fused._backends import fused_op
from helpers import FUSED_BACKENDS, backend_device, make_gct_params, make_map, make_se_params


def _samples(device, dtype=torch.float32):
    """(op name, args) for every op; maps in NCHW and channels_last."""
    out = []
    for layout in ("nchw", "channels_last"):
        x = make_map((2, 6, 3, 5), dtype, device, layout)
        dy = make_map((2, 6, 3, 5), dtype, device, layout, seed=1)
        identity = make_map((2, 6, 3, 5), dtype, device, layout, seed=2)
        gp = make_gct_params(6, dtype, device)
        stats = torch.rand(2, 6, dtype=torch.float32, device=device) + 1.0
        for mode, after_relu in (("l2", False), ("l1", True)):
            out.append(("gct_forward", (x, *gp, 1e-5, mode, after_relu)))
            out.append(("gct_backward", (dy, x, *gp, stats, 1e-5, mode, after_relu)))
        for bias in (True, False):
            w1, b1, w2, b2 = make_se_params(6, 2, dtype, device, bias=bias)
            out.append(("se_forward", (x, w1, b1, w2, b2, "relu", "sigmoid")))
            out.append(("se_backward", (dy, x, w1, b1, w2, b2, stats, "silu", "hardsigmoid")))
            out.append(("se_residual_forward", (x, identity, w1, b1, w2, b2, "relu", "sigmoid", "relu")))
            out.append(("se_residual_backward", (dy, x, identity, w1, b1, w2, b2, stats, "relu", "sigmoid")))
    return out


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_opcheck(backend):
    device = backend_device(backend)
    for name, args in _samples(device):
        op = fused_op(backend, name)
        torch.library.opcheck(op, args)
        if name.endswith("_forward"):
            grad_args = tuple(a.detach().requires_grad_(True) if isinstance(a, torch.Tensor) and a.dtype.is_floating_point
                              else a for a in args)
            torch.library.opcheck(op, grad_args)
