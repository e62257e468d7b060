// Host-side pieces shared by every backend's op implementation: option parsing,
// argument checks with messages that name the argument, and the (N, C, L) view of
// an (N, C, *spatial) tensor that all kernels work on.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <vector>

#include "gct_fused/options.h"

namespace gct_fused {

// The accepted names of each string option (options.h), in the order error messages list
// them. The direct Python entries (python_calls.cpp) match against the same tables; the
// Python side lists the same names in gct_fused/_validate.py.
template <typename Enum>
struct OptionName {
  const char* name;
  Enum value;
};
inline constexpr OptionName<GctMode> kGctModeNames[] = {{"l2", GctMode::kL2}, {"l1", GctMode::kL1}};
inline constexpr OptionName<Activation> kActivationNames[] = {{"relu", Activation::kReLU},
                                                              {"silu", Activation::kSiLU}};
inline constexpr OptionName<Gate> kGateNames[] = {{"sigmoid", Gate::kSigmoid}, {"hardsigmoid", Gate::kHardSigmoid}};
inline constexpr OptionName<Epilogue> kEpilogueNames[] = {{"relu", Epilogue::kReLU}, {"none", Epilogue::kNone}};

// The enum of a name in the tables above; a ValueError naming the argument otherwise.
GctMode parse_gct_mode(c10::string_view mode);
Activation parse_activation(c10::string_view activation);
Gate parse_gate(c10::string_view gate);
Epilogue parse_epilogue(c10::string_view activation_after);

// The dtypes every kernel dispatches on: float32, float64, float16, bfloat16
// (at::isFloatingType also admits float8).
bool is_kernel_dtype(at::ScalarType t);

// Whether parameters of dtype `param` may be used with a map of dtype `x`: the same dtype,
// or float32 parameters with a float16/bfloat16 map (mixed precision).
bool dtypes_mix(at::ScalarType param, at::ScalarType x);

// x must be a floating tensor of rank >= 2 laid out as (N, C, *spatial).
void check_feature_map(const at::Tensor& x, const char* name);

// GCT's epsilon must be >= 0 (not NaN).
void check_epsilon(double epsilon);

// `other` must have exactly x's shape, device and dtype (dy, identity, the saved output).
void check_same_map(const at::Tensor& x, const at::Tensor& other, const char* name);

// A per-channel or weight tensor: same device as x, floating, and a dtype that may
// mix with x's (equal, or float32 parameters with a half/bfloat16 map).
void check_parameter(const at::Tensor& x, const at::Tensor& p, const char* name);

// p must hold exactly `numel` elements (any shape, e.g. (C,) or (1, C, 1, 1)).
void check_numel(const at::Tensor& p, int64_t numel, const char* name, const char* what);

// All parameters of one call must share a dtype.
void check_same_dtype(const at::Tensor& a, const char* name_a, const at::Tensor& b,
                      const char* name_b);

// Saved statistics: (N, C) in the accumulation dtype of x, on x's device.
void check_stats(const at::Tensor& x, const at::Tensor& stats, const char* name);

// Every check of a GCT call (x and its three per-channel parameters).
void check_gct_args(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& gamma,
                    const at::Tensor& beta);

// Every check of an SE call: w1 (R, C), b1 (R,) or absent, w2 (C, R), b2 (C,) or absent.
void check_se_args(const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                   const at::Tensor& w2, const c10::optional<at::Tensor>& b2);

// float64 maps accumulate in float64, every other dtype in float32.
at::ScalarType accumulate_dtype(at::ScalarType t);

// The (N, C, L) view of a tensor of shape (N, C, *spatial), L = prod(spatial).
// When the spatial dims merge into one stride (NCHW, channels_last, slices along
// N or C, most transposes) `merged` is true and element (n, c, l) sits at
// n * stride_n + c * stride_c + l * stride_l. Otherwise spatial_offsets() gives
// the offset of every l.
struct ChannelView {
  int64_t n = 0, c = 0, l = 1;
  int64_t stride_n = 0, stride_c = 0, stride_l = 1;
  bool merged = true;
  std::vector<int64_t> spatial_sizes, spatial_strides;

  static ChannelView of(const at::Tensor& t);
  std::vector<int64_t> spatial_offsets() const;
};

}  // namespace gct_fused
