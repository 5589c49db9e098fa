// Functions of indis._C that take or return torch tensors.
//
// This is the only translation unit that includes <torch/extension.h> (slow
// to compile); the at::Tensor <-> torch.Tensor conversion comes from
// libtorch_python, which CMakeLists.txt links. CUDA kernels are not called
// with tensors directly: wrappers here pass data_ptr()s and the stream handle
// to the plain-C functions in csrc/cuda/indis_cuda.h.
#include <torch/extension.h>

#include "indis_native.h"
#include "native_ops.h"

namespace {

// Build self-test: a tensor goes in (pybind11 caster from torch_python), an
// ATen op runs, a tensor comes back out.
at::Tensor tensor_abi_check(const at::Tensor& t) { return t.sum(); }

}  // namespace

namespace indis {

void register_torch_ops(pybind11::module_& m) {
  m.def("_tensor_abi_check", &tensor_abi_check, pybind11::arg("tensor"),
        "Build self-test: returns tensor.sum() computed through libtorch (proves that "
        "at::Tensor arguments/results work in this build).");
  register_fused_update(m);
  register_coeffs(m);
  register_sampler_loop(m);
#ifdef INDIS_WITH_TENSORRT
  register_tensorrt(m);
#endif
}

}  // namespace indis
