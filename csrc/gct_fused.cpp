// The op schemas of gct_fused, in one place. Kernels register against these from
// cpu/*.cpp (CPU dispatch key) and cuda/*.cu (CUDA); the Python package registers
// fake (meta) implementations for them (gct_fused/_ops.py); autograd.cpp their autograd.
//
// Every forward returns its output and the per-(n, c) statistics its backward needs
// (float32, float64 for float64 input): GCT saves s = sum_l x^2 (or |x|, x), SE the
// pooled mean. Backward ops return every gradient; the caller drops what it does
// not need. se_residual computes act(se(x) + identity) in one pass; its backward
// takes the output y to recover act's mask.
#include <Python.h>
#include <torch/library.h>

#include "python_calls.h"

// Importing gct_fused._C runs the static registrations below; the module's functions are
// the direct entries of python_calls.cpp.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, gct_fused::kPythonCalls};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(gct_fused, m) {
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
