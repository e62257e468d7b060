// The Python functions of gct_fused._C (csrc/python_calls.cpp): direct entries for the
// common call of the forward ops, tried first by gct_fused.functional.
#pragma once

#include <Python.h>

namespace gct_fused {

// Terminated by a null entry, as PyModuleDef.m_methods expects.
extern PyMethodDef kPythonCalls[];

}  // namespace gct_fused
