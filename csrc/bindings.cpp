// indis._C: module definition, build information and the thin wrappers
// around the plain-C CUDA entry points (csrc/cuda/indis_cuda.h).
//
// Kept light on purpose (no <torch/extension.h> here): functions on tensors
// live in their own translation units and register through indis_native.h.
#include <cstdint>
#include <stdexcept>
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

void cuda_fill_ptr(std::uintptr_t ptr, float value, std::int64_t n, std::uintptr_t stream) {
#ifdef INDIS_WITH_CUDA
  if (n > 0 && ptr == 0) {
    throw std::invalid_argument("cuda_fill_ptr: null device pointer");
  }
  const int err = indis_cuda_fill(ptr, value, n, stream);
  if (err != 0) {
    throw std::runtime_error(std::string("cuda_fill_ptr: CUDA error ") + std::to_string(err) + ": " +
                             indis_cuda_error_string(err));
  }
#else
  (void)ptr;
  (void)value;
  (void)n;
  (void)stream;
  throw std::runtime_error(
      "cuda_fill_ptr: indis._C was built without CUDA (rebuild with nvcc available, or INDIS_CUDA=1)");
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
  m.def("cuda_fill_ptr", &cuda_fill_ptr, py::arg("ptr"), py::arg("value"), py::arg("n"),
        py::arg("stream") = 0,
        "Fill n float32 values at device address `ptr` with `value`, asynchronously on the CUDA "
        "stream handle `stream` (an int, e.g. torch.cuda.current_stream().cuda_stream; 0 = "
        "default stream). Raises RuntimeError on CUDA errors or when built without CUDA.");

  indis::register_torch_ops(m);
}
