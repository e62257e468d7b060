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

// grad * d gate(o) / do, given s = gate(o), as autograd computes it. hardsigmoid's is a
// selection (hardtanh_backward): grad / 6 where -3 < o < 3, else 0 even for an infinite or
// NaN grad (a product would give inf * 0 = NaN). A NaN o gives 0, as torch's vectorized
// hardtanh_backward does (its scalar loop, used for the few elements of a tensor's tail,
// passes grad instead: torch itself is not consistent there). The sigmoid's is a product,
// as in sigmoid_backward.
template <typename T>
GF_HD T gate_backward(Gate gate, T grad, T o, T s) {
  if (gate == Gate::kSigmoid) return grad * gate_derivative(gate, o, s);
  return (o > T(-3) && o < T(3)) ? grad * (T(1) / T(6)) : T(0);
}

// grad * d act(u) / du as autograd computes it: relu's is a selection (threshold_backward: 0
// where u <= 0, grad elsewhere, NaN u included), SiLU's a product (silu_backward).
template <typename T>
GF_HD T activation_backward(Activation act, T grad, T u) {
  if (act == Activation::kReLU) return u <= T(0) ? T(0) : grad;
  return grad * activation_derivative(act, u);
}

}  // namespace gct_fused
