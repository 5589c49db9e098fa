// Plain-C interface to the CUDA half of indis._C.
//
// This header deliberately includes no CUDA and no torch headers so that the
// C++ bindings (compiled by the host compiler against a possibly CPU-only
// torch) can call into the .cu files (compiled by nvcc, without torch).
// Device pointers and CUDA streams cross this boundary as integers
// (`uintptr_t`), e.g. `tensor.data_ptr()` and `torch.cuda.current_stream().cuda_stream`.
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Number of visible CUDA devices; 0 on any error (no driver, no device, ...).
// Never aborts.
int indis_cuda_device_count(void);

// CUDA runtime version this code was compiled against (CUDART_VERSION,
// e.g. 13000 for 13.0).
int indis_cuda_runtime_version_compiled(void);

// Human-readable message for a cudaError_t value returned by the functions below.
const char* indis_cuda_error_string(int err);

// Fill `n` floats at device pointer `ptr` with `value` on stream `stream`
// (0 = legacy default stream). Asynchronous; returns a cudaError_t
// (0 = success) describing launch errors.
int indis_cuda_fill(uintptr_t ptr, float value, int64_t n, uintptr_t stream);

#ifdef __cplusplus
}  // extern "C"
#endif
