// Plain-C description of one fused multistep update, shared by the CPU kernel (csrc/fused_update.cpp)
// and the CUDA kernel (csrc/cuda/fused_update.cu). No torch and no CUDA headers.
//
//   plain variant (has_pred == 0), m history entries hist[0..m-1] (newest first):
//       out = u[b] * x + sum_{j<m} w[b, j] * hist[j]
//   pred variant (has_pred == 1): the newest entry is formed in the same pass,
//       slot = p[b] * x + q[b] * pred                       (written: the ring slot)
//       out  = u[b] * x + w[b, 0] * slot + sum_{1<=j<m} w[b, j] * hist[j]   (hist[0] unused)
//
// All data tensors are contiguous [batch, inner] of one dtype; out may be x itself (in-place state
// update), no other overlap is allowed. Coefficients are fp32 or fp64 with element strides, so
// views of the per-step tables [B, N] / [B, N, M] are passed without copies. Accumulation is fp32
// (fp64 for fp64 data). Reads: m + 1 (plain) or m + 1 (pred: x, pred and m - 1 history entries);
// writes: 1 (plain) or 2 (pred).
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { INDIS_F32 = 0, INDIS_F64 = 1, INDIS_F16 = 2, INDIS_BF16 = 3 };
#define INDIS_MAX_HIST 4

typedef struct IndisUpdateArgs {
  void* out;
  const void* x;
  const void* pred;  // pred variant only
  void* slot;        // pred variant only
  const void* hist[INDIS_MAX_HIST];
  int m;         // 1..INDIS_MAX_HIST
  int has_pred;  // 0 / 1
  int dtype;     // INDIS_F32 / F64 / F16 / BF16 (data)
  int coef_dtype;  // INDIS_F32 / INDIS_F64
  int device;      // CUDA device index (CUDA only)
  int64_t batch, inner;
  const void* u;
  int64_t u_sb;
  const void* w;
  int64_t w_sb, w_sj;
  const void* p;
  int64_t p_sb;
  const void* q;
  int64_t q_sb;
} IndisUpdateArgs;

#ifdef __cplusplus
}  // extern "C"
#endif

#ifdef __cplusplus
// The accumulation type of the contract: fp64 for fp64 data, fp32 for every other data type.
template <typename T>
struct IndisAcc {
  using type = float;
};
template <>
struct IndisAcc<double> {
  using type = double;
};
#endif
