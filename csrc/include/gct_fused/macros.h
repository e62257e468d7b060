// Portability layer for the math shared by the CPU and CUDA kernels.
//
// Every function in the gct_fused/ headers is compiled twice: once by the host
// compiler for the CPU kernels and once by nvcc for the CUDA kernels. Running the
// CPU tests therefore exercises the exact per-channel formulas the GPU uses.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define GF_HD __host__ __device__ __forceinline__
#else
#define GF_HD inline
#endif

namespace gct_fused {

// Overloads rather than std:: calls: std::exp etc. are not device functions.
GF_HD float gf_exp(float v) { return expf(v); }
GF_HD double gf_exp(double v) { return exp(v); }
GF_HD float gf_sqrt(float v) { return sqrtf(v); }
GF_HD double gf_sqrt(double v) { return sqrt(v); }
GF_HD float gf_abs(float v) { return fabsf(v); }
GF_HD double gf_abs(double v) { return fabs(v); }

// sign(v) with sign(0) = 0, the subgradient torch uses for abs().
template <typename T>
GF_HD T gf_sign(T v) {
  return static_cast<T>((v > T(0)) - (v < T(0)));
}

}  // namespace gct_fused
