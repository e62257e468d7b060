#include "channel_plan.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>

#ifndef GCT_FUSED_CUDA_EMULATION
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime_api.h>
#endif

namespace gct_fused::cuda {
namespace {

// Blocks of kThreads threads that fill every SM once (2048 resident threads per SM).
int64_t target_blocks(int sms) { return int64_t(sms) * (2048 / kThreads); }

// Rows up to this length are reduced by a part of a warp; longer rows by a whole block.
constexpr int64_t kMaxWarpRow = 4096;
// Shortest piece a long row is split into.
constexpr int64_t kMinRowPiece = 2048;
// Fewest elements one block of a split reduction or of the apply stage handles.
constexpr int64_t kMinBlockElems = 4096;
// Channel-row reductions split each (n, c) sum into at most this many pieces, or more while
// the partial buffer stays within kPartialBudget values.
constexpr int64_t kMaxPiecesPerSum = 16;
constexpr int64_t kPartialBudget = int64_t(1) << 18;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Grid-stride kernels need no more blocks than this to keep every SM busy.
int64_t cap_blocks(int64_t blocks, int sms) {
  return std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t(sms) * 256));
}

}  // namespace

int sm_count(int device) {
#ifdef GCT_FUSED_CUDA_EMULATION
  // The emulator plans as if for a GPU with this many SMs (GCT_FUSED_EMULATED_SMS, default 4).
  (void)device;
  const char* env = std::getenv("GCT_FUSED_EMULATED_SMS");
  return env != nullptr && std::atoi(env) > 0 ? std::atoi(env) : 4;
#else
  static std::array<std::atomic<int>, 64> cache{};
  if (device >= 0 && device < static_cast<int>(cache.size())) {
    const int known = cache[device].load(std::memory_order_relaxed);
    if (known > 0) return known;
  }
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  sms = std::max(sms, 1);
  if (device >= 0 && device < static_cast<int>(cache.size())) cache[device].store(sms);
  return sms;
#endif
}

ReducePlan make_reduce_plan(const std::vector<MapLayout>& inputs, int64_t n, int64_t c, int64_t l,
                            int64_t element_size, int sms) {
  ReducePlan plan;
  plan.n = n;
  plan.c = c;
  plan.l = l;
  const int64_t vec = 16 / element_size;
  bool along_l = true, along_c = true;
  for (const auto& m : inputs) {
    along_l = along_l && m.stride_l == 1;
    along_c = along_c && m.stride_c == 1;
  }
  // Both hold for dense maps with C == 1 or L == 1: take the longer contiguous run.
  const bool channel_rows = along_c && !(along_l && l >= c);
  const int64_t target = target_blocks(sms);

  if (!channel_rows) {
    plan.path = ReducePath::kRows;
    plan.unit_stride = along_l;
    const int64_t rows = n * c;
    if (l <= kMaxWarpRow) {
      // About two vectors (or two scalars) per lane: short rows (7x7, 14x14) share a warp,
      // so a warp has several rows in flight instead of one mostly idle row.
      const int64_t per_lane = 2 * (along_l ? vec : 1);
      int32_t group = 4;
      while (group < 32 && int64_t(group) * per_lane < l) group *= 2;
      plan.group = group;
    } else {
      plan.group = kThreads;
      if (rows < target) plan.tiles = std::min(ceil_div(target, rows), ceil_div(l, kMinRowPiece));
    }
    plan.tile_l = ceil_div(l, plan.tiles);
    plan.tiles = ceil_div(l, plan.tile_l);
    const int64_t tasks = rows * plan.tiles;
    plan.blocks = cap_blocks(ceil_div(tasks, kThreads / plan.group), sms);
    return plan;
  }

  plan.path = ReducePath::kChannelRows;
  plan.vectorized = c % vec == 0;
  for (const auto& m : inputs) {
    plan.vectorized = plan.vectorized && aligned16(m.data) && m.stride_l % vec == 0 &&
                      (n == 1 || m.stride_n % vec == 0);
  }
  // Threads cover ceil(C / vec) channel groups; the rest of the block takes further rows.
  const int64_t groups = ceil_div(c, vec);
  const int64_t row_lanes = std::max<int64_t>(1, kThreads / groups);
  const int64_t min_rows = std::max(row_lanes, ceil_div(kMinBlockElems, c));
  plan.tiles = std::max<int64_t>(1, std::min(ceil_div(target, n), l / min_rows));
  // Bound the partial buffer (T floats per (n, c)) to O(N * C) plus 1 MiB of float32.
  plan.tiles = std::min(plan.tiles, std::max<int64_t>(kMaxPiecesPerSum, kPartialBudget / (n * c)));
  plan.tile_l = ceil_div(l, plan.tiles);
  plan.tiles = ceil_div(l, plan.tile_l);
  plan.blocks = cap_blocks(n * plan.tiles, sms);
  return plan;
}

ApplyPlan make_apply_plan(const std::vector<MapLayout>& maps, int64_t n, int64_t c, int64_t l,
                          int64_t element_size, int sms, int64_t min_chunk) {
  ApplyPlan plan;
  plan.n = n;
  plan.c = c;
  plan.l = l;
  const int64_t vec = 16 / element_size;
  bool along_l = true, along_c = true;
  for (const auto& m : maps) {
    along_l = along_l && m.stride_l == 1;
    along_c = along_c && m.stride_c == 1;
  }
  if (along_l || along_c) {
    plan.order_c = along_c && !(along_l && l >= c);
  } else {
    // Mixed or strided layouts: follow x's memory order so that at least x is read
    // in order; every access is a scalar one.
    plan.order_c = maps.front().stride_c == 1 && maps.front().stride_l != 1;
  }

  // A run of vec consecutive element numbers must be one aligned vector in every tensor.
  // The inner extent (L in order_c false, C in order_c true) is either dense (runs may
  // cross into the next row) or a multiple of vec with vec-aligned row strides.
  plan.vectorized = along_l || along_c;
  for (const auto& m : maps) {
    const int64_t inner_stride = plan.order_c ? m.stride_c : m.stride_l;
    const int64_t outer_stride = plan.order_c ? m.stride_l : m.stride_c;
    const int64_t inner = plan.order_c ? c : l;
    const bool rows_ok = outer_stride == inner || (inner % vec == 0 && outer_stride % vec == 0);
    plan.vectorized = plan.vectorized && inner_stride == 1 && rows_ok && aligned16(m.data) &&
                      (n == 1 || m.stride_n % vec == 0);
  }

  const int64_t total = c * l;
  int64_t chunks = std::min(ceil_div(target_blocks(sms), n), ceil_div(total, kMinBlockElems));
  if (min_chunk > 0) chunks = std::min(chunks, total / min_chunk);
  chunks = std::max<int64_t>(1, chunks);
  plan.chunk = ceil_div(ceil_div(total, chunks), vec) * vec;
  plan.chunks = ceil_div(total, plan.chunk);
  plan.grid_y = static_cast<int32_t>(std::min<int64_t>(n, 65535));
  plan.channels_per_chunk = plan.order_c ? c : std::min(c, plan.chunk / l + 2);
  return plan;
}

}  // namespace gct_fused::cuda
