"""The CPU kernels' rounding of float32 results to bfloat16, bit for bit.

Where the CPU has AVX512-BF16, csrc/cpu/channel_skeleton.h (narrow_from_float) rounds with
vcvtne2ps2bf16 instead of at::vec's integer arithmetic; that instruction reads subnormal
inputs as zero, so vectors holding one take at::vec's rounding. Elsewhere at::vec's rounding
is the only one. Either way every output must be torch's round-to-nearest-even of the
float32 result, which these tests can state exactly: SE with the hardsigmoid gate, w2 = 0
and b2 = 1.5 scales every element by exactly 0.75 (1.5 / 6 + 0.5), so y = bf16(x * 0.75) and,
backward, dx = bf16(dy * 0.75) (the path through the squeeze carries w2 = 0); x * 0.75 needs
up to 10 significant bits, so most elements round, ties included. Rows of every kernel class
(short, long, channels_last) and an output large enough for streaming stores.
"""

import pytest
import torch

import gct_fused
from helpers import to_layout

pytestmark = pytest.mark.skipif("cpu" not in gct_fused.available_backends("cpu"),
                                reason="the cpu backend (gct_fused._C) is not built")

SHAPES = ((2, 16, 9, 9), (2, 40, 33, 33), (2, 300, 5, 7), (4, 64, 128, 128))


def _bf16_values(shape, seed, subnormal_every=0) -> torch.Tensor:
    """bfloat16 values from random bits: any sign and mantissa, exponents 2^-20 .. 2^20 (no
    zeros, infinities or NaN); with subnormal_every, every so many elements a subnormal."""
    g = torch.Generator().manual_seed(seed)
    n = torch.Size(shape).numel()
    sign = torch.randint(0, 2, (n,), generator=g, dtype=torch.int32) << 15
    exponent = torch.randint(127 - 20, 127 + 21, (n,), generator=g, dtype=torch.int32) << 7
    mantissa = torch.randint(0, 128, (n,), generator=g, dtype=torch.int32)
    bits = sign | exponent | mantissa
    if subnormal_every:
        bits[::subnormal_every] = sign[::subnormal_every] | torch.randint(
            1, 128, (bits[::subnormal_every].numel(),), generator=g, dtype=torch.int32)
    return bits.to(torch.int16).view(torch.bfloat16).reshape(shape)


def _se_scaling_by_three_quarters(channels):
    hidden = 4
    g = torch.Generator().manual_seed(3)
    w1 = (torch.randn(hidden, channels, generator=g) / channels ** 0.5).to(torch.bfloat16)
    b1 = torch.zeros(hidden, dtype=torch.bfloat16)
    w2 = torch.zeros(channels, hidden, dtype=torch.bfloat16)
    b2 = torch.full((channels,), 1.5, dtype=torch.bfloat16)
    return w1, b1, w2, b2


def _assert_same_bits(actual, expected, what):
    assert actual.dtype == torch.bfloat16 and actual.shape == expected.shape
    a = actual.contiguous().view(torch.int16)
    e = expected.contiguous().view(torch.int16)
    wrong = (a != e).sum().item()
    assert wrong == 0, f"{what}: {wrong} of {a.numel()} elements differ in their bits"


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_rounds_to_nearest_even(shape, layout):
    x = to_layout(_bf16_values(shape, seed=0, subnormal_every=97), layout)
    y = gct_fused.squeeze_excite(x, *_se_scaling_by_three_quarters(shape[1]), "relu", "hardsigmoid",
                                 backend="cpu")
    _assert_same_bits(y, (x.float() * 0.75).to(torch.bfloat16), f"forward {shape} {layout}")


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES[:3], ids=str)
def test_backward_rounds_to_nearest_even(shape, layout):
    x = to_layout(_bf16_values(shape, seed=0), layout).requires_grad_()
    dy = to_layout(_bf16_values(shape, seed=1, subnormal_every=89), layout)
    y = gct_fused.squeeze_excite(x, *_se_scaling_by_three_quarters(shape[1]), "relu", "hardsigmoid",
                                 backend="cpu")
    (dx,) = torch.autograd.grad(y, x, dy)
    _assert_same_bits(dx, (dy.float() * 0.75).to(torch.bfloat16), f"backward {shape} {layout}")


def test_values_need_rounding():
    """The check is not vacuous: most x * 0.75 are not bfloat16 values, and some are ties."""
    x = _bf16_values(SHAPES[1], seed=0).float()
    scaled = x * 0.75
    rounded = scaled.to(torch.bfloat16).float()
    assert (rounded != scaled).float().mean() > 0.4
    halfway = ((scaled.view(torch.int32) & 0xFFFF) == 0x8000).sum()
    assert halfway > 0
