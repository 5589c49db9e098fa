// Per-sample solver coefficients on the device (one thread per sample, formulas in csrc/coeffs.h),
// so that a sampler captured in a CUDA graph recomputes them from the (static) timestep buffers at
// every replay without a host round trip. No torch headers here.
#include <cuda_runtime.h>

#include <stdint.h>

#include "coeffs.h"
#include "cuda/indis_cuda.h"

namespace {

using indis::coeffs::ProcessCfg;
using indis::coeffs::Row;

template <typename T>
__global__ void coeffs_kernel(ProcessCfg cfg, int solver, int order, int pred_kind, int64_t batch, int64_t n,
                              int m, const T* ts, int64_t ts_sb, int64_t ts_si, const T* dtau, int64_t dtau_sb,
                              int64_t dtau_si, const T* gamma, int64_t gamma_sb, int64_t gamma_si, T* u, T* w,
                              T* p, T* q, T* tc) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  Row<T> rt{ts + b * ts_sb, ts_si};
  Row<T> rd{dtau == nullptr ? nullptr : dtau + b * dtau_sb, dtau_si};
  Row<T> rg{gamma == nullptr ? nullptr : gamma + b * gamma_sb, gamma_si};
  indis::coeffs::sample_coeffs<T>(cfg, solver, order, pred_kind, rt, rd, rg, n, m, u + b * n, w + b * n * m,
                                  p == nullptr ? nullptr : p + b * n, q == nullptr ? nullptr : q + b * n,
                                  tc == nullptr ? nullptr : tc + b * n);
}

}  // namespace

extern "C" int indis_cuda_coeffs(const void* cfg, int solver, int order, int pred_kind, int is_double,
                                 int64_t batch, int64_t n, int m, const void* ts, int64_t ts_sb, int64_t ts_si,
                                 const void* dtau, int64_t dtau_sb, int64_t dtau_si, const void* gamma,
                                 int64_t gamma_sb, int64_t gamma_si, void* u, void* w, void* p, void* q, void* tc,
                                 int device, uintptr_t stream) {
  if (cfg == nullptr || batch < 0 || n < 1 || m < 1) return static_cast<int>(cudaErrorInvalidValue);
  if (batch == 0) return static_cast<int>(cudaSuccess);
  int prev = -1;
  if (cudaGetDevice(&prev) != cudaSuccess) {
    prev = -1;
    (void)cudaGetLastError();
  }
  if (prev != device) (void)cudaSetDevice(device);
  const ProcessCfg c = *static_cast<const ProcessCfg*>(cfg);
  constexpr int kThreads = 128;
  const unsigned blocks = static_cast<unsigned>((batch + kThreads - 1) / kThreads);
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  if (is_double) {
    coeffs_kernel<double><<<blocks, kThreads, 0, s>>>(
        c, solver, order, pred_kind, batch, n, m, static_cast<const double*>(ts), ts_sb, ts_si,
        static_cast<const double*>(dtau), dtau_sb, dtau_si, static_cast<const double*>(gamma), gamma_sb, gamma_si,
        static_cast<double*>(u), static_cast<double*>(w), static_cast<double*>(p), static_cast<double*>(q),
        static_cast<double*>(tc));
  } else {
    coeffs_kernel<float><<<blocks, kThreads, 0, s>>>(
        c, solver, order, pred_kind, batch, n, m, static_cast<const float*>(ts), ts_sb, ts_si,
        static_cast<const float*>(dtau), dtau_sb, dtau_si, static_cast<const float*>(gamma), gamma_sb, gamma_si,
        static_cast<float*>(u), static_cast<float*>(w), static_cast<float*>(p), static_cast<float*>(q),
        static_cast<float*>(tc));
  }
  const int err = static_cast<int>(cudaGetLastError());
  if (prev >= 0 && prev != device) (void)cudaSetDevice(prev);
  return err;
}
