// Stage-1 maps and stage-3 applies used by more than one op (the CUDA twins of the
// ones in cpu/channel_skeleton.h, on scalars of the accumulation type).
#pragma once

namespace gct_fused::cuda {

struct IdentityMap {  // sum x: SE squeeze, GCT l1 after relu
  template <typename T>
  __device__ __forceinline__ T operator()(const T* v) const { return v[0]; }
};

struct ProductMap {  // inputs (dy, x): sum dy * x, every backward
  template <typename T>
  __device__ __forceinline__ T operator()(const T* v) const { return v[0] * v[1]; }
};

struct ScaleApply {  // y = coef * x, both forwards
  template <typename T>
  __device__ __forceinline__ void operator()(const T* in, const T* cf, T* out) const { out[0] = in[0] * cf[0]; }
};

}  // namespace gct_fused::cuda
