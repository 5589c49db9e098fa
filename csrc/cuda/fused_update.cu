// Fused multistep update on CUDA (contract: csrc/update_args.h). No torch headers here.
//
// One pass over memory: each thread handles VEC consecutive elements with 128-bit loads/stores
// when every pointer is 16-byte aligned and the per-sample size is a multiple of VEC (so that a
// vector never straddles two samples); otherwise a scalar grid-stride path. Arithmetic in float
// (double for fp64 data). Launched on the caller's stream; no allocation, no synchronisation, so
// it can be captured in a CUDA graph.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdint.h>

#include "cuda/indis_cuda.h"

namespace {

template <typename A>
__device__ __forceinline__ A to_acc(float v) { return v; }
template <typename A>
__device__ __forceinline__ A to_acc(double v) { return static_cast<A>(v); }
template <typename A>
__device__ __forceinline__ A to_acc(__half v) { return __half2float(v); }
template <typename A>
__device__ __forceinline__ A to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(float v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <typename T>
__device__ __forceinline__ T from_acc(double v) { return static_cast<T>(v); }

template <typename T>
struct alignas(16) Vec {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};

template <typename T, typename C>
struct Params {
  T* out;
  const T* x;
  const T* pred;
  T* slot;
  const T* hist[INDIS_MAX_HIST];
  int m;
  int64_t inner, total;
  const C* u;
  int64_t u_sb;
  const C* w;
  int64_t w_sb, w_sj;
  const C* p;
  int64_t p_sb;
  const C* q;
  int64_t q_sb;
};

// Coefficients of sample b, converted to the accumulation type.
template <typename T, typename C, bool PRED>
struct Coefs {
  using A = typename IndisAcc<T>::type;
  A u, p, q, w[INDIS_MAX_HIST];
  __device__ __forceinline__ Coefs(const Params<T, C>& P, int64_t b) {
    u = static_cast<A>(P.u[b * P.u_sb]);
#pragma unroll
    for (int j = 0; j < INDIS_MAX_HIST; ++j) w[j] = j < P.m ? static_cast<A>(P.w[b * P.w_sb + j * P.w_sj]) : A(0);
    if (PRED) {
      p = static_cast<A>(P.p[b * P.p_sb]);
      q = static_cast<A>(P.q[b * P.q_sb]);
    } else {
      p = q = A(0);
    }
  }
};

template <typename T, typename C, bool PRED>
__global__ void fused_vec_kernel(Params<T, C> P) {
  using A = typename IndisAcc<T>::type;
  using V = Vec<T>;
  constexpr int VN = V::N;
  const int64_t nvec = P.total / VN;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < nvec; v += stride) {
    const int64_t e = v * VN;
    const int64_t b = e / P.inner;  // inner % VN == 0: the vector belongs to one sample
    const Coefs<T, C, PRED> c(P, b);
    const V xv = reinterpret_cast<const V*>(P.x)[v];
    A acc[VN];
    A s[VN];
#pragma unroll
    for (int k = 0; k < VN; ++k) acc[k] = c.u * to_acc<A>(xv.v[k]);
    int j0 = 0;
    if (PRED) {
      const V pv = reinterpret_cast<const V*>(P.pred)[v];
      V sv;
#pragma unroll
      for (int k = 0; k < VN; ++k) {
        s[k] = c.p * to_acc<A>(xv.v[k]) + c.q * to_acc<A>(pv.v[k]);
        sv.v[k] = from_acc<T>(s[k]);
        acc[k] += c.w[0] * s[k];
      }
      reinterpret_cast<V*>(P.slot)[v] = sv;
      j0 = 1;
    }
#pragma unroll
    for (int j = 0; j < INDIS_MAX_HIST; ++j) {
      if (j >= j0 && j < P.m) {
        const V hv = reinterpret_cast<const V*>(P.hist[j])[v];
#pragma unroll
        for (int k = 0; k < VN; ++k) acc[k] += c.w[j] * to_acc<A>(hv.v[k]);
      }
    }
    V ov;
#pragma unroll
    for (int k = 0; k < VN; ++k) ov.v[k] = from_acc<T>(acc[k]);
    reinterpret_cast<V*>(P.out)[v] = ov;
  }
}

template <typename T, typename C, bool PRED>
__global__ void fused_scalar_kernel(Params<T, C> P) {
  using A = typename IndisAcc<T>::type;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < P.total; e += stride) {
    const int64_t b = e / P.inner;
    const Coefs<T, C, PRED> c(P, b);
    const A xe = to_acc<A>(P.x[e]);
    A acc = c.u * xe;
    int j0 = 0;
    if (PRED) {
      const A s = c.p * xe + c.q * to_acc<A>(P.pred[e]);
      P.slot[e] = from_acc<T>(s);
      acc += c.w[0] * s;
      j0 = 1;
    }
#pragma unroll
    for (int j = 0; j < INDIS_MAX_HIST; ++j) {
      if (j >= j0 && j < P.m) acc += c.w[j] * to_acc<A>(P.hist[j][e]);
    }
    P.out[e] = from_acc<T>(acc);
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

int num_sms(int device) {
  // cudaDeviceGetAttribute is cheap (no synchronisation) and legal during stream capture.
  int sms = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || sms <= 0) {
    (void)cudaGetLastError();
    sms = 80;
  }
  return sms;
}

template <typename T, typename C, bool PRED>
int launch(const IndisUpdateArgs& a, cudaStream_t stream) {
  Params<T, C> P;
  P.out = static_cast<T*>(a.out);
  P.x = static_cast<const T*>(a.x);
  P.pred = static_cast<const T*>(a.pred);
  P.slot = static_cast<T*>(a.slot);
  for (int j = 0; j < INDIS_MAX_HIST; ++j) P.hist[j] = static_cast<const T*>(a.hist[j]);
  P.m = a.m;
  P.inner = a.inner;
  P.total = a.batch * a.inner;
  P.u = static_cast<const C*>(a.u);
  P.u_sb = a.u_sb;
  P.w = static_cast<const C*>(a.w);
  P.w_sb = a.w_sb;
  P.w_sj = a.w_sj;
  P.p = static_cast<const C*>(a.p);
  P.p_sb = a.p_sb;
  P.q = static_cast<const C*>(a.q);
  P.q_sb = a.q_sb;
  if (P.total <= 0) return static_cast<int>(cudaSuccess);

  constexpr int VN = Vec<T>::N;
  bool vec = (a.inner % VN) == 0 && aligned16(P.out) && aligned16(P.x);
  if (PRED) vec = vec && aligned16(P.pred) && aligned16(P.slot);
  for (int j = PRED ? 1 : 0; j < a.m; ++j) vec = vec && aligned16(P.hist[j]);

  constexpr int kThreads = 256;
  const int64_t work = vec ? P.total / VN : P.total;
  const int64_t max_blocks = static_cast<int64_t>(num_sms(a.device)) * 8;  // grid-stride beyond this
  int64_t blocks = (work + kThreads - 1) / kThreads;
  if (blocks > max_blocks) blocks = max_blocks;
  if (blocks < 1) blocks = 1;
  if (vec) {
    fused_vec_kernel<T, C, PRED><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(P);
  } else {
    fused_scalar_kernel<T, C, PRED><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(P);
  }
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int dispatch_coef(const IndisUpdateArgs& a, cudaStream_t s) {
  if (a.coef_dtype == INDIS_F64) {
    return a.has_pred ? launch<T, double, true>(a, s) : launch<T, double, false>(a, s);
  }
  return a.has_pred ? launch<T, float, true>(a, s) : launch<T, float, false>(a, s);
}

// Makes `device` current for the launch and restores the previous device afterwards.
struct DeviceGuard {
  int prev = -1;
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&prev) != cudaSuccess) {
      prev = -1;
      (void)cudaGetLastError();
    }
    if (prev != device) (void)cudaSetDevice(device);
  }
  ~DeviceGuard() {
    int cur = -1;
    if (prev >= 0 && cudaGetDevice(&cur) == cudaSuccess && cur != prev) (void)cudaSetDevice(prev);
  }
};

}  // namespace

extern "C" int indis_cuda_fused_update(const IndisUpdateArgs* args, uintptr_t stream) {
  if (args == nullptr || args->m < 1 || args->m > INDIS_MAX_HIST) return static_cast<int>(cudaErrorInvalidValue);
  DeviceGuard guard(args->device);
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  switch (args->dtype) {
    case INDIS_F32:
      return dispatch_coef<float>(*args, s);
    case INDIS_F64:
      return dispatch_coef<double>(*args, s);
    case INDIS_F16:
      return dispatch_coef<__half>(*args, s);
    case INDIS_BF16:
      return dispatch_coef<__nv_bfloat16>(*args, s);
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
}
