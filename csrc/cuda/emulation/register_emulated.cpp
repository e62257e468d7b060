// Registers the CUDA op implementations, compiled for the emulator, as CPU kernels of a
// separate library (gct_fused_emu, same schemas as gct_fused) so that check_emulation.py
// can run them on CPU tensors next to the real CPU kernels.
#include <torch/library.h>

#include "../ops_cuda.h"

TORCH_LIBRARY(gct_fused_emu, m) {
  m.def(
      "gct_forward(Tensor x, Tensor alpha, Tensor gamma, Tensor beta, float epsilon, str mode, "
      "bool after_relu) -> (Tensor y, Tensor stats)");
  m.def(
      "gct_backward(Tensor dy, Tensor x, Tensor alpha, Tensor gamma, Tensor beta, Tensor stats, "
      "float epsilon, str mode, bool after_relu) -> (Tensor dx, Tensor dalpha, Tensor dgamma, "
      "Tensor dbeta)");
  m.def(
      "se_forward(Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, str activation, "
      "str gate) -> (Tensor y, Tensor pooled)");
  m.def(
      "se_backward(Tensor dy, Tensor x, Tensor w1, Tensor? b1, Tensor w2, Tensor? b2, "
      "Tensor pooled, str activation, str gate) -> (Tensor dx, Tensor dw1, Tensor db1, "
      "Tensor dw2, Tensor db2)");
  m.def(
      "se_residual_forward(Tensor x, Tensor identity, Tensor w1, Tensor? b1, Tensor w2, "
      "Tensor? b2, str activation, str gate, str activation_after) -> (Tensor y, Tensor pooled)");
  m.def(
      "se_residual_backward(Tensor dy, Tensor x, Tensor y, Tensor w1, Tensor? b1, Tensor w2, "
      "Tensor? b2, Tensor pooled, str activation, str gate) -> (Tensor dx, Tensor didentity, "
      "Tensor dw1, Tensor db1, Tensor dw2, Tensor db2)");
}

TORCH_LIBRARY_IMPL(gct_fused_emu, CPU, m) {
  m.impl("gct_forward", &gct_fused::cuda::gct_forward_cuda);
  m.impl("gct_backward", &gct_fused::cuda::gct_backward_cuda);
  m.impl("se_forward", &gct_fused::cuda::se_forward_cuda);
  m.impl("se_backward", &gct_fused::cuda::se_backward_cuda);
  m.impl("se_residual_forward", &gct_fused::cuda::se_residual_forward_cuda);
  m.impl("se_residual_backward", &gct_fused::cuda::se_residual_backward_cuda);
}
