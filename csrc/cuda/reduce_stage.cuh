// Stage 1 of the skeleton: per (n, c), the sum over L of map(inputs), in the
// accumulation type. Two tilings, chosen by ReducePlan from the strides:
//
//   kRows         a group of threads (4 to 32 lanes of a warp, or the block for long
//                 rows) per piece of an (n, c) row. With stride_l == 1 the loads are 16-byte vectors from
//                 the row's first 16-byte boundary (scalar head and tail); otherwise
//                 scalar loads with the row's stride (the generic fallback).
//   kChannelRows  stride_c == 1 (channels_last): a block per (n, tile of rows l); each
//                 thread owns a group of vec channels (one 16-byte vector when aligned)
//                 and walks rows; with few channels the block's other threads take
//                 further rows and are added in row-lane order through shared memory.
//
// Map is a functor acc_t(const acc_t* v) of the NR input values at one element.
// Output: the partial buffer of the plan ([N, C, T] or [N, T, C]); combined in a fixed
// order by the next kernel (PartialSums), so there are no atomics anywhere.
#pragma once

#include "channel_plan.h"
#include "device_utils.cuh"
#include "kernel_launch.cuh"

namespace gct_fused::cuda {

// Sum of map over `len` elements of one row starting at l0, by `group` threads.
template <typename scalar_t, int NR, typename Map>
__device__ __forceinline__ acc_type<scalar_t> row_sum(const Operands<const scalar_t, NR>& in, int64_t n,
                                                      int64_t c, int64_t l0, int64_t len, bool unit_stride,
                                                      int lane, int group, const Map& map) {
  using acc_t = acc_type<scalar_t>;
  constexpr int V = vec_width<scalar_t>();
  constexpr int kInFlight = NR == 1 ? 4 : 2;  // vectors per lane and input loaded before they are added
  const scalar_t* p[NR];
#pragma unroll
  for (int k = 0; k < NR; ++k) p[k] = in.t[k].at(n, c, l0);
  acc_t acc = acc_t(0);
  acc_t v[NR];

  if (!unit_stride) {
    for (int64_t i = lane; i < len; i += group) {
#pragma unroll
      for (int k = 0; k < NR; ++k) v[k] = static_cast<acc_t>(p[k][i * in.t[k].sl]);
      acc += map(v);
    }
    return acc;
  }

  // Vectors start at the first 16-byte boundary of input 0; every input must share
  // that phase (true whenever they share strides), else the row is read by scalars.
  const uintptr_t a0 = reinterpret_cast<uintptr_t>(p[0]);
  bool same_phase = true;
#pragma unroll
  for (int k = 1; k < NR; ++k) same_phase = same_phase && (reinterpret_cast<uintptr_t>(p[k]) - a0) % 16 == 0;
  const int64_t to_boundary = static_cast<int64_t>(((16 - a0 % 16) % 16) / sizeof(scalar_t));
  const int64_t head = same_phase ? (to_boundary < len ? to_boundary : len) : len;
  for (int64_t i = lane; i < head; i += group) {
#pragma unroll
    for (int k = 0; k < NR; ++k) v[k] = static_cast<acc_t>(p[k][i]);
    acc += map(v);
  }
  const int64_t nvec = (len - head) / V;
  for (int64_t j0 = lane; j0 < nvec; j0 += int64_t(kInFlight) * group) {
    Vec16<scalar_t> buf[kInFlight][NR];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const int64_t j = j0 + int64_t(u) * group;
      if (j < nvec) {
#pragma unroll
        for (int k = 0; k < NR; ++k) buf[u][k] = load_vec(p[k] + head + j * V);
      }
    }
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      if (j0 + int64_t(u) * group < nvec) {
#pragma unroll
        for (int e = 0; e < V; ++e) {
#pragma unroll
          for (int k = 0; k < NR; ++k) v[k] = static_cast<acc_t>(buf[u][k].v[e]);
          acc += map(v);
        }
      }
    }
  }
  for (int64_t i = head + nvec * V + lane; i < len; i += group) {
#pragma unroll
    for (int k = 0; k < NR; ++k) v[k] = static_cast<acc_t>(p[k][i]);
    acc += map(v);
  }
  return acc;
}

// kRows: task = (n, c, piece t), numbered (n * C + c) * T + t, which is also its index
// in the [N, C, T] partial buffer.
template <typename scalar_t, int NR, typename Map>
__global__ void __launch_bounds__(kThreads)
    reduce_rows_kernel(Operands<const scalar_t, NR> in, ReducePlan plan, acc_type<scalar_t>* out, Map map) {
  using acc_t = acc_type<scalar_t>;
  const int group = plan.group;
  const int per_block = kThreads / group;
  const int slot = static_cast<int>(threadIdx.x) / group;
  const int lane = static_cast<int>(threadIdx.x) % group;
  const int64_t tasks = plan.n * plan.c * plan.tiles;
  // The loop bounds are the same for the whole block (block_sum synchronises).
  for (int64_t first = int64_t(blockIdx.x) * per_block; first < tasks; first += int64_t(gridDim.x) * per_block) {
    const int64_t task = first + slot;
    acc_t s = acc_t(0);
    if (task < tasks) {
      const int64_t t = task % plan.tiles, row = task / plan.tiles;
      const int64_t c = row % plan.c, n = row / plan.c;
      const int64_t l0 = t * plan.tile_l;
      const int64_t len = plan.tile_l < plan.l - l0 ? plan.tile_l : plan.l - l0;
      s = row_sum<scalar_t, NR>(in, n, c, l0, len, plan.unit_stride, lane, group, map);
    }
    s = group <= 32 ? group_sum(s, group) : block_sum(s);
    if (task < tasks && lane == 0) out[task] = s;
  }
}

// kChannelRows: task = (n, tile t of rows); writes out[(n * T + t) * C + c].
template <typename scalar_t, int NR, typename Map>
__global__ void __launch_bounds__(kThreads)
    reduce_channel_rows_kernel(Operands<const scalar_t, NR> in, ReducePlan plan, acc_type<scalar_t>* out,
                               Map map) {
  using acc_t = acc_type<scalar_t>;
  constexpr int V = vec_width<scalar_t>();
  constexpr int kRowsInFlight = NR == 1 ? 4 : 2;  // rows loaded before they are added
  __shared__ acc_t lane_sums[kThreads * V];
  const int64_t C = plan.c;
  const int64_t groups = (C + V - 1) / V;                                  // channel groups
  const int row_lanes = groups >= kThreads ? 1 : static_cast<int>(kThreads / groups);
  const int per_pass = kThreads / row_lanes;                               // groups per pass
  const int rl = static_cast<int>(threadIdx.x) / per_pass;
  const int gi = static_cast<int>(threadIdx.x) % per_pass;
  const int64_t tasks = plan.n * plan.tiles;

  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {
    const int64_t n = task / plan.tiles, t = task % plan.tiles;
    const int64_t l0 = t * plan.tile_l;
    const int64_t l1 = l0 + plan.tile_l < plan.l ? l0 + plan.tile_l : plan.l;
    for (int64_t g0 = 0; g0 < groups; g0 += per_pass) {
      const int64_t g = g0 + gi;
      const bool active = rl < row_lanes && g < groups;
      const int64_t c0 = g * V;
      acc_t acc[V];
#pragma unroll
      for (int e = 0; e < V; ++e) acc[e] = acc_t(0);
      acc_t v[NR];
      if (active && plan.vectorized) {
        for (int64_t l = l0 + rl; l < l1; l += int64_t(kRowsInFlight) * row_lanes) {
          Vec16<scalar_t> buf[kRowsInFlight][NR];
#pragma unroll
          for (int u = 0; u < kRowsInFlight; ++u) {
            const int64_t lu = l + int64_t(u) * row_lanes;
            if (lu < l1) {
#pragma unroll
              for (int k = 0; k < NR; ++k) buf[u][k] = load_vec(in.t[k].at(n, c0, lu));
            }
          }
#pragma unroll
          for (int u = 0; u < kRowsInFlight; ++u) {
            if (l + int64_t(u) * row_lanes < l1) {
#pragma unroll
              for (int e = 0; e < V; ++e) {
#pragma unroll
                for (int k = 0; k < NR; ++k) v[k] = static_cast<acc_t>(buf[u][k].v[e]);
                acc[e] += map(v);
              }
            }
          }
        }
      } else if (active) {
        for (int64_t l = l0 + rl; l < l1; l += row_lanes) {
#pragma unroll
          for (int e = 0; e < V; ++e) {
            if (c0 + e < C) {
#pragma unroll
              for (int k = 0; k < NR; ++k) v[k] = static_cast<acc_t>(*in.t[k].at(n, c0 + e, l));
              acc[e] += map(v);
            }
          }
        }
      }
      if (row_lanes > 1) {  // uniform: add the row lanes of each channel group in order
        __syncthreads();
#pragma unroll
        for (int e = 0; e < V; ++e) lane_sums[threadIdx.x * V + e] = acc[e];
        __syncthreads();
        if (rl == 0 && active) {
          for (int r = 1; r < row_lanes; ++r) {
#pragma unroll
            for (int e = 0; e < V; ++e) acc[e] += lane_sums[(r * per_pass + gi) * V + e];
          }
        }
      }
      if (rl == 0 && active) {
        acc_t* dst = out + (n * plan.tiles + t) * C + c0;
#pragma unroll
        for (int e = 0; e < V; ++e) {
          if (c0 + e < C) dst[e] = acc[e];
        }
      }
    }
  }
}

// out[n * C + c] = (the sum of the pieces of (n, c), in piece order) * scale.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    combine_partials_kernel(PartialSums<acc_t> partials, int64_t n, int64_t c, acc_t scale, acc_t* out) {
  const int64_t total = n * c;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < total; i += int64_t(gridDim.x) * kThreads) {
    out[i] = partials.sum(i / c, i % c) * scale;
  }
}

template <typename scalar_t, int NR, typename Map>
void launch_reduce(const ReducePlan& plan, const Operands<const scalar_t, NR>& in, acc_type<scalar_t>* out,
                   const Map& map, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(plan.blocks));
  if (plan.path == ReducePath::kRows) {
    launch_kernel(reduce_rows_kernel<scalar_t, NR, Map>, grid, kThreads, 0, stream, in, plan, out, map);
  } else {
    launch_kernel(reduce_channel_rows_kernel<scalar_t, NR, Map>, grid, kThreads, 0, stream, in, plan, out, map);
  }
}

// Sums of the reduction (times `scale`: 1 is exact) into an (N, C) buffer.
template <typename acc_t>
void launch_combine(const ReducePlan& plan, const acc_t* partial, acc_t scale, acc_t* out, int sms,
                    cudaStream_t stream) {
  const int64_t blocks = (plan.n * plan.c + kThreads - 1) / kThreads;
  const dim3 grid(static_cast<unsigned>(blocks < int64_t(sms) * 32 ? blocks : int64_t(sms) * 32));
  launch_kernel(combine_partials_kernel<acc_t>, grid, kThreads, 0, stream, partial_sums(plan, partial), plan.n,
                plan.c, scale, out);
}

}  // namespace gct_fused::cuda
