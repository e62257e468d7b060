"""SE weights in a half-precision map's own dtype (bfloat16 or float16, as `module.to(dtype)`
leaves them) are read as they are stored and widened as the MLP loads them. Every weight
value is exactly a float32 value, so the results must be bit for bit those of float32 weights
holding the same values: forward output and pooled means, dx (and d_identity), and the weight
and bias gradients (computed in float32, rounded once to the weights' dtype).

The widths cover the MLP's full vectors, its partial vectors (vecmat blocks of R = 28, 6)
and its scalar tails (R = 3), at the SE shapes of the benchmark; the float64 reference
checks of test_forward / test_backward cover the values themselves."""

import pytest
import torch

from helpers import make_map, make_se_params

# (shape, hidden): SE-ResNet-50 layer4 and layer3 (full vectors), EfficientNet-B0 stage 5
# (R = 28), MobileNetV3 (C = 120, R = 32), odd widths with scalar tails.
CASES = [((2, 2048, 7, 7), 128), ((3, 1024, 3, 5), 64), ((2, 672, 14, 14), 28), ((9, 120, 4, 4), 32),
         ((2, 37, 5, 3), 3), ((10, 20, 6), 6)]


def _run(op, x, extra, params, dy):
    leaves = [t.detach().requires_grad_(True) for t in (x, *extra)]
    p_leaves = [None if p is None else p.detach().requires_grad_(True) for p in params]
    if op == "se":
        y = torch.ops.gct_fused.se_forward(leaves[0], *p_leaves, "silu", "sigmoid")
    else:
        y = torch.ops.gct_fused.se_residual_forward(leaves[0], leaves[1], *p_leaves, "relu", "hardsigmoid", "relu")
    y[0].backward(dy)
    return [y[0], y[1]] + [t.grad for t in leaves] + [None if p is None else p.grad for p in p_leaves]


@pytest.mark.parametrize("op", ["se", "se_residual"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape,hidden", CASES, ids=str)
def test_half_weights_match_float32_weights_bitwise(op, layout, dtype, shape, hidden):
    x = make_map(shape, dtype, "cpu", layout)
    dy = make_map(shape, dtype, "cpu", layout, seed=3)
    extra = [make_map(shape, dtype, "cpu", layout, seed=4)] if op == "se_residual" else []
    half_params = make_se_params(shape[1], hidden, dtype, "cpu", bias=hidden % 2 == 0)
    float_params = [None if p is None else p.float() for p in half_params]  # the same values
    got = _run(op, x, extra, half_params, dy)
    want = _run(op, x, extra, float_params, dy)
    names = ["y", "pooled", "dx"] + (["d_identity"] if extra else []) + ["dw1", "db1", "dw2", "db2"]
    for name, g, w in zip(names, got, want):
        if w is None:
            assert g is None, name
            continue
        if name.startswith(("dw", "db")):
            assert g.dtype == dtype, name
            w = w.to(dtype)  # float32 weights get float32 gradients: round them the same way
        assert torch.equal(g, w), f"{name} differs ({(g.double() - w.double()).abs().max().item():.3g})"
