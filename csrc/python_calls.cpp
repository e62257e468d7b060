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
#include <vector>

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

// ---------------------------------------------------------------------------
// Module calls: gct_module(self, x) and se_module(self, x), what the __call__ of GCT,
// SqueezeExcite and the SE drop-ins try first. nn.Module.__call__ (_wrapped_call_impl,
// _call_impl) and forward's attribute lookups are Python frames that cost ~40 us per call with
// the caches cold (gct_fused/modules.py has the figures); these read the module's attributes
// from its __dict__ here and take the direct entries above. They answer None, for
// nn.Module.__call__ to take the call, unless the call would do nothing but forward:
//  * self is an instance of a registered class itself (not a subclass, which may override
//    forward, nor a parametrized module, whose class is a subclass), and `forward` is not
//    replaced on the instance;
//  * no forward (pre-)hook or backward (pre-)hook is registered on it or globally
//    (torch.nn.modules.module's _global_*_hooks), and Module.compile() has not set
//    _compiled_call_impl;
//  * its parameters and options are where the constructor put them (in _parameters and
//    __dict__), and the entry itself takes the call (see above).

PyTypeObject* g_gct_type = nullptr;
PyObject* g_module_namespace = nullptr;  // torch.nn.modules.module.__dict__: the global hooks

// Interned attribute names, made once by the first registration (init_module_calls).
struct Names {
  PyObject *forward_hooks, *forward_pre_hooks, *backward_hooks, *backward_pre_hooks;
  PyObject *global_forward_hooks, *global_forward_pre_hooks, *global_backward_hooks, *global_backward_pre_hooks;
  PyObject *compiled_call_impl, *forward, *parameters, *modules;
  PyObject *alpha, *gamma, *beta, *epsilon, *mode, *after_relu, *backend, *weight, *bias;
};
Names g_names;

// The global hook tables and the attribute names, once; false with a Python error set.
bool init_module_calls() {
  if (g_module_namespace != nullptr) return true;
  PyObject* module = PyImport_ImportModule("torch.nn.modules.module");
  if (module == nullptr) return false;
  g_module_namespace = PyModule_GetDict(module);  // borrowed from the module, kept alive below
  Py_INCREF(g_module_namespace);
  Py_DECREF(module);
  auto intern = [](const char* name) { return PyUnicode_InternFromString(name); };
  g_names = Names{intern("_forward_hooks"), intern("_forward_pre_hooks"), intern("_backward_hooks"),
                  intern("_backward_pre_hooks"), intern("_global_forward_hooks"),
                  intern("_global_forward_pre_hooks"), intern("_global_backward_hooks"),
                  intern("_global_backward_pre_hooks"), intern("_compiled_call_impl"), intern("forward"),
                  intern("_parameters"), intern("_modules"), intern("alpha"), intern("gamma"), intern("beta"),
                  intern("epsilon"), intern("mode"), intern("after_relu"), intern("backend"), intern("weight"),
                  intern("bias")};
  return true;
}

// Whether d[key] is an empty dict (hook tables are OrderedDicts).
bool empty_dict_at(PyObject* d, PyObject* key) {
  PyObject* v = PyDict_GetItem(d, key);
  return v != nullptr && PyDict_Check(v) && PyDict_GET_SIZE(v) == 0;
}

// The __dict__ of a module whose call would run nothing but forward (see above), or null.
// A new reference.
PyObject* plain_module_dict(PyObject* self, PyTypeObject* type) {
  if (type == nullptr || Py_TYPE(self) != type) return nullptr;
  PyObject* g = g_module_namespace;
  const Names& k = g_names;
  if (!empty_dict_at(g, k.global_forward_hooks) || !empty_dict_at(g, k.global_forward_pre_hooks) ||
      !empty_dict_at(g, k.global_backward_hooks) || !empty_dict_at(g, k.global_backward_pre_hooks)) {
    return nullptr;
  }
  PyObject* d = PyObject_GenericGetDict(self, nullptr);
  if (d == nullptr) {
    PyErr_Clear();
    return nullptr;
  }
  PyObject* compiled = PyDict_GetItem(d, k.compiled_call_impl);  // on the instance once compile() ran
  if (empty_dict_at(d, k.forward_hooks) && empty_dict_at(d, k.forward_pre_hooks) &&
      empty_dict_at(d, k.backward_hooks) && empty_dict_at(d, k.backward_pre_hooks) &&
      (compiled == nullptr || compiled == Py_None) && PyDict_GetItem(d, k.forward) == nullptr) {
    return d;
  }
  Py_DECREF(d);
  return nullptr;
}

// d[key] as a borrowed reference if d is a dict that holds it, else null.
PyObject* item(PyObject* d, PyObject* key) { return d != nullptr && PyDict_Check(d) ? PyDict_GetItem(d, key) : nullptr; }

// fn(args) for an entry's arguments read from a module's dicts: None if one is missing (null).
// They are held (strong references) for the call: the dicts only lend them, and the op runs
// without the GIL, while another thread could replace a parameter.
template <size_t K>
PyObject* call_with_held(PyObject* (*fn)(PyObject*, PyObject* const*, Py_ssize_t), PyObject* const (&args)[K]) {
  for (PyObject* a : args) {
    if (a == nullptr) return none();
  }
  for (PyObject* a : args) Py_INCREF(a);
  PyObject* y = fn(nullptr, args, K);
  for (PyObject* a : args) Py_DECREF(a);
  return y;
}

// gct_module(self, x) -> y or None
PyObject* gct_module_call(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2) return none();
  PyObject* d = plain_module_dict(args[0], g_gct_type);
  if (d == nullptr) return none();
  const Names& k = g_names;
  PyObject* params = item(d, k.parameters);
  PyObject* const call[8] = {args[1],           item(params, k.alpha), item(params, k.gamma),
                             item(params, k.beta), item(d, k.epsilon),    item(d, k.mode),
                             item(d, k.after_relu), item(d, k.backend)};
  PyObject* y = call_with_held(gct_call, call);
  Py_DECREF(d);
  return y;
}

// The _parameters dict of the submodule at `path` below the module whose __dict__ is d, or null.
PyObject* parameters_at(PyObject* d, const std::vector<PyObject*>& path) {
  PyObject* dict = d;
  Py_INCREF(dict);
  for (PyObject* name : path) {
    PyObject* module = item(item(dict, g_names.modules), name);
    Py_DECREF(dict);
    if (module == nullptr) return nullptr;
    dict = PyObject_GenericGetDict(module, nullptr);  // kept alive by its parent module
    if (dict == nullptr) {
      PyErr_Clear();
      return nullptr;
    }
  }
  PyObject* params = item(dict, g_names.parameters);  // kept alive by its module
  Py_DECREF(dict);
  return params;
}

// The SE classes whose calls se_module takes (gct_fused.SqueezeExcite and the SE drop-ins of
// gct_fused.dropin): where each finds its two layers (a path of submodule names, e.g.
// ("fc", "0")), which attributes hold the op's activation and gate names, whether its layers
// may be 1x1 convolutions (their (out, in, 1, 1) weights taken as matrices, as
// squeeze_excite_conv), and whether its forward treats a 3-D input as one unbatched (C, H, W)
// map (torchvision's SqueezeExcitation), which the entry then leaves to forward.
struct SeClass {
  PyTypeObject* type;
  std::vector<PyObject*> reduce_path, expand_path;
  PyObject *activation, *gate;
  bool conv_weights, unbatched_3d;
};
std::vector<SeClass> g_se_classes;

// se_module(self, x) -> y or None: module(x) for a registered SE class, the layers'
// Parameters read without calling the layers, as the classes' forwards do.
PyObject* se_module_call(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2) return none();
  const SeClass* cls = nullptr;
  for (const auto& c : g_se_classes) {
    if (Py_TYPE(args[0]) == c.type) cls = &c;
  }
  if (cls == nullptr) return none();
  if (cls->unbatched_3d) {
    const Tensor* x = plain_tensor(args[1]);
    if (x == nullptr || x->dim() == 3) return none();
  }
  PyObject* d = plain_module_dict(args[0], cls->type);
  if (d == nullptr) return none();
  PyObject* p1 = parameters_at(d, cls->reduce_path);
  PyObject* p2 = parameters_at(d, cls->expand_path);
  const Names& k = g_names;
  PyObject* const call[8] = {args[1], item(p1, k.weight), item(p1, k.bias), item(p2, k.weight), item(p2, k.bias),
                             item(d, cls->activation), item(d, cls->gate), item(d, k.backend)};
  PyObject* y = call_with_held(cls->conv_weights ? squeeze_excite_call<true> : squeeze_excite_call<false>, call);
  Py_DECREF(d);
  return y;
}

// register_se_module(cls, reduce_path, expand_path, activation_attr, gate_attr, conv_weights,
// unbatched_3d): an SE class for se_module (gct_fused.modules and gct_fused.dropin register
// theirs when imported); the paths are tuples of str.
PyObject* register_se_module(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  auto interned = [](PyObject* name) {
    Py_INCREF(name);
    PyUnicode_InternInPlace(&name);
    return name;
  };
  auto path_of = [&](PyObject* t, std::vector<PyObject*>& out) {
    if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) == 0) return false;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(t); ++i) {
      PyObject* name = PyTuple_GET_ITEM(t, i);
      if (!PyUnicode_CheckExact(name)) return false;
      out.push_back(interned(name));
    }
    return true;
  };
  SeClass cls{nullptr, {}, {}, nullptr, nullptr, false, false};
  if (nargs != 7 || !PyType_Check(args[0]) || !path_of(args[1], cls.reduce_path) ||
      !path_of(args[2], cls.expand_path) || !PyUnicode_CheckExact(args[3]) || !PyUnicode_CheckExact(args[4]) ||
      !PyBool_Check(args[5]) || !PyBool_Check(args[6])) {
    PyErr_SetString(PyExc_TypeError,
                    "register_se_module(cls, reduce_path, expand_path, activation_attr, gate_attr, conv_weights, "
                    "unbatched_3d) takes a class, two tuples of str, two str and two bools");
    return nullptr;
  }
  if (!init_module_calls()) return nullptr;
  Py_INCREF(args[0]);
  cls.type = reinterpret_cast<PyTypeObject*>(args[0]);
  cls.activation = interned(args[3]);
  cls.gate = interned(args[4]);
  cls.conv_weights = args[5] == Py_True;
  cls.unbatched_3d = args[6] == Py_True;
  g_se_classes.push_back(std::move(cls));
  Py_RETURN_NONE;
}

// register_gct_module(gct_class): the class whose instances gct_module takes
// (gct_fused.modules registers GCT when it is imported).
PyObject* register_gct_module(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 1 || !PyType_Check(args[0])) {
    PyErr_SetString(PyExc_TypeError, "register_gct_module(gct_class) takes a class");
    return nullptr;
  }
  if (!init_module_calls()) return nullptr;
  Py_INCREF(args[0]);
  Py_XDECREF(reinterpret_cast<PyObject*>(g_gct_type));
  g_gct_type = reinterpret_cast<PyTypeObject*>(args[0]);
  Py_RETURN_NONE;
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
    {"gct_module", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(gct_module_call)), METH_FASTCALL,
     "gct_module(module, x): module(x) for a gct_fused.GCT whose call runs nothing but forward, "
     "or None where nn.Module.__call__ must take the call (see csrc/python_calls.cpp)."},
    {"se_module", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(se_module_call)), METH_FASTCALL,
     "se_module(module, x): module(x) for a registered SE class (gct_fused.SqueezeExcite, the SE "
     "drop-ins) whose call runs nothing but forward, or None where nn.Module.__call__ must take the call."},
    {"register_gct_module", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(register_gct_module)),
     METH_FASTCALL, "register_gct_module(gct_class): the class gct_module takes."},
    {"register_se_module", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(register_se_module)),
     METH_FASTCALL,
     "register_se_module(cls, reduce_path, expand_path, activation_attr, gate_attr, conv_weights, "
     "unbatched_3d): an SE class for se_module."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace gct_fused
