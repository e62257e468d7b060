// Small host helpers for the per-channel parameters and parameter gradients of the
// CPU ops: parameters are tiny, so they are read once into accumulation-type vectors.
#pragma once

#include "vec_config.h"  // must precede every ATen header

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <vector>

namespace gct_fused::cpu {

// p's values (any shape, any floating dtype) as a flat vector of acc_t. Reads the
// storage directly: this runs on every call, and the tensor ops of a
// reshape/to/contiguous chain would cost microseconds each.
template <typename acc_t>
std::vector<acc_t> to_acc_vector(const at::Tensor& p) {
  const at::Tensor src = p.is_contiguous() ? p : p.contiguous();  // parameters are tiny
  std::vector<acc_t> out(static_cast<size_t>(src.numel()));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "to_acc_vector", [&] {
    const scalar_t* data = src.const_data_ptr<scalar_t>();
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<acc_t>(data[i]);
  });
  return out;
}

// sum over n of per_sample[n * width + j], in the order n = 0, 1, ... (bitwise
// reproducible), returned as a tensor shaped and typed like `like`.
template <typename acc_t>
at::Tensor sum_over_samples(const std::vector<acc_t>& per_sample, int64_t samples, int64_t width,
                            const at::Tensor& like) {
  at::Tensor out = at::zeros({width}, like.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* dst = out.data_ptr<acc_t>();
  for (int64_t n = 0; n < samples; ++n) {
    const acc_t* src = per_sample.data() + n * width;
    for (int64_t j = 0; j < width; ++j) dst[j] += src[j];
  }
  return out.to(like.scalar_type()).reshape(like.sizes());
}

}  // namespace gct_fused::cpu
