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

// dst[i] = src[i] for i < n: half precision widened to float (exactly), float narrowed to
// half precision (to nearest even, as Tensor::to rounds), any other pair by static_cast.
// Vectorised for the half-precision pairs: SE weight gradients (2 x 2048 x 128 values)
// are narrowed on every backward of a bfloat16/float16 module.
template <typename out_t, typename in_t>
void convert_values(const in_t* src, out_t* dst, int64_t n) {
  constexpr bool kHalfIn = std::is_same_v<in_t, at::BFloat16> || std::is_same_v<in_t, at::Half>;
  constexpr bool kHalfOut = std::is_same_v<out_t, at::BFloat16> || std::is_same_v<out_t, at::Half>;
  using Vf = at::vec::Vectorized<float>;
  int64_t i = 0;
  if constexpr (std::is_same_v<out_t, float> && kHalfIn) {
    using V = at::vec::Vectorized<in_t>;
    for (; i + V::size() <= n; i += V::size()) {
      const auto wide = at::vec::convert_to_float<in_t>(V::loadu(src + i));
      std::get<0>(wide).store(dst + i);
      std::get<1>(wide).store(dst + i + Vf::size());
    }
  } else if constexpr (std::is_same_v<in_t, float> && kHalfOut) {
    using V = at::vec::Vectorized<out_t>;
    for (; i + V::size() <= n; i += V::size()) {
      at::vec::convert_from_float<out_t>(Vf::loadu(src + i), Vf::loadu(src + i + Vf::size())).store(dst + i);
    }
  }
  for (; i < n; ++i) dst[i] = static_cast<out_t>(src[i]);
}

// p's values (any shape, any floating dtype) as a flat vector of acc_t. Reads the
// storage directly: this runs on every call, and the tensor ops of a
// reshape/to/contiguous chain would cost microseconds each.
template <typename acc_t>
std::vector<acc_t> to_acc_vector(const at::Tensor& p) {
  const at::Tensor src = p.is_contiguous() ? p : p.contiguous();  // parameters are tiny
  std::vector<acc_t> out(static_cast<size_t>(src.numel()));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "to_acc_vector", [&] {
    convert_values(src.const_data_ptr<scalar_t>(), out.data(), static_cast<int64_t>(out.size()));
  });
  return out;
}

// A parameter's values as acc_t: read in place where the tensor already holds them
// (contiguous and of type acc_t: float32 parameters of a float32 or half-precision map,
// float64 of a float64 one), else converted once by to_acc_vector. In place saves an
// allocation, a zero fill and a copy per parameter and call: the three GCT parameters cost
// 3 us per call with the caches warm, 8 us cold, a tenth of the op's fixed cost.
template <typename acc_t>
class AccValues {
 public:
  explicit AccValues(const at::Tensor& p) {
    if (p.is_contiguous() && p.scalar_type() == c10::CppTypeToScalarType<acc_t>::value) {
      data_ = p.const_data_ptr<acc_t>();
    } else {
      owned_ = to_acc_vector<acc_t>(p);
      data_ = owned_.data();
    }
  }
  AccValues(const AccValues&) = delete;  // data_ may point into owned_
  AccValues& operator=(const AccValues&) = delete;
  AccValues(AccValues&&) = default;  // a moved vector keeps its buffer
  const acc_t* data() const { return data_; }

 private:
  std::vector<acc_t> owned_;
  const acc_t* data_ = nullptr;
};

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
    convert_values(sums.data(), out.data_ptr<scalar_t>(), width);
  });
  return out;
}

}  // namespace gct_fused::cpu
