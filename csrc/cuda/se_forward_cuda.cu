// Squeeze-and-Excitation forward on CUDA, and se_residual's (y = epilogue(se(x) + identity)),
// on the reduce -> head -> apply skeleton:
//   reduce  sum_l x per (n, c)
//   head    pooled = sum / L (saved for the backward), then the MLP and gate -> scale s (N, C):
//           small weights: one kernel, one block per sample (3 launches in all);
//           large weights (C * R >= kSplitHeadWeights): combine, then one batched-product
//           kernel per layer (5 launches in all; see se_mlp.cuh)
//   apply   y = s * x  (or epilogue(s * x + identity))
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

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

template <int kEpilogue>  // inputs (x, identity): y = epilogue(x * s + identity)
struct ResidualApply {
  template <typename T>
  __device__ __forceinline__ void operator()(const T* in, const T* cf, T* out) const {
    const T v = in[0] * cf[0] + in[1];
    out[0] = kEpilogue == static_cast<int>(Epilogue::kReLU) ? activation_forward(Activation::kReLU, v) : v;
  }
};

// The head when the weights are small: one block per sample, pooled mean then the MLP.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    se_forward_head_kernel(SeMlp<scalar_t> m, PartialSums<acc_type<scalar_t>> sums, acc_type<scalar_t> inv_l,
                           int64_t samples, SeBuffers<acc_type<scalar_t>> b) {
  using acc_t = acc_type<scalar_t>;
  const int64_t C = m.channels, R = m.hidden;
  for (int64_t n = blockIdx.x; n < samples; n += gridDim.x) {
    // pooled may alias the sums (one piece): each thread reads, then writes, its own c
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) b.pooled[n * C + c] = sums.sum(n, c) * inv_l;
    __syncthreads();
    sample_dots<acc_t>(HiddenLayer<scalar_t>{m, b}, n, R, C);
    __syncthreads();
    sample_dots<acc_t>(OutputLayer<scalar_t>{m, b, PartialSums<acc_t>{}}, n, C, R);
  }
}

// Forward of se (NIn = 1: x) and se_residual (NIn = 2: x, identity).
template <int NIn, typename ApplyFor>
std::tuple<at::Tensor, at::Tensor> se_forward_impl(const at::Tensor& x, const at::Tensor* identity,
                                                   const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                                                   const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
                                                   Activation act, Gate gate, const ApplyFor& apply_for) {
  const DeviceGuard guard(x.device());
  OutputMap y(x);
  const int64_t N = x.size(0), C = x.size(1), R = w1.size(0);
  at::Tensor pooled = at::empty({N, C}, acc_options(x));
  if (pooled.numel() == 0) return {y.result(), pooled};
  const int64_t L = x.numel() / (N * C);
  if (L == 0) {  // the CPU ops define the mean of nothing as 0
    pooled.zero_();
    return {y.result(), pooled};
  }
  const at::Tensor xm = mergeable_input(x);
  const at::Tensor im = NIn == 2 ? mergeable_input(*identity) : at::Tensor();
  const SeWeights weights(w1, b1, w2, b2);
  const cudaStream_t stream = current_stream();
  const int sms = sm_count(x.get_device());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "se_forward_cuda", [&] {
    using acc_t = acc_type<scalar_t>;
    const ReducePlan rp = make_reduce_plan({layout_of(xm)}, N, C, L, sizeof(scalar_t), sms);
    const bool split = weights.split_head();
    // One piece and one head kernel: the reduction writes its sums into `pooled` itself.
    const at::Tensor partial =
        rp.tiles > 1 || split ? at::empty({rp.partial_numel()}, pooled.options()) : pooled;
    launch_reduce<scalar_t, 1>(rp, Operands<const scalar_t, 1>{{operand_of<const scalar_t>(xm)}},
                               partial.data_ptr<acc_t>(), IdentityMap{}, stream);

    const at::Tensor scratch = at::empty({N * (C + R)}, acc_options(x));
    SeBuffers<acc_t> b{};
    b.pooled = pooled.data_ptr<acc_t>();
    b.scale = scratch.data_ptr<acc_t>();
    b.hidden = b.scale + N * C;
    const SeMlp<scalar_t> m = weights.mlp<scalar_t>(act, gate);
    const PartialSums<acc_t> sums = partial_sums(rp, static_cast<const acc_t*>(partial.data_ptr<acc_t>()));
    const acc_t inv_l = acc_t(1) / static_cast<acc_t>(L);
    if (split) {
      launch_combine(rp, sums.data, inv_l, b.pooled, sms, stream);
      launch_batched_dots<acc_t>(HiddenLayer<scalar_t>{m, b}, R, C, N, stream);
      launch_batched_dots<acc_t>(OutputLayer<scalar_t>{m, b, PartialSums<acc_t>{}}, C, R, N, stream);
    } else {
      launch_kernel(se_forward_head_kernel<scalar_t>, grid_for(N, 1, 65535), kThreads, 0, stream, m, sums, inv_l,
                    N, b);
    }

    std::vector<MapLayout> maps{layout_of(xm)};
    Operands<const scalar_t, NIn> in;
    in.t[0] = operand_of<const scalar_t>(xm);
    if constexpr (NIn == 2) {
      maps.push_back(layout_of(im));
      in.t[1] = operand_of<const scalar_t>(im);
    }
    maps.push_back(layout_of(y.target()));
    const ApplyPlan ap = make_apply_plan(maps, N, C, L, sizeof(scalar_t), sms, 0);
    const Operands<scalar_t, 1> out{{operand_of<scalar_t>(y.target())}};
    apply_for([&](const auto& apply) {
      launch_apply<scalar_t, NIn, 1, 1>(ap, in, out, apply, TableCoef<acc_t, 1>{{b.scale}, C}, 0, stream);
    });
  });
  y.finish();
  return {y.result(), pooled};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> se_forward_cuda(const at::Tensor& x, const at::Tensor& w1,
                                                   const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                                                   const c10::optional<at::Tensor>& b2,
                                                   c10::string_view activation, c10::string_view gate) {
  const Activation act = parse_activation(activation);
  const Gate g = parse_gate(gate);
  check_se_args(x, w1, b1, w2, b2);
  return se_forward_impl<1>(x, nullptr, w1, b1, w2, b2, act, g, [](const auto& launch) { launch(ScaleApply{}); });
}

std::tuple<at::Tensor, at::Tensor> se_residual_forward_cuda(
    const at::Tensor& x, const at::Tensor& identity, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
    const at::Tensor& w2, const c10::optional<at::Tensor>& b2, c10::string_view activation,
    c10::string_view gate, c10::string_view activation_after) {
  const Activation act = parse_activation(activation);
  const Gate g = parse_gate(gate);
  const Epilogue epilogue = parse_epilogue(activation_after);
  check_se_args(x, w1, b1, w2, b2);
  check_same_map(x, identity, "identity");
  return se_forward_impl<2>(x, &identity, w1, b1, w2, b2, act, g, [epilogue](const auto& launch) {
    if (epilogue == Epilogue::kReLU) launch(ResidualApply<static_cast<int>(Epilogue::kReLU)>{});
    else launch(ResidualApply<static_cast<int>(Epilogue::kNone)>{});
  });
}

}  // namespace gct_fused::cuda
