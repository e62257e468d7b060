// The binding layer: registers the CUDA implementations for the CUDA dispatch key.
// Kept apart from the .cu files so that torch/library.h is compiled once, by the host
// compiler, rather than once per GPU architecture.
#include <torch/library.h>

#include "ops_cuda.h"

TORCH_LIBRARY_IMPL(gct_fused, CUDA, m) {
  m.impl("gct_forward", &gct_fused::cuda::gct_forward_cuda);
  m.impl("gct_backward", &gct_fused::cuda::gct_backward_cuda);
  m.impl("se_forward", &gct_fused::cuda::se_forward_cuda);
  m.impl("se_backward", &gct_fused::cuda::se_backward_cuda);
  m.impl("se_residual_forward", &gct_fused::cuda::se_residual_forward_cuda);
  m.impl("se_residual_backward", &gct_fused::cuda::se_residual_backward_cuda);
}
