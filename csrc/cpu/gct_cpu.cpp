// GCT forward and backward on CPU: the skeleton of channel_skeleton.h with the GCT
// maps, head and apply. The per-channel formulas are in gct_fused/gct_math.h.
#include "channel_skeleton.h"  // first: selects the vector ISA

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "gct_fused/gct_math.h"
#include "outputs.h"
#include "param_utils.h"

namespace gct_fused::cpu {
namespace {

// Stage-1 maps of the forward: x^2 (l2) or |x| (l1); x itself (l1 after relu) is
// the skeleton's IdentityMap.
struct SquareMap {
  template <typename V> V operator()(const V* in) const { return in[0] * in[0]; }
};
struct AbsMap {
  template <typename V> V operator()(const V* in) const { return gf_abs(in[0]); }
};

// Stage-3 apply of the backward: dx = g * dy + k * f(x).
template <int kF>  // f(x): 0 -> x (l2), 1 -> sign(x) (l1), 2 -> 1 (l1 after_relu)
struct GctGradApply {
  template <typename V> void operator()(const V* in, const V* cf, V* out) const {
    if constexpr (kF == 0) out[0] = in[0] * cf[0] + in[1] * cf[1];
    else if constexpr (kF == 1) out[0] = in[0] * cf[0] + gf_sign(in[1]) * cf[1];
    else out[0] = in[0] * cf[0] + cf[1];
  }
};

template <typename acc_t>
struct GctParams {
  AccValues<acc_t> alpha, gamma, beta;
  GctMode mode;
  acc_t eps;
  int64_t channels;
};

// Samples per head task: a task should have some thousands of channels of work.
constexpr int64_t kHeadGrainChannels = 4096;

// The normaliser of one sample: e = embedding(s) (C, stored) and denom. The per-channel
// formulas of gct_math.h run on whole vectors of channels (over_channels); the sum of the
// norm terms goes lane by lane, then through horizontal_sum and the tail, in a fixed order.
template <typename acc_t>
acc_t gct_head_normaliser(const GctParams<acc_t>& p, const acc_t* s, acc_t* e) {
  Vectorized<acc_t> terms(acc_t(0));
  acc_t tail_terms = 0;
  over_channels<acc_t>(p.channels, [&](int64_t c, auto lane) {
    using T = decltype(lane);
    const T ev = gct_embedding(p.mode, load_lanes(s + c, lane), load_lanes(p.alpha.data() + c, lane), T(p.eps));
    store_lanes(e + c, ev);
    if constexpr (std::is_same_v<T, acc_t>) tail_terms += gct_norm_term(p.mode, ev);
    else terms = terms + gct_norm_term(p.mode, ev);
  });
  return gct_norm_denom(p.mode, horizontal_sum(terms) + tail_terms, p.channels, p.eps);
}

// Stage 2, forward, one sample: s (C) -> gate g = 1 + tanh(z) (C). `e` is scratch.
template <typename acc_t>
void gct_head_forward(const GctParams<acc_t>& p, const acc_t* s, acc_t* e, acc_t* g) {
  const acc_t denom = gct_head_normaliser(p, s, e);
  over_channels<acc_t>(p.channels, [&](int64_t c, auto lane) {
    using T = decltype(lane);
    const T z = gct_preactivation(load_lanes(e + c, lane), T(denom), load_lanes(p.gamma.data() + c, lane),
                                  load_lanes(p.beta.data() + c, lane));
    store_lanes(g + c, gct_gate(z));
  });
}

std::tuple<at::Tensor, at::Tensor> gct_forward_cpu(const at::Tensor& x, const at::Tensor& alpha,
                                                   const at::Tensor& gamma, const at::Tensor& beta,
                                                   double epsilon, c10::string_view mode_name,
                                                   bool after_relu) {
  const GctMode mode = parse_gct_mode(mode_name);
  check_gct_args(x, alpha, gamma, beta);
  check_epsilon(epsilon);
  at::Tensor y = empty_like_map(x);
  at::Tensor stats = empty_stats(x);
  if (stats.numel() == 0) return {y, stats};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gct_forward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    GctParams<acc_t> p{AccValues<acc_t>(alpha), AccValues<acc_t>(gamma), AccValues<acc_t>(beta), mode,
                       static_cast<acc_t>(epsilon), x.size(1)};
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
  at::Tensor dx = empty_like_map(x);
  const int64_t N = x.size(0), C = x.size(1);
  at::Tensor dalpha, dgamma, dbeta;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gct_backward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    GctParams<acc_t> p{AccValues<acc_t>(alpha), AccValues<acc_t>(gamma), AccValues<acc_t>(beta), mode,
                       static_cast<acc_t>(epsilon), C};
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
            const acc_t denom = gct_head_normaliser(p, s, e.data());
            // The gate (coef[0]); dz; Q = sum_c dz * gamma * e.
            acc_t* gate = coef[0] + i * C;
            Vectorized<acc_t> q_lanes(acc_t(0));
            acc_t q_tail = 0;
            over_channels<acc_t>(C, [&](int64_t c, auto lane) {
              using T = decltype(lane);
              const T ev = load_lanes(e.data() + c, lane), gm = load_lanes(p.gamma.data() + c, lane);
              const T z = gct_preactivation(ev, T(denom), gm, load_lanes(p.beta.data() + c, lane));
              const T g = gct_gate(z);
              const T dzv = gct_dz(load_lanes(G + i * C + c, lane), z, g);
              store_lanes(dz.data() + c, dzv);
              store_lanes(gate + c, g);
              if constexpr (std::is_same_v<T, acc_t>) q_tail += dzv * gm * ev;
              else q_lanes = q_lanes + dzv * gm * ev;
            });
            const acc_t q = horizontal_sum(q_lanes) + q_tail;
            over_channels<acc_t>(C, [&](int64_t c, auto lane) {
              using T = decltype(lane);
              const auto r = gct_channel_backward(mode, load_lanes(s + c, lane), load_lanes(e.data() + c, lane),
                                                  T(denom), load_lanes(dz.data() + c, lane), T(q),
                                                  load_lanes(p.alpha.data() + c, lane),
                                                  load_lanes(p.gamma.data() + c, lane), T(p.eps), C);
              store_lanes(coef[1] + i * C + c, r.k);
              store_lanes(da.data() + n * C + c, r.dalpha);
              store_lanes(dg.data() + n * C + c, r.dgamma);
              store_lanes(db.data() + n * C + c, load_lanes(dz.data() + c, lane));
            });
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
