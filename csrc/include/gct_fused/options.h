// The enumerations behind the string options of the op schemas.
//
// Schemas take strings ("l2", "relu", "hardsigmoid", ...) so that Python callers and
// error messages read naturally; kernels switch on these enums. parse_* live in
// csrc/options.cpp (host only) and raise an error naming the argument on bad input.
#pragma once

#include <cstdint>

namespace gct_fused {

// GCT embedding: l2 = sqrt(sum x^2 + eps), l1 = sum |x| (sum x when after_relu).
enum class GctMode : int32_t { kL2 = 0, kL1 = 1 };

// SE hidden activation.
enum class Activation : int32_t { kReLU = 0, kSiLU = 1 };

// SE output gate.
enum class Gate : int32_t { kSigmoid = 0, kHardSigmoid = 1 };

// Activation after the residual add of se_residual: y = act(x * s + identity).
enum class Epilogue : int32_t { kNone = 0, kReLU = 1 };

}  // namespace gct_fused
