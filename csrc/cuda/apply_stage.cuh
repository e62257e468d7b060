// Stage 3 of the skeleton: out(n, c, l) = apply(in(n, c, l), coefficients of (n, c)),
// element-wise. One block per (chunk of a sample, sample); see ApplyPlan. Vectorised
// plans move 16 bytes per tensor per step (a scalar tail ends the last chunk); the
// others (mixed or strided layouts) use scalar loads with each tensor's strides.
//
// The coefficients come from a Coef source with two device methods:
//   Sample prepare(n, c_lo, c_hi, staged)  once per (block, sample), by all threads;
//                                          may fill `staged` (dynamic shared memory)
//                                          for channels [c_lo, c_hi] and synchronise
//   void get(sample, c, acc_t* cf)         the NK coefficients of channel c
// TableCoef reads them from (N, C) tables written by a head kernel; an op may instead
// compute them in prepare (the folded GCT forward head).
#pragma once

#include "channel_plan.h"
#include "device_utils.cuh"
#include "kernel_launch.cuh"

namespace gct_fused::cuda {

// Coefficients from NK tables of shape (N, C) in the accumulation type.
template <typename acc_t, int NK>
struct TableCoef {
  const acc_t* table[NK];
  int64_t channels;

  struct Sample {
    int64_t row;  // n * C
  };
  __device__ __forceinline__ Sample prepare(int64_t n, int64_t, int64_t, acc_t*) const {
    return Sample{n * channels};
  }
  __device__ __forceinline__ void get(const Sample& s, int64_t c, acc_t* cf) const {
#pragma unroll
    for (int k = 0; k < NK; ++k) cf[k] = table[k][s.row + c];
  }
};

// Walks element numbers i = outer * extent + inner of one sample by a fixed step,
// without a division per step.
struct FlatCursor {
  int64_t outer, inner, extent, step_outer, step_inner;
  __device__ __forceinline__ FlatCursor(int64_t i, int64_t step, int64_t extent_)
      : outer(i / extent_), inner(i % extent_), extent(extent_), step_outer(step / extent_),
        step_inner(step % extent_) {}
  __device__ __forceinline__ void advance() {
    inner += step_inner;
    outer += step_outer;
    if (inner >= extent) {
      inner -= extent;
      ++outer;
    }
  }
};

template <typename scalar_t, int NIn, int NOut, int NK, typename Apply, typename Coef>
__device__ __forceinline__ void apply_scalar(const Operands<const scalar_t, NIn>& in,
                                             const Operands<scalar_t, NOut>& out, int64_t n, int64_t c,
                                             int64_t l, const acc_type<scalar_t>* cf, const Apply& apply) {
  using acc_t = acc_type<scalar_t>;
  acc_t a[NIn], r[NOut];
#pragma unroll
  for (int k = 0; k < NIn; ++k) a[k] = static_cast<acc_t>(*in.t[k].at(n, c, l));
  apply(a, cf, r);
#pragma unroll
  for (int j = 0; j < NOut; ++j) *out.t[j].at(n, c, l) = static_cast<scalar_t>(r[j]);
}

template <typename scalar_t, int NIn, int NOut, int NK, typename Apply, typename Coef>
__global__ void __launch_bounds__(kThreads)
    apply_kernel(Operands<const scalar_t, NIn> in, Operands<scalar_t, NOut> out, ApplyPlan plan, Apply apply,
                 Coef coef) {
  using acc_t = acc_type<scalar_t>;
  constexpr int V = vec_width<scalar_t>();
  acc_t* staged = dynamic_shared<acc_t>();

  const int64_t C = plan.c, L = plan.l;
  const int64_t total = C * L;
  const int64_t extent = plan.order_c ? C : L;  // the inner (fastest) extent of the numbering
  const int64_t begin = int64_t(blockIdx.x) * plan.chunk;
  if (begin >= total) return;  // whole block, before any synchronisation
  const int64_t end = begin + plan.chunk < total ? begin + plan.chunk : total;
  const int64_t c_lo = plan.order_c ? 0 : begin / L;
  const int64_t c_hi = plan.order_c ? C - 1 : (end - 1) / L;

  for (int64_t n = blockIdx.y; n < plan.n; n += gridDim.y) {
    const auto sample = coef.prepare(n, c_lo, c_hi, staged);
    acc_t cf[NK > 0 ? NK : 1];
    int64_t vec_end = begin;
    if (plan.vectorized) {
      vec_end = begin + (end - begin) / V * V;
      const int64_t step = int64_t(kThreads) * V;
      FlatCursor cur(begin + int64_t(threadIdx.x) * V, step, extent);
      for (int64_t i = begin + int64_t(threadIdx.x) * V; i < vec_end; i += step, cur.advance()) {
        const int64_t c = plan.order_c ? cur.inner : cur.outer;
        const int64_t l = plan.order_c ? cur.outer : cur.inner;
        Vec16<scalar_t> src[NIn];
#pragma unroll
        for (int k = 0; k < NIn; ++k) src[k] = load_vec(in.t[k].at(n, c, l));
        Vec16<scalar_t> dst[NOut];
        int64_t prev = -1;
#pragma unroll
        for (int e = 0; e < V; ++e) {
          // Channel of element i + e: the run may cross into the next row(s).
          int64_t ie = cur.inner + e, oe = cur.outer;
          while (ie >= extent) {
            ie -= extent;
            ++oe;
          }
          const int64_t ch = plan.order_c ? ie : oe;
          if (ch != prev) {
            coef.get(sample, ch, cf);
            prev = ch;
          }
          acc_t a[NIn], r[NOut];
#pragma unroll
          for (int k = 0; k < NIn; ++k) a[k] = static_cast<acc_t>(src[k].v[e]);
          apply(a, cf, r);
#pragma unroll
          for (int j = 0; j < NOut; ++j) dst[j].v[e] = static_cast<scalar_t>(r[j]);
        }
#pragma unroll
        for (int j = 0; j < NOut; ++j) store_vec(out.t[j].at(n, c, l), dst[j]);
      }
    }
    // Scalar path (or the vectorised chunk's tail).
    if (vec_end < end) {
      FlatCursor cur(vec_end + threadIdx.x, kThreads, extent);
      for (int64_t i = vec_end + threadIdx.x; i < end; i += kThreads, cur.advance()) {
        const int64_t c = plan.order_c ? cur.inner : cur.outer;
        const int64_t l = plan.order_c ? cur.outer : cur.inner;
        coef.get(sample, c, cf);
        apply_scalar<scalar_t, NIn, NOut, NK, Apply, Coef>(in, out, n, c, l, cf, apply);
      }
    }
    __syncthreads();  // the next sample's prepare may overwrite the staged coefficients
  }
}

template <typename scalar_t, int NIn, int NOut, int NK, typename Apply, typename Coef>
void launch_apply(const ApplyPlan& plan, const Operands<const scalar_t, NIn>& in,
                  const Operands<scalar_t, NOut>& out, const Apply& apply, const Coef& coef,
                  size_t staged_bytes, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(plan.chunks), static_cast<unsigned>(plan.grid_y));
  launch_kernel(apply_kernel<scalar_t, NIn, NOut, NK, Apply, Coef>, grid, kThreads, staged_bytes, stream, in, out,
                plan, apply, coef);
}

}  // namespace gct_fused::cuda
