// GCT forward and backward on CUDA: the reduce -> head -> apply skeleton with the GCT
// maps, heads and applies. The per-channel formulas are gct_fused/gct_math.h's, the
// ones the CPU kernels use.
//
// Forward  (2 launches, 3 when the reduction is split along L):
//   reduce s = sum_l x^2 | |x| | x  ->  [combine pieces]  ->  apply y = g * x, with the
//   head folded into the apply kernel: each block computes its sample's normaliser (a
//   block reduction over C of the saved sums) and the gates of the channels it touches.
// Backward (4 launches):
//   reduce G = sum_l dy * x  ->  head (one block per sample: gate g, coefficient k and
//   the sample's parameter-gradient terms)  ->  apply dx = g * dy + k * f(x)  ->  sum the
//   parameter-gradient terms over n in order (bitwise reproducible, no atomics).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include "apply_stage.cuh"
#include "gct_fused/gct_math.h"
#include "kernel_args.cuh"
#include "kernel_launch.cuh"
#include "op_helpers.h"
#include "ops_cuda.h"
#include "reduce_stage.cuh"
#include "stage_functors.cuh"

namespace gct_fused::cuda {
namespace {

// Gates staged in shared memory by the folded forward head, at most this many bytes.
constexpr int64_t kMaxStagedBytes = 32 * 1024;

// Stage-1 map of the forward: x^2 (l2) or |x| (l1). l1 after relu sums x itself, the
// skeleton's IdentityMap (as the CPU kernels do).
template <GctMode kMode>
struct GctSumMap {
  template <typename T>
  __device__ __forceinline__ T operator()(const T* v) const { return gct_square_or_abs(kMode, false, v[0]); }
};

// Stage-3 apply of the backward, inputs (dy, x): dx = g * dy + k * f(x).
template <int kF>  // f(x): 0 -> x (l2), 1 -> sign(x) (l1), 2 -> 1 (l1 after relu)
struct GctGradApply {
  template <typename T>
  __device__ __forceinline__ void operator()(const T* in, const T* cf, T* out) const {
    if constexpr (kF == 0) out[0] = in[0] * cf[0] + in[1] * cf[1];
    else if constexpr (kF == 1) out[0] = in[0] * cf[0] + gf_sign(in[1]) * cf[1];
    else out[0] = in[0] * cf[0] + cf[1];
  }
};

template <typename scalar_t>
struct GctParams {
  using acc_t = acc_type<scalar_t>;
  ParamIn<scalar_t> alpha, gamma, beta;
  acc_t eps;
  int64_t channels;
  GctMode mode;
};

// The normaliser of one sample from its sums s[0..C): a block reduction over C. Every
// thread of the block calls it; with kThreads threads the value is bitwise the same
// in the forward apply and the backward head.
template <typename scalar_t>
__device__ __forceinline__ acc_type<scalar_t> gct_sample_denom(const GctParams<scalar_t>& p,
                                                               const acc_type<scalar_t>* s) {
  using acc_t = acc_type<scalar_t>;
  acc_t term = acc_t(0);
  for (int64_t c = threadIdx.x; c < p.channels; c += blockDim.x) {
    term += gct_norm_term(p.mode, gct_embedding(p.mode, s[c], p.alpha[c], p.eps));
  }
  term = block_sum(term);
  return gct_norm_denom(p.mode, term, p.channels, p.eps);
}

template <typename scalar_t>
__device__ __forceinline__ acc_type<scalar_t> gct_channel_gate(const GctParams<scalar_t>& p,
                                                               const acc_type<scalar_t>* s, int64_t c,
                                                               acc_type<scalar_t> denom) {
  const auto e = gct_embedding(p.mode, s[c], p.alpha[c], p.eps);
  return gct_gate(gct_preactivation(e, denom, p.gamma[c], p.beta[c]));
}

// The forward head folded into the apply kernel: the gate of channel c of sample n
// from the saved sums. prepare() stages the gates of the block's channels in shared
// memory (or, when they do not fit, get() computes each one: correct, slower).
template <typename scalar_t>
struct GctGateCoef {
  using acc_t = acc_type<scalar_t>;
  GctParams<scalar_t> params;
  const acc_t* stats;  // (N, C) sums of the forward reduction
  bool staged;

  struct Sample {
    const acc_t* s;
    const acc_t* gates;
    int64_t c_lo;
    acc_t denom;
  };

  __device__ __forceinline__ Sample prepare(int64_t n, int64_t c_lo, int64_t c_hi, acc_t* smem) const {
    const acc_t* s = stats + n * params.channels;
    const acc_t denom = gct_sample_denom(params, s);
    if (staged) {
      for (int64_t c = c_lo + threadIdx.x; c <= c_hi; c += blockDim.x) {
        smem[c - c_lo] = gct_channel_gate(params, s, c, denom);
      }
      __syncthreads();
    }
    return Sample{s, smem, c_lo, denom};
  }

  __device__ __forceinline__ void get(const Sample& sample, int64_t c, acc_t* cf) const {
    cf[0] = staged ? sample.gates[c - sample.c_lo] : gct_channel_gate(params, sample.s, c, sample.denom);
  }
};

// Backward head, one block per sample: from the saved sums s and G = sum_l dy * x, the
// apply coefficients (gate g, k) and the sample's terms of dalpha, dgamma, dbeta
// (terms laid out [3, N, C]).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    gct_backward_head_kernel(GctParams<scalar_t> p, const acc_type<scalar_t>* stats,
                             PartialSums<acc_type<scalar_t>> grad_sums, int64_t samples,
                             acc_type<scalar_t>* gate_out, acc_type<scalar_t>* k_out,
                             acc_type<scalar_t>* terms) {
  using acc_t = acc_type<scalar_t>;
  const int64_t C = p.channels;
  for (int64_t n = blockIdx.x; n < samples; n += gridDim.x) {
    const acc_t* s = stats + n * C;
    acc_t* dalpha = terms + n * C;
    acc_t* dgamma = terms + (samples + n) * C;
    acc_t* dbeta = terms + (2 * samples + n) * C;  // dz, kept for the second pass
    const acc_t denom = gct_sample_denom(p, s);
    acc_t q = acc_t(0);  // sum_c dz * gamma * e
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const acc_t gamma = p.gamma[c];
      const acc_t e = gct_embedding(p.mode, s[c], p.alpha[c], p.eps);
      const acc_t z = gct_preactivation(e, denom, gamma, p.beta[c]);
      const acc_t g = gct_gate(z);
      gate_out[n * C + c] = g;
      const acc_t dz = gct_dz(grad_sums.sum(n, c), z, g);
      dbeta[c] = dz;
      q += dz * gamma * e;
    }
    q = block_sum(q);
    // Same channel-to-thread mapping as above: each thread reads back its own dz.
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const acc_t alpha = p.alpha[c], gamma = p.gamma[c];
      const acc_t e = gct_embedding(p.mode, s[c], alpha, p.eps);
      const auto r = gct_channel_backward(p.mode, s[c], e, denom, dbeta[c], q, alpha, gamma, p.eps, C);
      k_out[n * C + c] = r.k;
      dalpha[c] = r.dalpha;
      dgamma[c] = r.dgamma;
    }
  }
}

// dalpha, dgamma, dbeta: the per-sample terms summed over n = 0, 1, ... in order.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    gct_param_grad_kernel(const acc_type<scalar_t>* terms, int64_t samples, int64_t channels,
                          ParamOut<scalar_t> dalpha, ParamOut<scalar_t> dgamma, ParamOut<scalar_t> dbeta) {
  using acc_t = acc_type<scalar_t>;
  const int64_t total = 3 * channels;
  for (int64_t j = int64_t(blockIdx.x) * kThreads + threadIdx.x; j < total; j += int64_t(gridDim.x) * kThreads) {
    const int64_t which = j / channels, c = j % channels;
    const acc_t* src = terms + which * samples * channels + c;
    acc_t sum = acc_t(0);
    for (int64_t n = 0; n < samples; ++n) sum += src[n * channels];
    if (which == 0) dalpha.store(c, sum);
    else if (which == 1) dgamma.store(c, sum);
    else dbeta.store(c, sum);
  }
}

template <typename scalar_t>
GctParams<scalar_t> gct_params(const at::Tensor& alpha, const at::Tensor& gamma, const at::Tensor& beta,
                               double epsilon, int64_t channels, GctMode mode) {
  GctParams<scalar_t> p;
  p.alpha = param_in<scalar_t>(alpha);
  p.gamma = param_in<scalar_t>(gamma);
  p.beta = param_in<scalar_t>(beta);
  p.eps = static_cast<acc_type<scalar_t>>(epsilon);
  p.channels = channels;
  p.mode = mode;
  return p;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> gct_forward_cuda(const at::Tensor& x, const at::Tensor& alpha,
                                                    const at::Tensor& gamma, const at::Tensor& beta,
                                                    double epsilon, c10::string_view mode_name, bool after_relu) {
  const GctMode mode = parse_gct_mode(mode_name);
  check_gct_args(x, alpha, gamma, beta);
  check_epsilon(epsilon);
  const DeviceGuard guard(x.device());
  OutputMap y(x);
  const int64_t N = x.size(0), C = x.size(1);
  at::Tensor stats = at::empty({N, C}, acc_options(x));
  if (stats.numel() == 0) return {y.result(), stats};
  const int64_t L = x.numel() / (N * C);
  if (L == 0) {  // empty spatial extent: every sum is 0 and there is nothing to scale
    stats.zero_();
    return {y.result(), stats};
  }
  const at::Tensor xm = mergeable_input(x);
  const at::Tensor a = flat_param(alpha), g = flat_param(gamma), b = flat_param(beta);
  const cudaStream_t stream = current_stream();
  const int sms = sm_count(x.get_device());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gct_forward_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    const ReducePlan rp = make_reduce_plan({layout_of(xm)}, N, C, L, sizeof(scalar_t), sms);
    const at::Tensor partial = rp.tiles > 1 ? at::empty({rp.partial_numel()}, stats.options()) : stats;
    const Operands<const scalar_t, 1> rin{{operand_of<const scalar_t>(xm)}};
    acc_t* sums = partial.data_ptr<acc_t>();
    if (mode == GctMode::kL2) launch_reduce<scalar_t, 1>(rp, rin, sums, GctSumMap<GctMode::kL2>{}, stream);
    else if (after_relu) launch_reduce<scalar_t, 1>(rp, rin, sums, IdentityMap{}, stream);
    else launch_reduce<scalar_t, 1>(rp, rin, sums, GctSumMap<GctMode::kL1>{}, stream);
    if (rp.tiles > 1) {
      launch_combine(rp, static_cast<const acc_t*>(sums), acc_t(1), stats.data_ptr<acc_t>(), sms, stream);
    }

    // Each block recomputes its sample's normaliser (O(C)): chunks of >= 4 C elements
    // keep that below a quarter of the block's element work.
    const ApplyPlan ap = make_apply_plan({layout_of(xm), layout_of(y.target())}, N, C, L, sizeof(scalar_t),
                                         sms, 4 * C);
    const int64_t staged_bytes = ap.channels_per_chunk * int64_t(sizeof(acc_t));
    const GctGateCoef<scalar_t> coef{gct_params<scalar_t>(a, g, b, epsilon, C, mode), stats.data_ptr<acc_t>(),
                                     staged_bytes <= kMaxStagedBytes};
    launch_apply<scalar_t, 1, 1, 1>(ap, Operands<const scalar_t, 1>{{operand_of<const scalar_t>(xm)}},
                                    Operands<scalar_t, 1>{{operand_of<scalar_t>(y.target())}}, ScaleApply{},
                                    coef, coef.staged ? static_cast<size_t>(staged_bytes) : 0, stream);
  });
  y.finish();
  return {y.result(), stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gct_backward_cuda(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& gamma,
    const at::Tensor& beta, const at::Tensor& stats, double epsilon, c10::string_view mode_name,
    bool after_relu) {
  const GctMode mode = parse_gct_mode(mode_name);
  check_gct_args(x, alpha, gamma, beta);
  check_epsilon(epsilon);
  check_same_map(x, dy, "dy");
  check_stats(x, stats, "stats");
  const DeviceGuard guard(x.device());
  OutputMap dx(x);
  if (x.numel() == 0) {  // G = 0: every parameter gradient is 0
    return {dx.result(), at::zeros(alpha.sizes(), alpha.options()), at::zeros(gamma.sizes(), gamma.options()),
            at::zeros(beta.sizes(), beta.options())};
  }
  const int64_t N = x.size(0), C = x.size(1), L = x.numel() / (N * C);
  const at::Tensor xm = mergeable_input(x), dym = mergeable_input(dy);
  const at::Tensor a = flat_param(alpha), g = flat_param(gamma), b = flat_param(beta);
  const at::Tensor s = stats.contiguous();
  at::Tensor dalpha = at::empty(alpha.sizes(), alpha.options());
  at::Tensor dgamma = at::empty(gamma.sizes(), gamma.options());
  at::Tensor dbeta = at::empty(beta.sizes(), beta.options());
  const cudaStream_t stream = current_stream();
  const int sms = sm_count(x.get_device());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gct_backward_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    const ReducePlan rp = make_reduce_plan({layout_of(dym), layout_of(xm)}, N, C, L, sizeof(scalar_t), sms);
    const at::Tensor partial = at::empty({rp.partial_numel()}, acc_options(x));
    launch_reduce<scalar_t, 2>(
        rp, Operands<const scalar_t, 2>{{operand_of<const scalar_t>(dym), operand_of<const scalar_t>(xm)}},
        partial.data_ptr<acc_t>(), ProductMap{}, stream);

    const at::Tensor coefs = at::empty({2, N, C}, acc_options(x));  // g, k
    const at::Tensor terms = at::empty({3, N, C}, acc_options(x));  // dalpha, dgamma, dbeta per sample
    acc_t* gate = coefs.data_ptr<acc_t>();
    acc_t* k = gate + N * C;
    const GctParams<scalar_t> p = gct_params<scalar_t>(a, g, b, epsilon, C, mode);
    const PartialSums<acc_t> grads = partial_sums(rp, static_cast<const acc_t*>(partial.data_ptr<acc_t>()));
    launch_kernel(gct_backward_head_kernel<scalar_t>, grid_for(N, 1, 65535), kThreads, 0, stream, p,
                  s.const_data_ptr<acc_t>(), grads, N, gate, k, terms.data_ptr<acc_t>());

    const ApplyPlan ap = make_apply_plan({layout_of(xm), layout_of(dym), layout_of(dx.target())}, N, C, L,
                                         sizeof(scalar_t), sms, 0);
    const Operands<const scalar_t, 2> in{{operand_of<const scalar_t>(dym), operand_of<const scalar_t>(xm)}};
    const Operands<scalar_t, 1> out{{operand_of<scalar_t>(dx.target())}};
    const TableCoef<acc_t, 2> coef{{gate, k}, C};
    if (mode == GctMode::kL2) launch_apply<scalar_t, 2, 1, 2>(ap, in, out, GctGradApply<0>{}, coef, 0, stream);
    else if (after_relu) launch_apply<scalar_t, 2, 1, 2>(ap, in, out, GctGradApply<2>{}, coef, 0, stream);
    else launch_apply<scalar_t, 2, 1, 2>(ap, in, out, GctGradApply<1>{}, coef, 0, stream);

    launch_kernel(gct_param_grad_kernel<scalar_t>, grid_for(3 * C, kThreads, int64_t(sms) * 8), kThreads, 0,
                  stream, terms.const_data_ptr<acc_t>(), N, C, param_out<scalar_t>(dalpha),
                  param_out<scalar_t>(dgamma), param_out<scalar_t>(dbeta));
  });
  dx.finish();
  return {dx.result(), dalpha, dgamma, dbeta};
}

}  // namespace gct_fused::cuda
