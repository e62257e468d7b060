// Typed handles of the six ops of this library (their schemas: gct_fused.cpp), for C++
// code that calls them through the dispatcher, so that the tensors' dispatch keys pick
// the kernel (CPU, CUDA, Meta, autograd, dispatch modes): the autograd kernels
// (autograd.cpp) and the direct Python entries (python_calls.cpp). Each signature must
// match its schema; a mismatch fails at the first lookup, with the schema in the message.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/string_view.h>

#include <optional>
#include <tuple>

namespace gct_fused {

using GctForwardSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                         const at::Tensor&, double, c10::string_view, bool);
using GctBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    double, c10::string_view, bool);
using SeForwardSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                        const std::optional<at::Tensor>&, const at::Tensor&,
                                                        const std::optional<at::Tensor>&, c10::string_view,
                                                        c10::string_view);
using SeBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
    const std::optional<at::Tensor>&, const at::Tensor&, c10::string_view, c10::string_view);
using SeResidualForwardSig = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
    const std::optional<at::Tensor>&, c10::string_view, c10::string_view, c10::string_view);
using SeResidualBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
    const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, c10::string_view, c10::string_view);

// The op `name` of this library with signature Sig.
template <typename Sig>
c10::TypedOperatorHandle<Sig> library_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// Each op, looked up once (the first call; the registrations have run by then, when
// gct_fused._C was imported).
#define GCT_FUSED_LIBRARY_OP(fn, Sig, name)              \
  inline const c10::TypedOperatorHandle<Sig>& fn() {     \
    static const auto op = library_op<Sig>(name);        \
    return op;                                           \
  }
GCT_FUSED_LIBRARY_OP(gct_forward_op, GctForwardSig, "gct_fused::gct_forward")
GCT_FUSED_LIBRARY_OP(gct_backward_op, GctBackwardSig, "gct_fused::gct_backward")
GCT_FUSED_LIBRARY_OP(se_forward_op, SeForwardSig, "gct_fused::se_forward")
GCT_FUSED_LIBRARY_OP(se_backward_op, SeBackwardSig, "gct_fused::se_backward")
GCT_FUSED_LIBRARY_OP(se_residual_forward_op, SeResidualForwardSig, "gct_fused::se_residual_forward")
GCT_FUSED_LIBRARY_OP(se_residual_backward_op, SeResidualBackwardSig, "gct_fused::se_residual_backward")
#undef GCT_FUSED_LIBRARY_OP

}  // namespace gct_fused
