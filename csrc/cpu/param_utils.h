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

// dst[i] = src[i] for i < n, rounded once to out_t (to nearest even, as Tensor::to rounds):
// parameter gradients are summed in acc_t and stored in the parameter's dtype.
template <typename out_t, typename acc_t>
void convert_from_acc(const acc_t* src, out_t* dst, int64_t n) {
  int64_t i = 0;
  if constexpr (std::is_same_v<acc_t, float> &&
                (std::is_same_v<out_t, at::BFloat16> || std::is_same_v<out_t, at::Half>)) {
    using V = at::vec::Vectorized<out_t>;
    using Vacc = at::vec::Vectorized<float>;
    for (; i + V::size() <= n; i += V::size()) {
      at::vec::convert_from_float<out_t>(Vacc::loadu(src + i), Vacc::loadu(src + i + Vacc::size())).store(dst + i);
    }
  }
  for (; i < n; ++i) dst[i] = static_cast<out_t>(src[i]);
}

// sum over n of per_sample[n * width + j], in the order n = 0, 1, ... (bitwise
// reproducible), returned as a new tensor of like's shape and dtype. Written in place:
// a zeros / to / reshape chain of tensor ops cost tens of microseconds per parameter with
// the caches cold, as much as the sums of a small map.
template <typename acc_t>
at::Tensor sum_over_samples(const std::vector<acc_t>& per_sample, int64_t samples, int64_t width,
                            const at::Tensor& like) {
  at::Tensor out = at::empty(like.sizes(), like.options());
  TORCH_INTERNAL_ASSERT(out.numel() == width, "sum_over_samples: like has ", out.numel(), " elements, not ", width);
  std::vector<acc_t> sums(static_cast<size_t>(width), acc_t(0));
  for (int64_t n = 0; n < samples; ++n) {
    const acc_t* src = per_sample.data() + n * width;
    for (int64_t j = 0; j < width; ++j) sums[j] += src[j];
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "sum_over_samples", [&] {
    convert_from_acc(sums.data(), out.data_ptr<scalar_t>(), width);
  });
  return out;
}

}  // namespace gct_fused::cpu
