// Element-wise activations and gates of the SE head, with their derivatives.
//
// Each derivative matches the one PyTorch's autograd uses, including the value at
// kinks: relu'(0) = 0 (threshold_backward) and hardsigmoid'(+-3) = 0.
#pragma once

#include "gct_fused/macros.h"
#include "gct_fused/options.h"

namespace gct_fused {

template <typename T>
GF_HD T sigmoid(T v) {
  return T(1) / (T(1) + gf_exp(-v));
}

// relu keeps NaN (as torch.relu does): NaN < 0 is false.
template <typename T>
GF_HD T activation_forward(Activation act, T u) {
  if (act == Activation::kReLU) return u < T(0) ? T(0) : u;
  return u * sigmoid(u);  // SiLU
}

// d act(u) / du
template <typename T>
GF_HD T activation_derivative(Activation act, T u) {
  if (act == Activation::kReLU) return u > T(0) ? T(1) : T(0);
  const T sg = sigmoid(u);
  return sg * (T(1) + u * (T(1) - sg));
}

// hardsigmoid(o) = relu6(o + 3) / 6, written as torch computes it.
template <typename T>
GF_HD T gate_forward(Gate gate, T o) {
  if (gate == Gate::kSigmoid) return sigmoid(o);
  if (o <= T(-3)) return T(0);
  if (o >= T(3)) return T(1);
  return o / T(6) + T(0.5);
}

// d gate(o) / do, given s = gate(o) (the sigmoid's derivative is s (1 - s)).
template <typename T>
GF_HD T gate_derivative(Gate gate, T o, T s) {
  if (gate == Gate::kSigmoid) return s * (T(1) - s);
  return (o > T(-3) && o < T(3)) ? T(1) / T(6) : T(0);
}

// d gate(o) / do
template <typename T>
GF_HD T gate_derivative(Gate gate, T o) {
  return gate_derivative(gate, o, gate_forward(gate, o));
}

}  // namespace gct_fused
