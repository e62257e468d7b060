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

#include <unistd.h>  // sysconf: the L2 size

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

#include "../op_common.h"
#include "gct_fused/macros.h"

namespace gct_fused::cpu {

using at::vec::Vectorized;

template <typename scalar_t>
using acc_type = at::opmath_type<scalar_t>;

}  // namespace gct_fused::cpu

namespace gct_fused {
// Vectorized overloads of the portability functions of gct_fused/macros.h, so that the
// per-channel formulas of gct_math.h and pointwise.h (templates on T) also run on whole
// vectors of channels in the CPU heads. Declared before those headers are included.
template <typename T>
inline at::vec::Vectorized<T> gf_sqrt(const at::vec::Vectorized<T>& v) { return v.sqrt(); }
template <typename T>
inline at::vec::Vectorized<T> gf_abs(const at::vec::Vectorized<T>& v) { return v.abs(); }
template <typename T>
inline at::vec::Vectorized<T> gf_exp(const at::vec::Vectorized<T>& v) { return v.exp(); }
template <typename T>
inline at::vec::Vectorized<T> gf_sign(const at::vec::Vectorized<T>& v) {
  const at::vec::Vectorized<T> zero(T(0));
  return v.gt(zero) - v.lt(zero);  // gt/lt give 1 or 0 per lane: sign(0) = 0
}
}  // namespace gct_fused

namespace gct_fused::cpu {

// f(c, lane) over channels [0, n): lane is a Vectorized<T> for each full vector of
// channels, then a T for each channel of the tail, so one generic lambda (loading with
// load_lanes, storing with store_lanes) is the vector loop and its scalar tail.
template <typename T, typename F>
inline void over_channels(int64_t n, const F& f) {
  using V = Vectorized<T>;
  int64_t c = 0;
  for (; c + V::size() <= n; c += V::size()) f(c, V(T(0)));
  for (; c < n; ++c) f(c, T(0));
}
template <typename T>
inline T load_lanes(const T* p, T) { return *p; }
template <typename T>
inline Vectorized<T> load_lanes(const T* p, const Vectorized<T>&) { return Vectorized<T>::loadu(p); }
template <typename T>
inline void store_lanes(T* p, T v) { *p = v; }
template <typename T>
inline void store_lanes(T* p, const Vectorized<T>& v) { v.store(p); }

// ---------------------------------------------------------------------------
// Element helpers usable with scalars and with Vectorized (besides the gf_* functions).
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
// Stores the first `count` lanes of v at p.
template <typename T>
inline void store_first(T* p, const Vectorized<T>& v, int64_t count) {
  if (count == Vectorized<T>::size()) {
    v.store(p);
    return;
  }
#if defined(CPU_CAPABILITY_AVX512)
  v.store(p, count);  // a masked store
#else
  // AVX2's masked store (vmaskmovps) is microcoded and slow on the AMD cores we target:
  // write the lanes through a buffer instead.
  T buffer[Vectorized<T>::size()];
  v.store(buffer);
  std::copy(buffer, buffer + count, p);
#endif
}

// Of `count` elements from the start of a run, how many fall in its vector part p (lanes
// [p * size, (p + 1) * size)): the lane count of that part's masked load or store, 0..size.
template <typename T>
constexpr int64_t part_lanes(int64_t count, int64_t p) {
  return std::clamp<int64_t>(count - p * Vectorized<T>::size(), 0, Vectorized<T>::size());
}

// Two float vectors rounded (to nearest even) into one vector of half precision: lo fills
// the lower lanes. at::vec rounds to bfloat16 in integer arithmetic (about seven
// instructions per float vector); where the CPU has AVX512-BF16, one vcvtne2ps2bf16 rounds
// both, to the same bits for every finite normal value, zero and infinity. That instruction
// reads subnormal inputs as zero and keeps a NaN's payload, so a pair holding either goes
// through at::vec's rounding instead: the bits never depend on the build
// (tests/test_bf16_narrowing.py). Zen 4 VM, GCT bfloat16 forward with the map in cache (the
// op alone, 3000 calls, three interleaved pairs): 8x2048x7x7 0.142-0.170 -> 0.122-0.138 ms,
// 2x256x28x28 0.062-0.090 -> 0.043-0.058 ms; with caches evicted no change beyond noise.
template <typename scalar_t>
inline Vectorized<scalar_t> narrow_from_float(const Vectorized<float>& lo, const Vectorized<float>& hi) {
#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    constexpr int kNanOrSubnormal = 0x01 | 0x80 | 0x20;  // vfpclassps: quiet NaN, signaling NaN, denormal
    if ((_mm512_fpclass_ps_mask(lo, kNanOrSubnormal) | _mm512_fpclass_ps_mask(hi, kNanOrSubnormal)) == 0) {
      return Vectorized<scalar_t>(reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
    }
  }
#endif
  return at::vec::convert_from_float<scalar_t>(lo, hi);
}

// Loads and stores Vectorized<scalar_t>::size() elements as kParts acc vectors
// (1 for float/double, 2 for half/bfloat16, which widen to float).
template <typename scalar_t>
struct Lanes {
  using acc_t = acc_type<scalar_t>;
  using Vacc = Vectorized<acc_t>;
  static constexpr int64_t kStep = Vectorized<scalar_t>::size();
  static constexpr int kParts = static_cast<int>(kStep / Vacc::size());

  // count < kStep: a partial step (masked): lanes [count, kStep) read as 0 / are not written.
  static void load(const scalar_t* p, Vacc* out, int64_t count = kStep) {
    if constexpr (kParts == 1) {
      out[0] = Vacc::loadu(p, count);
    } else {
      auto wide = at::vec::convert_to_float<scalar_t>(Vectorized<scalar_t>::loadu(p, count));
      out[0] = std::get<0>(wide);
      out[1] = std::get<1>(wide);
    }
  }
  static void store(scalar_t* p, const Vacc* in, int64_t count = kStep) {
    if constexpr (kParts == 1) store_first(p, in[0], count);
    else store_first(p, narrow_from_float<scalar_t>(in[0], in[1]), count);
  }
  // The running sums of one step (acc_t, kParts vectors), the first `count` of them.
  static void store_sums(acc_t* p, const Vacc* in, int64_t count = kStep) {
    for (int q = 0; q < kParts; ++q) {
      const int64_t lanes = part_lanes<acc_t>(count, q);
      if (lanes > 0) store_first(p + q * Vacc::size(), in[q], lanes);
    }
  }
};

// Sum of the lanes of v in a fixed shuffle tree (at::vec's, log2(lanes) dependent adds)
// rather than lane by lane: a 16-lane chain of dependent scalar adds cost more than
// the vector loop itself on rows of a few hundred elements.
template <typename T>
inline T horizontal_sum(const Vectorized<T>& v) {
  return at::vec::vec_reduce_all<T>([](const Vectorized<T>& a, const Vectorized<T>& b) { return a + b; }, v);
}

// out[s] = horizontal_sum(v[s]) for eight vectors, bit for bit: the same pairs of lanes
// are added in the same order (lane i with i ^ 8, then i ^ 4, i ^ 2, i ^ 1, as
// at::vec's AVX-512 float tree does), but two vectors share each shuffle and add, so the
// eight sums take 14 shuffles and 8 adds instead of 32 and 32. Finishing dot products
// eight at a time (the SE MLP's samples) spent as long in horizontal sums as in the
// fused multiply-adds of a 128-wide row.
template <typename T>
inline void horizontal_sums8(const Vectorized<T> (&v)[8], T* out) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    // Step 1, lane i with i ^ 8: halves of (v[2p], v[2p+1]) -> 8 sums each.
    __m512 t[4];
    for (int p = 0; p < 4; ++p) {
      const __m512 a = v[2 * p], b = v[2 * p + 1];
      t[p] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
    }
    // Step 2, lane i with i ^ 4: 128-bit block q of u[h] holds 4 sums of vector 4h + q.
    __m512 u[2];
    for (int h = 0; h < 2; ++h) {
      u[h] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * h], t[2 * h + 1], 0x88),
                           _mm512_shuffle_f32x4(t[2 * h], t[2 * h + 1], 0xDD));
    }
    // Step 3, lane i with i ^ 2: block q = (2 sums of vector q, 2 of vector 4 + q).
    const __m512 w = _mm512_add_ps(_mm512_shuffle_ps(u[0], u[1], 0x44), _mm512_shuffle_ps(u[0], u[1], 0xEE));
    // Step 4, lane i with i ^ 1: lane 4q is vector q's sum, lane 4q + 2 vector 4 + q's.
    alignas(64) float lanes[16];
    _mm512_store_ps(lanes, _mm512_add_ps(w, _mm512_shuffle_ps(w, w, 0xB1)));
    for (int q = 0; q < 4; ++q) {
      out[q] = lanes[4 * q];
      out[4 + q] = lanes[4 * q + 2];
    }
    return;
  }
#endif
  for (int s = 0; s < 8; ++s) out[s] = horizontal_sum(v[s]);
}

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
    store_streaming<scalar_t>(p, narrow_from_float<scalar_t>(in[0], in[1]));
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

// How a call is cut into chunks of samples and tiles. The tiles depend on the shape and
// the strides only; whether threads take whole samples (sample_parallel) also on the cache
// sizes and the number of threads, but that only moves work between threads: no value
// depends on it.
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
  // apply re-reads a sample from its own L2. Large ones: all threads share a chunk, or,
  // where that chunk would not stay in their L2s anyway, each takes whole samples too
  // (see large_samples_parallel).
  bool sample_parallel = false;
  // Outputs larger than the cache are written with streaming stores (see store_streaming).
  bool stream_stores = false;
  std::vector<std::vector<int64_t>> offset_tables;  // generic path: one per tensor

  int64_t tile_elems() const { return tile_c * tile_l; }
  int64_t tiles_per_sample() const { return tiles_c * tiles_l; }
};

// Budget for the bytes of one chunk's reduce inputs: they are re-read by the apply
// stage, so they should stay in cache: well within the 32 MB L3 of the AMD machines, and
// within the L2s of two cores where those are 2 MB (an Intel Xeon VM, whose share of its
// large L3 re-reads slowly). There 8 MB chunks ran GCT forward 8x256x56x56 at 1.26-1.27x a
// copy (float32) and 1.74-1.85x (bfloat16) against 1.03-1.25x and 1.56-1.58x with 4 MB,
// SE 1.18-1.20x / 1.80-1.87x against 1.02-1.08x / 1.62-1.63x (benchmark, caches evicted,
// two runs each); 2 MB split the 3.2 MB 7x7 maps in two chunks, so the SE head read its
// weights twice (SE 8x2048x7x7 2.8x -> 3.4x).
constexpr int64_t kChunkBytes = int64_t(4) << 20;
// Longest L-run one tile reduces; longer rows are split so that few large rows
// (e.g. GCT on a 3-channel image) still spread over threads.
constexpr int64_t kMaxTileL = 32768;
// Elements per tile when rows are short (many rows per tile) or C-rows.
constexpr int64_t kTileElems = 16384;
// The L2 size of a core as the C library reports it (0 if unknown).
inline int64_t l2_bytes() {
  static const int64_t l2 = [] {
    long bytes = 0;
#ifdef _SC_LEVEL2_CACHE_SIZE
    bytes = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    return std::max<int64_t>(bytes, 0);
  }();
  return l2;
}
// Largest per-sample working set (inputs of the reduce plus the head's data) that a
// thread processes on its own, out of its L2: 3/4 of the L2 of a core as the C library
// reports it, and at least 640 KB, the fixed budget the AMD machines ran with before (a
// 512 KB L2 keeps it; a 1 MB L2 gets 768 KB: on a Zen 4 VM GCT forward on 8x900x14x14
// float32, samples of 705 KB, ran at 1.49-1.62x a copy as whole samples against 1.50-1.73x
// in chunks shared by the threads, caches evicted, three interleaved pairs). On an Intel Xeon VM
// (2 MB L2, an L3 that re-reads at about DRAM speed) whole samples of 784 KB-1.3 MB ran 4-5%
// faster with caches evicted and 14-18% faster in cache (gct/se 8x1024x14x14 float32
// forward; interleaved A/B runs).
constexpr int64_t kSampleBytes = int64_t(640) << 10;
inline int64_t sample_bytes_budget() {
  return std::max<int64_t>(kSampleBytes, l2_bytes() / 4 * 3);
}
// Whether threads take whole samples larger than sample_bytes_budget() (each re-reading its
// sample from L3) rather than sharing a chunk of them. Sharing keeps a chunk in the L2s of
// the threads together where they hold it (an Intel Xeon VM, 2 MB L2s, an L3 that re-reads
// at about DRAM speed: kChunkBytes); where they cannot, the shared chunk is re-read from L3
// as well, and threads in step on one chunk first all read (the reduce) and then all
// write (the apply), while threads on their own samples drift apart and overlap the two.
// Zen 4 VM (1 MB L2s), both ways interleaved call by call in one process, caches evicted,
// forward, x copy: SE 8x256x56x56 NCHW 1.232 -> 1.215 and 1.154 -> 1.096, channels_last
// 1.257 -> 1.199 and 1.161 -> 1.118; GCT NCHW 1.134 -> 1.081 and 1.183 -> 1.084, channels_last
// 1.145 -> 1.108 and 1.152 -> 1.133; 8x512x28x28 SE 1.260 -> 1.200, GCT 1.168 -> 1.092; SE
// 8x144x56x56 1.208 -> 1.160; forward+backward 8x256x56x56 1-4% faster; GCT 2x64x8x56x56
// (6.4 MB samples, one per thread) 1.180 -> 1.191. Only where the threads' samples together
// fill at most kLargeSamplesBytes, where the head's bytes (SE weights, read once per sample here,
// once per chunk when shared) are at most an eighth of the sample's, and where the batch
// splits evenly (or in at least four samples per thread): three samples on two threads
// would leave one thread idle for a third of the call.
//
// The L3 bound is a constant, half the 32 MB L3 of the AMD machines: the C library's L3 size
// is not to be trusted in these VMs (320 MB on the Zen 4 VM, whose lscpu says 32 MB).
constexpr int64_t kLargeSamplesBytes = int64_t(16) << 20;
// chunk_n: the samples per shared chunk (Plan::chunk_n).
inline bool large_samples_parallel(int64_t n, int64_t chunk_n, int64_t sample_bytes, int64_t head_bytes) {
  const int64_t threads = at::get_num_threads();
  if (l2_bytes() == 0 || threads < 2 || n < threads) return false;
  return std::min(n, chunk_n) * sample_bytes > threads * l2_bytes() && threads * (sample_bytes + head_bytes) <= kLargeSamplesBytes &&
         head_bytes * 8 <= sample_bytes && (n % threads == 0 || n >= 4 * threads);
}

// Outputs of at least this many bytes in total are written with streaming stores: a
// quarter of the 32 MB L3 (shared, and just swept by the input too), beyond which little of
// the output is still cached when the next layer reads it, while ordinary stores first read
// every output line from DRAM (measured, caches evicted: se 8x144x56x56 forward 1.51x ->
// 1.33x a copy, gct 8x256x56x56 bfloat16 1.07 -> 0.87 ms, with 8 MB instead of 16 MB).
// Streaming every output would win the benchmark (caches evicted, so ordinary stores read
// each output line from DRAM first) and lose in a network, whose next layer reads y: Zen 4
// VM, float32 8x2048x7x7 and 8x1024x14x14 (3.2 MB outputs), both ways interleaved call by
// call in one process: forward alone with caches evicted 0.89-0.99x the time, but forward
// then y.sum() with caches warm 1.17-1.98x.
constexpr int64_t kStreamOutputBytes = int64_t(8) << 20;
// Smallest amount of work worth waking a thread for.
constexpr int64_t kGrainElems = 32768;

inline int64_t ceil_div(int64_t a, int64_t b) { return b == 0 ? 0 : (a + b - 1) / b; }

// The map bytes a shared chunk holds: kChunkBytes, or more where the head touches many
// bytes itself (SE's weights), since it runs once per chunk: at least four times the
// head's bytes, so that the head is at most a fifth of a chunk's traffic. The SE backward
// reads its weights twice per chunk (4 MB at C = 2048, R = 128) against 4 MB of (dy, x)
// per chunk, so a 8x2048x7x7 backward ran its head in two chunks and spent 40% of its time
// there. Zen 4 VM, ops called directly, caches evicted, interleaved call by call in one
// process, x copy, kChunkBytes -> this: se_backward 8x2048x7x7 5.07 -> 4.19 (channels_last
// 4.57 -> 3.86 with twice the head), 16x2048x7x7 4.89 -> 3.87, 32x2048x7x7 3.62 -> 3.10;
// se_forward (2 MB of weights) 16x2048x7x7 1.96 -> 1.68, 8x and 32x unchanged. Ops with
// light heads (GCT; SE up to C = 1024 at R = C / 16) keep kChunkBytes: 8 MB chunks for
// every op measured no better on them here and were slower on the Xeon (see kChunkBytes),
// where this rule is unmeasured.
inline int64_t chunk_bytes(int64_t head_bytes) {
  return std::max(kChunkBytes, std::min(kLargeSamplesBytes, 4 * head_bytes));
}

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
  plan.chunk_n = std::max<int64_t>(1, chunk_bytes(head_bytes_per_sample) / std::max<int64_t>(reduce_bytes_per_sample, 1));
  // The choice only moves work between threads: every value is computed the same way
  // either way, so results do not depend on it (or on the thread count).
  plan.sample_parallel =
      plan.n >= 2 && (reduce_bytes_per_sample + head_bytes_per_sample <= sample_bytes_budget() ||
                      large_samples_parallel(plan.n, plan.chunk_n, reduce_bytes_per_sample, head_bytes_per_sample));
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
//
// They take their arrays of row pointers by value: a pointer read through a reference
// may be changed by any store in the loop as far as the compiler knows, so it was
// reloaded after every vector store (a load that waits on the store before it), which
// made the apply loop about 1.7x slower than a copy on data in cache.

// One step of Lanes<scalar_t>::kStep elements (count < kStep: the first count of them) at
// in[k] + offset: acc[p] += map(in[0..NR)) for its kParts vectors. A partial step loads
// the missing lanes as zeros, and every map gives 0 on zeros (x^2, |x|, x, dy * x, ...),
// so tails go through the vector code too.
template <typename scalar_t, size_t NR, typename Map, typename Ptrs>
__attribute__((always_inline)) inline void reduce_step(const Ptrs& in, int64_t offset, const Map& map,
                                                       Vectorized<acc_type<scalar_t>>* acc,
                                                       int64_t count = Lanes<scalar_t>::kStep) {
  using L = Lanes<scalar_t>;
  using Vacc = typename L::Vacc;
  Vacc v[NR > 0 ? NR : 1][L::kParts];
  for (size_t k = 0; k < NR; ++k) L::load(in[k] + offset, v[k], count);
  for (int p = 0; p < L::kParts; ++p) {
    Vacc args[NR > 0 ? NR : 1];
    for (size_t k = 0; k < NR; ++k) args[k] = v[k][p];
    acc[p] = acc[p] + map(args);
  }
}

// One step of the apply: out[j][offset ..] = apply(in[.][offset ..], coef) for kStep elements
// (count < kStep: the first count). cf(p, coef, count) gives the coefficient vectors of
// part p of the step.
template <typename scalar_t, size_t NIn, size_t NOut, size_t NK, typename Apply, typename InPtrs,
          typename OutPtrs, typename Coef>
__attribute__((always_inline)) inline void apply_step(const InPtrs& in, const OutPtrs& out, int64_t offset,
                                                      const Coef& cf, const Apply& apply, bool streaming,
                                                      int64_t count = Lanes<scalar_t>::kStep) {
  using L = Lanes<scalar_t>;
  using Vacc = typename L::Vacc;
  Vacc v[NIn][L::kParts];
  Vacc r[NOut][L::kParts];
  for (size_t k = 0; k < NIn; ++k) L::load(in[k] + offset, v[k], count);
  for (int p = 0; p < L::kParts; ++p) {
    Vacc args[NIn], coef[NK > 0 ? NK : 1], res[NOut];
    for (size_t k = 0; k < NIn; ++k) args[k] = v[k][p];
    cf(p, coef, count);
    apply(args, coef, res);
    for (size_t j = 0; j < NOut; ++j) r[j][p] = res[j];
  }
  for (size_t j = 0; j < NOut; ++j) {
    if (streaming) store_lanes_streaming<scalar_t>(out[j] + offset, r[j]);
    else L::store(out[j] + offset, r[j], count);
  }
}

// (0, 1, 2, ...) as a vector, to compare lane numbers with a row boundary.
template <typename T>
inline Vectorized<T> lane_index() {
  T iota[Vectorized<T>::size()];
  for (int64_t j = 0; j < Vectorized<T>::size(); ++j) iota[j] = static_cast<T>(j);
  return Vectorized<T>::loadu(iota);
}

// Rows no longer than this go through the short-row kernels below (flat or grouped).
constexpr int64_t kShortRow = 256;

// Where a vector ISA has cheap masked loads and stores (AVX-512), short dense rows go
// through the flat kernels below (one range of aligned vectors, no per-row tails). AVX2 has
// none: at::vec's partial loadu / store go through a stack buffer (a store-forwarding stall
// each), and the flat kernels' single chain of dependent adds and per-vector row-boundary
// blends left 7x7 and 14x14 maps at 5-6x a copy of data in cache (Zen 3, one thread);
// there rows end with overlapping steps (RowTail), short rows grouped (grouped_rows). With
// caches evicted, float32 8x2048x7x7 GCT forward went from 2.3-2.5x a copy to 1.8-2.0x,
// 8x1024x14x14 from 1.9-2.2x to 1.65-1.8x, bfloat16 7x7 from 4.2x to 2.4x.
#if defined(CPU_CAPABILITY_AVX512)
constexpr bool kMaskedSteps = true;
#else
constexpr bool kMaskedSteps = false;
#endif
// Half-precision rows take the grouped / overlapping path on every ISA: on AVX-512 (an
// Intel Xeon VM, caches evicted, the module's call, NCHW) the flat kernels ran bfloat16 GCT
// forward 8x2048x7x7 at 2.9-3.0x a copy against 2.7x, 8x1024x14x14 at 2.5x against
// 2.3-2.4x, float16 GCT 7x7 at 3.2-3.35x against 2.75-2.85x, bfloat16 SE 7x7 at 3.8x
// against 3.4-3.5x, and forward+backward 7x7 / 14x14 at 7.1x / 6.3-6.7x against 6.7x / 6.0x;
// float32 measured the same either way there (the flat kernels were tuned for it on Zen 5).
// Zen 4 VM, the same way: bfloat16 GCT forward 8x2048x7x7 0.52-0.56 ms against 0.69-0.73 ms
// flat, 8x1024x14x14 0.71-0.92 against 0.97-1.01 ms; masked instead of overlapping tails on
// the grouped kernels made no difference beyond noise.
template <typename scalar_t>
constexpr bool kFlatShortRows = kMaskedSteps && sizeof(scalar_t) >= 4;  // rows up to kShortRow

// How the row kernels end a row of `len` elements that is not a whole number of steps.
// Partial: a masked step at `full`. Overlapping (rows of at least one step): a full step
// ending at the row's end, at len - kStep, which re-covers lanes of the last whole step; the
// reduce blends those lanes out of its map (`fresh` keeps the rest), the apply writes them
// again with the same values (so its outputs must not alias its inputs). Built once per
// tile: every row of a tile has the same length.
template <typename scalar_t>
struct RowTail {
  using L = Lanes<scalar_t>;
  using Vacc = typename L::Vacc;
  int64_t len = 0;
  int64_t full = 0;   // elements in whole steps
  int64_t start = 0;  // offset of the tail step
  int64_t count = 0;  // elements the tail step loads and stores (0: no tail)
  bool overlap = false;
  Vacc fresh[L::kParts];  // overlapping: per part, all-ones lanes where the tail is new

  RowTail(int64_t row_len, bool overlapping) : len(row_len) {
    using acc_t = typename L::acc_t;
    full = len - len % L::kStep;
    overlap = overlapping && full < len && len >= L::kStep;
    start = overlap ? len - L::kStep : full;
    count = overlap ? L::kStep : len - full;
    const Vacc lanes = lane_index<acc_t>();
    for (int p = 0; p < L::kParts; ++p) {
      // lane j of part p is lane p * size + j of the step; new from lane kStep - (len - full)
      fresh[p] = lanes >= Vacc(acc_t(L::kStep - (len - full) - p * Vacc::size()));
    }
  }
};

// acc[p] += map(in[0..NR)) over the tail step of a row starting at in (see RowTail).
template <typename scalar_t, size_t NR, typename Map, typename Ptrs>
__attribute__((always_inline)) inline void reduce_tail(const Ptrs& in, const RowTail<scalar_t>& tail, const Map& map,
                                                       Vectorized<acc_type<scalar_t>>* acc) {
  using L = Lanes<scalar_t>;
  using Vacc = typename L::Vacc;
  if (tail.overlap) {
    const Vacc zero(acc_type<scalar_t>(0));
    Vacc m[L::kParts];
    for (auto& v : m) v = zero;
    reduce_step<scalar_t, NR>(in, tail.start, map, m);  // m = map of the whole step
    for (int p = 0; p < L::kParts; ++p) acc[p] = acc[p] + Vacc::blendv(zero, m[p], tail.fresh[p]);
  } else if (tail.count > 0) {
    reduce_step<scalar_t, NR>(in, tail.start, map, acc, tail.count);
  }
}

// On the overlapping-tail ISAs, rows of fewer than this many steps go through the grouped
// kernels (7x7 maps), longer ones one at a time, front to back: groups of 8 rows of 14x14
// read 8 streams 784 bytes apart, which measured 2.5x a copy with caches evicted against
// 1.7x one row at a time (Zen 3, 8x1024x14x14 float32 GCT forward).
constexpr int64_t kGroupedRowSteps = 8;

// Whether rows of `len` elements go through the grouped short-row kernels.
template <typename scalar_t>
constexpr bool grouped_rows(int64_t len) {
  return kFlatShortRows<scalar_t> ? len <= kShortRow : len < kGroupedRowSteps * Lanes<scalar_t>::kStep;
}

// Sum of map(in) over tail.len contiguous elements: eight vector accumulators (enough
// independent add chains to cover the add latency), the tail step (see RowTail), then a
// fixed-order horizontal sum.
template <typename scalar_t, size_t NR, typename Map>
acc_type<scalar_t> reduce_contiguous(const std::array<const scalar_t*, NR> in, const RowTail<scalar_t>& tail,
                                     const Map& map) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using Vacc = typename L::Vacc;
  constexpr int kUnroll = 8;
  const int64_t len = tail.len;
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
      for (int u = 0; u < kUnroll; ++u) reduce_step<scalar_t, NR>(in, i + u * L::kStep, map, block[u]);
    }
    for (int u = 0; u < kUnroll; ++u)
      for (int p = 0; p < L::kParts; ++p) acc[u][p] = acc[u][p] + block[u][p];
  }
  for (; i + L::kStep <= len; i += L::kStep) reduce_step<scalar_t, NR>(in, i, map, acc[0]);
  reduce_tail<scalar_t, NR>(in, tail, map, acc[0]);
  Vacc total(acc_t(0));
  for (int u = 0; u < kUnroll; ++u)
    for (int p = 0; p < L::kParts; ++p) total = total + acc[u][p];
  return horizontal_sum(total);
}

// How far ahead the row kernels' reads are prefetched into L2 (prefetcht1): at least this
// many bytes of rows ahead, the same offset within the row. See kShortRowPrefetchBytes and
// reduce_c_row_group for where it is used and what was measured.
constexpr int64_t kPrefetchAheadBytes = int64_t(16) << 10;
// Short rows of at least this many bytes are prefetched kPrefetchAheadBytes ahead by the
// grouped reduce (reduce_row_group); shorter ones are not. A group of 8 rows of 392 bytes
// (half-precision 14x14 maps) reads 8 interleaved streams that the hardware prefetchers
// follow poorly; 98-byte rows (7x7) make one nearly sequential stream they follow well.
// Zen 4 VM, NCHW, caches evicted, with and without interleaved call by call in one process
// (ratio to a copy, two runs each): bfloat16 GCT forward 8x1024x14x14 1.77 -> 1.63,
// 2.42 -> 2.11; SE 2.00 -> 1.89, 2.91 -> 2.53; float16 SE 3.21 -> 2.96, 2.18 -> 2.04; bfloat16
// GCT forward+backward 5.80 -> 5.39, 6.65 -> 5.53; but bfloat16 GCT forward 8x2048x7x7
// 1.84 -> 2.01, 1.70 -> 2.04 (hence the threshold; nothing between 98 and 392 bytes was
// measured, nor any of this on an AVX2 machine).
constexpr int64_t kShortRowPrefetchBytes = 256;

// Whether the apply takes rows of `len` elements in groups (apply_short_rows) rather than
// one at a time: grouped rows, but only those shorter than kShortRowPrefetchBytes. A group
// of 392-byte rows (half-precision 14x14 maps) writes 4 interleaved streams of output lines
// (each first read from DRAM). The cost shows only with the caches cold, so it is one of
// the access pattern, most likely the hardware prefetchers following those streams poorly
// as they did the grouped reduce's reads before its prefetches (see kShortRowPrefetchBytes;
// not confirmed with counters): with the caches kept warm, bfloat16 GCT forward
// 8x1024x14x14 took 145 us in NCHW against 126 us in channels_last, cold 1.71x against
// 1.30x a copy.
// Zen 4 VM, NCHW, caches evicted, interleaved call by call in one process, x copy, grouped
// -> one at a time: bfloat16 GCT forward 8x1024x14x14 1.687 -> 1.482, float16 1.825 ->
// 1.593, bfloat16 SE 1.775 -> 1.615, SE 8x672x14x14 1.744 -> 1.591, forward+backward GCT
// 4.86 -> 4.39, SE 4.94 -> 4.74; but bfloat16 GCT 8x2048x7x7 (196-byte rows) 1.561 -> 1.663,
// which stays grouped. Results are the same bits either way (the apply is per element).
template <typename scalar_t>
constexpr bool grouped_apply_rows(int64_t len) {
  return grouped_rows<scalar_t>(len) && len * int64_t(sizeof(scalar_t)) < kShortRowPrefetchBytes;
}

// Rows reduced together: each row is one chain of dependent vector adds, and it takes
// about eight chains in flight to cover the add latency (four left the loop
// latency-bound on 14x14 rows).
constexpr int kReduceRowGroup = 8;
// Rows applied together.
constexpr int kApplyRowGroup = 4;

// Walks a flat range of whole rows of `len` elements (rows following each other in
// memory) part by part, for the flat short-row kernels below.
struct RowCursor {
  int64_t rows, len;
  int64_t row = 0, row_end = len;  // the current row and the flat index where it ends
  // Moves to the row holding flat index `start` (never past the last row) and returns how
  // many elements from `start` on are still in it.
  int64_t seek(int64_t start) {
    while (start >= row_end && row + 1 < rows) {
      ++row;
      row_end += len;
    }
    return row_end - start;
  }
};

// Sums of map(in) over `rows` whole rows of `len` elements that follow each other in
// memory (a tile of a dense NCHW map), row q's sum to out[q * out_stride], walked as one
// flat range of aligned full vectors: a vector part spans at most two rows (len >= its
// lanes) and is split between their accumulators at the boundary. Each row's lanes add up
// its parts in order, then horizontal_sum: a fixed order for a given shape.
template <typename scalar_t, size_t NR, typename Map>
void reduce_flat_rows(const std::array<const scalar_t*, NR> in, int64_t rows, int64_t len,
                      acc_type<scalar_t>* out, int64_t out_stride, const Map& map) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using Vacc = typename L::Vacc;
  constexpr int64_t kW = Vacc::size();
  const int64_t total = rows * len;
  const Vacc lanes = lane_index<acc_t>();
  const Vacc zero(acc_t(0));
  RowCursor cursor{rows, len};
  Vacc acc = zero;
  // always_inline on this and the other per-step lambdas of the row kernels: out of line,
  // acc and the cursor live in memory and every step is a call. GCC's inliner dropped this
  // one once when an unrelated change shrank the GCT head, and 7x7 GCT ran 2x slower.
  auto add_step = [&](int64_t i, int64_t count) __attribute__((always_inline)) {
    Vacc m[L::kParts];
    for (auto& v : m) v = zero;
    reduce_step<scalar_t, NR>(in, i, map, m, count);  // m[p] = map of part p (0 past count)
    for (int p = 0; p < L::kParts; ++p) {
      const int64_t start = i + p * kW;
      if (start >= cursor.row_end && cursor.row + 1 < rows) {  // a part starting a new row
        out[cursor.row * out_stride] = horizontal_sum(acc);
        acc = zero;
        cursor.seek(start);
      }
      const int64_t split = cursor.row_end - start;
      if (split >= kW || cursor.row + 1 == rows) {  // lanes past the last row are zeros
        acc = acc + m[p];
        continue;
      }
      const auto in_next = lanes >= Vacc(acc_t(split));
      acc = acc + Vacc::blendv(m[p], zero, in_next);
      out[cursor.row * out_stride] = horizontal_sum(acc);
      acc = Vacc::blendv(zero, m[p], in_next);
      cursor.seek(cursor.row_end);
    }
  };
  int64_t i = 0;
  for (; i + L::kStep <= total; i += L::kStep) add_step(i, L::kStep);
  if (i < total) add_step(i, total - i);
  out[cursor.row * out_stride] = horizontal_sum(acc);
}

// Sums of map(in) over G short rows, rows r .. r + G, ending as `tail` says: row q of input k
// starts at in[k] + q * row_stride[k] and its sum goes to out[q * out_stride]. Each row has
// one vector accumulator, its lanes summed by horizontal_sum: the same arithmetic for any
// G. Short rows (7x7 maps) spend most of their time in loop set-up, the horizontal sum and
// the add chain of a single row; G independent rows per loop overlap all three.
template <int G, bool kPrefetch = false, typename scalar_t, size_t NR, typename Map>
inline void reduce_row_group(const std::array<const scalar_t*, NR>& in, const std::array<int64_t, NR>& row_stride,
                             int64_t r, const RowTail<scalar_t>& tail, acc_type<scalar_t>* out, int64_t out_stride,
                             const Map& map, int64_t prefetch_rows = 0) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using Vacc = typename L::Vacc;
  const int64_t full = tail.full;
  std::array<const scalar_t*, NR> base[G];
  Vacc acc[G][L::kParts];
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
    for (size_t k = 0; k < NR; ++k) base[g][k] = in[k] + (r + g) * row_stride[k];
    for (auto& a : acc[g]) a = Vacc(acc_t(0));
  }
  for (int64_t i = 0; i < full; i += L::kStep) {
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      if constexpr (kPrefetch) {  // see kShortRowPrefetchBytes; past the tensor never faults
        for (size_t k = 0; k < NR; ++k) __builtin_prefetch(base[g][k] + i + prefetch_rows * row_stride[k], 0, 2);
      }
      reduce_step<scalar_t, NR>(base[g], i, map, acc[g]);
    }
  }
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) reduce_tail<scalar_t, NR>(base[g], tail, map, acc[g]);
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
    Vacc total = acc[g][0];
    for (int p = 1; p < L::kParts; ++p) total = total + acc[g][p];
    out[(r + g) * out_stride] = horizontal_sum(total);
  }
}

// reduce_row_group over `rows` rows of `len` elements: kReduceRowGroup at a time, then one
// at a time; tails overlapping where kFlatShortRows<scalar_t> is off (see RowTail).
template <typename scalar_t, size_t NR, typename Map>
void reduce_short_rows(const std::array<const scalar_t*, NR>& in, const std::array<int64_t, NR>& row_stride,
                       int64_t rows, int64_t len, acc_type<scalar_t>* out, int64_t out_stride,
                       const Map& map) {
  const RowTail<scalar_t> tail(len, !kFlatShortRows<scalar_t>);
  const int64_t row_bytes = len * int64_t(sizeof(scalar_t));
  const int64_t prefetch_rows = row_bytes >= kShortRowPrefetchBytes ? ceil_div(kPrefetchAheadBytes, row_bytes) : 0;
  int64_t r = 0;
  if (prefetch_rows > 0) {
    for (; r + kReduceRowGroup <= rows; r += kReduceRowGroup) {
      reduce_row_group<kReduceRowGroup, true>(in, row_stride, r, tail, out, out_stride, map, prefetch_rows);
    }
  }
  for (; r + kReduceRowGroup <= rows; r += kReduceRowGroup) {
    reduce_row_group<kReduceRowGroup>(in, row_stride, r, tail, out, out_stride, map);
  }
  for (; r < rows; ++r) reduce_row_group<1>(in, row_stride, r, tail, out, out_stride, map);
}

// partial[c] = sum of map(in[c]) over `rows` C-rows of `len` channels (channels_last), row q
// of input k at in[k] + q * row_stride[k]: each channel summed over the rows in order.
// Rows go in groups of kCRowGroup<NR>, each group one sweep along the channels that adds
// its rows to the running sums in `partial`: one load-add-store of the partial sums per
// group rather than per row, while the rows are still read front to back (holding a
// block of channels in registers across all rows instead made the reads jump between
// rows, which cost more than it saved on maps coming from DRAM; rows short enough for all
// their channels to stay in registers go through reduce_c_rows_in_registers instead). With two inputs (the
// backward's dy and x) groups of four measured slower on cold maps than one row at a time
// (8x256x56x56 channels_last backward: 3.0-3.3 ms against 2.8-3.0 ms), so the group is
// four rows for one input and one row otherwise (eight, for one input, measured far slower:
// bfloat16 8x256x56x56 channels_last GCT forward 1.9-2.0 ms against 1.1-1.25 ms).
template <size_t NR>
constexpr int kCRowGroup = NR == 1 ? 4 : 1;
// reduce_c_row_group prefetches the same channels kPrefetchAheadBytes of rows ahead (and at
// least one group of rows), into L2 (prefetcht1). Each row is a short stream (1 KB at
// C = 256) that the hardware prefetchers barely train on. Zen 3 VM, caches evicted,
// 8x256x56x56 channels_last forward, five interleaved process pairs, 4 groups of 4 rows
// (16 KB) ahead into L1 against none: GCT float32 1.24-1.73x -> 1.30-1.42x a copy, SE
// 1.20-1.64x -> 1.29-1.36x, GCT bfloat16 2.25-3.02x -> 1.84-1.96x. Zen 4 VM, caches evicted,
// the variants interleaved call by call in one process (GCT forward, channels_last float32,
// ratio to a copy, two or three runs): into L1 16 rows ahead as before -> into L2 one group
// ahead: 8x2048x7x7 1.55-1.90 -> 1.44-1.74, 8x1024x14x14 1.40-1.44 -> 1.30-1.35, 8x512x28x28
// 1.42-1.44 -> 1.22; 1024x14x14 bfloat16 1.68 -> 1.45-1.48; SE 8x1024x14x14 1.67-2.01 ->
// 1.53-1.89; the backward's two inputs (GCT forward+backward, channels_last, into L2 4 rows
// ahead, that variant's forward one row at a time) 8x512x28x28 4.15-4.67 -> 3.62-4.25,
// 8x2048x7x7 4.94-6.30 -> 4.74-6.12. A prefetch into L1 from 32-128 KB ahead is evicted from the 32 KB L1 before it is used (and evicts
// the running sums); the distance mattered little between 8 and 128 KB into L2. Zen 3 ran
// L1 prefetches only (16 KB ahead is what it was tuned at).

template <int G, typename scalar_t, size_t NR, typename Map>
void reduce_c_row_group(const std::array<const scalar_t*, NR> in, const std::array<int64_t, NR> row_stride,
                        int64_t q0, int64_t len, acc_type<scalar_t>* partial, const Map& map) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using Vacc = typename L::Vacc;
  const bool first = q0 == 0;  // the running sums start at 0: nothing to load yet
  const int64_t ahead = std::max<int64_t>(G, ceil_div(kPrefetchAheadBytes, len * int64_t(sizeof(scalar_t))));
  std::array<const scalar_t*, NR> rows[G];
  for (int g = 0; g < G; ++g)
    for (size_t k = 0; k < NR; ++k) rows[g][k] = in[k] + (q0 + g) * row_stride[k];
  // kFull: a whole step, with plain loads and stores (the tail's masking decided at compile
  // time, not per step in the hot loop).
  auto step = [&](int64_t c, auto full) __attribute__((always_inline)) {
    constexpr bool kFull = decltype(full)::value;
    const int64_t count = kFull ? L::kStep : len - c;
    acc_t* dst = partial + c;
    Vacc acc[L::kParts];
    for (int p = 0; p < L::kParts; ++p) {
      const int64_t lanes = kFull ? Vacc::size() : part_lanes<acc_t>(count, p);
      if (first) acc[p] = Vacc(acc_t(0));
      else if constexpr (kFull) acc[p] = Vacc::loadu(dst + p * Vacc::size());
      else acc[p] = Vacc::loadu(dst + p * Vacc::size(), lanes);
    }
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) {
      // Prefetch the same channels `ahead` rows on, into L2 (kPrefetchAheadBytes). A prefetch
      // past the tensor never faults.
      if constexpr (kFull) {
        for (size_t k = 0; k < NR; ++k) __builtin_prefetch(rows[g][k] + c + ahead * row_stride[k], 0, 2);
        reduce_step<scalar_t, NR>(rows[g], c, map, acc);
      } else {
        reduce_step<scalar_t, NR>(rows[g], c, map, acc, count);
      }
    }
    L::store_sums(dst, acc, count);
  };
  int64_t c = 0;
  for (; c + L::kStep <= len; c += L::kStep) step(c, std::true_type{});
  if (c < len) step(c, std::false_type{});
}

// Longest C-row, in steps, whose running sums all stay in registers:
// reduce_c_rows_in_registers. AVX-512 has 32 vector registers: 16 of running sums leave
// the rest to the loads and the map, i.e. 256 channels of float32 or half precision (two
// float32 vectors a step), 128 of float64. AVX2 keeps the 8 steps it was tuned with (64
// float32 channels, 128 bfloat16). Zen 4 VM (AVX-512), caches evicted, 8x256x56x56
// channels_last float32 forward, three interleaved process pairs: GCT 2.38-2.44 -> 2.01-2.45
// ms, channels_last / NCHW time 1.24-1.44 -> 1.01-1.13; SE 2.53-2.76 -> 1.83-2.30 ms,
// 1.38-1.44 -> 0.98-1.06 (bfloat16, 256 channels in 8 steps, was on this path already).
#ifdef CPU_CAPABILITY_AVX512
template <typename scalar_t>
constexpr int kRegisterRowSteps = 16 / Lanes<scalar_t>::kParts;
#else
template <typename scalar_t>
constexpr int kRegisterRowSteps = 8;
#endif

// reduce_c_rows for rows of S steps, the last one holding `tail` channels when kTail (its
// missing lanes loaded as zeros and never stored, as in the grouped sweep): the running
// sums of every channel stay in registers across all the rows, which are still read front
// to back; no load-add-store of `partial` per group of rows. Each channel adds its rows in
// the same order from the same 0, so the sums have the bits of the grouped sweep. For few
// channels (C = 16..128: video, EfficientNet and MobileNet stages in channels_last) that
// sweep spent its time on the partial sums, not on the map (perf: twice NCHW's row sums on
// 2x64x8x56x56; SE forward there 1.54 -> 1.32x a copy, caches cold).
template <int S, bool kTail, typename scalar_t, size_t NR, typename Map>
void reduce_c_rows_in_registers(std::array<const scalar_t*, NR> row, const std::array<int64_t, NR>& row_stride,
                                int64_t rows, int64_t tail, acc_type<scalar_t>* partial, const Map& map) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using Vacc = typename L::Vacc;
  constexpr int kFullSteps = kTail ? S - 1 : S;
  Vacc acc[S][L::kParts];
#pragma GCC unroll 16
  for (int s = 0; s < S; ++s)
    for (int p = 0; p < L::kParts; ++p) acc[s][p] = Vacc(acc_t(0));
  for (int64_t q = 0; q < rows; ++q) {
#pragma GCC unroll 16
    for (int s = 0; s < kFullSteps; ++s) reduce_step<scalar_t, NR>(row, s * L::kStep, map, acc[s]);
    if constexpr (kTail) reduce_step<scalar_t, NR>(row, kFullSteps * L::kStep, map, acc[S - 1], tail);
    for (size_t k = 0; k < NR; ++k) row[k] += row_stride[k];
  }
#pragma GCC unroll 16
  for (int s = 0; s < kFullSteps; ++s) L::store_sums(partial + s * L::kStep, acc[s]);
  if constexpr (kTail) L::store_sums(partial + kFullSteps * L::kStep, acc[S - 1], tail);
}

// Calls reduce_c_rows_in_registers<steps> for rows of `len` channels in at most
// kRegisterRowSteps steps; false for longer rows.
template <int S = 1, typename scalar_t, size_t NR, typename Map>
bool reduce_c_rows_in_registers_of(int64_t len, const std::array<const scalar_t*, NR>& in,
                                   const std::array<int64_t, NR>& row_stride, int64_t rows,
                                   acc_type<scalar_t>* partial, const Map& map) {
  constexpr int64_t kStep = Lanes<scalar_t>::kStep;
  if (len <= S * kStep) {
    const int64_t tail = len - (S - 1) * kStep;
    if (tail == kStep) reduce_c_rows_in_registers<S, false, scalar_t, NR>(in, row_stride, rows, 0, partial, map);
    else reduce_c_rows_in_registers<S, true, scalar_t, NR>(in, row_stride, rows, tail, partial, map);
    return true;
  }
  if constexpr (S < kRegisterRowSteps<scalar_t>) {
    return reduce_c_rows_in_registers_of<S + 1, scalar_t, NR>(len, in, row_stride, rows, partial, map);
  }
  return false;
}

template <typename scalar_t, size_t NR, typename Map>
void reduce_c_rows(const std::array<const scalar_t*, NR> in, const std::array<int64_t, NR> row_stride,
                   int64_t rows, int64_t len, acc_type<scalar_t>* partial, const Map& map) {
  if (rows == 0) {
    std::fill(partial, partial + len, acc_type<scalar_t>(0));
    return;
  }
  if (reduce_c_rows_in_registers_of<1, scalar_t, NR>(len, in, row_stride, rows, partial, map)) return;
  int64_t q = 0;
  constexpr int G = kCRowGroup<NR>;
  for (; q + G <= rows; q += G) reduce_c_row_group<G>(in, row_stride, q, len, partial, map);
  for (; q < rows; ++q) reduce_c_row_group<1>(in, row_stride, q, len, partial, map);
}

// out[j][i] = apply(in[.][i], coef) for i in [i0, len) of contiguous rows: full steps, then
// the tail as a partial step, or with `overlap_tail` (len >= kStep) as the full step ending
// at len (see RowTail). With kCoefAlongRow the coefficients vary along the row
// (coef[k][i], channels_last); otherwise they are one scalar per coefficient (coef[k][0],
// NCHW rows). `streaming`: the full steps go out through streaming stores, which needs
// out[j] + i0 to be vector-aligned.
template <typename scalar_t, size_t NIn, size_t NOut, size_t NK, bool kCoefAlongRow, typename Apply>
__attribute__((always_inline)) inline void apply_span(const std::array<const scalar_t*, NIn>& in,
                                                      const std::array<scalar_t*, NOut>& out, int64_t i0,
                                                      int64_t len,
                                                      const std::array<const acc_type<scalar_t>*, NK>& coef,
                                                      const Apply& apply, bool streaming,
                                                      bool overlap_tail = false) {
  using L = Lanes<scalar_t>;
  using Vacc = typename L::Vacc;
  Vacc fixed[NK > 0 ? NK : 1];
  if constexpr (!kCoefAlongRow) {
    for (size_t k = 0; k < NK; ++k) fixed[k] = Vacc(coef[k][0]);
  }
  int64_t i = i0;
  auto cf = [&](int p, Vacc* out_cf, int64_t count) __attribute__((always_inline)) {
    for (size_t k = 0; k < NK; ++k) {
      if constexpr (kCoefAlongRow) {
        const acc_type<scalar_t>* src = coef[k] + i + p * Vacc::size();
        // count is the constant kStep in the loop over full steps: no masking there
        out_cf[k] = count == L::kStep ? Vacc::loadu(src)
                                      : Vacc::loadu(src, part_lanes<acc_type<scalar_t>>(count, p));
      } else {
        out_cf[k] = fixed[k];
      }
    }
  };
  for (; i + L::kStep <= len; i += L::kStep) {
    apply_step<scalar_t, NIn, NOut, NK>(in, out, i, cf, apply, streaming);
  }
  if (i < len && overlap_tail && len >= L::kStep) {
    i = len - L::kStep;
    apply_step<scalar_t, NIn, NOut, NK>(in, out, i, cf, apply, false);
  } else if (i < len) {
    apply_step<scalar_t, NIn, NOut, NK>(in, out, i, cf, apply, false, len - i);
  }
}

// Elements to write one by one before every output is vector-aligned for streaming
// stores; -1 where the outputs are misaligned differently (no streaming then).
template <typename scalar_t, size_t NOut>
inline int64_t streaming_peel(const std::array<scalar_t*, NOut>& out, int64_t len) {
  constexpr uintptr_t kAlign = sizeof(Vectorized<scalar_t>);
  const uintptr_t mis = reinterpret_cast<uintptr_t>(out[0]) % kAlign;
  for (size_t j = 1; j < NOut; ++j) {
    if (reinterpret_cast<uintptr_t>(out[j]) % kAlign != mis) return -1;
  }
  if (mis % sizeof(scalar_t) != 0) return -1;
  return std::min<int64_t>(len, static_cast<int64_t>((kAlign - mis) % kAlign / sizeof(scalar_t)));
}

// out[j][i] = apply(in[.][i], coef) over `len` contiguous elements (see apply_span). With
// `streaming`, full vectors go out through streaming stores once the outputs are
// vector-aligned (elements before that point are written by a partial step); without,
// `overlap_tail` ends the row with an overlapping step.
template <typename scalar_t, size_t NIn, size_t NOut, size_t NK, bool kCoefAlongRow, typename Apply>
void apply_contiguous(const std::array<const scalar_t*, NIn> in,
                      const std::array<scalar_t*, NOut> out, int64_t len,
                      const std::array<const acc_type<scalar_t>*, NK> coef, const Apply& apply,
                      bool streaming, bool overlap_tail = false) {
  const int64_t peel = streaming ? streaming_peel(out, len) : 0;
  if (peel > 0) apply_span<scalar_t, NIn, NOut, NK, kCoefAlongRow>(in, out, 0, peel, coef, apply, false);
  apply_span<scalar_t, NIn, NOut, NK, kCoefAlongRow>(in, out, std::max<int64_t>(peel, 0), len, coef, apply,
                                                      streaming && peel >= 0, overlap_tail && !streaming);
}

// apply_contiguous over `rows` C-rows of `len` channels (channels_last), row q of tensor k
// at in[k] + q * in_stride[k] (outputs: out[j] + q * out_stride[j]), every row with the
// coefficients coef[k][0 .. len). One call per tile: when the rows keep the outputs'
// alignment, the alignment is settled once instead of once per (often 1 KB) row.
template <typename scalar_t, size_t NIn, size_t NOut, size_t NK, typename Apply>
void apply_c_rows(const std::array<const scalar_t*, NIn> in, const std::array<int64_t, NIn> in_stride,
                  const std::array<scalar_t*, NOut> out, const std::array<int64_t, NOut> out_stride,
                  int64_t rows, int64_t len, const std::array<const acc_type<scalar_t>*, NK> coef,
                  const Apply& apply, bool streaming) {
  constexpr int64_t kAlign = sizeof(Vectorized<scalar_t>);
  bool aligned_rows = true;
  for (size_t j = 0; j < NOut; ++j) {
    aligned_rows = aligned_rows && reinterpret_cast<uintptr_t>(out[j]) % kAlign == 0 &&
                   out_stride[j] * int64_t(sizeof(scalar_t)) % kAlign == 0;
  }
  for (int64_t q = 0; q < rows; ++q) {
    std::array<const scalar_t*, NIn> src;
    std::array<scalar_t*, NOut> dst;
    for (size_t k = 0; k < NIn; ++k) src[k] = in[k] + q * in_stride[k];
    for (size_t j = 0; j < NOut; ++j) dst[j] = out[j] + q * out_stride[j];
    if (streaming && !aligned_rows) {
      apply_contiguous<scalar_t, NIn, NOut, NK, true>(src, dst, len, coef, apply, true);
    } else {
      apply_span<scalar_t, NIn, NOut, NK, true>(src, dst, 0, len, coef, apply, streaming);
    }
  }
}

// apply over `rows` whole rows of `len` elements that follow each other in memory (a tile
// of a dense NCHW map), row q with coefficients coef[k][q], walked as one flat range: the
// vectors are aligned to the range, not to the rows, so short rows (7x7, 14x14) get no
// line-splitting stores, no per-row tails, and streaming stores. A vector part spans at most
// two rows (len >= its lanes): its coefficients blend the two rows' at the row boundary.
template <typename scalar_t, size_t NIn, size_t NOut, size_t NK, typename Apply>
void apply_flat_rows(const std::array<const scalar_t*, NIn> in, const std::array<scalar_t*, NOut> out,
                     int64_t rows, int64_t len, const std::array<const acc_type<scalar_t>*, NK> coef,
                     const Apply& apply, bool streaming) {
  using L = Lanes<scalar_t>;
  using acc_t = typename L::acc_t;
  using Vacc = typename L::Vacc;
  constexpr int64_t kW = Vacc::size();
  const int64_t total = rows * len;
  const Vacc lanes = lane_index<acc_t>();
  RowCursor cursor{rows, len};
  int64_t i = 0;
  auto cf = [&](int p, Vacc* out_cf, int64_t) __attribute__((always_inline)) {
    const int64_t split = cursor.seek(i + p * kW);  // lanes [0, split) in cursor.row, the rest in the next
    const int64_t next = std::min(cursor.row + 1, rows - 1);
    for (size_t k = 0; k < NK; ++k) {
      const Vacc here(coef[k][cursor.row]);
      out_cf[k] = split >= kW ? here : Vacc::blendv(here, Vacc(coef[k][next]), lanes >= Vacc(acc_t(split)));
    }
  };
  const int64_t peel = streaming ? streaming_peel(out, total) : 0;
  if (peel > 0) apply_step<scalar_t, NIn, NOut, NK>(in, out, 0, cf, apply, false, peel);
  streaming = streaming && peel >= 0;
  for (i = std::max<int64_t>(peel, 0); i + L::kStep <= total; i += L::kStep) {
    apply_step<scalar_t, NIn, NOut, NK>(in, out, i, cf, apply, streaming);
  }
  if (i < total) apply_step<scalar_t, NIn, NOut, NK>(in, out, i, cf, apply, false, total - i);
}

// out[j] = apply(in, coef) over G short rows, rows r .. r + G, ending as `tail` says, with one
// set of coefficients per row: row q of tensor k starts at in[k] + q * in_stride[k]
// (outputs: out[j] + q * out_stride[j]) and uses coef[k][q]. G rows per loop, for the same
// reason as reduce_row_group. Ordinary stores only (see apply_tile).
template <int G, typename scalar_t, size_t NIn, size_t NOut, size_t NK, typename Apply>
inline void apply_row_group(const std::array<const scalar_t*, NIn>& in, const std::array<int64_t, NIn>& in_stride,
                            const std::array<scalar_t*, NOut>& out, const std::array<int64_t, NOut>& out_stride,
                            int64_t r, const RowTail<scalar_t>& tail,
                            const std::array<const acc_type<scalar_t>*, NK>& coef, const Apply& apply) {
  using L = Lanes<scalar_t>;
  using Vacc = typename L::Vacc;
  const int64_t full = tail.full;
  std::array<const scalar_t*, NIn> src[G];
  std::array<scalar_t*, NOut> dst[G];
  Vacc fixed[G][NK > 0 ? NK : 1];
#pragma GCC unroll 8
  for (int g = 0; g < G; ++g) {
    for (size_t k = 0; k < NIn; ++k) src[g][k] = in[k] + (r + g) * in_stride[k];
    for (size_t j = 0; j < NOut; ++j) dst[g][j] = out[j] + (r + g) * out_stride[j];
    for (size_t k = 0; k < NK; ++k) fixed[g][k] = Vacc(coef[k][r + g]);
  }
  auto row_coef = [&](int g) {
    return [&fixed, g](int, Vacc* out_cf, int64_t) __attribute__((always_inline)) {
      for (size_t k = 0; k < NK; ++k) out_cf[k] = fixed[g][k];
    };
  };
  for (int64_t i = 0; i < full; i += L::kStep) {
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) apply_step<scalar_t, NIn, NOut, NK>(src[g], dst[g], i, row_coef(g), apply, false);
  }
  if (tail.count > 0) {
#pragma GCC unroll 8
    for (int g = 0; g < G; ++g) {
      apply_step<scalar_t, NIn, NOut, NK>(src[g], dst[g], tail.start, row_coef(g), apply, false, tail.count);
    }
  }
}

// apply_row_group over `rows` rows of `len` elements: kApplyRowGroup at a time, then one at
// a time. `overlap`: tails overlapping (see RowTail; the caller has checked that no output
// aliases an input).
template <typename scalar_t, size_t NIn, size_t NOut, size_t NK, typename Apply>
void apply_short_rows(const std::array<const scalar_t*, NIn>& in, const std::array<int64_t, NIn>& in_stride,
                      const std::array<scalar_t*, NOut>& out, const std::array<int64_t, NOut>& out_stride,
                      int64_t rows, int64_t len, const std::array<const acc_type<scalar_t>*, NK>& coef,
                      const Apply& apply, bool overlap) {
  const RowTail<scalar_t> tail(len, overlap);
  int64_t r = 0;
  for (; r + kApplyRowGroup <= rows; r += kApplyRowGroup) {
    apply_row_group<kApplyRowGroup>(in, in_stride, out, out_stride, r, tail, coef, apply);
  }
  for (; r < rows; ++r) apply_row_group<1>(in, in_stride, out, out_stride, r, tail, coef, apply);
}

// ---------------------------------------------------------------------------
// Stages, one tile at a time, and the driver.

template <typename scalar_t, size_t NIn>
using InStreams = std::array<Stream<const scalar_t*>, NIn>;
template <typename scalar_t, size_t NOut>
using OutStreams = std::array<Stream<scalar_t*>, NOut>;

template <typename ptr_t>
inline ptr_t row_ptr(const Stream<ptr_t>& s, int64_t n, int64_t c, int64_t l) {
  return s.data + n * s.stride_n + c * s.stride_c + l * s.stride_l;
}

// The flat short-row kernels (reduce_flat_rows, apply_flat_rows) apply to a tile that
// holds whole rows (the last L-tile of a split row does not) of at least one vector of
// lanes each...
inline bool flat_tile(const Plan& plan, const Tile& tile) {
  return tile.l0 == 0 && tile.l1 == plan.l && plan.l >= Vectorized<float>::size();
}

// ... where the rows of every tensor follow each other in memory (stride_c == L: a dense
// NCHW map or a slice of whole samples), so that the tile is one contiguous range. The
// reduce checks its NR inputs only (and no outputs).
template <typename scalar_t, size_t NR, size_t NIn, size_t NOut = 0>
inline bool dense_rows(const Plan& plan, const InStreams<scalar_t, NIn>& in,
                       const OutStreams<scalar_t, NOut>& out = {}) {
  bool dense = true;
  for (size_t k = 0; k < NR; ++k) dense = dense && in[k].stride_c == plan.l && in[k].stride_l == 1;
  for (const auto& st : out) dense = dense && st.stride_c == plan.l && st.stride_l == 1;
  return dense;
}

// Stage 1 on one tile of C-rows (all C channels of spatial rows [tile.l0, tile.l1)) of
// sample n: the tile's sums of map(in[0..NR)) per channel go to dst[0..C).
template <typename scalar_t, size_t NR, size_t NIn, typename Map>
void reduce_c_tile(const Plan& plan, const InStreams<scalar_t, NIn>& in, int64_t n, const Tile& tile,
                   acc_type<scalar_t>* dst, const Map& map) {
  std::array<const scalar_t*, NR> rows;
  std::array<int64_t, NR> strides;
  for (size_t k = 0; k < NR; ++k) {
    rows[k] = row_ptr(in[k], n, 0, tile.l0);
    strides[k] = in[k].stride_l;
  }
  reduce_c_rows<scalar_t, NR>(rows, strides, tile.l1 - tile.l0, plan.c, dst, map);
}

// Stage 1 on one tile of sample n: its partial sums of map(in[0..NR)) go to `partial`, the
// partial sums of that sample (see combine_partials).
template <typename scalar_t, size_t NR, size_t NIn, typename Map>
void reduce_tile(const Plan& plan, const InStreams<scalar_t, NIn>& in, int64_t n, int64_t rest,
                 acc_type<scalar_t>* partial, const Map& map) {
  using acc_t = acc_type<scalar_t>;
  static_assert(NR <= NIn, "reduce streams are the first NR inputs");
  const int64_t C = plan.c, T = plan.tiles_l;
  const Tile tile = tile_of(plan, rest);
  const int64_t lb = rest % plan.tiles_l;
  const int64_t len = tile.l1 - tile.l0;
  if (plan.path == Path::kRowsAlongC) {
    reduce_c_tile<scalar_t, NR, NIn>(plan, in, n, tile, partial + lb * C, map);
  } else if (kFlatShortRows<scalar_t> && plan.path == Path::kRowsAlongL && len <= kShortRow &&
             flat_tile(plan, tile) && dense_rows<scalar_t, NR>(plan, in)) {
    std::array<const scalar_t*, NR> rows;
    for (size_t k = 0; k < NR; ++k) rows[k] = row_ptr(in[k], n, tile.c0, 0);
    reduce_flat_rows<scalar_t, NR>(rows, tile.c1 - tile.c0, plan.l, partial + tile.c0 * T + lb, T, map);
  } else if (plan.path == Path::kRowsAlongL && grouped_rows<scalar_t>(len)) {
    std::array<const scalar_t*, NR> rows;
    std::array<int64_t, NR> strides;
    for (size_t k = 0; k < NR; ++k) {
      rows[k] = row_ptr(in[k], n, tile.c0, tile.l0);
      strides[k] = in[k].stride_c;
    }
    reduce_short_rows<scalar_t, NR>(rows, strides, tile.c1 - tile.c0, len, partial + tile.c0 * T + lb, T, map);
  } else if (plan.path == Path::kRowsAlongL) {
    const RowTail<scalar_t> tail(len, !kFlatShortRows<scalar_t>);
    for (int64_t c = tile.c0; c < tile.c1; ++c) {
      std::array<const scalar_t*, NR> rows;
      for (size_t k = 0; k < NR; ++k) rows[k] = row_ptr(in[k], n, c, tile.l0);
      partial[c * T + lb] = reduce_contiguous<scalar_t, NR>(rows, tail, map);
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
      partial[c * T + lb] = sum;
    }
  }
}

// Partial sums of one sample: C x tiles_l values, channel-major on L-rows, L-tile-major
// on C-rows (where a tile fills a contiguous C-run).
inline int64_t partials_per_sample(const Plan& plan) { return plan.c * plan.tiles_l; }

// sums[i * C + c] = the partial sums of sample i added in L-tile order (fixed, so the
// result does not depend on which thread reduced which tile).
template <typename acc_t>
void combine_partials(const Plan& plan, const acc_t* partial, int64_t samples, acc_t* sums) {
  const int64_t C = plan.c, T = plan.tiles_l;
  for (int64_t i = 0; i < samples; ++i) {
    const acc_t* p = partial + i * C * T;
    acc_t* out = sums + i * C;
    if (plan.path == Path::kRowsAlongC) {  // L-tile-major: add whole C-runs, tile after tile
      std::fill(out, out + C, acc_t(0));
      for (int64_t lb = 0; lb < T; ++lb) {
        for (int64_t c = 0; c < C; ++c) out[c] += p[lb * C + c];
      }
      continue;
    }
    if (T == 1) {  // one L-tile (rows up to kMaxTileL): the sum is p itself
      std::copy(p, p + C, out);
      continue;
    }
    for (int64_t c = 0; c < C; ++c) {
      acc_t s = 0;
      for (int64_t lb = 0; lb < T; ++lb) s += p[c * T + lb];
      out[c] = s;
    }
  }
}

// Stage 1 on all of sample n on C-rows, by one thread (Plan::sample_parallel): sums[0..C)
// = its L-tiles' partial sums added in L-tile order as each tile is reduced, the additions
// of combine_partials (so the same bits), through one tile's C sums of scratch instead of
// the sample's tiles_l x C. With the caches cold those were DRAM lines to fetch and write
// back that NCHW (C sums per sample) did not have: 57 KB per 401 KB sample at 2048 x 7 x 7
// float32. Zen 4 VM, caches evicted, both ways interleaved call by call in one process,
// forward, x a copy: GCT 8x2048x7x7 1.427 -> 1.393, 8x1024x14x14 1.215 -> 1.199, bfloat16
// 7x7 1.462 -> 1.392; SE 8x2048x7x7 2.143 -> 2.069; 8x256x56x56 within noise.
template <typename scalar_t, size_t NR, size_t NIn, typename Map>
void reduce_c_sample(const Plan& plan, const InStreams<scalar_t, NIn>& in, int64_t n,
                     std::vector<acc_type<scalar_t>>& scratch, acc_type<scalar_t>* sums, const Map& map) {
  using acc_t = acc_type<scalar_t>;
  const int64_t C = plan.c;
  scratch.resize(static_cast<size_t>(C));
  std::fill(sums, sums + C, acc_t(0));
  for (int64_t lb = 0; lb < plan.tiles_l; ++lb) {
    reduce_c_tile<scalar_t, NR, NIn>(plan, in, n, tile_of(plan, lb), scratch.data(), map);
    for (int64_t c = 0; c < C; ++c) sums[c] += scratch[c];
  }
}

// Whether no output's data pointer is an input's (an op writing in place): an overlapping
// tail (RowTail) re-reads inputs that an aliasing output would already have overwritten.
// Every op here allocates its outputs, so no output overlaps an input at all; this guards
// only the in-place case (the same pointer), not partial overlaps, which no op can produce.
template <typename scalar_t, size_t NIn, size_t NOut>
inline bool outputs_distinct(const InStreams<scalar_t, NIn>& in, const OutStreams<scalar_t, NOut>& out) {
  for (const auto& o : out)
    for (const auto& i : in)
      if (static_cast<const void*>(o.data) == static_cast<const void*>(i.data)) return false;
  return true;
}

// Stage 3 on one tile of sample n: out(n, c, l) = apply(in(n, c, l), coef[k][c]), `coef`
// pointing at that sample's coefficients.
template <typename scalar_t, size_t NIn, size_t NOut, size_t NK, typename Apply>
void apply_tile(const Plan& plan, const InStreams<scalar_t, NIn>& in, const OutStreams<scalar_t, NOut>& out,
                int64_t n, int64_t rest, const std::array<const acc_type<scalar_t>*, NK>& coef,
                const Apply& apply) {
  using acc_t = acc_type<scalar_t>;
  const Tile tile = tile_of(plan, rest);
  if (plan.path == Path::kRowsAlongC) {
    std::array<const scalar_t*, NIn> src;
    std::array<int64_t, NIn> src_stride;
    std::array<scalar_t*, NOut> dst;
    std::array<int64_t, NOut> dst_stride;
    for (size_t k = 0; k < NIn; ++k) {
      src[k] = row_ptr(in[k], n, 0, tile.l0);
      src_stride[k] = in[k].stride_l;
    }
    for (size_t j = 0; j < NOut; ++j) {
      dst[j] = row_ptr(out[j], n, 0, tile.l0);
      dst_stride[j] = out[j].stride_l;
    }
    apply_c_rows<scalar_t, NIn, NOut, NK>(src, src_stride, dst, dst_stride, tile.l1 - tile.l0, plan.c, coef, apply,
                                          plan.stream_stores);
    return;
  }
  const int64_t len = tile.l1 - tile.l0;
  // Off the flat kernels (!kFlatShortRows<scalar_t>), rows end with overlapping steps, except
  // in outputs large enough for streaming stores: short rows of those go through the flat
  // kernel, whose vectors are aligned to the tile rather than to each row.
  const bool overlap_tails = !kFlatShortRows<scalar_t> && !plan.stream_stores && outputs_distinct(in, out);
  if (plan.path == Path::kRowsAlongL && len <= kShortRow &&
      (kFlatShortRows<scalar_t> || plan.stream_stores) && flat_tile(plan, tile) &&
      dense_rows<scalar_t, NIn>(plan, in, out)) {
    std::array<const scalar_t*, NIn> src;
    std::array<scalar_t*, NOut> dst;
    std::array<const acc_t*, NK> cf;
    for (size_t k = 0; k < NIn; ++k) src[k] = row_ptr(in[k], n, tile.c0, 0);
    for (size_t j = 0; j < NOut; ++j) dst[j] = row_ptr(out[j], n, tile.c0, 0);
    for (size_t k = 0; k < NK; ++k) cf[k] = coef[k] + tile.c0;
    apply_flat_rows<scalar_t, NIn, NOut, NK>(src, dst, tile.c1 - tile.c0, plan.l, cf, apply, plan.stream_stores);
    return;
  }
  if (plan.path == Path::kRowsAlongL && !plan.stream_stores && grouped_apply_rows<scalar_t>(len)) {
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
    for (size_t k = 0; k < NK; ++k) cf[k] = coef[k] + tile.c0;
    apply_short_rows<scalar_t, NIn, NOut, NK>(src, src_stride, dst, dst_stride, tile.c1 - tile.c0, len, cf, apply,
                                              overlap_tails);
    return;
  }
  for (int64_t c = tile.c0; c < tile.c1; ++c) {
    std::array<const acc_t*, NK> cf;
    for (size_t k = 0; k < NK; ++k) cf[k] = coef[k] + c;
    if (plan.path == Path::kRowsAlongL) {
      std::array<const scalar_t*, NIn> src;
      std::array<scalar_t*, NOut> dst;
      for (size_t k = 0; k < NIn; ++k) src[k] = row_ptr(in[k], n, c, tile.l0);
      for (size_t j = 0; j < NOut; ++j) dst[j] = row_ptr(out[j], n, c, tile.l0);
      apply_contiguous<scalar_t, NIn, NOut, NK, false>(src, dst, len, cf, apply, plan.stream_stores,
                                                        overlap_tails);
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

// The whole skeleton (NR reduce streams, NK coefficients per (n, c)). Samples go in chunks
// of plan.chunk_n; for each chunk: reduce, then head(n0, n1, sums + n0 * C, coef) fills
// coef[k][(n - n0) * C + c], then apply. `sums` (N x C) keeps every sample's reduction for
// the caller (saved statistics, parameter gradients); the head may rewrite its chunk of it
// (e.g. sum -> mean).
//
// (Running the reduce of chunk k + 1 in the same pass as the apply of chunk k, so that
// reads from DRAM and writes are in flight together, was tried: on the 2-core machines
// we target it measured 3-8% slower than these separate passes, whether the two threads
// interleaved the stages tile by tile or took one stage each.)
template <typename scalar_t, size_t NR, size_t NK, size_t NIn, size_t NOut, typename Map,
          typename Head, typename Apply>
void reduce_head_apply(const Plan& plan, const InStreams<scalar_t, NIn>& in,
                       const OutStreams<scalar_t, NOut>& out, acc_type<scalar_t>* sums,
                       const Map& map, const Head& head, const Apply& apply) {
  using acc_t = acc_type<scalar_t>;
  const int64_t C = plan.c;
  const int64_t per_sample = plan.l == 0 ? 0 : plan.tiles_per_sample();
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(plan.tile_elems(), 1));
  const int64_t chunk = plan.sample_parallel ? 1 : std::min(plan.chunk_n, std::max<int64_t>(plan.n, 1));

  // The three stages on samples [n0, n1) (at most `chunk` of them). When the threads run
  // whole samples (plan.sample_parallel) this is called inside a parallel region, and
  // the parallel_for calls below run inline on the calling thread.
  struct Scratch {
    std::vector<acc_t> partial, coef;
  };
  auto run = [&](int64_t n0, int64_t n1, Scratch& scratch) {
    const int64_t samples = n1 - n0;
    scratch.coef.resize(static_cast<size_t>(std::max<size_t>(NK, 1) * chunk * C));
    if (plan.sample_parallel && plan.path == Path::kRowsAlongC) {
      reduce_c_sample<scalar_t, NR, NIn>(plan, in, n0, scratch.partial, sums + n0 * C, map);
    } else {
      scratch.partial.resize(static_cast<size_t>(chunk * partials_per_sample(plan)));
      at::parallel_for(0, samples * per_sample, grain, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          const int64_t i = t / per_sample;
          reduce_tile<scalar_t, NR, NIn>(plan, in, n0 + i, t % per_sample,
                                         scratch.partial.data() + i * partials_per_sample(plan), map);
        }
      });
      combine_partials(plan, scratch.partial.data(), samples, sums + n0 * C);
    }
    std::array<acc_t*, NK> coef;
    std::array<const acc_t*, NK> coef_in;
    for (size_t k = 0; k < NK; ++k) coef_in[k] = coef[k] = scratch.coef.data() + k * chunk * C;
    head(n0, n1, sums + n0 * C, coef);
    at::parallel_for(0, samples * per_sample, grain, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t i = t / per_sample;
        std::array<const acc_t*, NK> cf;
        for (size_t k = 0; k < NK; ++k) cf[k] = coef_in[k] + i * C;
        apply_tile<scalar_t, NIn, NOut, NK>(plan, in, out, n0 + i, t % per_sample, cf, apply);
      }
      if (plan.stream_stores) streaming_fence();
    });
  };
  if (plan.sample_parallel) {
    at::parallel_for(0, plan.n, 1, [&](int64_t begin, int64_t end) {
      Scratch scratch;
      for (int64_t n = begin; n < end; ++n) run(n, n + 1, scratch);
    });
    return;
  }
  Scratch scratch;
  for (int64_t n0 = 0; n0 < plan.n; n0 += chunk) run(n0, std::min(plan.n, n0 + chunk), scratch);
}

}  // namespace gct_fused::cpu
