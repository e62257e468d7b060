// Host-side planning of the CUDA reduce -> head -> apply skeleton: which tiling each
// stage uses (chosen from the strides of every tensor taking part, never by copying),
// how many blocks, and how each (N, C) reduction is split along L. Compiled by the
// host compiler once (channel_plan.cpp); the structs are plain data passed to kernels.
//
// Every plan depends only on shapes, strides, pointer alignment and the SM count, so
// the same call always runs the same blocks in the same order: bitwise-reproducible.
#pragma once

#include <cstdint>
#include <vector>

#include "gct_fused/macros.h"

namespace gct_fused::cuda {

// Threads per block of every kernel. The GCT normaliser is a block reduction over C
// computed by more than one kernel (forward apply, backward head): they must all use
// this block size to get bitwise the same value.
constexpr int kThreads = 256;

// One (N, C, *spatial) tensor of a pass as (N, C, L) element strides (spatial dims
// merged; see ChannelView) and its data pointer (for the 16-byte alignment checks).
struct MapLayout {
  const void* data = nullptr;
  int64_t stride_n = 0, stride_c = 0, stride_l = 1;
};

// A tensor of a pass as kernels see it: element (n, c, l) is data[n*sn + c*sc + l*sl].
template <typename T>  // T = const scalar_t (inputs) or scalar_t (outputs)
struct Operand {
  T* data;
  int64_t sn, sc, sl;
  GF_HD T* at(int64_t n, int64_t c, int64_t l) const { return data + n * sn + c * sc + l * sl; }
};

template <typename T, int K>
struct Operands {
  Operand<T> t[K];
};

enum class ReducePath : int32_t {
  kRows,         // one (n, c) row at a time, any stride_l (NCHW, and the strided fallback)
  kChannelRows,  // every input has stride_c == 1: C-rows per (n, l) (channels_last)
};

// Stage 1: sums over L per (n, c), split into `tiles` pieces of `tile_l` along L.
// Pieces are written to a partial buffer and combined in piece order by the next
// kernel; with tiles == 1 the buffer is the (N, C) result itself.
struct ReducePlan {
  ReducePath path = ReducePath::kRows;
  int64_t n = 0, c = 0, l = 0;
  int64_t tiles = 1, tile_l = 1;
  int32_t group = 32;        // kRows: threads per (n, c, piece) task: 4..32 (a power of two) or kThreads
  bool unit_stride = false;  // kRows: every input has stride_l == 1 (vector loads)
  bool vectorized = false;   // kChannelRows: 16-byte loads along C
  int64_t blocks = 1;

  // Layout of the partial buffer: [N, C, T] for kRows, [N, T, C] for kChannelRows.
  int64_t partial_numel() const { return n * c * tiles; }
  int64_t partial_stride_n() const { return c * tiles; }
  int64_t partial_stride_c() const { return path == ReducePath::kRows ? tiles : 1; }
  int64_t partial_stride_t() const { return path == ReducePath::kRows ? 1 : c; }
};

// Stage 3: each sample's C * L elements are numbered in memory order (order_c false:
// i = c * L + l; true: i = l * C + c) and cut into `chunks` chunks of `chunk`
// elements, one block per (chunk, sample). `vectorized`: every tensor holds each run
// of V = 16 / element-size consecutive numbers in one aligned 16-byte vector.
struct ApplyPlan {
  bool order_c = false;
  bool vectorized = false;
  int64_t n = 0, c = 0, l = 0;
  int64_t chunk = 1, chunks = 1;
  int32_t grid_y = 1;                // samples in flight (gridDim.y), loops beyond 65535
  int64_t channels_per_chunk = 1;    // most channels one chunk touches (staging bound)
};

// Lanes that cooperate on one dot product of length `len` (the SE head): a power of two
// <= 32 such that each lane has a few terms, so short dots do not leave a warp idle.
// Host and device must agree (the host sizes grids with it).
GF_HD int dot_lanes(int64_t len) {
  int lanes = 1;
  while (lanes < 32 && int64_t(lanes) * 4 < len) lanes <<= 1;
  return lanes;
}

// SM count of a CUDA device (cached per device; no synchronisation).
int sm_count(int device);

// `inputs` are the tensors the reduction reads (all of shape (n, c, l)).
ReducePlan make_reduce_plan(const std::vector<MapLayout>& inputs, int64_t n, int64_t c, int64_t l,
                            int64_t element_size, int sms);

// `maps` are every tensor the apply stage reads or writes, the input x first. Each
// chunk holds at least `min_chunk` elements when the sample has that many (it
// bounds the cost of a per-block prologue such as the folded GCT head).
ApplyPlan make_apply_plan(const std::vector<MapLayout>& maps, int64_t n, int64_t c, int64_t l,
                          int64_t element_size, int sms, int64_t min_chunk);

}  // namespace gct_fused::cuda
