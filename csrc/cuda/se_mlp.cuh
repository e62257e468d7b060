// The SE head on CUDA: the two-layer MLP per sample and its backward, as four
// "products" (a weight matrix times a per-sample vector, then a per-element finish).
// Activations and gates are gct_fused/pointwise.h's, as on CPU.
//
// Two ways to run a product, with the same fixed order inside every dot product
// (dot_lanes(len) lanes, lane q adding k = q, q + lanes, ..., then an xor tree), so they
// give bitwise the same numbers:
//   sample_dots          the whole block, one sample: used by the one-block-per-sample
//                        head kernels when the weights are small (one launch for the head)
//   batched_dots_kernel  a grid of (row blocks, blocks of kHeadSamples samples): each
//                        block reads a slice of the weights once for several samples,
//                        used when the weights are large (one launch per product)
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include "device_utils.cuh"
#include "gct_fused/pointwise.h"
#include "kernel_args.cuh"
#include "kernel_launch.cuh"
#include "op_helpers.h"

namespace gct_fused::cuda {

// Above this many weights per matrix (C * R) the head runs as batched products: one
// block per sample would re-read both matrices for every sample.
constexpr int64_t kSplitHeadWeights = 16384;
// Samples per block of batched_dots_kernel.
constexpr int kHeadSamples = 8;

// w1 (R, C) and w2 (C, R) row-major; b1 (R,), b2 (C,) or absent (zeros).
template <typename scalar_t>
struct SeMlp {
  ParamIn<scalar_t> w1, b1, w2, b2;
  int64_t channels, hidden;
  Activation act;
  Gate gate;
};

// Keeps the contiguous weights alive for the kernels that read them.
struct SeWeights {
  at::Tensor w1, b1, w2, b2;  // b1 / b2 undefined when absent
  SeWeights(const at::Tensor& w1_, const c10::optional<at::Tensor>& b1_, const at::Tensor& w2_,
            const c10::optional<at::Tensor>& b2_)
      : w1(flat_param(w1_)), w2(flat_param(w2_)) {
    if (b1_.has_value()) b1 = flat_param(*b1_);
    if (b2_.has_value()) b2 = flat_param(*b2_);
  }
  template <typename scalar_t>
  SeMlp<scalar_t> mlp(Activation act, Gate gate) const {
    return SeMlp<scalar_t>{param_in<scalar_t>(w1), param_in<scalar_t>(b1), param_in<scalar_t>(w2),
                           param_in<scalar_t>(b2), w1.size(1), w1.size(0), act, gate};
  }
  bool split_head() const { return w1.numel() >= kSplitHeadWeights; }
};

// Per-sample buffers of the head, (N, C) or (N, R), in the accumulation type.
template <typename acc_t>
struct SeBuffers {
  acc_t* pooled;  // (N, C) mean over L
  acc_t* hidden;  // (N, R) h = act(u)
  acc_t* u;       // (N, R) backward only: u = W1 p + b1, replaced by d_u
  acc_t* scale;   // (N, C) s = gate(o)
  acc_t* d_o;     // (N, C) backward only
  acc_t* dp;      // (N, C) backward only: d_p / L
};

// u = W1 p + b1, h = act(u): rows r < R, len C.
template <typename scalar_t>
struct HiddenLayer {
  using acc_t = acc_type<scalar_t>;
  SeMlp<scalar_t> m;
  SeBuffers<acc_t> b;
  __device__ __forceinline__ acc_t weight(int64_t r, int64_t c) const { return m.w1[r * m.channels + c]; }
  __device__ __forceinline__ acc_t vec(int64_t n, int64_t c) const { return b.pooled[n * m.channels + c]; }
  __device__ __forceinline__ void finish(int64_t n, int64_t r, acc_t dot) const {
    const acc_t u = m.b1[r] + dot;
    if (b.u != nullptr) b.u[n * m.hidden + r] = u;
    b.hidden[n * m.hidden + r] = activation_forward(m.act, u);
  }
};

// o = W2 h + b2, s = gate(o), and in the backward d_o = G * gate'(o) (as autograd computes
// it: gate_backward): rows c < C, len R.
template <typename scalar_t>
struct OutputLayer {
  using acc_t = acc_type<scalar_t>;
  SeMlp<scalar_t> m;
  SeBuffers<acc_t> b;
  PartialSums<acc_t> grads;  // G = sum_l dy * x (backward only; data == nullptr in the forward)
  __device__ __forceinline__ acc_t weight(int64_t c, int64_t r) const { return m.w2[c * m.hidden + r]; }
  __device__ __forceinline__ acc_t vec(int64_t n, int64_t r) const { return b.hidden[n * m.hidden + r]; }
  __device__ __forceinline__ void finish(int64_t n, int64_t c, acc_t dot) const {
    const acc_t o = m.b2[c] + dot;
    const acc_t s = gate_forward(m.gate, o);
    b.scale[n * m.channels + c] = s;
    if (grads.data != nullptr) b.d_o[n * m.channels + c] = gate_backward(m.gate, grads.sum(n, c), o, s);
  }
};

// d_u = (W2^T d_o) * act'(u) (activation_backward): rows r < R, len C. d_u overwrites u
// (each element is read, then written, by the one lane that finishes it).
template <typename scalar_t>
struct HiddenGrad {
  using acc_t = acc_type<scalar_t>;
  SeMlp<scalar_t> m;
  SeBuffers<acc_t> b;
  __device__ __forceinline__ acc_t weight(int64_t r, int64_t c) const { return m.w2[c * m.hidden + r]; }
  __device__ __forceinline__ acc_t vec(int64_t n, int64_t c) const { return b.d_o[n * m.channels + c]; }
  __device__ __forceinline__ void finish(int64_t n, int64_t r, acc_t dot) const {
    acc_t* du = b.u + n * m.hidden + r;
    *du = activation_backward(m.act, dot, *du);
  }
};

// d_p / L = (W1^T d_u) / L: rows c < C, len R.
template <typename scalar_t>
struct InputGrad {
  using acc_t = acc_type<scalar_t>;
  SeMlp<scalar_t> m;
  SeBuffers<acc_t> b;
  acc_t inv_l;
  __device__ __forceinline__ acc_t weight(int64_t c, int64_t r) const { return m.w1[r * m.channels + c]; }
  __device__ __forceinline__ acc_t vec(int64_t n, int64_t r) const { return b.u[n * m.hidden + r]; }
  __device__ __forceinline__ void finish(int64_t n, int64_t c, acc_t dot) const {
    b.dp[n * m.channels + c] = dot * inv_l;
  }
};

// One product for one sample by the whole block (all threads must call it).
template <typename acc_t, typename Product>
__device__ __forceinline__ void sample_dots(const Product& p, int64_t n, int64_t rows, int64_t len) {
  rowwise_dots<acc_t>(
      rows, len, [&](int64_t j, int64_t k) { return p.weight(j, k) * p.vec(n, k); },
      [&](int64_t j, acc_t dot) { p.finish(n, j, dot); });
}

// One product for every sample: block (x, y) takes rows [x * groups, (x + 1) * groups)
// for samples [y * kHeadSamples, ...), each weight loaded once for those samples.
template <typename acc_t, typename Product>
__global__ void __launch_bounds__(kThreads)
    batched_dots_kernel(Product p, int64_t rows, int64_t len, int64_t samples) {
  const int lanes = dot_lanes(len);
  const int q = static_cast<int>(threadIdx.x) & (lanes - 1);
  const int64_t groups = blockDim.x / lanes;
  const int64_t j = int64_t(blockIdx.x) * groups + threadIdx.x / lanes;
  for (int64_t n0 = int64_t(blockIdx.y) * kHeadSamples; n0 < samples; n0 += int64_t(gridDim.y) * kHeadSamples) {
    const int64_t left = samples - n0;
    const int count = left < kHeadSamples ? static_cast<int>(left) : kHeadSamples;
    acc_t acc[kHeadSamples];
#pragma unroll
    for (int s = 0; s < kHeadSamples; ++s) acc[s] = acc_t(0);
    if (j < rows) {
      for (int64_t k = q; k < len; k += lanes) {
        const acc_t w = p.weight(j, k);
#pragma unroll
        for (int s = 0; s < kHeadSamples; ++s) {
          if (s < count) acc[s] += w * p.vec(n0 + s, k);
        }
      }
    }
#pragma unroll
    for (int s = 0; s < kHeadSamples; ++s) acc[s] = group_sum(acc[s], lanes);
    if (j < rows && q == 0) {
      for (int s = 0; s < count; ++s) p.finish(n0 + s, j, acc[s]);
    }
  }
}

template <typename acc_t, typename Product>
void launch_batched_dots(const Product& p, int64_t rows, int64_t len, int64_t samples, cudaStream_t stream) {
  const int64_t groups = kThreads / dot_lanes(len);
  const dim3 grid(static_cast<unsigned>((rows + groups - 1) / groups),
                  static_cast<unsigned>(grid_for(samples, kHeadSamples, 65535)));
  launch_kernel(batched_dots_kernel<acc_t, Product>, grid, kThreads, 0, stream, p, rows, len, samples);
}

}  // namespace gct_fused::cuda
