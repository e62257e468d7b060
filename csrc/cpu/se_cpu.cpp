// Squeeze-and-Excitation forward and backward on CPU (and se_residual, the fused
// relu(se(x) + identity) of SE-ResNet blocks): the skeleton of channel_skeleton.h
// with the SE head, a two-layer MLP per sample. Activations and gates are in
// gct_fused/pointwise.h.
#include "channel_skeleton.h"  // first: selects the vector ISA

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "gct_fused/pointwise.h"
#include "outputs.h"
#include "param_utils.h"

namespace gct_fused::cpu {
namespace {

// Rows of MLP work per thread task: each row is a dot product over `width` values.
inline int64_t mlp_grain(int64_t width) { return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(width, 1)); }

// A weight matrix as a contiguous row-major array of its own element type w_t: the
// tensor's storage itself (a parameter is contiguous unless it is a view), never a
// converted copy. Half-precision weights are widened to acc_t as the MLP loads them
// (load_widened): converting 2 x 2048 x 128 bfloat16 weights to a float32 copy on every
// call cost more than the rest of the SE forward at 8x2048x7x7 (cold: 1.08 ms against
// 0.71 ms with float32 weights of the same values).
template <typename w_t>
struct WeightMatrix {
  at::Tensor storage;
  const w_t* data = nullptr;
  explicit WeightMatrix(const at::Tensor& w)
      : storage(w.is_contiguous() ? w : w.contiguous()), data(storage.const_data_ptr<w_t>()) {}
};

// Vectorized<acc_t>::size() weights from p, widened to acc_t (exactly: every bfloat16 and
// float16 value is a float32 value), so the products and sums are those of a float32 copy.
template <typename acc_t, typename w_t>
inline Vectorized<acc_t> load_widened(const w_t* p) {
  if constexpr (std::is_same_v<w_t, acc_t>) {
    return Vectorized<acc_t>::loadu(p);
  } else {
    static_assert(std::is_same_v<acc_t, float>, "half-precision weights widen to float");
    Vectorized<float> out;
    if constexpr (std::is_same_v<w_t, at::BFloat16>) at::vec::load_fp32_from_bf16(p, out);
    else at::vec::load_fp32_from_fp16(p, out);
    return out;
  }
}

// The first `count` of them (count <= Vectorized<acc_t>::size()), the other lanes zero.
template <typename acc_t, typename w_t>
inline Vectorized<acc_t> load_widened(const w_t* p, int64_t count) {
  if constexpr (std::is_same_v<w_t, acc_t>) {
    return Vectorized<acc_t>::loadu(p, count);
  } else {
    return std::get<0>(at::vec::convert_to_float<w_t>(Vectorized<w_t>::loadu(p, count)));
  }
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<w_t>{}) with w_t the element type of the SE weights w: x's own
// half-precision type, or acc_t (float32 weights of a half map, or a float32/float64 map's
// weights, which check_se_args requires to be of x's dtype).
template <typename scalar_t, typename F>
void with_weight_type(const at::Tensor& w, const F& f) {
  using acc_t = acc_type<scalar_t>;
  if constexpr (!std::is_same_v<scalar_t, acc_t>) {
    if (w.scalar_type() == c10::CppTypeToScalarType<scalar_t>::value) {
      f(TypeTag<scalar_t>{});
      return;
    }
  }
  f(TypeTag<acc_t>{});
}

// Samples whose dot products with one weight row are computed together.
constexpr int64_t kMlpSamples = 8;

// The MLP of one SE call in the accumulation type, applied to a chunk of samples at a
// time: W1 is (R, C) and W2 (C, R), row-major, of element type w_t (acc_t, or the map's
// half-precision type, widened as loaded); absent biases are zeros. Every output
// element is one dot product in a fixed order (one vector accumulator along the row,
// a fixed lane tree, then the tail), whichever thread computes it and whichever
// samples it is computed with; each weight row is loaded once per kMlpSamples samples.
template <typename acc_t, typename w_t = acc_t>
struct SeMlp {
  int64_t channels = 0, hidden = 0;
  WeightMatrix<w_t> w1m, w2m;
  std::vector<acc_t> b1, b2;
  Activation act;
  Gate gate;

  SeMlp(const at::Tensor& w1_, const c10::optional<at::Tensor>& b1_, const at::Tensor& w2_,
        const c10::optional<at::Tensor>& b2_, Activation act_, Gate gate_)
      : channels(w1_.size(1)), hidden(w1_.size(0)), w1m(w1_), w2m(w2_), act(act_), gate(gate_) {
    b1 = b1_.has_value() ? to_acc_vector<acc_t>(*b1_) : std::vector<acc_t>(hidden, acc_t(0));
    b2 = b2_.has_value() ? to_acc_vector<acc_t>(*b2_) : std::vector<acc_t>(channels, acc_t(0));
  }

  // Weight rows whose dot products are computed together: each loaded input vector
  // feeds kMatvecRows rows, so a block of 3 rows x 8 samples loads 11 vectors per 24
  // fused multiply-adds instead of 9 per 8 (24 accumulators: registers to spare). With
  // 2048-wide rows the 8 samples' inputs (64 KB) do not fit in L1: every row streamed them
  // from L2 again, and this loop was most of an SE forward at 2048 x 7 x 7. Each dot
  // product is still one vector accumulator along its row, so the blocking does not change
  // a single bit.
  static constexpr int64_t kMatvecRows = 3;
  // Elements ahead (1 KB) at which each weight row is prefetched: with caches cold the
  // weights (1 MB per matrix at C = 2048) come from DRAM, and the hardware prefetchers
  // alone left the walk waiting on them (8x2048x7x7 forward, cold: 0.60 -> 0.55 ms).
  // Prefetches past the end of the matrix are harmless: a prefetch never faults.
  static constexpr int64_t kPrefetchAhead = 1024 / int64_t(sizeof(w_t));

  // out[n * rows + j] for j in [j0, j0 + R) and n in [n0, n0 + S): bias[j] + mat[j, :] .
  // in[n, :], the vector part in one accumulator per (row, sample), then a fixed lane tree
  // (horizontal_sum), then the tail in order.
  template <int R, int S>
  static void dot_block(const w_t* mat, const acc_t* bias, int64_t rows, int64_t width, const acc_t* in,
                        int64_t n0, int64_t j0, acc_t* out) {
    using V = Vectorized<acc_t>;
    constexpr int64_t kW = V::size();
    const int64_t full = width - width % kW;
    V acc[R][S];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int s = 0; s < S; ++s) acc[r][s] = V(acc_t(0));
    for (int64_t i = 0; i < full; i += kW) {
      V w[R];
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        __builtin_prefetch(mat + (j0 + r) * width + i + kPrefetchAhead);
        w[r] = load_widened<acc_t>(mat + (j0 + r) * width + i);
      }
#pragma GCC unroll 16
      for (int s = 0; s < S; ++s) {
        const V v = V::loadu(in + (n0 + s) * width + i);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) acc[r][s] = at::vec::fmadd(w[r], v, acc[r][s]);
      }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const w_t* row = mat + (j0 + r) * width;
      acc_t sums[S];
      if constexpr (S == 8) horizontal_sums8(acc[r], sums);
      else for (int s = 0; s < S; ++s) sums[s] = horizontal_sum(acc[r][s]);
#pragma GCC unroll 16
      for (int s = 0; s < S; ++s) {
        const acc_t* x = in + (n0 + s) * width;
        acc_t sum = sums[s];
        for (int64_t i = full; i < width; ++i) sum += static_cast<acc_t>(row[i]) * x[i];
        out[(n0 + s) * rows + j0 + r] = (bias == nullptr ? acc_t(0) : bias[j0 + r]) + sum;
      }
    }
  }

  // Rows [j0, j0 + R) of all nb samples: blocks of kMlpSamples, then one at a time.
  template <int R>
  static void dot_rows(const w_t* mat, const acc_t* bias, int64_t rows, int64_t width, const acc_t* in,
                       int64_t nb, int64_t j0, acc_t* out) {
    int64_t n = 0;
    for (; n + kMlpSamples <= nb; n += kMlpSamples) dot_block<R, kMlpSamples>(mat, bias, rows, width, in, n, j0, out);
    for (; n < nb; ++n) dot_block<R, 1>(mat, bias, rows, width, in, n, j0, out);
  }

  // out[n * rows + j] = bias[j] + mat[j, :] . in[n, :] for nb samples; mat is (rows, width).
  static void batched_matvec(const w_t* mat, const acc_t* bias, int64_t rows, int64_t width,
                             const acc_t* in, int64_t nb, acc_t* out) {
    at::parallel_for(0, rows, mlp_grain(nb * width), [&](int64_t begin, int64_t end) {
      int64_t j = begin;
      for (; j + kMatvecRows <= end; j += kMatvecRows) dot_rows<kMatvecRows>(mat, bias, rows, width, in, nb, j, out);
      for (; j < end; ++j) dot_rows<1>(mat, bias, rows, width, in, nb, j, out);
    });
  }

  // out[n * cols + j] = sum_k in[n * depth + k] * mat[k, j] for nb samples; mat is (depth,
  // cols). The backward's products with W2 and W1 as stored (no transposes): vectors run
  // along j, the sum over k is sequential (one fused multiply-add per term, in k order),
  // so each element has a fixed order, whatever block or group of samples it falls in.
  static constexpr int kVecmatVecs = 4;  // independent accumulators per sample
  // Samples sharing each loaded weight vector: four (16 accumulators) walk the weights half
  // as often as two did (se_backward 8x2048x1x1 warm 252 -> 225 us).
  static constexpr int64_t kVecmatSamples = 4;

  // Columns [j0, j0 + width) (width <= kVecmatVecs vectors; kFull: exactly that many) of
  // samples [n0, n0 + S). A partial block loads its missing lanes as zeros and does not
  // store them: matrices whose width is not a multiple of the block (R = 16, 28, ...) or an
  // odd sample at the end of a chunk run here too, not through scalar fma chains (which
  // were most of the SE backward at 1024 x 14 x 14).
  template <int S, bool kFull>
  static void vecmat_block(const w_t* mat, int64_t depth, int64_t cols, const acc_t* in, int64_t n0,
                           int64_t j0, int64_t width, acc_t* out) {
    using V = Vectorized<acc_t>;
    constexpr int64_t kW = V::size();
    constexpr int kVecs = kVecmatVecs;
    int64_t lanes[kVecs];
    for (int v = 0; v < kVecs; ++v) lanes[v] = kFull ? kW : part_lanes<acc_t>(width, v);
    V acc[S][kVecs];
#pragma GCC unroll 8
    for (int s = 0; s < S; ++s)
#pragma GCC unroll 8
      for (int v = 0; v < kVecs; ++v) acc[s][v] = V(acc_t(0));
    for (int64_t k = 0; k < depth; ++k) {
      const w_t* w = mat + k * cols + j0;
      V wv[kVecs];
#pragma GCC unroll 8
      for (int v = 0; v < kVecs; ++v) {
        wv[v] = kFull ? load_widened<acc_t>(w + v * kW) : load_widened<acc_t>(w + v * kW, lanes[v]);
      }
#pragma GCC unroll 8
      for (int s = 0; s < S; ++s) {
        const V xs(in[(n0 + s) * depth + k]);
#pragma GCC unroll 8
        for (int v = 0; v < kVecs; ++v) acc[s][v] = at::vec::fmadd(xs, wv[v], acc[s][v]);
      }
    }
#pragma GCC unroll 8
    for (int s = 0; s < S; ++s)
#pragma GCC unroll 8
      for (int v = 0; v < kVecs; ++v) {
        acc_t* dst = out + (n0 + s) * cols + j0 + v * kW;
        if (kFull) acc[s][v].store(dst);
        else acc[s][v].store(dst, lanes[v]);
      }
  }

  static void batched_vecmat(const w_t* mat, int64_t depth, int64_t cols, const acc_t* in, int64_t nb,
                             acc_t* out) {
    constexpr int64_t kBlock = kVecmatVecs * Vectorized<acc_t>::size();
    constexpr int64_t kSamples = kVecmatSamples;
    const int64_t blocks = (cols + kBlock - 1) / kBlock;
    const int64_t groups = (nb + kSamples - 1) / kSamples;
    at::parallel_for(0, blocks * groups, mlp_grain(kSamples * depth * kBlock), [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t j0 = (task / groups) * kBlock, width = std::min(cols, j0 + kBlock) - j0;
        const int64_t n0 = (task % groups) * kSamples;
        const bool full = width == kBlock;
        if (std::min(nb, n0 + kSamples) - n0 == kSamples) {
          if (full) vecmat_block<kSamples, true>(mat, depth, cols, in, n0, j0, width, out);
          else vecmat_block<kSamples, false>(mat, depth, cols, in, n0, j0, width, out);
        } else {  // the samples left over at the end, one at a time
          for (int64_t n = n0; n < nb; ++n) {
            if (full) vecmat_block<1, true>(mat, depth, cols, in, n, j0, width, out);
            else vecmat_block<1, false>(mat, depth, cols, in, n, j0, width, out);
          }
        }
      }
    });
  }

  // out[i, j] = sum_n a[n * rows + i] * b[n * cols + j] (rows x cols, row-major), each element
  // summed over n = 0, 1, ... in order from 0 (a weight gradient: a = dO or dU, b = H or P).
  // Blocks of kVecs vectors along j keep their sums in registers across n instead of
  // adding every sample into memory; a partial block at the end of a row (R = 64 columns of
  // dW2 against a block of 128) loads its missing lanes as zeros and does not store them.
  // Stored in out_t: a half-precision weight's gradient is rounded once from the acc_t sums
  // here, instead of in a second pass over an acc_t matrix (a megabyte at C = 2048).
  template <typename out_t>
  static void sum_of_outer_products(const acc_t* a, const acc_t* b, int64_t nb, int64_t rows, int64_t cols,
                                    out_t* out) {
    using V = Vectorized<acc_t>;
    constexpr int64_t kW = V::size();
    constexpr int kVecs = 8;
    constexpr int64_t kBlock = kVecs * kW;
    const int64_t blocks = (cols + kBlock - 1) / kBlock;
    at::parallel_for(0, rows * blocks, mlp_grain(nb * kBlock), [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t i = task / blocks, j0 = (task % blocks) * kBlock, width = std::min(cols, j0 + kBlock) - j0;
        out_t* dst = out + i * cols + j0;
        auto block = [&](auto full) {
          constexpr bool kFull = decltype(full)::value;
          int64_t lanes[kVecs];
          for (int v = 0; v < kVecs; ++v) lanes[v] = kFull ? kW : part_lanes<acc_t>(width, v);
          V acc[kVecs];
#pragma GCC unroll 8
          for (int v = 0; v < kVecs; ++v) acc[v] = V(acc_t(0));
          for (int64_t n = 0; n < nb; ++n) {
            const V an(a[n * rows + i]);
            const acc_t* bn = b + n * cols + j0;
#pragma GCC unroll 8
            for (int v = 0; v < kVecs; ++v) {
              acc[v] = acc[v] + an * (kFull ? V::loadu(bn + v * kW) : V::loadu(bn + v * kW, lanes[v]));
            }
          }
          if constexpr (std::is_same_v<out_t, acc_t>) {
#pragma GCC unroll 8
            for (int v = 0; v < kVecs; ++v) {
              if (kFull) acc[v].store(dst + v * kW);
              else acc[v].store(dst + v * kW, lanes[v]);
            }
          } else {
            acc_t sums[kBlock];
#pragma GCC unroll 8
            for (int v = 0; v < kVecs; ++v) acc[v].store(sums + v * kW);
            convert_values(sums, dst, width);
          }
        };
        if (width == kBlock) block(std::true_type{});
        else block(std::false_type{});
      }
    });
  }

  // s = gate(o) over n values, vectorised (the sigmoid's exp would dominate otherwise).
  void gate_array(const acc_t* o, acc_t* s, int64_t n) const {
    using V = Vectorized<acc_t>;
    if (gate == Gate::kSigmoid) {
      at::vec::map([](V v) { return V(acc_t(1)) / (V(acc_t(1)) + v.neg().exp()); }, s, o, n);
    } else {  // relu6(o + 3) / 6
      at::vec::map([](V v) {
        return at::vec::minimum(at::vec::maximum(v + V(acc_t(3)), V(acc_t(0))), V(acc_t(6))) / V(acc_t(6));
      }, s, o, n);
    }
  }

  // P (nb, C) -> U = P W1^T + b1 (nb, R), H = act(U), O = H W2^T + b2 (nb, C), S = gate(O).
  void forward(const acc_t* P, int64_t nb, acc_t* U, acc_t* H, acc_t* O, acc_t* S) const {
    batched_matvec(w1m.data, b1.data(), hidden, channels, P, nb, U);
    for (int64_t i = 0; i < nb * hidden; ++i) H[i] = activation_forward(act, U[i]);
    batched_matvec(w2m.data, b2.data(), channels, hidden, H, nb, O);
    gate_array(O, S, nb * channels);
  }

  // From G = sum_l dy * x (nb, C): dO = G * gate'(O), dU = (dO W2) * act'(U) (nb, R),
  // dP = dU W1 (nb, C).
  void backward(const acc_t* G, const acc_t* U, const acc_t* O, const acc_t* S, int64_t nb, acc_t* dO,
                acc_t* dU, acc_t* dP) const {
    for (int64_t i = 0; i < nb * channels; ++i) dO[i] = gate_backward(gate, G[i], O[i], S[i]);
    batched_vecmat(w2m.data, channels, hidden, dO, nb, dU);  // dO (nb, C) W2 (C, R)
    for (int64_t i = 0; i < nb * hidden; ++i) dU[i] = activation_backward(act, dU[i], U[i]);
    batched_vecmat(w1m.data, hidden, channels, dU, nb, dP);  // dU (nb, R) W1 (R, C)
  }
};

// Scratch of a chunk's head: nb samples.
template <typename acc_t>
struct SeScratch {
  std::vector<acc_t> u, h, o, d_p;
  template <typename Mlp>
  SeScratch(const Mlp& mlp, int64_t nb)
      : u(nb * mlp.hidden), h(nb * mlp.hidden), o(nb * mlp.channels), d_p(nb * mlp.channels) {}
};

template <int kEpilogue>  // y = epilogue(x * s + identity); in = (x, identity)
struct ResidualApply {
  template <typename V> void operator()(const V* in, const V* cf, V* out) const {
    const V v = in[0] * cf[0] + in[1];
    out[0] = kEpilogue == static_cast<int>(Epilogue::kReLU) ? v_relu(v) : v;
  }
};

struct SeGradApply {  // in = (dy, x): dx = s * dy + d_p / L
  template <typename V> void operator()(const V* in, const V* cf, V* out) const {
    out[0] = in[0] * cf[0] + cf[1];
  }
};

// g = relu's backward of dy at the output y (0 where y <= 0; see v_relu_grad).
struct MaskedProductMap {  // in = (dy, x, y): sum g * x
  template <typename V> V operator()(const V* in) const { return v_relu_grad(in[0], in[2]) * in[1]; }
};

struct ResidualGradApply {  // in = (dy, x, y): dx = s * g + d_p / L; di = g
  template <typename V> void operator()(const V* in, const V* cf, V* out) const {
    const V g = v_relu_grad(in[0], in[2]);
    out[0] = g * cf[0] + cf[1];
    out[1] = g;
  }
};

// Forward of se and se_residual: inputs are (x) or (x, identity).
template <size_t NIn, typename Apply>
std::tuple<at::Tensor, at::Tensor> se_forward_impl(const at::Tensor& x, const at::Tensor* identity,
                                                   const at::Tensor& w1,
                                                   const c10::optional<at::Tensor>& b1,
                                                   const at::Tensor& w2,
                                                   const c10::optional<at::Tensor>& b2,
                                                   Activation act, Gate gate, const Apply& apply) {
  at::Tensor y = empty_like_map(x);
  at::Tensor pooled = empty_stats(x);
  if (pooled.numel() == 0) return {y, pooled};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "se_forward_cpu", [&] {
    with_weight_type<scalar_t>(w1, [&](auto weight_type) {
      using acc_t = acc_type<scalar_t>;
      using w_t = typename decltype(weight_type)::type;
      const SeMlp<acc_t, w_t> mlp(w1, b1, w2, b2, act, gate);
      std::vector<ChannelView> views{ChannelView::of(x)};
      if constexpr (NIn == 2) views.push_back(ChannelView::of(*identity));
      views.push_back(ChannelView::of(y));
      const int64_t weight_bytes = 2 * mlp.channels * mlp.hidden * int64_t(sizeof(w_t));
      const Plan plan = make_plan(views, views[0].c * views[0].l * int64_t(sizeof(scalar_t)), weight_bytes,
                                  x.numel() * int64_t(sizeof(scalar_t)));
      InStreams<scalar_t, NIn> in;
      in[0] = make_stream(x.const_data_ptr<scalar_t>(), views[0], plan, 0);
      if constexpr (NIn == 2) in[1] = make_stream(identity->const_data_ptr<scalar_t>(), views[1], plan, 1);
      const OutStreams<scalar_t, 1> out{make_stream(y.data_ptr<scalar_t>(), views[NIn], plan, NIn)};
      const int64_t C = plan.c;
      const acc_t inv_l = plan.l > 0 ? acc_t(1) / static_cast<acc_t>(plan.l) : acc_t(0);

      auto head = [&](int64_t n0, int64_t n1, acc_t* sums, std::array<acc_t*, 1>& coef) {
        const int64_t nb = n1 - n0;
        for (int64_t i = 0; i < nb * C; ++i) sums[i] *= inv_l;  // sum -> mean, the saved statistic
        SeScratch<acc_t> t(mlp, nb);
        mlp.forward(sums, nb, t.u.data(), t.h.data(), t.o.data(), coef[0]);
      };
      reduce_head_apply<scalar_t, 1, 1>(plan, in, out, pooled.data_ptr<acc_t>(), IdentityMap{}, head, apply);
    });
  });
  return {y, pooled};
}

// Backward of se (NIn = 2: dy, x) and se_residual (NIn = 3: dy, x, y; NOut = 2).
template <size_t NIn, size_t NOut, typename Map, typename Apply>
std::vector<at::Tensor> se_backward_impl(const std::array<const at::Tensor*, NIn>& inputs,
                                         const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                                         const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
                                         const at::Tensor& pooled, Activation act, Gate gate,
                                         const Map& map, const Apply& apply) {
  const at::Tensor& x = *inputs[1];
  const int64_t N = x.size(0), C = x.size(1), R = w1.size(0);
  std::vector<at::Tensor> grads_out;
  for (size_t j = 0; j < NOut; ++j) grads_out.push_back(empty_like_map(x));
  at::Tensor dw1, db1, dw2, db2;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "se_backward_cpu", [&] {
    with_weight_type<scalar_t>(w1, [&](auto weight_type) {
      using acc_t = acc_type<scalar_t>;
      using w_t = typename decltype(weight_type)::type;
      const SeMlp<acc_t, w_t> mlp(w1, b1, w2, b2, act, gate);
      const at::Tensor p_all = pooled.contiguous();  // (N, C), tiny
      const acc_t* p_data = p_all.const_data_ptr<acc_t>();
      // Per-sample pieces of the weight gradients, reduced over n in order below.
      std::vector<acc_t> d_o(static_cast<size_t>(N * C)), d_u(static_cast<size_t>(N * R)),
          h_all(static_cast<size_t>(N * R)), grads(static_cast<size_t>(N * C));

      if (x.numel() > 0) {
        std::vector<ChannelView> views;
        for (const at::Tensor* t : inputs) views.push_back(ChannelView::of(*t));
        for (const at::Tensor& t : grads_out) views.push_back(ChannelView::of(t));
        const int64_t weight_bytes = 4 * mlp.channels * mlp.hidden * int64_t(sizeof(w_t));
        const Plan plan =
            make_plan(views, NIn * views[0].c * views[0].l * int64_t(sizeof(scalar_t)), weight_bytes,
                      NOut * x.numel() * int64_t(sizeof(scalar_t)));
        InStreams<scalar_t, NIn> in;
        for (size_t k = 0; k < NIn; ++k) {
          in[k] = make_stream(inputs[k]->template const_data_ptr<scalar_t>(), views[k], plan, k);
        }
        OutStreams<scalar_t, NOut> out;
        for (size_t j = 0; j < NOut; ++j) {
          out[j] = make_stream(grads_out[j].template data_ptr<scalar_t>(), views[NIn + j], plan, NIn + j);
        }
        const acc_t inv_l = acc_t(1) / static_cast<acc_t>(plan.l);

        auto head = [&](int64_t n0, int64_t n1, acc_t* G, std::array<acc_t*, 2>& coef) {
          const int64_t nb = n1 - n0;
          SeScratch<acc_t> t(mlp, nb);
          acc_t* h = h_all.data() + n0 * R;  // kept for dW2
          mlp.forward(p_data + n0 * C, nb, t.u.data(), h, t.o.data(), coef[0]);
          mlp.backward(G, t.u.data(), t.o.data(), coef[0], nb, d_o.data() + n0 * C, d_u.data() + n0 * R,
                       t.d_p.data());
          for (int64_t i = 0; i < nb * C; ++i) coef[1][i] = t.d_p[i] * inv_l;
        };
        reduce_head_apply<scalar_t, NIn, 2>(plan, in, out, grads.data(), map, head, apply);
      }  // else N, C or L is 0: G = 0, so every gradient below is 0

      // dW2[c, :] = sum_n d_o[n, c] h[n, :]; dW1[r, :] = sum_n d_u[n, r] p[n, :], each element
      // summed over n in order in acc_t and written straight into a tensor of the weights'
      // dtype (rounded once).
      at::Tensor gw1 = at::empty(w1.sizes(), w1.options()), gw2 = at::empty(w2.sizes(), w2.options());
      w_t* gw1_data = gw1.data_ptr<w_t>();
      w_t* gw2_data = gw2.data_ptr<w_t>();
      SeMlp<acc_t>::sum_of_outer_products(d_o.data(), h_all.data(), N, C, R, gw2_data);  // dW2 (C, R)
      SeMlp<acc_t>::sum_of_outer_products(d_u.data(), p_data, N, R, C, gw1_data);        // dW1 (R, C)
      dw1 = gw1;
      dw2 = gw2;
      const at::Tensor bias_like1 = b1.has_value() ? *b1 : at::empty({R}, w1.options());
      const at::Tensor bias_like2 = b2.has_value() ? *b2 : at::empty({C}, w2.options());
      db1 = sum_over_samples(d_u, N, R, bias_like1);
      db2 = sum_over_samples(d_o, N, C, bias_like2);
    });
  });
  std::vector<at::Tensor> result = std::move(grads_out);
  result.insert(result.end(), {dw1, db1, dw2, db2});
  return result;
}

std::tuple<at::Tensor, at::Tensor> se_forward_cpu(const at::Tensor& x, const at::Tensor& w1,
                                                  const c10::optional<at::Tensor>& b1,
                                                  const at::Tensor& w2,
                                                  const c10::optional<at::Tensor>& b2,
                                                  c10::string_view activation, c10::string_view gate) {
  const Activation act = parse_activation(activation);
  const Gate g = parse_gate(gate);
  check_se_args(x, w1, b1, w2, b2);
  return se_forward_impl<1>(x, nullptr, w1, b1, w2, b2, act, g, ScaleApply{});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> se_backward_cpu(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w1,
    const c10::optional<at::Tensor>& b1, const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
    const at::Tensor& pooled, c10::string_view activation, c10::string_view gate) {
  const Activation act = parse_activation(activation);
  const Gate g = parse_gate(gate);
  check_se_args(x, w1, b1, w2, b2);
  check_same_map(x, dy, "dy");
  check_stats(x, pooled, "pooled");
  auto r = se_backward_impl<2, 1>({&dy, &x}, w1, b1, w2, b2, pooled, act, g, ProductMap{},
                                  SeGradApply{});
  return {r[0], r[1], r[2], r[3], r[4]};
}

std::tuple<at::Tensor, at::Tensor> se_residual_forward_cpu(
    const at::Tensor& x, const at::Tensor& identity, const at::Tensor& w1,
    const c10::optional<at::Tensor>& b1, const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
    c10::string_view activation, c10::string_view gate, c10::string_view activation_after) {
  const Activation act = parse_activation(activation);
  const Gate g = parse_gate(gate);
  const Epilogue epi = parse_epilogue(activation_after);
  check_se_args(x, w1, b1, w2, b2);
  check_same_map(x, identity, "identity");
  if (epi == Epilogue::kReLU) {
    return se_forward_impl<2>(x, &identity, w1, b1, w2, b2, act, g,
                              ResidualApply<static_cast<int>(Epilogue::kReLU)>{});
  }
  return se_forward_impl<2>(x, &identity, w1, b1, w2, b2, act, g,
                            ResidualApply<static_cast<int>(Epilogue::kNone)>{});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
se_residual_backward_cpu(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& y,
                         const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
                         const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
                         const at::Tensor& pooled, c10::string_view activation,
                         c10::string_view gate) {
  const Activation act = parse_activation(activation);
  const Gate g = parse_gate(gate);
  check_se_args(x, w1, b1, w2, b2);
  check_same_map(x, dy, "dy");
  check_same_map(x, y, "y");
  check_stats(x, pooled, "pooled");
  auto r = se_backward_impl<3, 2>({&dy, &x, &y}, w1, b1, w2, b2, pooled, act, g,
                                  MaskedProductMap{}, ResidualGradApply{});
  return {r[0], r[1], r[2], r[3], r[4], r[5]};
}

}  // namespace

TORCH_LIBRARY_IMPL(gct_fused, CPU, m) {
  m.impl("se_forward", &se_forward_cpu);
  m.impl("se_backward", &se_backward_cpu);
  m.impl("se_residual_forward", &se_residual_forward_cpu);
  m.impl("se_residual_backward", &se_residual_backward_cpu);
}

}  // namespace gct_fused::cpu
