// Squeeze-and-Excitation backward on CUDA, and se_residual's (relu epilogue; the
// "none" epilogue's backward is se_backward with didentity = dy, see _registration.py):
// on the reduce -> head -> apply skeleton (4 launches; 7 with large weights):
//   reduce        G = sum_l dy * x  (se_residual: sum_l g * x)
//   head          recompute the MLP from the saved pooled mean, then d_o = G * gate'(o),
//                 d_u = (W2^T d_o) * act'(u), d_p = W1^T d_u: coefficients s and d_p / L,
//                 and d_o, d_u, h for the weights. One block per sample, or with large
//                 weights one batched-product kernel per product (se_mlp.cuh)
//   apply         dx = s * dy + d_p / L  (se_residual: g = relu's backward of dy at y;
//                 dx = s * g + d_p / L, didentity = g)
//   weight grads  dW1, db1, dW2, db2: per-sample terms summed over n in order
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <array>
#include <vector>

#include "apply_stage.cuh"
#include "kernel_args.cuh"
#include "kernel_launch.cuh"
#include "op_helpers.h"
#include "ops_cuda.h"
#include "reduce_stage.cuh"
#include "se_mlp.cuh"
#include "stage_functors.cuh"

namespace gct_fused::cuda {
namespace {

// g = relu's backward of dy at the output y: 0 where y <= 0, dy elsewhere (a selection, as
// torch's threshold_backward and the CPU kernels compute it).
struct MaskedProductMap {  // inputs (dy, x, y): sum g * x
  template <typename T>
  __device__ __forceinline__ T operator()(const T* v) const {
    return activation_backward(Activation::kReLU, v[0], v[2]) * v[1];
  }
};

struct SeGradApply {  // inputs (dy): dx = s * dy + d_p / L
  template <typename T>
  __device__ __forceinline__ void operator()(const T* in, const T* cf, T* out) const {
    out[0] = in[0] * cf[0] + cf[1];
  }
};

struct ResidualGradApply {  // inputs (dy, y): dx = s * g + d_p / L; didentity = g
  template <typename T>
  __device__ __forceinline__ void operator()(const T* in, const T* cf, T* out) const {
    const T g = activation_backward(Activation::kReLU, in[0], in[1]);
    out[0] = g * cf[0] + cf[1];
    out[1] = g;
  }
};

// The head when the weights are small: one block per sample runs the four products.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    se_backward_head_kernel(SeMlp<scalar_t> m, PartialSums<acc_type<scalar_t>> grads, acc_type<scalar_t> inv_l,
                            int64_t samples, SeBuffers<acc_type<scalar_t>> b) {
  using acc_t = acc_type<scalar_t>;
  const int64_t C = m.channels, R = m.hidden;
  for (int64_t n = blockIdx.x; n < samples; n += gridDim.x) {
    sample_dots<acc_t>(HiddenLayer<scalar_t>{m, b}, n, R, C);
    __syncthreads();
    sample_dots<acc_t>(OutputLayer<scalar_t>{m, b, grads}, n, C, R);
    __syncthreads();
    sample_dots<acc_t>(HiddenGrad<scalar_t>{m, b}, n, R, C);
    __syncthreads();
    sample_dots<acc_t>(InputGrad<scalar_t>{m, b, inv_l}, n, C, R);
  }
}

// dW1[r, c] = sum_n d_u[n, r] p[n, c]; db1[r] = sum_n d_u[n, r] (d_u is in buf.u after the head);
// dW2[c, r] = sum_n d_o[n, c] h[n, r]; db2[c] = sum_n d_o[n, c]; n = 0, 1, ... in order.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    se_weight_grad_kernel(SeBuffers<acc_type<scalar_t>> buf, int64_t samples, int64_t C, int64_t R,
                          ParamOut<scalar_t> dw1, ParamOut<scalar_t> db1, ParamOut<scalar_t> dw2,
                          ParamOut<scalar_t> db2) {
  using acc_t = acc_type<scalar_t>;
  const int64_t total = 2 * R * C + R + C;
  for (int64_t j = int64_t(blockIdx.x) * kThreads + threadIdx.x; j < total; j += int64_t(gridDim.x) * kThreads) {
    acc_t sum = acc_t(0);
    int64_t i = j;
    if (i < R * C) {
      const int64_t r = i / C, c = i % C;
      for (int64_t n = 0; n < samples; ++n) sum += buf.u[n * R + r] * buf.pooled[n * C + c];
      dw1.store(i, sum);
      continue;
    }
    i -= R * C;
    if (i < R) {
      for (int64_t n = 0; n < samples; ++n) sum += buf.u[n * R + i];
      db1.store(i, sum);
      continue;
    }
    i -= R;
    if (i < C * R) {
      const int64_t c = i / R, r = i % R;
      for (int64_t n = 0; n < samples; ++n) sum += buf.d_o[n * C + c] * buf.hidden[n * R + r];
      dw2.store(i, sum);
      continue;
    }
    i -= C * R;
    for (int64_t n = 0; n < samples; ++n) sum += buf.d_o[n * C + i];
    db2.store(i, sum);
  }
}

// Backward of se (NR = 2: reduce over dy, x; the apply reads dy) and se_residual
// (NR = 3: dy, x, y; the apply reads dy, y and writes dx, didentity).
template <int NR, int NOut, typename Map, typename Apply>
std::vector<at::Tensor> se_backward_impl(const std::array<const at::Tensor*, NR>& inputs, const at::Tensor& w1,
                                         const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                                         const c10::optional<at::Tensor>& b2, const at::Tensor& pooled,
                                         Activation act, Gate gate, const Map& map, const Apply& apply) {
  const at::Tensor& x = *inputs[1];
  const DeviceGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(1), R = w1.size(0);
  std::vector<OutputMap> outs;
  for (int j = 0; j < NOut; ++j) outs.emplace_back(x);
  const at::Tensor bias_like1 = b1.has_value() ? *b1 : at::empty({R}, w1.options());
  const at::Tensor bias_like2 = b2.has_value() ? *b2 : at::empty({C}, w2.options());
  std::vector<at::Tensor> result;
  for (const auto& o : outs) result.push_back(o.result());
  if (x.numel() == 0) {  // G = 0: every weight gradient is 0
    for (const at::Tensor* like : {&w1, &bias_like1, &w2, &bias_like2}) {
      result.push_back(at::zeros(like->sizes(), like->options()));
    }
    return result;
  }
  const int64_t L = x.numel() / (N * C);
  std::array<at::Tensor, NR> in_maps;
  for (int k = 0; k < NR; ++k) in_maps[k] = mergeable_input(*inputs[k]);
  const at::Tensor pooled_c = pooled.contiguous();
  const SeWeights weights(w1, b1, w2, b2);
  at::Tensor dw1 = at::empty(w1.sizes(), w1.options()), db1 = at::empty(bias_like1.sizes(), bias_like1.options());
  at::Tensor dw2 = at::empty(w2.sizes(), w2.options()), db2 = at::empty(bias_like2.sizes(), bias_like2.options());
  const cudaStream_t stream = current_stream();
  const int sms = sm_count(x.get_device());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "se_backward_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    std::vector<MapLayout> reduce_maps;
    Operands<const scalar_t, NR> reduce_in;
    for (int k = 0; k < NR; ++k) {
      reduce_maps.push_back(layout_of(in_maps[k]));
      reduce_in.t[k] = operand_of<const scalar_t>(in_maps[k]);
    }
    const ReducePlan rp = make_reduce_plan(reduce_maps, N, C, L, sizeof(scalar_t), sms);
    const at::Tensor partial = at::empty({rp.partial_numel()}, acc_options(x));
    launch_reduce<scalar_t, NR>(rp, reduce_in, partial.data_ptr<acc_t>(), map, stream);

    const at::Tensor scratch = at::empty({N * (3 * C + 2 * R)}, acc_options(x));
    SeBuffers<acc_t> b;
    b.pooled = const_cast<acc_t*>(pooled_c.const_data_ptr<acc_t>());  // read only
    b.scale = scratch.data_ptr<acc_t>();
    b.dp = b.scale + N * C;
    b.d_o = b.dp + N * C;
    b.u = b.d_o + N * C;
    b.hidden = b.u + N * R;
    const SeMlp<scalar_t> m = weights.mlp<scalar_t>(act, gate);
    const PartialSums<acc_t> grads = partial_sums(rp, static_cast<const acc_t*>(partial.data_ptr<acc_t>()));
    const acc_t inv_l = acc_t(1) / static_cast<acc_t>(L);
    if (weights.split_head()) {
      launch_batched_dots<acc_t>(HiddenLayer<scalar_t>{m, b}, R, C, N, stream);
      launch_batched_dots<acc_t>(OutputLayer<scalar_t>{m, b, grads}, C, R, N, stream);
      launch_batched_dots<acc_t>(HiddenGrad<scalar_t>{m, b}, R, C, N, stream);
      launch_batched_dots<acc_t>(InputGrad<scalar_t>{m, b, inv_l}, C, R, N, stream);
    } else {
      launch_kernel(se_backward_head_kernel<scalar_t>, grid_for(N, 1, 65535), kThreads, 0, stream, m, grads,
                    inv_l, N, b);
    }

    // The apply reads dy (and y for se_residual), not x.
    constexpr int NIn = NR == 3 ? 2 : 1;
    const at::Tensor* apply_inputs[2] = {&in_maps[0], &in_maps[NR - 1]};
    std::vector<MapLayout> apply_maps;
    Operands<const scalar_t, NIn> in;
    for (int k = 0; k < NIn; ++k) {
      apply_maps.push_back(layout_of(*apply_inputs[k]));
      in.t[k] = operand_of<const scalar_t>(*apply_inputs[k]);
    }
    Operands<scalar_t, NOut> out;
    for (int j = 0; j < NOut; ++j) {
      apply_maps.push_back(layout_of(outs[j].target()));
      out.t[j] = operand_of<scalar_t>(outs[j].target());
    }
    const ApplyPlan ap = make_apply_plan(apply_maps, N, C, L, sizeof(scalar_t), sms, 0);
    launch_apply<scalar_t, NIn, NOut, 2>(ap, in, out, apply, TableCoef<acc_t, 2>{{b.scale, b.dp}, C}, 0,
                                         stream);

    launch_kernel(se_weight_grad_kernel<scalar_t>, grid_for(2 * R * C + R + C, kThreads, int64_t(sms) * 8),
                  kThreads, 0, stream, b, N, C, R, param_out<scalar_t>(dw1), param_out<scalar_t>(db1),
                  param_out<scalar_t>(dw2), param_out<scalar_t>(db2));
  });
  for (auto& o : outs) o.finish();
  result.insert(result.end(), {dw1, db1, dw2, db2});
  return result;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> se_backward_cuda(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
    const at::Tensor& w2, const c10::optional<at::Tensor>& b2, const at::Tensor& pooled,
    c10::string_view activation, c10::string_view gate) {
  const Activation act = parse_activation(activation);
  const Gate g = parse_gate(gate);
  check_se_args(x, w1, b1, w2, b2);
  check_same_map(x, dy, "dy");
  check_stats(x, pooled, "pooled");
  auto r = se_backward_impl<2, 1>({&dy, &x}, w1, b1, w2, b2, pooled, act, g, ProductMap{}, SeGradApply{});
  return {r[0], r[1], r[2], r[3], r[4]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> se_residual_backward_cuda(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& y, const at::Tensor& w1,
    const c10::optional<at::Tensor>& b1, const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
    const at::Tensor& pooled, c10::string_view activation, c10::string_view gate) {
  const Activation act = parse_activation(activation);
  const Gate g = parse_gate(gate);
  check_se_args(x, w1, b1, w2, b2);
  check_same_map(x, dy, "dy");
  check_same_map(x, y, "y");
  check_stats(x, pooled, "pooled");
  auto r = se_backward_impl<3, 2>({&dy, &x, &y}, w1, b1, w2, b2, pooled, act, g, MaskedProductMap{},
                                  ResidualGradApply{});
  return {r[0], r[1], r[2], r[3], r[4], r[5]};
}

}  // namespace gct_fused::cuda
