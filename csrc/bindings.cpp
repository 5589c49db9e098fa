// indis._C: the pybind11 module definition and its build information.
//
// Kept light on purpose (no torch tensor headers here): the sampler loop (csrc/sampler_loop.cpp) and the
// TensorRT backbone (csrc/trt/) register their pybind11 functions through indis_native.h; the fused updates
// are PyTorch custom operators registered with TORCH_LIBRARY when the module loads (csrc/fused_update.cpp,
// torch.ops.indis.*).
#include <string>

#include <pybind11/pybind11.h>
#include <torch/version.h>  // compile-time torch version only (cheap header)

#include "indis_native.h"

#ifdef INDIS_WITH_OPENMP
#include <omp.h>
#endif
#ifdef INDIS_WITH_CUDA
#include "cuda/indis_cuda.h"
#endif

#ifndef INDIS_VERSION
#error "INDIS_VERSION must be defined by the build (CMakeLists.txt)"
#endif
#ifndef INDIS_BUILD_TYPE
#define INDIS_BUILD_TYPE "unknown"
#endif
#ifndef INDIS_CUDA_MODE
#define INDIS_CUDA_MODE "cmake"
#endif

namespace py = pybind11;

namespace {

#define INDIS_STR2(x) #x
#define INDIS_STR(x) INDIS_STR2(x)

std::string compiler_string() {
#if defined(__clang__)
  return std::string("Clang ") + __clang_version__;
#elif defined(__GNUC__)
  return std::string("GCC ") + __VERSION__;
#elif defined(_MSC_VER)
  return "MSVC " + std::to_string(_MSC_VER);
#else
  return "unknown";
#endif
}

py::dict build_info() {
  py::dict info;
#ifdef INDIS_WITH_CUDA
  const int v = indis_cuda_runtime_version_compiled();
  info["cuda"] = true;
  info["cuda_version"] = std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
  info["cuda_archs"] = std::string(INDIS_CUDA_ARCHS);
#else
  info["cuda"] = false;
  info["cuda_version"] = py::none();
  info["cuda_archs"] = py::none();
#endif
#ifdef INDIS_WITH_OPENMP
  info["openmp"] = true;
  info["openmp_threads"] = static_cast<int>(omp_get_max_threads());
#else
  info["openmp"] = false;
  info["openmp_threads"] = 1;
#endif
#ifdef INDIS_WITH_TENSORRT
  info["tensorrt"] = true;
#else
  info["tensorrt"] = false;
#endif
  info["torch_version"] = std::string(INDIS_STR(TORCH_VERSION_MAJOR) "." INDIS_STR(
      TORCH_VERSION_MINOR) "." INDIS_STR(TORCH_VERSION_PATCH));
  info["compiler"] = compiler_string();
  info["build_type"] = std::string(INDIS_BUILD_TYPE);
  info["cuda_mode"] = std::string(INDIS_CUDA_MODE);
  return info;
}

int cuda_device_count() noexcept {
#ifdef INDIS_WITH_CUDA
  return indis_cuda_device_count();
#else
  return 0;
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "INDIS native extension (CPU always; CUDA kernels when built with nvcc)";
  m.attr("__version__") = INDIS_VERSION;

  m.def("build_info", &build_info,
        "Dict describing how this module was built: cuda, cuda_version, cuda_archs, openmp, "
        "openmp_threads, tensorrt, torch_version (compiled against), compiler, build_type, "
        "cuda_mode (the INDIS_CUDA setting used by setup.py: '0', '1', 'auto'; 'cmake' if "
        "configured by hand).");
  m.def("cuda_device_count", &cuda_device_count,
        "Number of visible CUDA devices; 0 when built without CUDA or when no driver/device "
        "is available. Never raises.");
  indis::register_sampler_loop(m);
#ifdef INDIS_WITH_TENSORRT
  indis::register_tensorrt(m);
#endif
}
