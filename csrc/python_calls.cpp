// Direct Python entries for the common call of the three forward ops: gct_fused._C.gct,
// squeeze_excite and se_residual. gct_fused.functional and the modules try them first and
// take the full Python path (argument checks with their messages, backend resolution,
// torch.ops.gct_fused.*) whenever one returns None. squeeze_excite_conv and
// se_residual_conv, for the SE drop-ins (gct_fused.dropin), also take the (out, in, 1, 1)
// weights of 1x1 convolutions (se_matrix).
//
// Why: with the caches cold, as in a network where the layers before evicted them, the
// Python layers of a call (the argument checks, backend resolution, the OpOverload's
// argument matching against the schema) cost ~100 us on our 2-core CPUs, as much as the
// whole kernel on a 7x7 map. These entries do the same checks on the C++ objects, without
// creating a Python object per attribute (x.shape, x.device, ...), and call the op through
// the dispatcher, so autograd, autocast, vmap and dispatch modes see the same op as before.
//
// They answer None (never raise for a bad argument) unless every one of these holds:
//  * the tensors are plain torch.Tensor or nn.Parameter objects (a subclass may override
//    __torch_function__), and no torch function mode is active;
//  * nothing is being traced by torch.jit (torch.onnx.export traces the published formulas
//    instead, gct_fused.functional._backend_for);
//  * the backend asked for is "auto" or "cpu", x is a CPU tensor, and GCT_FUSED_BACKEND is
//    unset, empty, "auto" or "cpu" (any other value is resolved by the Python path);
//  * the arguments pass the checks of gct_fused._validate (same conditions, same order of
//    concern): anything else goes back to Python, which raises the error that names it.
// Errors the kernels themselves raise propagate as the same Python exceptions as through
// torch.ops. torch.compile never reaches here: functional skips these entries while Dynamo
// traces, and records torch.ops.gct_fused.* in the graph.
#include "python_calls.h"

#include <ATen/PythonTorchFunctionTLS.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <torch/csrc/utils/pybind.h>

#include <cstdlib>
#include <cstring>
#include <optional>
#include <tuple>

#include "library_ops.h"
#include "op_common.h"

namespace gct_fused {
namespace {

using at::Tensor;

// A plain tensor argument (torch.Tensor or nn.Parameter, not a subclass), or nullptr.
const Tensor* plain_tensor(PyObject* obj) {
  return THPVariable_CheckExact(obj) ? &THPVariable_Unpack(obj) : nullptr;
}

// Conditions that hold for the whole call, whatever its arguments.
bool plain_call_context(PyObject* backend) {
  if (!PyUnicode_CheckExact(backend) || (PyUnicode_CompareWithASCIIString(backend, "auto") != 0 &&
                                         PyUnicode_CompareWithASCIIString(backend, "cpu") != 0)) {
    return false;
  }
  if (at::impl::torch_function_mode_enabled() || torch::jit::tracer::isTracing()) return false;
  // Python's os.environ writes through to the C environment, so this sees run-time changes.
  const char* override_backend = std::getenv("GCT_FUSED_BACKEND");
  return override_backend == nullptr || override_backend[0] == '\0' ||
         std::strcmp(override_backend, "auto") == 0 || std::strcmp(override_backend, "cpu") == 0;
}

// The string argument as a view of the op's own name for it (op_common.h's tables) if it
// is a str equal to one of them.
template <typename Enum, size_t K>
std::optional<c10::string_view> choice(PyObject* obj, const OptionName<Enum> (&choices)[K]) {
  if (!PyUnicode_CheckExact(obj)) return std::nullopt;
  for (const auto& c : choices) {
    if (PyUnicode_CompareWithASCIIString(obj, c.name) == 0) return c10::string_view(c.name);
  }
  return std::nullopt;
}

// x: a CPU floating tensor of rank >= 2.
bool plain_feature_map(const Tensor* x) {
  return x != nullptr && x->device().is_cpu() && x->dim() >= 2 && is_kernel_dtype(x->scalar_type());
}

// A parameter on x's device whose dtype is `dtype` (the first parameter's), mixing with x's.
bool plain_parameter(const Tensor* p, const Tensor& x, at::ScalarType dtype) {
  return p != nullptr && p->device() == x.device() && p->scalar_type() == dtype &&
         dtypes_mix(dtype, x.scalar_type());
}

// An optional bias: None, or a parameter of shape (size,).
bool plain_bias(PyObject* obj, const Tensor& x, at::ScalarType dtype, int64_t size, std::optional<Tensor>& out) {
  if (obj == Py_None) return true;
  const Tensor* b = plain_tensor(obj);
  if (!plain_parameter(b, x, dtype) || b->dim() != 1 || b->size(0) != size) return false;
  out = *b;
  return true;
}

PyObject* none() { Py_RETURN_NONE; }

// Calls `op` without the GIL (as torch.ops does) and returns its first output.
template <typename Sig, typename... Args>
PyObject* call_first_output(const c10::TypedOperatorHandle<Sig>& op, const Args&... args) {
  Tensor y;
  {
    pybind11::gil_scoped_release no_gil;
    y = std::get<0>(op.call(args...));
  }
  return THPVariable_Wrap(std::move(y));
}

// gct(x, alpha, gamma, beta, epsilon, mode, after_relu, backend) -> y or None
PyObject* gct_call(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 8 || !plain_call_context(args[7])) return none();
  const Tensor* x = plain_tensor(args[0]);
  if (!plain_feature_map(x)) return none();
  const Tensor* alpha = plain_tensor(args[1]);
  if (alpha == nullptr) return none();
  const int64_t channels = x->size(1);
  for (PyObject* obj : {args[1], args[2], args[3]}) {
    const Tensor* p = plain_tensor(obj);
    if (!plain_parameter(p, *x, alpha->scalar_type()) || p->numel() != channels) return none();
  }
  // epsilon: an int or float (not a bool), >= 0 and not NaN.
  double epsilon = 0;
  if (PyFloat_CheckExact(args[4])) {
    epsilon = PyFloat_AS_DOUBLE(args[4]);
  } else if (PyLong_CheckExact(args[4])) {
    epsilon = PyLong_AsDouble(args[4]);
    if (epsilon == -1.0 && PyErr_Occurred()) {  // too large for a double: Python explains
      PyErr_Clear();
      return none();
    }
  } else {
    return none();
  }
  if (!(epsilon >= 0)) return none();
  const auto mode = choice(args[5], kGctModeNames);
  if (!mode || !PyBool_Check(args[6])) return none();
  return call_first_output(gct_forward_op(), *x, THPVariable_Unpack(args[1]), THPVariable_Unpack(args[2]),
                           THPVariable_Unpack(args[3]), epsilon, *mode, args[6] == Py_True);
  END_HANDLE_TH_ERRORS
}

// An SE weight as the (out, in) matrix the ops take: a 2-D tensor as it is and, for the
// drop-in entries (conv_weights), a 1x1 convolution's (out, in, 1, 1) weight viewed as
// (out, in), as the drop-ins' Python path does with flatten(1) (a differentiable view: the
// gradient reaches the 4-D weight, in its shape). The drop-ins pass their layers' weights
// from _parameters: flatten(1) and the attribute lookups in Python cost ~100 us per cold
// call, as much as the rest of it. nullopt for anything else.
std::optional<Tensor> se_matrix(PyObject* obj, bool conv_weights) {
  const Tensor* w = plain_tensor(obj);
  if (w == nullptr) return std::nullopt;
  if (w->dim() == 2) return *w;
  if (conv_weights && w->dim() == 4 && w->size(2) == 1 && w->size(3) == 1) {
    return w->view({w->size(0), w->size(1)});
  }
  return std::nullopt;
}

// The SE weights of a call on x: w1 (R, C), b1 (R,) or None, w2 (C, R), b2 (C,) or None
// (and (R, C, 1, 1), (C, R, 1, 1) weights with conv_weights: se_matrix).
struct SeWeights {
  Tensor w1, w2;
  std::optional<Tensor> b1, b2;

  bool parse(const Tensor& x, PyObject* const* args, bool conv_weights) {
    auto m1 = se_matrix(args[0], conv_weights), m2 = se_matrix(args[2], conv_weights);
    if (!m1 || !m2) return false;
    w1 = *std::move(m1);
    w2 = *std::move(m2);
    const at::ScalarType dtype = w1.scalar_type();
    const int64_t channels = x.size(1);
    if (!plain_parameter(&w1, x, dtype) || !plain_parameter(&w2, x, dtype) || w1.size(1) != channels ||
        w2.size(0) != channels || w2.size(1) != w1.size(0)) {
      return false;
    }
    return plain_bias(args[1], x, dtype, w1.size(0), b1) && plain_bias(args[3], x, dtype, channels, b2);
  }
};

// squeeze_excite(x, w1, b1, w2, b2, activation, gate, backend) -> y or None
template <bool kConvWeights>
PyObject* squeeze_excite_call(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 8 || !plain_call_context(args[7])) return none();
  const Tensor* x = plain_tensor(args[0]);
  SeWeights w;
  if (!plain_feature_map(x) || !w.parse(*x, args + 1, kConvWeights)) return none();
  const auto activation = choice(args[5], kActivationNames);
  const auto gate = choice(args[6], kGateNames);
  if (!activation || !gate) return none();
  return call_first_output(se_forward_op(), *x, w.w1, w.b1, w.w2, w.b2, *activation, *gate);
  END_HANDLE_TH_ERRORS
}

// se_residual(x, identity, w1, b1, w2, b2, activation, gate, activation_after, backend)
// -> y or None
template <bool kConvWeights>
PyObject* se_residual_call(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 10 || !plain_call_context(args[9])) return none();
  const Tensor* x = plain_tensor(args[0]);
  const Tensor* identity = plain_tensor(args[1]);
  SeWeights w;
  if (!plain_feature_map(x) || identity == nullptr || identity->sizes() != x->sizes() ||
      identity->device() != x->device() || identity->scalar_type() != x->scalar_type() ||
      !w.parse(*x, args + 2, kConvWeights)) {
    return none();
  }
  const auto activation = choice(args[6], kActivationNames);
  const auto gate = choice(args[7], kGateNames);
  const auto after = choice(args[8], kEpilogueNames);
  if (!activation || !gate || !after) return none();
  return call_first_output(se_residual_forward_op(), *x, *identity, w.w1, w.b1, w.w2, w.b2, *activation,
                           *gate, *after);
  END_HANDLE_TH_ERRORS
}

}  // namespace

PyMethodDef kPythonCalls[] = {
    {"gct", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(gct_call)), METH_FASTCALL,
     "gct(x, alpha, gamma, beta, epsilon, mode, after_relu, backend): y, or None where the full "
     "Python path must take the call (see csrc/python_calls.cpp)."},
    {"squeeze_excite", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(squeeze_excite_call<false>)),
     METH_FASTCALL,
     "squeeze_excite(x, w1, b1, w2, b2, activation, gate, backend): y, or None where the full "
     "Python path must take the call."},
    {"se_residual", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(se_residual_call<false>)),
     METH_FASTCALL,
     "se_residual(x, identity, w1, b1, w2, b2, activation, gate, activation_after, backend): y, "
     "or None where the full Python path must take the call."},
    // The SE drop-ins' entries (gct_fused.dropin): the same, with the weights of 1x1
    // convolution layers, (R, C, 1, 1) and (C, R, 1, 1), also taken. Not for the public
    // functional API, whose weights are (R, C) and (C, R) on every backend.
    {"squeeze_excite_conv", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(squeeze_excite_call<true>)),
     METH_FASTCALL, "squeeze_excite with 1x1 convolution weights also taken (the SE drop-ins)."},
    {"se_residual_conv", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(se_residual_call<true>)),
     METH_FASTCALL, "se_residual with 1x1 convolution weights also taken (the SE drop-ins)."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace gct_fused
