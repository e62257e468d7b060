// Host-side helpers of the CUDA op implementations: the (N, C, L) operands the kernels
// address by three strides, outputs allocated as the fake implementations promise,
// and the stream/SM count of a call. Argument checks and option parsing are
// op_common.h's (shared with the CPU ops).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "../op_common.h"
#include "channel_plan.h"

namespace gct_fused::cuda {

// t itself when its spatial dims merge into one stride (NCHW, channels_last, slices,
// most views); otherwise ONE explicit contiguous copy of it, because every kernel
// addresses element (n, c, l) as n * stride_n + c * stride_c + l * stride_l.
at::Tensor mergeable_input(const at::Tensor& t);

// (N, C, L) strides and data pointer of a tensor whose spatial dims merge.
MapLayout layout_of(const at::Tensor& t);

// An output map allocated with at::empty_like(like), exactly as the CPU ops and the fake
// implementations do. empty_like keeps the strides of a dense input, so when those do
// not merge (a dense permutation of the spatial dims) the kernels write a contiguous
// buffer, copied into the output by finish().
class OutputMap {
 public:
  explicit OutputMap(const at::Tensor& like);
  const at::Tensor& result() const { return result_; }
  const at::Tensor& target() const { return target_; }  // what the kernels write
  void finish();

 private:
  at::Tensor result_, target_;
};

// A parameter as the kernels read it: contiguous (a no-op for module parameters) so that
// channel c (or weight element r * C + c) is at flat index c; dtype unchanged.
at::Tensor flat_param(const at::Tensor& p);

// The accumulation-dtype options of x (float32, float64 for float64 maps).
at::TensorOptions acc_options(const at::Tensor& x);

template <typename T>  // T = const scalar_t or scalar_t
Operand<T> operand_of(const at::Tensor& t) {
  const MapLayout m = layout_of(t);
  return Operand<T>{static_cast<T*>(const_cast<void*>(m.data)), m.stride_n, m.stride_c, m.stride_l};
}

}  // namespace gct_fused::cuda
