#include "op_common.h"

#include <c10/util/Exception.h>

#include <string>

namespace gct_fused {

namespace {

// The value named `value` in `names`, or a ValueError: "<op>: <arg> must be 'a' or 'b', got 'c'".
template <typename Enum, size_t K>
Enum parse_option(c10::string_view value, const OptionName<Enum> (&names)[K], const char* op, const char* arg) {
  for (const auto& option : names) {
    if (value == option.name) return option.value;
  }
  std::string choices;
  for (size_t i = 0; i < K; ++i) {
    choices += std::string(i == 0 ? "'" : i + 1 < K ? ", '" : " or '") + names[i].name + "'";
  }
  TORCH_CHECK_VALUE(false, op, ": ", arg, " must be ", choices, ", got '", std::string(value), "'");
}

}  // namespace

GctMode parse_gct_mode(c10::string_view mode) { return parse_option(mode, kGctModeNames, "gct", "mode"); }

Activation parse_activation(c10::string_view activation) {
  return parse_option(activation, kActivationNames, "squeeze_excite", "activation");
}

Gate parse_gate(c10::string_view gate) { return parse_option(gate, kGateNames, "squeeze_excite", "gate"); }

Epilogue parse_epilogue(c10::string_view activation_after) {
  return parse_option(activation_after, kEpilogueNames, "se_residual", "activation_after");
}

bool is_kernel_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

bool dtypes_mix(at::ScalarType param, at::ScalarType x) {
  return param == x || (param == at::kFloat && (x == at::kHalf || x == at::kBFloat16));
}

void check_feature_map(const at::Tensor& x, const char* name) {
  TORCH_CHECK_VALUE(x.dim() >= 2, name, " must have shape (N, C, *spatial) with rank >= 2, got shape ",
                    x.sizes());
  TORCH_CHECK_TYPE(is_kernel_dtype(x.scalar_type()), name,
                   " must be a floating tensor (float32, float64, float16 or bfloat16), got ", x.scalar_type());
}

void check_epsilon(double epsilon) {
  TORCH_CHECK_VALUE(epsilon >= 0, "gct: epsilon must be a non-negative number, got ", epsilon);
}

void check_same_map(const at::Tensor& x, const at::Tensor& other, const char* name) {
  TORCH_CHECK_VALUE(other.sizes() == x.sizes(), name, " must have the input's shape ", x.sizes(),
                    ", got ", other.sizes());
  TORCH_CHECK(other.device() == x.device(), name, " must be on the input's device ", x.device(),
              ", got ", other.device());
  TORCH_CHECK_TYPE(other.scalar_type() == x.scalar_type(), name, " must have the input's dtype ",
                   x.scalar_type(), ", got ", other.scalar_type());
}

void check_parameter(const at::Tensor& x, const at::Tensor& p, const char* name) {
  TORCH_CHECK(p.device() == x.device(), name, " must be on the input's device ", x.device(),
              ", got ", p.device());
  const auto xt = x.scalar_type(), pt = p.scalar_type();
  TORCH_CHECK_TYPE(dtypes_mix(pt, xt), name, " has dtype ", pt, ", which cannot be used with an input of dtype ",
                   xt, ": use the input's dtype (or float32 parameters with a float16/bfloat16 input)");
}

void check_numel(const at::Tensor& p, int64_t numel, const char* name, const char* what) {
  TORCH_CHECK_VALUE(p.numel() == numel, name, " must hold ", numel, " values (", what, "), got shape ",
                    p.sizes());
}

void check_same_dtype(const at::Tensor& a, const char* name_a, const at::Tensor& b,
                      const char* name_b) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), name_a, " and ", name_b,
                   " must share a dtype, got ", a.scalar_type(), " and ", b.scalar_type());
}

void check_gct_args(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& gamma,
                    const at::Tensor& beta) {
  check_feature_map(x, "x");
  const int64_t channels = x.size(1);
  const std::pair<const at::Tensor*, const char*> params[] = {
      {&alpha, "alpha"}, {&gamma, "gamma"}, {&beta, "beta"}};
  for (const auto& [p, name] : params) {
    check_parameter(x, *p, name);
    check_numel(*p, channels, name, "one per channel of x");
  }
  check_same_dtype(alpha, "alpha", gamma, "gamma");
  check_same_dtype(alpha, "alpha", beta, "beta");
}

void check_se_args(const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                   const at::Tensor& w2, const c10::optional<at::Tensor>& b2) {
  check_feature_map(x, "x");
  const int64_t channels = x.size(1);
  TORCH_CHECK_VALUE(w1.dim() == 2 && w1.size(1) == channels, "w1 must have shape (R, C) with C = ",
                    channels, " (the channels of x), got ", w1.sizes());
  const int64_t hidden = w1.size(0);
  TORCH_CHECK_VALUE(w2.dim() == 2 && w2.size(0) == channels && w2.size(1) == hidden,
                    "w2 must have shape (C, R) = (", channels, ", ", hidden, "), got ", w2.sizes());
  check_parameter(x, w1, "w1");
  check_parameter(x, w2, "w2");
  check_same_dtype(w1, "w1", w2, "w2");
  if (b1.has_value()) {
    check_parameter(x, *b1, "b1");
    TORCH_CHECK_VALUE(b1->dim() == 1 && b1->size(0) == hidden, "b1 must have shape (R,) = (", hidden,
                      ",), got ", b1->sizes());
    check_same_dtype(w1, "w1", *b1, "b1");
  }
  if (b2.has_value()) {
    check_parameter(x, *b2, "b2");
    TORCH_CHECK_VALUE(b2->dim() == 1 && b2->size(0) == channels, "b2 must have shape (C,) = (",
                      channels, ",), got ", b2->sizes());
    check_same_dtype(w1, "w1", *b2, "b2");
  }
}

at::ScalarType accumulate_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

void check_stats(const at::Tensor& x, const at::Tensor& stats, const char* name) {
  TORCH_CHECK_VALUE(stats.dim() == 2 && stats.size(0) == x.size(0) && stats.size(1) == x.size(1),
                    name, " must have shape (N, C) = (", x.size(0), ", ", x.size(1), "), got ",
                    stats.sizes());
  TORCH_CHECK(stats.device() == x.device(), name, " must be on the input's device");
  TORCH_CHECK_TYPE(stats.scalar_type() == accumulate_dtype(x.scalar_type()), name, " must be ",
                   accumulate_dtype(x.scalar_type()), ", got ", stats.scalar_type());
}

ChannelView ChannelView::of(const at::Tensor& t) {
  ChannelView v;
  v.n = t.size(0);
  v.c = t.size(1);
  v.stride_n = t.stride(0);
  v.stride_c = t.stride(1);
  // Keep only spatial dims of size > 1: a size-1 dim never moves the offset.
  for (int64_t d = 2; d < t.dim(); ++d) {
    v.l *= t.size(d);
    if (t.size(d) != 1) {
      v.spatial_sizes.push_back(t.size(d));
      v.spatial_strides.push_back(t.stride(d));
    }
  }
  const auto& sz = v.spatial_sizes;
  const auto& st = v.spatial_strides;
  v.merged = true;
  for (size_t i = 0; i + 1 < sz.size(); ++i) {
    if (st[i] != st[i + 1] * sz[i + 1]) v.merged = false;
  }
  // Merged: the innermost stride steps through all of L. With no spatial extent
  // the stride is irrelevant; 1 keeps the contiguous fast paths eligible.
  v.stride_l = sz.empty() ? 1 : st.back();
  return v;
}

std::vector<int64_t> ChannelView::spatial_offsets() const {
  std::vector<int64_t> offsets(static_cast<size_t>(l));
  const size_t dims = spatial_sizes.size();
  std::vector<int64_t> index(dims, 0);
  int64_t offset = 0;
  for (int64_t i = 0; i < l; ++i) {
    offsets[static_cast<size_t>(i)] = offset;
    // Odometer increment over the spatial dims, innermost fastest.
    for (size_t d = dims; d-- > 0;) {
      offset += spatial_strides[d];
      if (++index[d] < spatial_sizes[d]) break;
      offset -= spatial_strides[d] * spatial_sizes[d];
      index[d] = 0;
    }
  }
  return offsets;
}

}  // namespace gct_fused
