// Output buffers of the CPU ops, allocated by the CPU allocator directly rather than through
// at::empty_like / at::empty, whose dispatcher round trips (empty_like -> empty_strided ->
// the CPU kernel) cost ~10 us per forward with the caches cold: GCT forward 8x2048x7x7
// float32 NCHW, Zen 4 VM, caches evicted, both ways interleaved in one process: 1.299 ->
// 1.256x, 1.294 -> 1.251x and 1.601 -> 1.490x a copy (one run per line).
#pragma once

#include "vec_config.h"  // must precede every ATen header

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>

#include "../op_common.h"

namespace gct_fused::cpu {

// An uninitialised tensor like the feature map x, as at::empty_like(x) makes it: x's own
// strides where x is non-overlapping and dense (its layout preserved, channels_last
// included); anything else (overlapping or gapped strides) goes through at::empty_like
// itself.
inline at::Tensor empty_like_map(const at::Tensor& x) {
  if (x.is_non_overlapping_and_dense()) {
    return at::detail::empty_strided_cpu(x.sizes(), x.strides(), x.scalar_type());
  }
  return at::empty_like(x);
}

// The per-(n, c) statistics of a forward: contiguous (N, C) in x's accumulation type.
inline at::Tensor empty_stats(const at::Tensor& x) {
  return at::detail::empty_cpu({x.size(0), x.size(1)}, accumulate_dtype(x.scalar_type()), /*pin_memory=*/false,
                               c10::nullopt);
}

}  // namespace gct_fused::cpu
