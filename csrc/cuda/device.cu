// Device queries exposed to the bindings through csrc/cuda/indis_cuda.h.
// No torch headers here (see CMakeLists.txt).
#include <cuda_runtime.h>

#include "cuda/indis_cuda.h"

extern "C" int indis_cuda_device_count(void) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear the (non-sticky) error state
    return 0;
  }
  return count < 0 ? 0 : count;
}

extern "C" int indis_cuda_runtime_version_compiled(void) { return CUDART_VERSION; }

extern "C" const char* indis_cuda_error_string(int err) {
  return cudaGetErrorString(static_cast<cudaError_t>(err));
}
