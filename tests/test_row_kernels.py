"""The CPU kernels' NCHW row paths, one test per row length class, against the float64 reference
(and, at the end, the channels_last C-row paths, one test per channel count class).

An NCHW map is C rows of L elements per sample; csrc/cpu/channel_skeleton.h picks a kernel by
L and ends each row that is not a whole number of vector steps with a partial (masked) step
or, where masked loads and stores are slow (AVX2) and for half precision, with an
overlapping full step. The lengths
below sit on every boundary of those choices for the vector widths of AVX2 and AVX-512 and
every dtype (a step is 4-32 elements): shorter than a step, whole steps, one past, the limit
of the grouped short-row kernels (8 steps), kShortRow (256), and 7x7 / 14x14 maps. Dense rows
take the flat or grouped kernels; a slice along L (rows not following each other in memory)
takes the grouped or per-row ones. Forward and backward, GCT, SE and se_residual.
"""

import pytest
import torch

import gct_fused
from gct_fused import reference
from helpers import FORWARD_TOL, assert_close, check_against_reference, f64, make_gct_params, make_map, make_se_params

pytestmark = pytest.mark.skipif("cpu" not in gct_fused.available_backends("cpu"),
                                reason="the cpu backend (gct_fused._C) is not built")

LENGTHS = (3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 49, 63, 64, 65, 127, 128, 129, 196, 255, 256, 257)
DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
# 11 channels: groups of 8 and 4 rows plus a remainder; two samples.
CHANNELS = 11


def _map(length: int, dtype, sliced: bool) -> torch.Tensor:
    if not sliced:
        return make_map((2, CHANNELS, length), dtype, "cpu")
    # Rows 3 elements apart from each other's ends: stride_c = length + 3, not dense.
    return make_map((2, CHANNELS, length + 3), dtype, "cpu")[:, :, 1:length + 1]


def _dy(length: int, dtype) -> torch.Tensor:
    return make_map((2, CHANNELS, length), dtype, "cpu", seed=5)


@pytest.mark.parametrize("sliced", [False, True], ids=["dense", "sliced"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("length", LENGTHS)
def test_gct_rows(length, dtype, sliced):
    tensors = [_map(length, dtype, sliced), *make_gct_params(CHANNELS, dtype, "cpu")]
    check_against_reference(lambda *t: gct_fused.gct(*t, backend="cpu"), reference.gct, tensors,
                            _dy(length, dtype), dtype, f"gct L={length}")


@pytest.mark.parametrize("sliced", [False, True], ids=["dense", "sliced"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("length", LENGTHS)
def test_se_rows(length, dtype, sliced):
    tensors = [_map(length, dtype, sliced), *make_se_params(CHANNELS, 3, dtype, "cpu")]
    check_against_reference(lambda *t: gct_fused.squeeze_excite(*t, "silu", "sigmoid", backend="cpu"),
                            lambda *t: reference.squeeze_excite(*t, "silu", "sigmoid"), tensors,
                            _dy(length, dtype), dtype, f"se L={length}")


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("length", LENGTHS)
def test_se_residual_rows(length, dtype):
    """Two inputs per row (x and identity) and, in the backward, two outputs (dx, didentity)."""
    tensors = [_map(length, dtype, False), _map(length, dtype, True), *make_se_params(CHANNELS, 3, dtype, "cpu")]
    check_against_reference(lambda *t: gct_fused.se_residual(*t, "relu", "sigmoid", "relu", backend="cpu"),
                            lambda *t: reference.se_residual(*t, "relu", "sigmoid", "relu"), tensors,
                            _dy(length, dtype), dtype, f"se_residual L={length}")


@pytest.mark.parametrize("hw", [(7, 7), (14, 14)], ids=str)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_resnet_tail_maps(hw, dtype):
    """The 7x7 and 14x14 maps of ResNet stages 3-4, on more channels than a tile holds."""
    x = make_map((2, 600) + hw, dtype, "cpu")
    params = make_gct_params(600, dtype, "cpu")
    assert_close(gct_fused.gct(x, *params, backend="cpu"), reference.gct(f64(x), *map(f64, params)),
                 FORWARD_TOL[dtype], f"gct {hw}")
    se = make_se_params(600, 37, dtype, "cpu")
    assert_close(gct_fused.squeeze_excite(x, *se, backend="cpu"),
                 reference.squeeze_excite(f64(x), *map(f64, se)), FORWARD_TOL[dtype], f"se {hw}")


# channels_last: one C-row of C channels per spatial position. csrc/cpu/channel_skeleton.h
# keeps every channel's running sum in registers for rows of up to 8 steps (AVX2) or 16
# vectors of sums (AVX-512: 256 float32 / half-precision channels, 128 float64), else sweeps
# the row in groups of rows. These channel counts sit on each of those limits and on the
# step boundaries below them; 5x13 = 65 rows per sample: groups of four rows plus one, and
# at C = 257 two tiles (63 rows each at most).
C_ROW_CHANNELS = (3, 15, 16, 17, 33, 64, 65, 127, 128, 129, 255, 256, 257)
C_ROW_SPATIAL = (5, 13)


def _c_row_map(channels: int, dtype, sliced: bool, seed: int = 0) -> torch.Tensor:
    if not sliced:
        return make_map((2, channels) + C_ROW_SPATIAL, dtype, "cpu", "channels_last", seed=seed)
    # Every other block of C channels of a channels_last map: C-rows 2C apart, with gaps.
    return make_map((2, 2 * channels) + C_ROW_SPATIAL, dtype, "cpu", "channels_last", seed=seed)[:, :channels]


@pytest.mark.parametrize("sliced", [False, True], ids=["dense", "sliced"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels", C_ROW_CHANNELS)
def test_gct_c_rows(channels, dtype, sliced):
    x = _c_row_map(channels, dtype, sliced)
    assert x.stride(1) == 1 and x.stride(3) == (2 if sliced else 1) * channels
    dy = _c_row_map(channels, dtype, False, seed=5)
    check_against_reference(lambda *t: gct_fused.gct(*t, backend="cpu"), reference.gct,
                            [x, *make_gct_params(channels, dtype, "cpu")], dy, dtype, f"gct C={channels}")


@pytest.mark.parametrize("sliced", [False, True], ids=["dense", "sliced"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels", C_ROW_CHANNELS)
def test_se_c_rows(channels, dtype, sliced):
    x = _c_row_map(channels, dtype, sliced)
    dy = _c_row_map(channels, dtype, False, seed=5)
    check_against_reference(lambda *t: gct_fused.squeeze_excite(*t, "silu", "sigmoid", backend="cpu"),
                            lambda *t: reference.squeeze_excite(*t, "silu", "sigmoid"),
                            [x, *make_se_params(channels, 3, dtype, "cpu")], dy, dtype, f"se C={channels}")
