// Device building blocks of the CUDA kernels: accumulation types, 16-byte vectors,
// deterministic warp/block reductions, and readers/writers of parameter tensors whose
// dtype may be the map's (half, bfloat16, ...) or the accumulation type (float32).
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>

#include "channel_plan.h"

namespace gct_fused::cuda {

template <typename scalar_t>
using acc_type = at::opmath_type<scalar_t>;  // float for half/bfloat16/float, double for double

// Elements of scalar_t in one 16-byte vector.
template <typename scalar_t>
constexpr int vec_width() {
  return static_cast<int>(16 / sizeof(scalar_t));
}

template <typename scalar_t>
struct alignas(16) Vec16 {
  scalar_t v[vec_width<scalar_t>()];
};

template <typename scalar_t>
__device__ __forceinline__ Vec16<scalar_t> load_vec(const scalar_t* p) {
  return *reinterpret_cast<const Vec16<scalar_t>*>(p);
}

template <typename scalar_t>
__device__ __forceinline__ void store_vec(scalar_t* p, const Vec16<scalar_t>& v) {
  *reinterpret_cast<Vec16<scalar_t>*>(p) = v;
}

// The block's dynamic shared memory (the launch's shared_bytes), 16-byte aligned.
template <typename T>
__device__ __forceinline__ T* dynamic_shared() {
#ifdef GCT_FUSED_CUDA_EMULATION
  return static_cast<T*>(::gct_fused_emu::dynamic_shared());
#else
  extern __shared__ __align__(16) unsigned char dynamic_shared_bytes[];
  return reinterpret_cast<T*>(dynamic_shared_bytes);
#endif
}

// Sum over the lanes of the warp by an xor butterfly. Addition is commutative, so
// every lane ends with bitwise the same value, and the order is fixed.
template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over aligned groups of `lanes` lanes (a power of two <= 32); every lane of the
// warp must call it.
template <typename T>
__device__ __forceinline__ T group_sum(T v, int lanes) {
  for (int offset = lanes >> 1; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block, returned to every thread. Warp sums, then every thread adds the
// warp totals in warp order: fixed order, same value everywhere. Every thread of the
// block must call it (it synchronises).
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T warp_totals[32];
  v = warp_sum(v);
  __syncthreads();  // a previous call may still be reading warp_totals
  if ((threadIdx.x & 31) == 0) warp_totals[threadIdx.x >> 5] = v;
  __syncthreads();
  T total = T(0);
  const int warps = static_cast<int>((blockDim.x + 31) >> 5);
  for (int w = 0; w < warps; ++w) total += warp_totals[w];
  return total;
}

// A parameter (or weight) tensor read in the accumulation type. It holds either acc_t
// (float32 parameters of a half/bfloat16 map, or any float32/float64 call) or
// scalar_t (half/bfloat16 parameters); data == nullptr is an absent bias (zeros).
// The branch is uniform, so one kernel serves both dtypes.
template <typename scalar_t>
struct ParamIn {
  using acc_t = acc_type<scalar_t>;
  const void* data = nullptr;
  bool is_acc = true;
  __device__ __forceinline__ acc_t operator[](int64_t i) const {
    if (data == nullptr) return acc_t(0);
    if (is_acc) return static_cast<const acc_t*>(data)[i];
    return static_cast<acc_t>(static_cast<const scalar_t*>(data)[i]);
  }
};

// A parameter gradient written in its parameter's dtype (see ParamIn).
template <typename scalar_t>
struct ParamOut {
  using acc_t = acc_type<scalar_t>;
  void* data = nullptr;
  bool is_acc = true;
  __device__ __forceinline__ void store(int64_t i, acc_t v) const {
    if (is_acc) static_cast<acc_t*>(data)[i] = v;
    else static_cast<scalar_t*>(data)[i] = static_cast<scalar_t>(v);
  }
};

// The per-(n, c) sums of stage 1 as written by the reduction: `tiles` pieces per
// (n, c), added in piece order (fixed, so results are bitwise reproducible).
template <typename acc_t>
struct PartialSums {
  const acc_t* data;
  int64_t tiles, stride_n, stride_c, stride_t;
  __device__ __forceinline__ acc_t sum(int64_t n, int64_t c) const {
    const acc_t* p = data + n * stride_n + c * stride_c;
    acc_t s = p[0];
    for (int64_t t = 1; t < tiles; ++t) s += p[t * stride_t];
    return s;
  }
};

template <typename acc_t>
PartialSums<acc_t> partial_sums(const ReducePlan& plan, const acc_t* data) {
  return PartialSums<acc_t>{data, plan.tiles, plan.partial_stride_n(), plan.partial_stride_c(),
                            plan.partial_stride_t()};
}

// For every row j < rows: out(j, sum_{k < len} term(j, k)), by groups of dot_lanes(len)
// lanes per row. Lane q of a group adds k = q, q + lanes, ... in order, then the group
// adds its lanes by an xor tree: a fixed order, independent of timing. Every thread of
// the block must call it (whole warps run the same iterations for the shuffles).
template <typename acc_t, typename Term, typename Out>
__device__ __forceinline__ void rowwise_dots(int64_t rows, int64_t len, const Term& term, const Out& out) {
  const int lanes = dot_lanes(len);
  const int q = static_cast<int>(threadIdx.x) & (lanes - 1);
  const int64_t groups = blockDim.x / lanes;
  const int64_t group = threadIdx.x / lanes;
  const int64_t rounds = (rows + groups - 1) / groups;
  for (int64_t round = 0; round < rounds; ++round) {
    const int64_t j = round * groups + group;
    acc_t s = acc_t(0);
    if (j < rows) {
      for (int64_t k = q; k < len; k += lanes) s += term(j, k);
    }
    s = group_sum(s, lanes);
    if (j < rows && q == 0) out(j, s);
  }
}

}  // namespace gct_fused::cuda
