// A minimal real kernel, referenced from the bindings (_C.cuda_fill_ptr), so
// that a build proves device code compiles and links for the configured
// CMAKE_CUDA_ARCHITECTURES. No torch headers here (see CMakeLists.txt).
#include <cuda_runtime.h>

#include "cuda/indis_cuda.h"

namespace {

__global__ void fill_kernel(float* __restrict__ p, float v, int64_t n) {
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    p[i] = v;
  }
}

}  // namespace

extern "C" int indis_cuda_fill(uintptr_t ptr, float value, int64_t n, uintptr_t stream) {
  if (n <= 0) return static_cast<int>(cudaSuccess);
  constexpr int kThreads = 256;
  const int64_t blocks_needed = (n + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(blocks_needed < 65535 ? blocks_needed : 65535);
  fill_kernel<<<blocks, kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
      reinterpret_cast<float*>(ptr), value, n);
  return static_cast<int>(cudaGetLastError());
}
