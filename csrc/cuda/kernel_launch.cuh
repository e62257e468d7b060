// Where the CUDA ops meet the runtime: the device guard, the current stream, and the one
// function that launches every kernel (on the given stream, followed by
// C10_CUDA_KERNEL_LAUNCH_CHECK; no host synchronisation, so calls are graph-capturable).
//
// With GCT_FUSED_CUDA_EMULATION defined the same kernel sources are compiled as host C++
// and run by the CPU emulator in emulation/ (threads as fibers, real barriers and warp
// shuffles): a way to exercise their indexing and synchronisation without a GPU.
#pragma once

#include <cstddef>
#include <utility>

#ifdef GCT_FUSED_CUDA_EMULATION
#include <c10/core/Device.h>

#include "emulation/cuda_emulation.h"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#endif

namespace gct_fused::cuda {

#ifdef GCT_FUSED_CUDA_EMULATION
struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};
inline cudaStream_t current_stream() { return nullptr; }

template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t,
                   Args&&... args) {
  ::gct_fused_emu::launch(grid, block, shared_bytes, [&] { kernel(args...); });
}
#else
using DeviceGuard = c10::cuda::CUDAGuard;
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }

template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, cudaStream_t stream,
                   Args&&... args) {
  kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
#endif

}  // namespace gct_fused::cuda
