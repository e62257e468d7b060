// Autograd of the three forward ops, for every backend of this library (CPU, CUDA, Meta):
// each forward saves what its backward op needs and the backward calls that op. The
// backward ops themselves are opaque (no autograd: no double backward), so that
// torch.compile sees forward and backward as one kernel each. A gradient computed with
// create_graph=True therefore carries a node that raises if it is differentiated again
// (as Python's @once_differentiable does), instead of silently contributing zero.
//
// This lives in C++ rather than in torch.library.register_autograd because a Python
// autograd kernel runs on every call, gradients needed or not: with caches cold (as in a
// network, where the layers before evicted them) its interpreter path cost ~70 us per call
// on our 2-core CPU, more than the whole kernel on a 7x7 map. The Triton family, which is
// Python anyway, keeps the Python formulas (gct_fused/_registration.py); both return the
// same gradients.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "library_ops.h"

namespace gct_fused {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The backend's kernel of `op` (CPU, CUDA, Meta, ...): the dispatch below this key.
template <typename Sig, typename... Args>
auto call_below_autograd(const c10::TypedOperatorHandle<Sig>& op, const Args&... args) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(args...);
}

// Autograd reads the device of every tensor argument before any kernel runs, so an
// undefined one (None passed to the raw op) gets its error here, with its name.
void check_defined(std::initializer_list<std::pair<const Tensor*, const char*>> args) {
  for (const auto& [t, name] : args) TORCH_CHECK_VALUE(t->defined(), name, " must be a tensor, got None");
}

// A saved optional tensor comes back undefined when it was None.
std::optional<Tensor> maybe(const Tensor& t) { return t.defined() ? std::optional<Tensor>(t) : std::nullopt; }
const Tensor& value_or_undefined(const std::optional<Tensor>& t) {
  static const Tensor undefined;
  return t.has_value() ? *t : undefined;
}

// What a second derivative through a fused backward raises.
constexpr const char* kNoDoubleBackward =
    "gct_fused: the fused backward ops are not differentiable (no double backward, e.g. "
    "for a gradient penalty or a Hessian-vector product); call the op with "
    "backend=\"reference\" where a second derivative is needed";

// A new autograd node, held as the graph holds nodes: std::shared_ptr up to some torch
// release, c10::intrusive_ptr in torch 2.14 (the GPU machines' image may carry an older
// torch than this project pins, and must still build this file).
using NodePtr = decltype(torch::autograd::Edge::function);
template <typename T, typename... Args>
NodePtr make_node(Args&&... args) {
  if constexpr (std::is_same_v<NodePtr, std::shared_ptr<torch::autograd::Node>>) {
    return std::make_shared<T>(std::forward<Args>(args)...);
  } else {
    return c10::make_intrusive<T>(std::forward<Args>(args)...);
  }
}

// Runs a Function's backward body with grad mode off (the backward ops have no autograd:
// recorded, they would only yield second derivatives that are silently zero). When the
// engine runs with create_graph=True and an input of the body requires grad, the
// gradients returned are aliases whose grad_fn is an Error node with edges to those
// inputs (dy, the saved x and parameters): any later derivative that reaches them runs
// the node, which raises kNoDoubleBackward.
template <typename Body>
variable_list first_order_only(const variable_list& grads, const variable_list& saved, const Body& body) {
  bool record = at::GradMode::is_enabled();
  if (record) {
    record = false;
    for (const auto* list : {&grads, &saved}) {
      for (const Tensor& t : *list) record = record || (t.defined() && t.requires_grad());
    }
  }
  variable_list out;
  {
    at::NoGradGuard no_grad;
    out = body();
  }
  if (!record) return out;
  const auto node = make_node<torch::autograd::Error>(kNoDoubleBackward,
                                                      torch::autograd::collect_next_edges(grads, saved));
  for (Tensor& t : out) {
    if (t.defined()) t = t.detach();  // an alias: dy itself may be returned (SE residual)
    torch::autograd::set_history(t, node);
  }
  return out;
}

class GctFunction : public torch::autograd::Function<GctFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& alpha, const Tensor& gamma,
                               const Tensor& beta, double epsilon, c10::string_view mode, bool after_relu) {
    auto [y, stats] = call_below_autograd(gct_forward_op(), x, alpha, gamma, beta, epsilon, mode, after_relu);
    ctx->mark_non_differentiable({stats});
    ctx->save_for_backward({x, alpha, gamma, beta, stats});
    ctx->saved_data["epsilon"] = epsilon;
    ctx->saved_data["mode"] = std::string(mode);
    ctx->saved_data["after_relu"] = after_relu;
    return {y, stats};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto& op = gct_backward_op();
    const auto saved = ctx->get_saved_variables();
    const std::string mode = ctx->saved_data["mode"].toStringRef();
    return first_order_only(grads, saved, [&]() -> variable_list {
      auto [dx, dalpha, dgamma, dbeta] = op.call(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4],
                                                 ctx->saved_data["epsilon"].toDouble(), mode,
                                                 ctx->saved_data["after_relu"].toBool());
      return {dx, dalpha, dgamma, dbeta, Tensor(), Tensor(), Tensor()};
    });
  }
};

class SeFunction : public torch::autograd::Function<SeFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& w1,
                               const std::optional<Tensor>& b1, const Tensor& w2, const std::optional<Tensor>& b2,
                               c10::string_view activation, c10::string_view gate) {
    auto [y, pooled] = call_below_autograd(se_forward_op(), x, w1, b1, w2, b2, activation, gate);
    ctx->mark_non_differentiable({pooled});
    ctx->save_for_backward({x, w1, value_or_undefined(b1), w2, value_or_undefined(b2), pooled});
    ctx->saved_data["activation"] = std::string(activation);
    ctx->saved_data["gate"] = std::string(gate);
    return {y, pooled};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const std::string activation = ctx->saved_data["activation"].toStringRef();
    const std::string gate = ctx->saved_data["gate"].toStringRef();
    return first_order_only(grads, s, [&]() -> variable_list {
      auto [dx, dw1, db1, dw2, db2] =
          se_backward_op().call(grads[0], s[0], s[1], maybe(s[2]), s[3], maybe(s[4]), s[5], activation, gate);
      return {dx, dw1, s[2].defined() ? db1 : Tensor(), dw2, s[4].defined() ? db2 : Tensor(), Tensor(), Tensor()};
    });
  }
};

class SeResidualFunction : public torch::autograd::Function<SeResidualFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& identity, const Tensor& w1,
                               const std::optional<Tensor>& b1, const Tensor& w2, const std::optional<Tensor>& b2,
                               c10::string_view activation, c10::string_view gate,
                               c10::string_view activation_after) {
    auto [y, pooled] =
        call_below_autograd(se_residual_forward_op(), x, identity, w1, b1, w2, b2, activation, gate, activation_after);
    ctx->mark_non_differentiable({pooled});
    const bool relu_after = activation_after == "relu";
    // The output is kept only to recover relu's mask (y > 0); it is alive anyway as the
    // input of the next layer, so this costs no memory.
    ctx->save_for_backward(
        {x, relu_after ? y : Tensor(), w1, value_or_undefined(b1), w2, value_or_undefined(b2), pooled});
    ctx->saved_data["activation"] = std::string(activation);
    ctx->saved_data["gate"] = std::string(gate);
    ctx->saved_data["relu_after"] = relu_after;
    return {y, pooled};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto& residual_op = se_residual_backward_op();
    const auto s = ctx->get_saved_variables();  // x, y, w1, b1, w2, b2, pooled
    const std::string activation = ctx->saved_data["activation"].toStringRef();
    const std::string gate = ctx->saved_data["gate"].toStringRef();
    const Tensor& dy = grads[0];
    const bool relu_after = ctx->saved_data["relu_after"].toBool();
    return first_order_only(grads, s, [&]() -> variable_list {
      Tensor dx, didentity, dw1, db1, dw2, db2;
      if (relu_after) {
        std::tie(dx, didentity, dw1, db1, dw2, db2) =
            residual_op.call(dy, s[0], s[1], s[2], maybe(s[3]), s[4], maybe(s[5]), s[6], activation, gate);
      } else {  // y = se(x) + identity: identity's gradient is dy itself
        std::tie(dx, dw1, db1, dw2, db2) =
            se_backward_op().call(dy, s[0], s[2], maybe(s[3]), s[4], maybe(s[5]), s[6], activation, gate);
        didentity = dy;
      }
      return {dx,  didentity, dw1, s[3].defined() ? db1 : Tensor(), dw2, s[5].defined() ? db2 : Tensor(),
              Tensor(), Tensor(), Tensor()};
    });
  }
};

std::tuple<Tensor, Tensor> pair(const variable_list& v) { return {v[0], v[1]}; }

// Whether a call of a forward op records a graph node: false when no gradient will be
// asked for (grad mode off, or no input requires one), and the kernel is then called
// directly, without the node, saved tensors and output wrapping of Function::apply (as
// torch.library's Python autograd does too). Also where forward-mode AD is refused: it has
// no formula here, and a dual-tensor input raises rather than having its tangent silently
// dropped (Function::apply would reject it too, but the direct call would not).
bool needs_graph(std::initializer_list<const Tensor*> tensors) {
  bool requires_grad = false;
  for (const Tensor* t : tensors) {
    TORCH_CHECK_NOT_IMPLEMENTED(!torch::autograd::isFwGradDefined(*t),
                                "gct_fused: forward-mode AD (dual tensors, jvp) is not supported by the "
                                "fused backends; call the op with backend=\"reference\" for it");
    requires_grad = requires_grad || (t->defined() && t->requires_grad());
  }
  return requires_grad && at::GradMode::is_enabled();
}

std::tuple<Tensor, Tensor> gct_forward_autograd(const Tensor& x, const Tensor& alpha, const Tensor& gamma,
                                                const Tensor& beta, double epsilon, c10::string_view mode,
                                                bool after_relu) {
  check_defined({{&x, "x"}, {&alpha, "alpha"}, {&gamma, "gamma"}, {&beta, "beta"}});
  if (!needs_graph({&x, &alpha, &gamma, &beta})) {
    return call_below_autograd(gct_forward_op(), x, alpha, gamma, beta, epsilon, mode, after_relu);
  }
  return pair(GctFunction::apply(x, alpha, gamma, beta, epsilon, mode, after_relu));
}

std::tuple<Tensor, Tensor> se_forward_autograd(const Tensor& x, const Tensor& w1, const std::optional<Tensor>& b1,
                                               const Tensor& w2, const std::optional<Tensor>& b2,
                                               c10::string_view activation, c10::string_view gate) {
  check_defined({{&x, "x"}, {&w1, "w1"}, {&w2, "w2"}});
  if (!needs_graph({&x, &w1, &value_or_undefined(b1), &w2, &value_or_undefined(b2)})) {
    return call_below_autograd(se_forward_op(), x, w1, b1, w2, b2, activation, gate);
  }
  return pair(SeFunction::apply(x, w1, b1, w2, b2, activation, gate));
}

std::tuple<Tensor, Tensor> se_residual_forward_autograd(const Tensor& x, const Tensor& identity, const Tensor& w1,
                                                        const std::optional<Tensor>& b1, const Tensor& w2,
                                                        const std::optional<Tensor>& b2,
                                                        c10::string_view activation, c10::string_view gate,
                                                        c10::string_view activation_after) {
  check_defined({{&x, "x"}, {&identity, "identity"}, {&w1, "w1"}, {&w2, "w2"}});
  if (!needs_graph({&x, &identity, &w1, &value_or_undefined(b1), &w2, &value_or_undefined(b2)})) {
    return call_below_autograd(se_residual_forward_op(), x, identity, w1, b1, w2, b2, activation, gate,
                               activation_after);
  }
  return pair(SeResidualFunction::apply(x, identity, w1, b1, w2, b2, activation, gate, activation_after));
}

}  // namespace

TORCH_LIBRARY_IMPL(gct_fused, Autograd, m) {
  m.impl("gct_forward", &gct_forward_autograd);
  m.impl("se_forward", &se_forward_autograd);
  m.impl("se_residual_forward", &se_residual_forward_autograd);
}

}  // namespace gct_fused
