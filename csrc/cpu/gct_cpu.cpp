// GCT forward and backward on CPU: the skeleton of channel_skeleton.h with the GCT
// maps, head and apply. The per-channel formulas are in gct_fused/gct_math.h.
#include "channel_skeleton.h"  // first: selects the vector ISA

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "gct_fused/gct_math.h"
#include "param_utils.h"

namespace gct_fused::cpu {
namespace {

// Stage-1 maps of the forward: x^2 (l2) or |x| (l1); x itself (l1 after relu) is
// the skeleton's IdentityMap.
struct SquareMap {
  template <typename V> V operator()(const V* in) const { return in[0] * in[0]; }
};
struct AbsMap {
  template <typename V> V operator()(const V* in) const { return v_abs(in[0]); }
};

// Stage-3 apply of the backward: dx = g * dy + k * f(x).
template <int kF>  // f(x): 0 -> x (l2), 1 -> sign(x) (l1), 2 -> 1 (l1 after_relu)
struct GctGradApply {
  template <typename V> void operator()(const V* in, const V* cf, V* out) const {
    if constexpr (kF == 0) out[0] = in[0] * cf[0] + in[1] * cf[1];
    else if constexpr (kF == 1) out[0] = in[0] * cf[0] + v_sign(in[1]) * cf[1];
    else out[0] = in[0] * cf[0] + cf[1];
  }
};

template <typename acc_t>
struct GctParams {
  std::vector<acc_t> alpha, gamma, beta;
  GctMode mode;
  acc_t eps;
  int64_t channels;
};

// tanh over an array with at::vec (Sleef, 1 ulp): the scalar tanh of gct_gate costs
// ~20 ns per channel, which the head of a 2048-channel map cannot afford.
template <typename acc_t>
void tanh_inplace(acc_t* v, int64_t n) {
  using V = Vectorized<acc_t>;
  at::vec::map([](V z) { return z.tanh(); }, v, v, n);
}

// Samples per head task: a task should have some thousands of channels of work.
constexpr int64_t kHeadGrainChannels = 4096;

// Stage 2, forward, one sample: s (C) -> gate g = 1 + tanh(z) (C). `e` is scratch.
template <typename acc_t>
void gct_head_forward(const GctParams<acc_t>& p, const acc_t* s, acc_t* e, acc_t* g) {
  const int64_t C = p.channels;
  acc_t term_sum = 0;
  for (int64_t c = 0; c < C; ++c) {
    e[c] = gct_embedding(p.mode, s[c], p.alpha[c], p.eps);
    term_sum += gct_norm_term(p.mode, e[c]);
  }
  const acc_t denom = gct_norm_denom(p.mode, term_sum, C, p.eps);
  for (int64_t c = 0; c < C; ++c) g[c] = gct_preactivation(e[c], denom, p.gamma[c], p.beta[c]);
  tanh_inplace(g, C);
  for (int64_t c = 0; c < C; ++c) g[c] += acc_t(1);  // gct_gate(z) = 1 + tanh(z)
}

std::tuple<at::Tensor, at::Tensor> gct_forward_cpu(const at::Tensor& x, const at::Tensor& alpha,
                                                   const at::Tensor& gamma, const at::Tensor& beta,
                                                   double epsilon, c10::string_view mode_name,
                                                   bool after_relu) {
  const GctMode mode = parse_gct_mode(mode_name);
  check_gct_args(x, alpha, gamma, beta);
  check_epsilon(epsilon);
  at::Tensor y = at::empty_like(x);
  at::Tensor stats = at::empty({x.size(0), x.size(1)}, x.options().dtype(accumulate_dtype(x.scalar_type())));
  if (stats.numel() == 0) return {y, stats};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gct_forward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    GctParams<acc_t> p{to_acc_vector<acc_t>(alpha), to_acc_vector<acc_t>(gamma),
                       to_acc_vector<acc_t>(beta), mode, static_cast<acc_t>(epsilon), x.size(1)};
    const std::vector<ChannelView> views{ChannelView::of(x), ChannelView::of(y)};
    const int64_t map_bytes = x.numel() * int64_t(sizeof(scalar_t));
    const Plan plan = make_plan(views, views[0].c * views[0].l * int64_t(sizeof(scalar_t)), 0, map_bytes);
    const InStreams<scalar_t, 1> in{make_stream(x.const_data_ptr<scalar_t>(), views[0], plan, 0)};
    const OutStreams<scalar_t, 1> out{make_stream(y.data_ptr<scalar_t>(), views[1], plan, 1)};
    const int64_t C = plan.c;

    auto head = [&](int64_t n0, int64_t n1, acc_t* s, std::array<acc_t*, 1>& coef) {
      const int64_t grain = std::max<int64_t>(1, kHeadGrainChannels / std::max<int64_t>(C, 1));
      at::parallel_for(0, n1 - n0, grain, [&](int64_t begin, int64_t end) {
        std::vector<acc_t> e(static_cast<size_t>(C));
        for (int64_t i = begin; i < end; ++i) gct_head_forward(p, s + i * C, e.data(), coef[0] + i * C);
      });
    };
    auto run = [&](auto map) {
      reduce_head_apply<scalar_t, 1, 1>(plan, in, out, stats.data_ptr<acc_t>(), map, head, ScaleApply{});
    };
    if (mode == GctMode::kL2) run(SquareMap{});
    else if (after_relu) run(IdentityMap{});
    else run(AbsMap{});
  });
  return {y, stats};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gct_backward_cpu(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& gamma,
    const at::Tensor& beta, const at::Tensor& stats, double epsilon, c10::string_view mode_name,
    bool after_relu) {
  const GctMode mode = parse_gct_mode(mode_name);
  check_gct_args(x, alpha, gamma, beta);
  check_epsilon(epsilon);
  check_same_map(x, dy, "dy");
  check_stats(x, stats, "stats");
  at::Tensor dx = at::empty_like(x);
  const int64_t N = x.size(0), C = x.size(1);
  at::Tensor dalpha, dgamma, dbeta;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gct_backward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    GctParams<acc_t> p{to_acc_vector<acc_t>(alpha), to_acc_vector<acc_t>(gamma),
                       to_acc_vector<acc_t>(beta), mode, static_cast<acc_t>(epsilon), C};
    const at::Tensor s_all = stats.contiguous();  // (N, C), tiny
    const acc_t* s_data = s_all.const_data_ptr<acc_t>();
    // Per-sample parameter-gradient contributions, summed over n in order at the end.
    std::vector<acc_t> da(static_cast<size_t>(N * C)), dg(da.size()), db(da.size());
    std::vector<acc_t> grads(da.size());  // G = sum dy * x

    if (x.numel() > 0) {
      const std::vector<ChannelView> views{ChannelView::of(dy), ChannelView::of(x), ChannelView::of(dx)};
      const Plan plan = make_plan(views, 2 * views[0].c * views[0].l * int64_t(sizeof(scalar_t)), 0,
                                  x.numel() * int64_t(sizeof(scalar_t)));
      const InStreams<scalar_t, 2> in{make_stream(dy.const_data_ptr<scalar_t>(), views[0], plan, 0),
                                      make_stream(x.const_data_ptr<scalar_t>(), views[1], plan, 1)};
      const OutStreams<scalar_t, 1> out{make_stream(dx.data_ptr<scalar_t>(), views[2], plan, 2)};

      auto head = [&](int64_t n0, int64_t n1, acc_t* G, std::array<acc_t*, 2>& coef) {
        const int64_t grain = std::max<int64_t>(1, kHeadGrainChannels / std::max<int64_t>(C, 1));
        at::parallel_for(0, n1 - n0, grain, [&](int64_t begin, int64_t end) {
          std::vector<acc_t> e(static_cast<size_t>(C)), dz(static_cast<size_t>(C));
          for (int64_t i = begin; i < end; ++i) {
            const int64_t n = n0 + i;
            const acc_t* s = s_data + n * C;
            acc_t term_sum = 0;
            for (int64_t c = 0; c < C; ++c) {
              e[c] = gct_embedding(mode, s[c], p.alpha[c], p.eps);
              term_sum += gct_norm_term(mode, e[c]);
            }
            const acc_t denom = gct_norm_denom(mode, term_sum, C, p.eps);
            acc_t* t = coef[0] + i * C;  // z, then tanh(z), then the gate 1 + tanh(z)
            for (int64_t c = 0; c < C; ++c) t[c] = gct_preactivation(e[c], denom, p.gamma[c], p.beta[c]);
            tanh_inplace(t, C);
            acc_t q = 0;
            for (int64_t c = 0; c < C; ++c) {
              dz[c] = gct_dz_from_tanh(G[i * C + c], t[c]);
              q += dz[c] * p.gamma[c] * e[c];
              t[c] += acc_t(1);
            }
            for (int64_t c = 0; c < C; ++c) {
              const auto r = gct_channel_backward(mode, s[c], e[c], denom, dz[c], q, p.alpha[c],
                                                  p.gamma[c], p.eps, C);
              coef[1][i * C + c] = r.k;
              da[n * C + c] = r.dalpha;
              dg[n * C + c] = r.dgamma;
              db[n * C + c] = dz[c];
            }
          }
        });
      };
      auto run = [&](auto apply) {
        reduce_head_apply<scalar_t, 2, 2>(plan, in, out, grads.data(), ProductMap{}, head, apply);
      };
      if (mode == GctMode::kL2) run(GctGradApply<0>{});
      else if (after_relu) run(GctGradApply<2>{});
      else run(GctGradApply<1>{});
    }  // else N, C or L is 0: G = 0, so every contribution stays 0
    dalpha = sum_over_samples(da, N, C, alpha);
    dgamma = sum_over_samples(dg, N, C, gamma);
    dbeta = sum_over_samples(db, N, C, beta);
  });
  return {dx, dalpha, dgamma, dbeta};
}

}  // namespace

TORCH_LIBRARY_IMPL(gct_fused, CPU, m) {
  m.impl("gct_forward", &gct_forward_cpu);
  m.impl("gct_backward", &gct_backward_cpu);
}

}  // namespace gct_fused::cpu
