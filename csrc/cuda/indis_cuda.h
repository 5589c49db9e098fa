// Plain-C interface to the CUDA half of indis._C.
//
// This header deliberately includes no CUDA and no torch headers so that the
// C++ bindings (compiled by the host compiler against a possibly CPU-only
// torch) can call into the .cu files (compiled by nvcc, without torch).
// Device pointers and CUDA streams cross this boundary as integers
// (`uintptr_t`), e.g. `tensor.data_ptr()` and `torch.cuda.current_stream().cuda_stream`.
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

// Fill `n` floats at device pointer `ptr` with `value` on stream `stream`
// (0 = legacy default stream). Asynchronous; returns a cudaError_t
// (0 = success) describing launch errors.
int indis_cuda_fill(uintptr_t ptr, float value, int64_t n, uintptr_t stream);

// Fused multistep update (csrc/update_args.h) on stream `stream`, on device args->device.
// Asynchronous, allocates nothing, capturable in a CUDA graph. Returns a cudaError_t.
int indis_cuda_fused_update(const IndisUpdateArgs* args, uintptr_t stream);

// Per-sample solver coefficients of all N steps (csrc/coeffs.h, one thread per sample) on
// device `device`. is_double: T = double (else float). Row pointers with (sample, step) strides;
// dtau / gamma may be 0. Outputs contiguous: u, p, q, tc [B, N], w [B, N, M].
// cfg points to an indis::coeffs::ProcessCfg in host memory (passed by value to the kernel).
int indis_cuda_coeffs(const void* cfg, int solver, int order, int pred_kind, int is_double,
                      int64_t batch, int64_t n, int m, const void* ts, int64_t ts_sb, int64_t ts_si,
                      const void* dtau, int64_t dtau_sb, int64_t dtau_si, const void* gamma,
                      int64_t gamma_sb, int64_t gamma_si, void* u, void* w, void* p, void* q, void* tc,
                      int device, uintptr_t stream);

#ifdef __cplusplus
}  // extern "C"
#endif
