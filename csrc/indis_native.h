// Internal declarations shared by the C++ translation units of indis._C.
#pragma once

#include <pybind11/pybind11.h>

namespace indis {

// Defined in torch_ops.cpp: registers the functions that take/return
// at::Tensor (the only translation unit that pays for <torch/extension.h>).
void register_torch_ops(pybind11::module_& m);

}  // namespace indis
