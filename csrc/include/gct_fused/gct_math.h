// Per-channel GCT formulas (Yang et al., "Gated Channel Transformation", CVPR 2020),
// written once for the CPU and CUDA kernels.
//
// Notation (per sample n, channel c; C channels; s is the reduction over L):
//   l2: s = sum x^2,  e = alpha * sqrt(s + eps), denom = sqrt(mean_c(e^2) + eps)
//   l1: s = sum |x|   (sum x when after_relu),   e = alpha * s, denom = mean_c|e| + eps
//   z = e * (gamma / denom) + beta,  g = 1 + tanh(z),  y = g * x
// The order of operations follows the published code (norm = gamma / denom, then
// embedding * norm) so that results match it to the last bit where possible; with
// gamma = beta = 0 the gate is exactly 1 and y == x.
//
// The gate is computed as g = 2 / (1 + exp(-2z)), the same function as 1 + tanh(z)
// (= 2 sigmoid(2z)), for two reasons. Accuracy: in float32, 1 + tanh(z) cancels where
// tanh(z) is near -1 (relative error 6e-6 at z = -3, and g = 0 instead of 7.6e-11 at
// z = -12), while this form stays within a few ulp (relative) over [-12, 12]. Speed: one exp
// instead of a tanh, and on AVX-512 at::vec's tanh (Sleef, 1 ulp) costs about three times its
// exp (108 against 35 cycles per vector of 16 floats on a Zen 4 VM), which made the head
// (2048 channels per sample) a tenth of GCT's time on a 7x7 map. gamma = beta = 0 still
// gives exactly g = 2 / (1 + 1) = 1.
//
// Backward, with G = sum_l dy * x and r = 1 / denom:
//   dz    = G * (1 - tanh(z)^2) = G * g(z) * g(-z)
//   Q     = sum_c dz * gamma * e                          (one reduction over C)
//   de    = dz * gamma * r + Q * dr/de,   dr/de = -r^3 e / C (l2), -r^2 sign(e) / C (l1)
//   dbeta = dz,  dgamma = dz * e * r,  dalpha = de * de_dalpha
//   dx    = g * dy + k * f(x),  k = de * alpha / sqrt(s + eps), f(x) = x      (l2)
//                               k = de * alpha,                f(x) = sign(x) (l1)
//                                                               f(x) = 1       (l1, after_relu)
#pragma once

#include "gct_fused/macros.h"
#include "gct_fused/options.h"

namespace gct_fused {

// The per-element map reduced over L in the forward: x^2, |x| or x.
template <typename T>
GF_HD T gct_square_or_abs(GctMode mode, bool after_relu, T v) {
  if (mode == GctMode::kL2) return v * v;
  return after_relu ? v : gf_abs(v);
}

template <typename T>
GF_HD T gct_embedding(GctMode mode, T s, T alpha, T eps) {
  return mode == GctMode::kL2 ? gf_sqrt(s + eps) * alpha : s * alpha;
}

// The term averaged over channels for the normaliser: e^2 (l2) or |e| (l1).
template <typename T>
GF_HD T gct_norm_term(GctMode mode, T e) {
  return mode == GctMode::kL2 ? e * e : gf_abs(e);
}

// denom from the sum over channels of gct_norm_term.
template <typename T>
GF_HD T gct_norm_denom(GctMode mode, T term_sum, int64_t channels, T eps) {
  const T mean = term_sum / static_cast<T>(channels);
  return mode == GctMode::kL2 ? gf_sqrt(mean + eps) : mean + eps;
}

template <typename T>
GF_HD T gct_preactivation(T e, T denom, T gamma, T beta) {
  return e * (gamma / denom) + beta;
}

// g = 1 + tanh(z), as 2 / (1 + exp(-2z)) (see the top of this file). exp(-2z) = inf
// for very negative z gives g = 0, its limit; a NaN z gives NaN.
template <typename T>
GF_HD T gct_gate(T z) {
  return T(2) / (T(1) + gf_exp(T(-2) * z));
}

// Result of the per-channel backward head.
template <typename T>
struct GctChannelGrad {
  T k;       // coefficient of f(x) in dx
  T dalpha;  // this sample's contribution to dalpha
  T dgamma;  // ... to dgamma
};

// d loss / d z for one channel, from G = sum dy * x, z, and its gate g = gct_gate(z):
// 1 - tanh(z)^2 = (1 + t)(1 - t) = g(z) * g(-z). No cancellation on either side (1 - t * t
// and (2 - g) * g lose their digits where |t| is near 1), and 0 in the tails, where one of
// the two exps overflows and its gate is 0.
template <typename T>
GF_HD T gct_dz(T grad_gate, T z, T g) {
  return grad_gate * (g * gct_gate(-z));
}

// One channel of the backward head, once Q = sum_c dz * gamma * e is known.
template <typename T>
GF_HD GctChannelGrad<T> gct_channel_backward(GctMode mode, T s, T e, T denom, T dz, T q,
                                             T alpha, T gamma, T eps, int64_t channels) {
  const T r = T(1) / denom;
  const T cinv = T(1) / static_cast<T>(channels);
  GctChannelGrad<T> out;
  if (mode == GctMode::kL2) {
    const T de = dz * gamma * r - q * r * r * r * e * cinv;
    const T root = gf_sqrt(s + eps);
    out.dalpha = de * root;
    out.k = de * alpha / root;
  } else {
    const T de = dz * gamma * r - q * r * r * gf_sign(e) * cinv;
    out.dalpha = de * s;
    out.k = de * alpha;
  }
  out.dgamma = dz * e * r;
  return out;
}

}  // namespace gct_fused
