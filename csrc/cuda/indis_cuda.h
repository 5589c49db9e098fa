// Plain-C interface to the CUDA half of indis._C.
//
// This header deliberately includes no CUDA and no torch headers so that the
// C++ bindings (compiled by the host compiler against a possibly CPU-only
// torch) can call into the .cu files (compiled by nvcc, without torch).
// Device pointers and CUDA streams cross this boundary as integers
// (`uintptr_t`): `tensor.data_ptr()` and the caller's current stream, which the C++ side reads from
// torch (indis::current_cuda_stream, csrc/native_ops.h).
#pragma once

#include <stdint.h>

#include "update_args.h"

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

// Fused multistep update (csrc/update_args.h) on stream `stream`, on device args->device.
// Asynchronous, allocates nothing, capturable in a CUDA graph. Returns a cudaError_t.
int indis_cuda_fused_update(const IndisUpdateArgs* args, uintptr_t stream);

#ifdef __cplusplus
}  // extern "C"
#endif
