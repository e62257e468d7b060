// The reduce -> head -> apply skeleton shared by every CPU op (GCT and SE, forward
// and backward). An op supplies three small pieces:
//
//   Map    acc = map(in[0..NR))         summed over L per (n, c)        (stage 1)
//   Head   per-sample O(C) math: sums -> NK per-(n, c) coefficients    (stage 2)
//   Apply  out[0..NOut) = apply(in[0..NIn), coef[0..NK))               (stage 3)
//
// Map and Apply are templates over V = acc_t (scalar) or Vectorized<acc_t>, so one
// definition serves the vector loop and the scalar tail.
//
// Layouts (chosen from the strides of every tensor taking part, never copied):
//   kRowsAlongL  every tensor has contiguous L-rows per (n, c)   (NCHW and its slices)
//   kRowsAlongC  every tensor has contiguous C-rows per (n, l)   (channels_last)
//   kGeneric     anything else: scalar loops over spatial offset tables
//
// Samples are processed in chunks whose bytes fit in the last-level cache, so the
// apply stage re-reads what the reduce stage just brought in from cache, not DRAM.
// Work is split into tiles whose size depends only on the shape, and partial sums
// are combined in tile order: results are bitwise identical for any thread count.
#pragma once

#include "vec_config.h"  // must precede every ATen header

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#include "../op_common.h"
#include "gct_fused/macros.h"

namespace gct_fused::cpu {

using at::vec::Vectorized;

template <typename scalar_t>
using acc_type = at::opmath_type<scalar_t>;

// ---------------------------------------------------------------------------
// Element helpers usable with scalars and with Vectorized.
template <typename T>
inline T v_abs(T v) { return gf_abs(v); }
template <typename T>
inline Vectorized<T> v_abs(const Vectorized<T>& v) { return v.abs(); }

template <typename T>
inline T v_sign(T v) { return gf_sign(v); }
template <typename T>
inline Vectorized<T> v_sign(const Vectorized<T>& v) {
  const Vectorized<T> zero(T(0));
  return v.gt(zero) - v.lt(zero);
}

// 1 where v > 0, else 0 (the relu derivative, 0 at 0).
template <typename T>
inline T v_positive(T v) { return v > T(0) ? T(1) : T(0); }
template <typename T>
inline Vectorized<T> v_positive(const Vectorized<T>& v) { return v.gt(Vectorized<T>(T(0))); }

// grad * relu'(y) as torch's threshold_backward computes it: 0 where y <= 0 (a selection,
// so an infinite or NaN grad gives 0 there), grad elsewhere (NaN y included).
template <typename T>
inline T v_relu_grad(T grad, T y) { return y <= T(0) ? T(0) : grad; }
template <typename T>
inline Vectorized<T> v_relu_grad(const Vectorized<T>& grad, const Vectorized<T>& y) {
  const Vectorized<T> zero(T(0));
  return Vectorized<T>::blendv(grad, zero, y <= zero);
}

// relu that keeps NaN, as torch.relu does.
template <typename T>
inline T v_relu(T v) { return v < T(0) ? T(0) : v; }
template <typename T>
inline Vectorized<T> v_relu(const Vectorized<T>& v) {
  return at::vec::maximum(v, Vectorized<T>(T(0)));
}

// ---------------------------------------------------------------------------
// Loads and stores Vectorized<scalar_t>::size() elements as kParts acc vectors
// (1 for float/double, 2 for half/bfloat16, which widen to float).
template <typename scalar_t>
struct Lanes {
  using acc_t = acc_type<scalar_t>;
  using Vacc = Vectorized<acc_t>;
  static constexpr int64_t kStep = Vectorized<scalar_t>::size();
  static constexpr int kParts = static_cast<int>(kStep / Vacc::size());

  static void load(const scalar_t* p, Vacc* out) {
    if constexpr (kParts == 1) {
      out[0] = Vacc::loadu(p);
    } else {
      auto wide = at::vec::convert_to_float<scalar_t>(Vectorized<scalar_t>::loadu(p));
      out[0] = std::get<0>(wide);
      out[1] = std::get<1>(wide);
    }
  }
  static void store(scalar_t* p, const Vacc* in) {
    if constexpr (kParts == 1) {
      in[0].store(p);
    } else {
      at::vec::convert_from_float<scalar_t>(in[0], in[1]).store(p);
    }
  }
};

// Non-temporal ("streaming") store of one full vector to a vector-aligned address.
// An output written with ordinary stores is first read into cache (read for
// ownership): for a map larger than the cache that is a third DRAM pass on top of
// reading x and writing y. Streaming stores skip it. Used only for outputs too large
// to be read back from cache by the next layer anyway (Plan::stream_stores).
template <typename scalar_t>
inline void store_streaming(scalar_t* p, const Vectorized<scalar_t>& v) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<scalar_t, float>) _mm512_stream_ps(p, v);
  else if constexpr (std::is_same_v<scalar_t, double>) _mm512_stream_pd(p, v);
  else _mm512_stream_si512(reinterpret_cast<__m512i*>(p), v);
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<scalar_t, float>) _mm256_stream_ps(p, v);
  else if constexpr (std::is_same_v<scalar_t, double>) _mm256_stream_pd(p, v);
  else _mm256_stream_si256(reinterpret_cast<__m256i*>(p), v);
#else
  v.store(p);
#endif
}

// Orders streaming stores before whatever follows (they are weakly ordered).
inline void streaming_fence() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

template <typename scalar_t>
inline void store_lanes_streaming(scalar_t* p, const Vectorized<acc_type<scalar_t>>* in) {
  if constexpr (Lanes<scalar_t>::kParts == 1) {
    store_streaming<scalar_t>(p, in[0]);
  } else {
    store_streaming<scalar_t>(p, at::vec::convert_from_float<scalar_t>(in[0], in[1]));
  }
}

// A tensor taking part in a pass, as its (N, C, L) strides. On the generic path
// `offsets` holds the offset of every spatial index l when the spatial dims do not merge
// into one stride (null otherwise: see spatial_offset).
template <typename ptr_t>
struct Stream {
  ptr_t data = nullptr;
  int64_t stride_n = 0, stride_c = 0, stride_l = 1;
  const int64_t* offsets = nullptr;
};

enum class Path { kRowsAlongL, kRowsAlongC, kGeneric };

// How a call is cut into chunks of samples and tiles. Depends on the shape and the
// strides only, never on the number of threads.
//
// A tile is (sample, block of channels, block of L). On L-rows (and the generic
// path) a tile covers tile_c consecutive channels, so that short rows (7x7 maps) are
// batched; on C-rows it covers all C channels of tile_l consecutive spatial rows.
struct Plan {
  Path path = Path::kGeneric;
  int64_t n = 0, c = 0, l = 0;
  int64_t tile_c = 1, tile_l = 1;    // extent of one tile
  int64_t tiles_c = 1, tiles_l = 1;  // tiles per sample along C and along L
  int64_t chunk_n = 1;               // samples per reduce -> head -> apply round
  // Small samples: each thread runs reduce -> head -> apply on whole samples, so the
  // apply re-reads a sample from its own L2. Large ones: all threads share a chunk.
  bool sample_parallel = false;
  // Outputs larger than the cache are written with streaming stores (see store_streaming).
  bool stream_stores = false;
  std::vector<std::vector<int64_t>> offset_tables;  // generic path: one per tensor

  int64_t tile_elems() const { return tile_c * tile_l; }
  int64_t tiles_per_sample() const { return tiles_c * tiles_l; }
};

// Budget for the bytes of one chunk's reduce inputs: they are re-read by the apply
// stage, so they should stay in the (32 MB, shared) L3 of the machines we target.
constexpr int64_t kChunkBytes = int64_t(8) << 20;
// Longest L-run one tile reduces; longer rows are split so that few large rows
// (e.g. GCT on a 3-channel image) still spread over threads.
constexpr int64_t kMaxTileL = 32768;
// Elements per tile when rows are short (many rows per tile) or C-rows.
constexpr int64_t kTileElems = 16384;
// Largest per-sample working set (inputs of the reduce plus the head's data) that a
// thread processes on its own, out of its L2 (1 MB per core on the machines we target).
constexpr int64_t kSampleBytes = int64_t(640) << 10;
// Outputs of at least this many bytes in total are written with streaming stores.
constexpr int64_t kStreamOutputBytes = int64_t(16) << 20;
// Smallest amount of work worth waking a thread for.
constexpr int64_t kGrainElems = 32768;

inline int64_t ceil_div(int64_t a, int64_t b) { return b == 0 ? 0 : (a + b - 1) / b; }

// Builds the plan for tensors described by `views`; `reduce_bytes_per_sample` is
// the bytes per sample the reduce stage reads (what a chunk must keep in cache) and
// `head_bytes_per_sample` what the head touches per sample (e.g. the SE weights,
// which a thread running whole samples would stream once per sample).
inline Plan make_plan(const std::vector<ChannelView>& views, int64_t reduce_bytes_per_sample,
                      int64_t head_bytes_per_sample, int64_t output_bytes) {
  Plan plan;
  const ChannelView& v0 = views.front();
  plan.n = v0.n;
  plan.c = v0.c;
  plan.l = v0.l;
  bool along_l = true, along_c = true;
  for (const auto& v : views) {
    along_l = along_l && v.merged && v.stride_l == 1;
    along_c = along_c && v.merged && v.stride_c == 1;
  }
  if (along_l && along_c) {
    plan.path = plan.l >= plan.c ? Path::kRowsAlongL : Path::kRowsAlongC;
  } else if (along_l) {
    plan.path = Path::kRowsAlongL;
  } else if (along_c) {
    plan.path = Path::kRowsAlongC;
  } else {
    plan.path = Path::kGeneric;
    // Only views whose spatial dims do not merge need a table; a merged view (e.g. the
    // stride-0 dy of y.sum().backward()) is addressed as l * stride_l, which keeps the
    // extra memory O(N * C) instead of 8 bytes per spatial position per tensor.
    for (const auto& v : views) {
      plan.offset_tables.push_back(v.merged ? std::vector<int64_t>() : v.spatial_offsets());
    }
  }
  const int64_t C = std::max<int64_t>(plan.c, 1), L = std::max<int64_t>(plan.l, 1);
  if (plan.path == Path::kRowsAlongC) {
    plan.tile_c = C;
    plan.tile_l = std::max<int64_t>(1, kTileElems / C);
  } else {
    plan.tile_l = std::min(L, kMaxTileL);
    plan.tile_c = plan.tile_l >= kTileElems ? 1 : std::min(C, std::max<int64_t>(1, kTileElems / plan.tile_l));
  }
  plan.tiles_c = ceil_div(plan.c, plan.tile_c);
  plan.tiles_l = ceil_div(plan.l, plan.tile_l);
  plan.chunk_n = std::max<int64_t>(1, kChunkBytes / std::max<int64_t>(reduce_bytes_per_sample, 1));
  // The choice only moves work between threads: every value is computed the same way
  // either way, so results do not depend on it (or on the thread count).
  plan.sample_parallel = plan.n >= 2 && reduce_bytes_per_sample + head_bytes_per_sample <= kSampleBytes;
  plan.stream_stores = output_bytes >= kStreamOutputBytes;
  return plan;
}

// The part of a sample one tile covers.
struct Tile {
  int64_t c0, c1, l0, l1;
};

inline Tile tile_of(const Plan& plan, int64_t rest) {
  const int64_t cb = rest / plan.tiles_l, lb = rest % plan.tiles_l;
  return {cb * plan.tile_c, std::min(plan.c, (cb + 1) * plan.tile_c), lb * plan.tile_l,
          std::min(plan.l, (lb + 1) * plan.tile_l)};
}

template <typename ptr_t>
Stream<ptr_t> make_stream(ptr_t data, const ChannelView& v, const Plan& plan, size_t table) {
  Stream<ptr_t> s;
  s.data = data;
  s.stride_n = v.stride_n;
  s.stride_c = v.stride_c;
  s.stride_l = v.stride_l;
  if (plan.path == Path::kGeneric && !plan.offset_tables[table].empty()) {
    s.offsets = plan.offset_tables[table].data();
  }
  return s;
}

// Offset of spatial index l on the generic path: from the table of an unmerged view, else
// l * stride_l.
template <typename ptr_t>
inline int64_t spatial_offset(const Stream<ptr_t>& s, int64_t l) {
  return s.offsets != nullptr ? s.offsets[l] : l * s.stride_l;
}

// ---------------------------------------------------------------------------
// Maps and applies used by more than one op.

// Stage-1 maps.
struct IdentityMap {  // sum x: SE squeeze, GCT l1 after relu
  template <typename V> V operator()(const V* in) const { return in[0]; }
};
struct ProductMap {  // in = (dy, x): sum dy * x, every backward
  template <typename V> V operator()(const V* in) const { return in[0] * in[1]; }
};

// Stage-3 apply of both forwards: y = coef * x.
struct ScaleApply {
  template <typename V> void operator()(const V* in, const V* cf, V* out) const {
    out[0] = in[0] * cf[0];
  }
};

// ---------------------------------------------------------------------------
// Row kernels.

// Sum of map(in) over `len` contiguous elements: four vector accumulators, then a
// fixed-order horizontal sum, then the scalar tail.
template <typename scalar_t, size_t NR, typename Map>
acc_type<scalar_t> reduce_contiguous(const std::array<const scalar_t*, NR>& in, int64_t len,
                                     const Map& map) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using Vacc = typename L::Vacc;
  constexpr int kUnroll = 4;
  if (len < kUnroll * L::kStep) {  // short rows (e.g. 7x7 maps): one accumulator
    Vacc acc1[L::kParts];
    for (auto& p : acc1) p = Vacc(acc_t(0));
    int64_t i = 0;
    for (; i + L::kStep <= len; i += L::kStep) {
      Vacc v[NR > 0 ? NR : 1][L::kParts];
      for (size_t k = 0; k < NR; ++k) L::load(in[k] + i, v[k]);
      for (int p = 0; p < L::kParts; ++p) {
        Vacc args[NR > 0 ? NR : 1];
        for (size_t k = 0; k < NR; ++k) args[k] = v[k][p];
        acc1[p] = acc1[p] + map(args);
      }
    }
    acc_t sum = 0;
    if (i > 0) {
      Vacc total = acc1[0];
      for (int p = 1; p < L::kParts; ++p) total = total + acc1[p];
      acc_t lanes[Vacc::size()];
      total.store(lanes);
      for (int64_t j = 0; j < Vacc::size(); ++j) sum += lanes[j];
    }
    for (; i < len; ++i) {
      acc_t args[NR > 0 ? NR : 1];
      for (size_t k = 0; k < NR; ++k) args[k] = static_cast<acc_t>(in[k][i]);
      sum += map(args);
    }
    return sum;
  }
  // Blocked accumulation: each lane adds at most kBlockSteps terms before its block sum is
  // added to `acc`, so a long row of like values (a constant map) loses ~(kBlockSteps +
  // len / block) roundings instead of len / 32.
  constexpr int64_t kBlockSteps = 32;
  Vacc acc[kUnroll][L::kParts];
  for (auto& a : acc)
    for (auto& p : a) p = Vacc(acc_t(0));
  int64_t i = 0;
  while (i + kUnroll * L::kStep <= len) {
    Vacc block[kUnroll][L::kParts];
    for (auto& a : block)
      for (auto& p : a) p = Vacc(acc_t(0));
    for (int64_t step = 0; step < kBlockSteps && i + kUnroll * L::kStep <= len; ++step, i += kUnroll * L::kStep) {
      for (int u = 0; u < kUnroll; ++u) {
        Vacc v[NR > 0 ? NR : 1][L::kParts];
        for (size_t k = 0; k < NR; ++k) L::load(in[k] + i + u * L::kStep, v[k]);
        for (int p = 0; p < L::kParts; ++p) {
          Vacc args[NR > 0 ? NR : 1];
          for (size_t k = 0; k < NR; ++k) args[k] = v[k][p];
          block[u][p] = block[u][p] + map(args);
        }
      }
    }
    for (int u = 0; u < kUnroll; ++u)
      for (int p = 0; p < L::kParts; ++p) acc[u][p] = acc[u][p] + block[u][p];
  }
  for (; i + L::kStep <= len; i += L::kStep) {
    Vacc v[NR > 0 ? NR : 1][L::kParts];
    for (size_t k = 0; k < NR; ++k) L::load(in[k] + i, v[k]);
    for (int p = 0; p < L::kParts; ++p) {
      Vacc args[NR > 0 ? NR : 1];
      for (size_t k = 0; k < NR; ++k) args[k] = v[k][p];
      acc[0][p] = acc[0][p] + map(args);
    }
  }
  Vacc total(acc_t(0));
  for (int u = 0; u < kUnroll; ++u)
    for (int p = 0; p < L::kParts; ++p) total = total + acc[u][p];
  acc_t lanes[Vacc::size()];
  total.store(lanes);
  acc_t sum = 0;
  for (int64_t j = 0; j < Vacc::size(); ++j) sum += lanes[j];
  for (; i < len; ++i) {
    acc_t args[NR > 0 ? NR : 1];
    for (size_t k = 0; k < NR; ++k) args[k] = static_cast<acc_t>(in[k][i]);
    sum += map(args);
  }
  return sum;
}

// Rows no longer than this go through the grouped short-row kernels below.
constexpr int64_t kShortRow = 256;
// Rows processed together by the short-row kernels.
constexpr int kRowGroup = 4;

// Sums of map(in) over G short rows of `len` elements, rows r .. r + G: row q of input k
// starts at in[k] + q * row_stride[k] and its sum goes to out[q * out_stride]. Each row has
// one vector accumulator, its lanes summed in order, then the scalar tail: the same
// arithmetic for any G. Short rows (7x7 maps) spend most of their time in loop set-up,
// the horizontal sum and the add chain of a single row; G independent rows per loop
// overlap all three.
template <int G, typename scalar_t, size_t NR, typename Map>
inline void reduce_row_group(const std::array<const scalar_t*, NR>& in, const std::array<int64_t, NR>& row_stride,
                             int64_t r, int64_t len, acc_type<scalar_t>* out, int64_t out_stride, const Map& map) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using Vacc = typename L::Vacc;
  const int64_t full = len - len % L::kStep;
  const scalar_t* base[G][NR > 0 ? NR : 1];
  Vacc acc[G][L::kParts];
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
    for (size_t k = 0; k < NR; ++k) base[g][k] = in[k] + (r + g) * row_stride[k];
    for (auto& a : acc[g]) a = Vacc(acc_t(0));
  }
  for (int64_t i = 0; i < full; i += L::kStep) {
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      Vacc v[NR > 0 ? NR : 1][L::kParts];
      for (size_t k = 0; k < NR; ++k) L::load(base[g][k] + i, v[k]);
      for (int p = 0; p < L::kParts; ++p) {
        Vacc args[NR > 0 ? NR : 1];
        for (size_t k = 0; k < NR; ++k) args[k] = v[k][p];
        acc[g][p] = acc[g][p] + map(args);
      }
    }
  }
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
    Vacc total = acc[g][0];
    for (int p = 1; p < L::kParts; ++p) total = total + acc[g][p];
    acc_t lanes[Vacc::size()];
    total.store(lanes);
    acc_t sum = 0;
    for (int64_t j = 0; j < Vacc::size(); ++j) sum += lanes[j];
    for (int64_t i = full; i < len; ++i) {
      acc_t args[NR > 0 ? NR : 1];
      for (size_t k = 0; k < NR; ++k) args[k] = static_cast<acc_t>(base[g][k][i]);
      sum += map(args);
    }
    out[(r + g) * out_stride] = sum;
  }
}

// reduce_row_group over `rows` rows: kRowGroup at a time, then one at a time.
template <typename scalar_t, size_t NR, typename Map>
void reduce_short_rows(const std::array<const scalar_t*, NR>& in, const std::array<int64_t, NR>& row_stride,
                       int64_t rows, int64_t len, acc_type<scalar_t>* out, int64_t out_stride,
                       const Map& map) {
  int64_t r = 0;
  for (; r + kRowGroup <= rows; r += kRowGroup) reduce_row_group<kRowGroup>(in, row_stride, r, len, out, out_stride, map);
  for (; r < rows; ++r) reduce_row_group<1>(in, row_stride, r, len, out, out_stride, map);
}

// partial[c] += map(in[c]) for c < len: one C-row of a channels_last tensor.
template <typename scalar_t, size_t NR, typename Map>
void accumulate_contiguous(const std::array<const scalar_t*, NR>& in, int64_t len,
                           acc_type<scalar_t>* partial, const Map& map) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using Vacc = typename L::Vacc;
  int64_t i = 0;
  for (; i + L::kStep <= len; i += L::kStep) {
    Vacc v[NR > 0 ? NR : 1][L::kParts];
    for (size_t k = 0; k < NR; ++k) L::load(in[k] + i, v[k]);
    for (int p = 0; p < L::kParts; ++p) {
      Vacc args[NR > 0 ? NR : 1];
      for (size_t k = 0; k < NR; ++k) args[k] = v[k][p];
      acc_t* dst = partial + i + p * Vacc::size();
      (Vacc::loadu(dst) + map(args)).store(dst);
    }
  }
  for (; i < len; ++i) {
    acc_t args[NR > 0 ? NR : 1];
    for (size_t k = 0; k < NR; ++k) args[k] = static_cast<acc_t>(in[k][i]);
    partial[i] += map(args);
  }
}

// out[j][i] = apply(in[.][i], coef) over `len` contiguous elements. With
// kCoefAlongRow the coefficients vary along the row (coef[k][i], channels_last);
// otherwise they are one scalar per coefficient (coef[k][0], NCHW rows). With
// `streaming`, full vectors go out through streaming stores once the outputs are
// vector-aligned (elements before that point are written one by one).
template <typename scalar_t, size_t NIn, size_t NOut, size_t NK, bool kCoefAlongRow, typename Apply>
void apply_contiguous(const std::array<const scalar_t*, NIn>& in,
                      const std::array<scalar_t*, NOut>& out, int64_t len,
                      const std::array<const acc_type<scalar_t>*, NK>& coef, const Apply& apply,
                      bool streaming) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using Vacc = typename L::Vacc;
  Vacc fixed[NK > 0 ? NK : 1];
  if constexpr (!kCoefAlongRow) {
    for (size_t k = 0; k < NK; ++k) fixed[k] = Vacc(coef[k][0]);
  }
  auto scalar_at = [&](int64_t i) {
    acc_t args[NIn], cf[NK > 0 ? NK : 1], res[NOut];
    for (size_t k = 0; k < NIn; ++k) args[k] = static_cast<acc_t>(in[k][i]);
    for (size_t k = 0; k < NK; ++k) cf[k] = kCoefAlongRow ? coef[k][i] : coef[k][0];
    apply(args, cf, res);
    for (size_t j = 0; j < NOut; ++j) out[j][i] = static_cast<scalar_t>(res[j]);
  };
  int64_t i = 0;
  if (streaming) {
    // Peel elements until out[0] is vector-aligned; every output must then be too.
    constexpr uintptr_t kAlign = sizeof(Vectorized<scalar_t>);
    const uintptr_t mis = reinterpret_cast<uintptr_t>(out[0]) % kAlign;
    for (size_t j = 1; j < NOut; ++j) {
      streaming = streaming && reinterpret_cast<uintptr_t>(out[j]) % kAlign == mis;
    }
    streaming = streaming && mis % sizeof(scalar_t) == 0;
    if (streaming) {
      const int64_t peel = std::min<int64_t>(len, static_cast<int64_t>((kAlign - mis) % kAlign / sizeof(scalar_t)));
      for (; i < peel; ++i) scalar_at(i);
    }
  }
  for (; i + L::kStep <= len; i += L::kStep) {
    Vacc v[NIn][L::kParts];
    Vacc r[NOut][L::kParts];
    for (size_t k = 0; k < NIn; ++k) L::load(in[k] + i, v[k]);
    for (int p = 0; p < L::kParts; ++p) {
      Vacc args[NIn], cf[NK > 0 ? NK : 1], res[NOut];
      for (size_t k = 0; k < NIn; ++k) args[k] = v[k][p];
      for (size_t k = 0; k < NK; ++k) {
        if constexpr (kCoefAlongRow) cf[k] = Vacc::loadu(coef[k] + i + p * Vacc::size());
        else cf[k] = fixed[k];
      }
      apply(args, cf, res);
      for (size_t j = 0; j < NOut; ++j) r[j][p] = res[j];
    }
    for (size_t j = 0; j < NOut; ++j) {
      if (streaming) store_lanes_streaming<scalar_t>(out[j] + i, r[j]);
      else L::store(out[j] + i, r[j]);
    }
  }
  for (; i < len; ++i) scalar_at(i);
}

// out[j] = apply(in, coef) over G short rows of `len` elements, rows r .. r + G, with one
// set of coefficients per row: row q of tensor k starts at in[k] + q * in_stride[k]
// (outputs: out[j] + q * out_stride[j]) and uses coef[k][q]. G rows per loop, for the same
// reason as reduce_row_group. Ordinary stores only (see apply_stage).
template <int G, typename scalar_t, size_t NIn, size_t NOut, size_t NK, typename Apply>
inline void apply_row_group(const std::array<const scalar_t*, NIn>& in, const std::array<int64_t, NIn>& in_stride,
                            const std::array<scalar_t*, NOut>& out, const std::array<int64_t, NOut>& out_stride,
                            int64_t r, int64_t len, const std::array<const acc_type<scalar_t>*, NK>& coef,
                            const Apply& apply) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using Vacc = typename L::Vacc;
  const int64_t full = len - len % L::kStep;
  const scalar_t* src[G][NIn];
  scalar_t* dst[G][NOut];
  Vacc fixed[G][NK > 0 ? NK : 1];
  acc_t fixed_s[G][NK > 0 ? NK : 1];
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
    for (size_t k = 0; k < NIn; ++k) src[g][k] = in[k] + (r + g) * in_stride[k];
    for (size_t j = 0; j < NOut; ++j) dst[g][j] = out[j] + (r + g) * out_stride[j];
    for (size_t k = 0; k < NK; ++k) {
      fixed_s[g][k] = coef[k][r + g];
      fixed[g][k] = Vacc(fixed_s[g][k]);
    }
  }
  for (int64_t i = 0; i < full; i += L::kStep) {
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      Vacc v[NIn][L::kParts];
      Vacc res_all[NOut][L::kParts];
      for (size_t k = 0; k < NIn; ++k) L::load(src[g][k] + i, v[k]);
      for (int p = 0; p < L::kParts; ++p) {
        Vacc args[NIn], res[NOut];
        for (size_t k = 0; k < NIn; ++k) args[k] = v[k][p];
        apply(args, fixed[g], res);
        for (size_t j = 0; j < NOut; ++j) res_all[j][p] = res[j];
      }
      for (size_t j = 0; j < NOut; ++j) L::store(dst[g][j] + i, res_all[j]);
    }
  }
  for (int g = 0; g < G; ++g) {
    for (int64_t i = full; i < len; ++i) {
      acc_t args[NIn], res[NOut];
      for (size_t k = 0; k < NIn; ++k) args[k] = static_cast<acc_t>(src[g][k][i]);
      apply(args, fixed_s[g], res);
      for (size_t j = 0; j < NOut; ++j) dst[g][j][i] = static_cast<scalar_t>(res[j]);
    }
  }
}

// apply_row_group over `rows` rows: kRowGroup at a time, then one at a time.
template <typename scalar_t, size_t NIn, size_t NOut, size_t NK, typename Apply>
void apply_short_rows(const std::array<const scalar_t*, NIn>& in, const std::array<int64_t, NIn>& in_stride,
                      const std::array<scalar_t*, NOut>& out, const std::array<int64_t, NOut>& out_stride,
                      int64_t rows, int64_t len, const std::array<const acc_type<scalar_t>*, NK>& coef,
                      const Apply& apply) {
  int64_t r = 0;
  for (; r + kRowGroup <= rows; r += kRowGroup) {
    apply_row_group<kRowGroup>(in, in_stride, out, out_stride, r, len, coef, apply);
  }
  for (; r < rows; ++r) apply_row_group<1>(in, in_stride, out, out_stride, r, len, coef, apply);
}

// ---------------------------------------------------------------------------
// Stages over one chunk of samples [n0, n1).

template <typename scalar_t, size_t NIn>
using InStreams = std::array<Stream<const scalar_t*>, NIn>;
template <typename scalar_t, size_t NOut>
using OutStreams = std::array<Stream<scalar_t*>, NOut>;

template <typename ptr_t>
inline ptr_t row_ptr(const Stream<ptr_t>& s, int64_t n, int64_t c, int64_t l) {
  return s.data + n * s.stride_n + c * s.stride_c + l * s.stride_l;
}

// Stage 1: sums[(n - n0) * C + c] = sum_l map(in[0..NR)(n, c, l)).
template <typename scalar_t, size_t NR, size_t NIn, typename Map>
void reduce_stage(const Plan& plan, const InStreams<scalar_t, NIn>& in, int64_t n0, int64_t n1,
                  acc_type<scalar_t>* sums, const Map& map) {
  using acc_t = acc_type<scalar_t>;
  static_assert(NR <= NIn, "reduce streams are the first NR inputs");
  const int64_t C = plan.c, T = plan.tiles_l;
  const int64_t per_sample = plan.tiles_per_sample();
  const int64_t tiles = (n1 - n0) * per_sample;
  if (plan.l == 0 || tiles == 0) {
    std::fill(sums, sums + (n1 - n0) * C, acc_t(0));
    return;
  }
  // Partial sums per (sample, channel, L-tile), combined below in L-tile order.
  std::vector<acc_t> partial(static_cast<size_t>((n1 - n0) * C * T), acc_t(0));
  auto partial_at = [&](int64_t i, int64_t c, int64_t lb) -> acc_t* {
    // channel-major on L-rows; tile-major on C-rows (a tile fills a contiguous C-run)
    return plan.path == Path::kRowsAlongC ? partial.data() + (i * T + lb) * C + c
                                          : partial.data() + (i * C + c) * T + lb;
  };
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(plan.tile_elems(), 1));

  at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t i = t / per_sample, n = n0 + i;
      const int64_t rest = t % per_sample;
      const Tile tile = tile_of(plan, rest);
      const int64_t lb = rest % plan.tiles_l;
      if (plan.path == Path::kRowsAlongC) {
        acc_t* dst = partial_at(i, 0, lb);
        for (int64_t l = tile.l0; l < tile.l1; ++l) {
          std::array<const scalar_t*, NR> rows;
          for (size_t k = 0; k < NR; ++k) rows[k] = row_ptr(in[k], n, 0, l);
          accumulate_contiguous<scalar_t, NR>(rows, C, dst, map);
        }
      } else if (plan.path == Path::kRowsAlongL && tile.l1 - tile.l0 <= kShortRow) {
        std::array<const scalar_t*, NR> rows;
        std::array<int64_t, NR> strides;
        for (size_t k = 0; k < NR; ++k) {
          rows[k] = row_ptr(in[k], n, tile.c0, tile.l0);
          strides[k] = in[k].stride_c;
        }
        reduce_short_rows<scalar_t, NR>(rows, strides, tile.c1 - tile.c0, tile.l1 - tile.l0,
                                        partial_at(i, tile.c0, lb), T, map);
      } else if (plan.path == Path::kRowsAlongL) {
        for (int64_t c = tile.c0; c < tile.c1; ++c) {
          std::array<const scalar_t*, NR> rows;
          for (size_t k = 0; k < NR; ++k) rows[k] = row_ptr(in[k], n, c, tile.l0);
          *partial_at(i, c, lb) = reduce_contiguous<scalar_t, NR>(rows, tile.l1 - tile.l0, map);
        }
      } else {
        // Sums of kGenericBlock terms added up in turn: the error of a long row of like
        // values (a broadcast map) grows with kGenericBlock + L / kGenericBlock, not L.
        constexpr int64_t kGenericBlock = 128;
        for (int64_t c = tile.c0; c < tile.c1; ++c) {
          acc_t sum = 0;
          for (int64_t b0 = tile.l0; b0 < tile.l1; b0 += kGenericBlock) {
            acc_t block = 0;
            const int64_t b1 = std::min(tile.l1, b0 + kGenericBlock);
            for (int64_t l = b0; l < b1; ++l) {
              acc_t args[NR > 0 ? NR : 1];
              for (size_t k = 0; k < NR; ++k) {
                args[k] = static_cast<acc_t>(
                    in[k].data[n * in[k].stride_n + c * in[k].stride_c + spatial_offset(in[k], l)]);
              }
              block += map(args);
            }
            sum += block;
          }
          *partial_at(i, c, lb) = sum;
        }
      }
    }
  });

  // Combine partials in L-tile order (fixed, thread-independent).
  for (int64_t i = 0; i < n1 - n0; ++i) {
    acc_t* out = sums + i * C;
    for (int64_t c = 0; c < C; ++c) {
      acc_t s = 0;
      for (int64_t lb = 0; lb < T; ++lb) s += *partial_at(i, c, lb);
      out[c] = s;
    }
  }
}

// Stage 3: out(n, c, l) = apply(in(n, c, l), coef[k][(n - n0) * C + c]).
template <typename scalar_t, size_t NIn, size_t NOut, size_t NK, typename Apply>
void apply_stage(const Plan& plan, const InStreams<scalar_t, NIn>& in,
                 const OutStreams<scalar_t, NOut>& out, int64_t n0, int64_t n1,
                 const std::array<const acc_type<scalar_t>*, NK>& coef, const Apply& apply) {
  using acc_t = acc_type<scalar_t>;
  const int64_t C = plan.c;
  const int64_t per_sample = plan.tiles_per_sample();
  const int64_t tiles = (n1 - n0) * per_sample;
  if (plan.l == 0 || tiles == 0) return;
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(plan.tile_elems(), 1));

  at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t i = t / per_sample, n = n0 + i;
      const Tile tile = tile_of(plan, t % per_sample);
      if (plan.path == Path::kRowsAlongC) {
        std::array<const acc_t*, NK> cf;
        for (size_t k = 0; k < NK; ++k) cf[k] = coef[k] + i * C;
        for (int64_t l = tile.l0; l < tile.l1; ++l) {
          std::array<const scalar_t*, NIn> src;
          std::array<scalar_t*, NOut> dst;
          for (size_t k = 0; k < NIn; ++k) src[k] = row_ptr(in[k], n, 0, l);
          for (size_t j = 0; j < NOut; ++j) dst[j] = row_ptr(out[j], n, 0, l);
          apply_contiguous<scalar_t, NIn, NOut, NK, true>(src, dst, C, cf, apply, plan.stream_stores);
        }
        continue;
      }
      if (plan.path == Path::kRowsAlongL && !plan.stream_stores && tile.l1 - tile.l0 <= kShortRow) {
        std::array<const scalar_t*, NIn> src;
        std::array<int64_t, NIn> src_stride;
        std::array<scalar_t*, NOut> dst;
        std::array<int64_t, NOut> dst_stride;
        std::array<const acc_t*, NK> cf;
        for (size_t k = 0; k < NIn; ++k) {
          src[k] = row_ptr(in[k], n, tile.c0, tile.l0);
          src_stride[k] = in[k].stride_c;
        }
        for (size_t j = 0; j < NOut; ++j) {
          dst[j] = row_ptr(out[j], n, tile.c0, tile.l0);
          dst_stride[j] = out[j].stride_c;
        }
        for (size_t k = 0; k < NK; ++k) cf[k] = coef[k] + i * C + tile.c0;
        apply_short_rows<scalar_t, NIn, NOut, NK>(src, src_stride, dst, dst_stride, tile.c1 - tile.c0,
                                                  tile.l1 - tile.l0, cf, apply);
        continue;
      }
      for (int64_t c = tile.c0; c < tile.c1; ++c) {
        std::array<const acc_t*, NK> cf;
        for (size_t k = 0; k < NK; ++k) cf[k] = coef[k] + i * C + c;
        if (plan.path == Path::kRowsAlongL) {
          std::array<const scalar_t*, NIn> src;
          std::array<scalar_t*, NOut> dst;
          for (size_t k = 0; k < NIn; ++k) src[k] = row_ptr(in[k], n, c, tile.l0);
          for (size_t j = 0; j < NOut; ++j) dst[j] = row_ptr(out[j], n, c, tile.l0);
          apply_contiguous<scalar_t, NIn, NOut, NK, false>(src, dst, tile.l1 - tile.l0, cf, apply,
                                                            plan.stream_stores);
          continue;
        }
        acc_t fixed[NK > 0 ? NK : 1];
        for (size_t k = 0; k < NK; ++k) fixed[k] = cf[k][0];
        for (int64_t l = tile.l0; l < tile.l1; ++l) {
          acc_t args[NIn], res[NOut];
          for (size_t k = 0; k < NIn; ++k) {
            args[k] = static_cast<acc_t>(
                in[k].data[n * in[k].stride_n + c * in[k].stride_c + spatial_offset(in[k], l)]);
          }
          apply(args, fixed, res);
          for (size_t j = 0; j < NOut; ++j) {
            out[j].data[n * out[j].stride_n + c * out[j].stride_c + spatial_offset(out[j], l)] =
                static_cast<scalar_t>(res[j]);
          }
        }
      }
    }
    if (plan.stream_stores) streaming_fence();
  });
}

// The whole skeleton (NR reduce streams, NK coefficients per (n, c)): for each chunk of samples, reduce, then
// head(n0, n1, sums + n0 * C, coef) fills coef[k][(n - n0) * C + c], then apply.
// `sums` (N x C) keeps every sample's reduction for the caller (saved statistics,
// parameter gradients); the head may rewrite its chunk of it (e.g. sum -> mean).
template <typename scalar_t, size_t NR, size_t NK, size_t NIn, size_t NOut, typename Map,
          typename Head, typename Apply>
void reduce_head_apply(const Plan& plan, const InStreams<scalar_t, NIn>& in,
                       const OutStreams<scalar_t, NOut>& out, acc_type<scalar_t>* sums,
                       const Map& map, const Head& head, const Apply& apply) {
  using acc_t = acc_type<scalar_t>;
  const int64_t C = plan.c;
  const int64_t chunk = std::min(plan.chunk_n, std::max<int64_t>(plan.n, 1));
  // Runs the three stages on samples [n0, n1) with `width` samples of coefficient space.
  auto run = [&](int64_t n0, int64_t n1, int64_t width, std::vector<acc_t>& storage) {
    storage.resize(static_cast<size_t>(std::max<size_t>(NK, 1) * width * C));
    std::array<acc_t*, NK> coef;
    std::array<const acc_t*, NK> coef_in;
    for (size_t k = 0; k < NK; ++k) {
      coef[k] = storage.data() + k * width * C;
      coef_in[k] = coef[k];
    }
    reduce_stage<scalar_t, NR, NIn>(plan, in, n0, n1, sums + n0 * C, map);
    head(n0, n1, sums + n0 * C, coef);
    apply_stage<scalar_t, NIn, NOut, NK>(plan, in, out, n0, n1, coef_in, apply);
  };
  if (plan.sample_parallel) {
    // Stages nested in this parallel region run inline on the calling thread.
    at::parallel_for(0, plan.n, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> storage;
      for (int64_t n = begin; n < end; ++n) run(n, n + 1, 1, storage);
    });
    return;
  }
  std::vector<acc_t> storage;
  for (int64_t n0 = 0; n0 < plan.n; n0 += chunk) run(n0, std::min(plan.n, n0 + chunk), chunk, storage);
}

}  // namespace gct_fused::cpu
