// A CPU emulator for the CUDA kernels of csrc/cuda, for development without a GPU.
//
// Force-included (-include) with -DGCT_FUSED_CUDA_EMULATION when the kernel sources are
// compiled as host C++ (see check_emulation.py). Every thread of a block runs as a
// fiber; __syncthreads() and warp shuffles are real barriers among those fibers, so a
// barrier that some threads of a block (or lanes of a warp) never reach is reported as a
// deadlock instead of hanging. __shared__ variables become function statics (blocks run
// one after another), dynamic shared memory is a per-block buffer poisoned with NaN
// bytes. It checks the kernels' logic (indexing, tiling, synchronisation, reductions),
// not their speed or the GPU memory model.
#pragma once

#include <cuda_runtime_api.h>  // cudaStream_t, dim3, uint3; defines the CUDA keywords, redefined below

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#undef __align__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

namespace gct_fused_emu {

uint3 thread_index();
uint3 block_index();
dim3 block_dim();
dim3 grid_dim();
void sync_block();
void* dynamic_shared();
// Lane `lane ^ offset`'s value of `bits`; every lane of the warp must call it.
uint64_t shuffle_xor_bits(unsigned mask, uint64_t bits, int offset);

template <typename T>
T shfl_xor(unsigned mask, T v, int offset) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a value wider than 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = shuffle_xor_bits(mask, bits, offset);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// Runs body() once per thread of every block of the grid (blocks in order).
void launch(dim3 grid, dim3 block, size_t shared_bytes, const std::function<void()>& body);

}  // namespace gct_fused_emu

#define threadIdx (::gct_fused_emu::thread_index())
#define blockIdx (::gct_fused_emu::block_index())
#define blockDim (::gct_fused_emu::block_dim())
#define gridDim (::gct_fused_emu::grid_dim())
#define __syncthreads() ::gct_fused_emu::sync_block()
#define __shfl_xor_sync(mask, v, offset) ::gct_fused_emu::shfl_xor(mask, v, offset)
