// The CUDA implementations of the gct_fused ops (schemas in csrc/gct_fused.cpp),
// registered for the CUDA dispatch key by register_cuda.cpp. Each returns what its
// CPU twin returns: same shapes, dtypes and output strides.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <tuple>

namespace gct_fused::cuda {

std::tuple<at::Tensor, at::Tensor> gct_forward_cuda(const at::Tensor& x, const at::Tensor& alpha,
                                                    const at::Tensor& gamma, const at::Tensor& beta,
                                                    double epsilon, c10::string_view mode, bool after_relu);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gct_backward_cuda(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& gamma,
    const at::Tensor& beta, const at::Tensor& stats, double epsilon, c10::string_view mode, bool after_relu);

std::tuple<at::Tensor, at::Tensor> se_forward_cuda(const at::Tensor& x, const at::Tensor& w1,
                                                   const c10::optional<at::Tensor>& b1, const at::Tensor& w2,
                                                   const c10::optional<at::Tensor>& b2,
                                                   c10::string_view activation, c10::string_view gate);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> se_backward_cuda(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
    const at::Tensor& w2, const c10::optional<at::Tensor>& b2, const at::Tensor& pooled,
    c10::string_view activation, c10::string_view gate);

std::tuple<at::Tensor, at::Tensor> se_residual_forward_cuda(
    const at::Tensor& x, const at::Tensor& identity, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
    const at::Tensor& w2, const c10::optional<at::Tensor>& b2, c10::string_view activation,
    c10::string_view gate, c10::string_view activation_after);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> se_residual_backward_cuda(
    const at::Tensor& dy, const at::Tensor& x, const at::Tensor& y, const at::Tensor& w1,
    const c10::optional<at::Tensor>& b1, const at::Tensor& w2, const c10::optional<at::Tensor>& b2,
    const at::Tensor& pooled, c10::string_view activation, c10::string_view gate);

}  // namespace gct_fused::cuda
