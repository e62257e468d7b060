// Small host helpers for the per-channel parameters and parameter gradients of the
// CPU ops: parameters are tiny, so they are read once into accumulation-type vectors.
#pragma once

#include "vec_config.h"  // must precede every ATen header

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cpu/vec/vec.h>

#include <type_traits>
#include <vector>

namespace gct_fused::cpu {

// out[i] = data[i] for i < n, in acc_t.
template <typename acc_t, typename scalar_t>
void convert_to_acc(const scalar_t* data, acc_t* out, int64_t n) {
  int64_t i = 0;
  if constexpr (std::is_same_v<acc_t, float> &&
                (std::is_same_v<scalar_t, at::BFloat16> || std::is_same_v<scalar_t, at::Half>)) {
    // Vectorised: SE weights are up to 2 x 2048 x 128 values, converted on every call of
    // a bfloat16/float16 module.
    using V = at::vec::Vectorized<scalar_t>;
    constexpr int64_t kHalfStep = V::size() / 2;
    for (; i + V::size() <= n; i += V::size()) {
      const auto wide = at::vec::convert_to_float<scalar_t>(V::loadu(data + i));
      std::get<0>(wide).store(out + i);
      std::get<1>(wide).store(out + i + kHalfStep);
    }
  }
  for (; i < n; ++i) out[i] = static_cast<acc_t>(data[i]);
}

// p's values (any shape, any floating dtype) as a flat vector of acc_t. Reads the
// storage directly: this runs on every call, and the tensor ops of a
// reshape/to/contiguous chain would cost microseconds each.
template <typename acc_t>
std::vector<acc_t> to_acc_vector(const at::Tensor& p) {
  const at::Tensor src = p.is_contiguous() ? p : p.contiguous();  // parameters are tiny
  std::vector<acc_t> out(static_cast<size_t>(src.numel()));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "to_acc_vector", [&] {
    convert_to_acc(src.const_data_ptr<scalar_t>(), out.data(), static_cast<int64_t>(out.size()));
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
