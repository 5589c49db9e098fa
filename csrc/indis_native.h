// Declarations shared by the pybind11 side of indis._C: the module definition (bindings.cpp) calls these
// to add the functions that take a Python callable or return Python objects. The fused updates are not
// here: they are PyTorch custom operators (torch.ops.indis.*, TORCH_LIBRARY in fused_update.cpp).
#pragma once

#include <pybind11/pybind11.h>

namespace indis {

// csrc/sampler_loop.cpp: _C.sample_loop and the NativeBackbone base class.
void register_sampler_loop(pybind11::module_& m);

#ifdef INDIS_WITH_TENSORRT
// csrc/trt/trt_backbone.cpp (only with TensorRT): _C.TensorRTBackbone.
void register_tensorrt(pybind11::module_& m);
#endif

}  // namespace indis
