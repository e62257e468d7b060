// Host-side builders of kernel arguments from tensors (nvcc translation units only).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

#include "device_utils.cuh"

namespace gct_fused::cuda {

template <typename scalar_t>
constexpr c10::ScalarType acc_scalar_type() {
  return c10::CppTypeToScalarType<acc_type<scalar_t>>::value;
}

// A contiguous parameter (see flat_param) read by a kernel; an undefined tensor is an
// absent bias.
template <typename scalar_t>
ParamIn<scalar_t> param_in(const at::Tensor& p) {
  if (!p.defined()) return ParamIn<scalar_t>{nullptr, true};
  return ParamIn<scalar_t>{p.const_data_ptr(), p.scalar_type() == acc_scalar_type<scalar_t>()};
}

// A freshly allocated (contiguous) parameter gradient written by a kernel.
template <typename scalar_t>
ParamOut<scalar_t> param_out(const at::Tensor& grad) {
  return ParamOut<scalar_t>{grad.data_ptr(), grad.scalar_type() == acc_scalar_type<scalar_t>()};
}

// Blocks for `items` work items at `per_block` per block, at most `cap` (grid-stride).
inline unsigned grid_for(int64_t items, int64_t per_block, int64_t cap) {
  const int64_t blocks = (items + per_block - 1) / per_block;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks < cap ? blocks : cap));
}

}  // namespace gct_fused::cuda
