// Fused multistep update on the CPU, and the PyTorch custom operators torch.ops.indis.fused_update /
// torch.ops.indis.fused_update_x0 (CPU, CUDA, Meta and Autograd kernels; the CUDA kernel itself is
// csrc/cuda/fused_update.cu):
//
//   fused_update(out, x, hist, u, w):         out = u*x + sum_j w[:, j] * hist[j]
//   fused_update_x0(out, x, pred, slot, hist, p, q, u, w):
//       slot = p*x + q*pred;  out = u*x + w[:, 0]*slot + sum_{j>=1} w[:, j] * hist[j-1]
//
// One pass over memory; out may be x (in-place). See csrc/update_args.h for the contract. The operators are
// registered the way PyTorch documents custom C++ operators (TORCH_LIBRARY, "Custom C++ and CUDA Operators"):
// the schema marks the written tensors (Tensor(a!)), the Meta kernel checks metadata only (FakeTensor,
// torch.compile), the Autograd kernel refuses tensors that require grad, the ADInplaceOrView kernel bumps
// the version counters of the written tensors, and the Negative / Conjugate kernels refuse written sign views. On CUDA the kernels run on the caller's current stream.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <type_traits>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "native_ops.h"

#ifdef INDIS_WITH_CUDA
#include "cuda/indis_cuda.h"
#endif

namespace indis {
namespace {

// Element loads/stores. bfloat16 via bit operations (round to nearest even, NaN kept quiet), which
// the compiler vectorises; on x86-64 with AVX2 bfloat16 goes to bf16_row_avx2 and float16 to an F16C
// kernel (half_row_f16c), both selected at run time.
template <typename A, typename T>
inline A ld(T v) {
  return static_cast<A>(v);
}
template <>
inline float ld<float, c10::BFloat16>(c10::BFloat16 v) {
  const uint32_t b = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}
template <typename T, typename A>
inline T st(A v) {
  return static_cast<T>(v);
}
template <>
inline c10::BFloat16 st<c10::BFloat16, float>(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  r = (f != f) ? 0x7FC0u : r;
  return c10::BFloat16(static_cast<uint16_t>(r), c10::BFloat16::from_bits());
}

// One contiguous run of n elements of one sample. M and the variant are compile-time so that the
// loop is a straight-line SIMD body; `#pragma omp simd` asserts the absence of loop-carried
// dependencies (out may be x: each element is read before it is written, at the same index).
template <typename T, typename A, int M, bool PRED>
void row_kernel(T* out, const T* x, const T* pred, T* slot, const T* h1, const T* h2, const T* h3, const T* h0,
                int64_t n, A u, const A* w, A p, A q) {
  const A w0 = w[0];
  const A w1 = M > 1 ? w[1] : A(0);
  const A w2 = M > 2 ? w[2] : A(0);
  const A w3 = M > 3 ? w[3] : A(0);
  if constexpr (PRED) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const A xi = ld<A>(x[i]);
      const A s = p * xi + q * ld<A>(pred[i]);
      slot[i] = st<T>(s);
      A acc = u * xi + w0 * s;
      if constexpr (M > 1) acc += w1 * ld<A>(h1[i]);
      if constexpr (M > 2) acc += w2 * ld<A>(h2[i]);
      if constexpr (M > 3) acc += w3 * ld<A>(h3[i]);
      out[i] = st<T>(acc);
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      A acc = u * ld<A>(x[i]) + w0 * ld<A>(h0[i]);
      if constexpr (M > 1) acc += w1 * ld<A>(h1[i]);
      if constexpr (M > 2) acc += w2 * ld<A>(h2[i]);
      if constexpr (M > 3) acc += w3 * ld<A>(h3[i]);
      out[i] = st<T>(acc);
    }
  }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define INDIS_HAVE_F16C_PATH 1
// float16 rows with hardware conversions (8 lanes, AVX2 + FMA + F16C), selected at run time.
__attribute__((target("avx2,fma,f16c"))) void half_row_f16c(uint16_t* out, const uint16_t* x, const uint16_t* pred,
                                                             uint16_t* slot, const uint16_t* const* h, int m,
                                                             bool has_pred, int64_t n, float u, const float* w,
                                                             float p, float q) {
  const int j0 = has_pred ? 1 : 0;
  const __m256 vu = _mm256_set1_ps(u), vp = _mm256_set1_ps(p), vq = _mm256_set1_ps(q);
  __m256 vw[INDIS_MAX_HIST];
  for (int j = 0; j < INDIS_MAX_HIST; ++j) vw[j] = _mm256_set1_ps(j < m ? w[j] : 0.f);
#define load8(ptr) _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ptr)))
#define store8(ptr, v) \
  _mm_storeu_si128(reinterpret_cast<__m128i*>(ptr), _mm256_cvtps_ph((v), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 xv = load8(x + i);
    __m256 acc = _mm256_mul_ps(vu, xv);
    if (has_pred) {
      const __m256 s = _mm256_fmadd_ps(vp, xv, _mm256_mul_ps(vq, load8(pred + i)));
      store8(slot + i, s);
      acc = _mm256_fmadd_ps(vw[0], s, acc);
    }
    for (int j = j0; j < m; ++j) acc = _mm256_fmadd_ps(vw[j], load8(h[j] + i), acc);
    store8(out + i, acc);
  }
  for (; i < n; ++i) {
    const float xi = _cvtsh_ss(x[i]);
    float acc = u * xi;
    if (has_pred) {
      const float s = p * xi + q * _cvtsh_ss(pred[i]);
      slot[i] = _cvtss_sh(s, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      acc += w[0] * s;
    }
    for (int j = j0; j < m; ++j) acc += w[j] * _cvtsh_ss(h[j][i]);
    out[i] = _cvtss_sh(acc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
#undef load8
#undef store8
}

// bfloat16 rows with AVX2 bit conversions (8 lanes), selected at run time. Deliberately no "fma" in the
// target: GCC lowers _mm256_mul_ps/_mm256_add_ps to generic vector arithmetic and would contract them,
// so the products are rounded separately exactly as in row_kernel (bit-identical results). The
// fp32 -> bf16 rounding is st<BFloat16>: (u + 0x7FFF + ((u >> 16) & 1)) >> 16, NaN -> 0x7FC0.
__attribute__((target("avx2"))) inline __m256 bf16_load8(const uint16_t* ptr) {
  const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ptr)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}
// 8 x bf16 bits in the low halves of the 32-bit lanes.
__attribute__((target("avx2"))) inline __m256i bf16_round8(__m256 f) {
  const __m256i b = _mm256_castps_si256(f);
  __m256i r = _mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7FFF)),
                               _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1)));
  r = _mm256_srli_epi32(r, 16);
  return _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7FC0), _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q)));
}
__attribute__((target("avx2"))) inline void bf16_store16(uint16_t* ptr, __m256 lo, __m256 hi) {
  const __m256i pk = _mm256_permute4x64_epi64(_mm256_packus_epi32(bf16_round8(lo), bf16_round8(hi)), 0xD8);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(ptr), pk);
}
inline float bf16_lds(uint16_t v) {
  const uint32_t b = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}
inline uint16_t bf16_sts(float f) { return st<c10::BFloat16, float>(f).x; }

__attribute__((target("avx2"))) void bf16_row_avx2(uint16_t* out, const uint16_t* x, const uint16_t* pred,
                                                   uint16_t* slot, const uint16_t* const* h, int m, bool has_pred,
                                                   int64_t n, float u, const float* w, float p, float q) {
  const int j0 = has_pred ? 1 : 0;
  const __m256 vu = _mm256_set1_ps(u), vp = _mm256_set1_ps(p), vq = _mm256_set1_ps(q);
  __m256 vw[INDIS_MAX_HIST];
  for (int j = 0; j < INDIS_MAX_HIST; ++j) vw[j] = _mm256_set1_ps(j < m ? w[j] : 0.f);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 xa = bf16_load8(x + i), xb = bf16_load8(x + i + 8);
    __m256 acca = _mm256_mul_ps(vu, xa), accb = _mm256_mul_ps(vu, xb);
    if (has_pred) {
      const __m256 sa = _mm256_add_ps(_mm256_mul_ps(vp, xa), _mm256_mul_ps(vq, bf16_load8(pred + i)));
      const __m256 sb = _mm256_add_ps(_mm256_mul_ps(vp, xb), _mm256_mul_ps(vq, bf16_load8(pred + i + 8)));
      bf16_store16(slot + i, sa, sb);
      acca = _mm256_add_ps(acca, _mm256_mul_ps(vw[0], sa));
      accb = _mm256_add_ps(accb, _mm256_mul_ps(vw[0], sb));
    }
    for (int j = j0; j < m; ++j) {
      acca = _mm256_add_ps(acca, _mm256_mul_ps(vw[j], bf16_load8(h[j] + i)));
      accb = _mm256_add_ps(accb, _mm256_mul_ps(vw[j], bf16_load8(h[j] + i + 8)));
    }
    bf16_store16(out + i, acca, accb);
  }
  for (; i < n; ++i) {
    const float xi = bf16_lds(x[i]);
    float acc = u * xi;
    if (has_pred) {
      const float s = p * xi + q * bf16_lds(pred[i]);
      slot[i] = bf16_sts(s);
      acc = acc + w[0] * s;
    }
    for (int j = j0; j < m; ++j) acc = acc + w[j] * bf16_lds(h[j][i]);
    out[i] = bf16_sts(acc);
  }
}

bool cpu_has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2");
  return ok;
}

bool cpu_has_f16c() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         __builtin_cpu_supports("f16c");
  return ok;
}
#endif

template <typename T, typename C, bool PRED>
void cpu_update(const IndisUpdateArgs& a) {
  using A = typename IndisAcc<T>::type;
  const int64_t inner = a.inner;
  const int64_t total = a.batch * inner;
  if (total <= 0) return;
  T* out = static_cast<T*>(a.out);
  const T* x = static_cast<const T*>(a.x);
  const T* pred = static_cast<const T*>(a.pred);
  T* slot = static_cast<T*>(a.slot);
  const T* h[INDIS_MAX_HIST];
  for (int j = 0; j < INDIS_MAX_HIST; ++j) h[j] = static_cast<const T*>(a.hist[j]);
  const C* u = static_cast<const C*>(a.u);
  const C* w = static_cast<const C*>(a.w);
  const C* p = static_cast<const C*>(a.p);
  const C* q = static_cast<const C*>(a.q);
  const int m = a.m;
  // ~64 KiB of fp32 state per task: small enough to spread a CIFAR batch over the cores.
  constexpr int64_t kGrain = 16384;
  at::parallel_for(0, total, kGrain, [&](int64_t begin, int64_t end) {
    int64_t b = begin / inner;
    int64_t e = begin;
    while (e < end) {
      const int64_t row_end = std::min(end, (b + 1) * inner);
      const int64_t n = row_end - e;
      const A ub = static_cast<A>(u[b * a.u_sb]);
      A wb[INDIS_MAX_HIST] = {A(0), A(0), A(0), A(0)};
      for (int j = 0; j < m; ++j) wb[j] = static_cast<A>(w[b * a.w_sb + j * a.w_sj]);
      const A pb = PRED ? static_cast<A>(p[b * a.p_sb]) : A(0);
      const A qb = PRED ? static_cast<A>(q[b * a.q_sb]) : A(0);
      auto at_e = [e](const T* ptr) { return ptr == nullptr ? nullptr : ptr + e; };
      T* o = out + e;
      const T* xe = x + e;
      const T* pe = PRED ? pred + e : nullptr;
      T* se = PRED ? slot + e : nullptr;
      const T *h0 = at_e(h[0]), *h1 = at_e(h[1]), *h2 = at_e(h[2]), *h3 = at_e(h[3]);
#ifdef INDIS_HAVE_F16C_PATH
      if constexpr (std::is_same_v<T, c10::Half>) {
        if (cpu_has_f16c()) {
          const uint16_t* hh[INDIS_MAX_HIST] = {reinterpret_cast<const uint16_t*>(h0), reinterpret_cast<const uint16_t*>(h1),
                                                reinterpret_cast<const uint16_t*>(h2), reinterpret_cast<const uint16_t*>(h3)};
          half_row_f16c(reinterpret_cast<uint16_t*>(o), reinterpret_cast<const uint16_t*>(xe),
                        reinterpret_cast<const uint16_t*>(pe), reinterpret_cast<uint16_t*>(se), hh, m, PRED, n, ub, wb,
                        pb, qb);
          e = row_end;
          ++b;
          continue;
        }
      }
      if constexpr (std::is_same_v<T, c10::BFloat16> && std::is_same_v<A, float>) {
        if (cpu_has_avx2()) {
          const uint16_t* hh[INDIS_MAX_HIST] = {reinterpret_cast<const uint16_t*>(h0), reinterpret_cast<const uint16_t*>(h1),
                                                reinterpret_cast<const uint16_t*>(h2), reinterpret_cast<const uint16_t*>(h3)};
          bf16_row_avx2(reinterpret_cast<uint16_t*>(o), reinterpret_cast<const uint16_t*>(xe),
                        reinterpret_cast<const uint16_t*>(pe), reinterpret_cast<uint16_t*>(se), hh, m, PRED, n, ub, wb,
                        pb, qb);
          e = row_end;
          ++b;
          continue;
        }
      }
#endif
      switch (m) {
        case 1:
          row_kernel<T, A, 1, PRED>(o, xe, pe, se, h1, h2, h3, h0, n, ub, wb, pb, qb);
          break;
        case 2:
          row_kernel<T, A, 2, PRED>(o, xe, pe, se, h1, h2, h3, h0, n, ub, wb, pb, qb);
          break;
        case 3:
          row_kernel<T, A, 3, PRED>(o, xe, pe, se, h1, h2, h3, h0, n, ub, wb, pb, qb);
          break;
        default:
          row_kernel<T, A, 4, PRED>(o, xe, pe, se, h1, h2, h3, h0, n, ub, wb, pb, qb);
          break;
      }
      e = row_end;
      ++b;
    }
  });
}

template <typename T>
void cpu_dispatch_coef(const IndisUpdateArgs& a) {
  if (a.coef_dtype == INDIS_F64) {
    a.has_pred ? cpu_update<T, double, true>(a) : cpu_update<T, double, false>(a);
  } else {
    a.has_pred ? cpu_update<T, float, true>(a) : cpu_update<T, float, false>(a);
  }
}

// ---- checks ----------------------------------------------------------------------------------
// The checks read metadata only (symbolic sizes under torch.compile's dynamic shapes), so the Meta kernel runs
// them too; `real` adds the ones that read memory (finite coefficients, overlapping buffers).
void check_like(const at::Tensor& t, const std::string& name, const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.defined(), name, " is None / undefined");
  TORCH_CHECK_VALUE(t.device() == x.device(), name, " is on ", t.device(), " but x is on ", x.device(),
                    "; all tensors must be on one device");
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), name, " has dtype ", t.scalar_type(), " but x has dtype ",
                   x.scalar_type(), "; state and history must share one dtype (float32, float64, float16 or bfloat16)");
  TORCH_CHECK_VALUE(t.sym_sizes() == x.sym_sizes(), name, " has shape ", t.sym_sizes(), " but x has shape ",
                    x.sym_sizes());
  TORCH_CHECK_VALUE(t.is_contiguous(), name, " must be contiguous (call .contiguous() first)");
}

void check_coef(const at::Tensor& c, const char* name, const at::Tensor& x, int64_t cols, at::ScalarType coef_type,
                bool check_finite) {
  TORCH_CHECK_VALUE(c.defined(), name, " is None / undefined");
  TORCH_CHECK_VALUE(c.device() == x.device(), name, " is on ", c.device(), " but x is on ", x.device());
  TORCH_CHECK_TYPE(c.scalar_type() == at::kFloat || c.scalar_type() == at::kDouble, name,
                   " must be float32 or float64, got ", c.scalar_type());
  TORCH_CHECK_TYPE(c.scalar_type() == coef_type, name, " has dtype ", c.scalar_type(), " but u has dtype ", coef_type,
                   "; coefficients must share one dtype");
  const c10::SymInt batch = x.sym_size(0);
  if (cols < 0) {
    TORCH_CHECK_VALUE(c.dim() == 1 && c.sym_size(0) == batch, name, " must have shape [", batch,
                      "] (one coefficient per sample), got ", c.sym_sizes());
  } else {
    TORCH_CHECK_VALUE(c.dim() == 2 && c.sym_size(0) == batch && c.sym_size(1) == cols, name, " must have shape [",
                      batch, ", ", cols, "] (one column per history entry), got ", c.sym_sizes());
  }
  if (check_finite && c.numel() > 0) {
    TORCH_CHECK_VALUE(at::isfinite(c).all().item<bool>(), name,
                      " contains NaN or inf (check the timesteps / gamma the coefficients were computed from)");
  }
}

// A tensor the kernel writes must hold its values in plain memory: a negative-bit or conjugate view would
// be written without its sign. Inputs that are only read are materialised instead (resolved()).
void check_writable(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(!(t.is_neg() || t.is_conj()), name,
                    " is a negative-bit or conjugate view (e.g. a complex tensor's .conj().imag): its memory does not "
                    "hold the values it reads as, and the kernel writes that memory; pass a plain tensor (",
                    name, ".resolve_neg())");
}

void check_state(const at::Tensor& out, const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.defined(), "x is None / undefined");
  data_dtype_code(x, "x");
  TORCH_CHECK_VALUE(x.dim() >= 1, "x must have shape [B, ...] (at least one dimension), got a scalar");
  TORCH_CHECK_VALUE(x.device().is_cpu() || x.device().is_cuda() || x.device().is_meta(), "x is on ", x.device(),
                    "; only CPU and CUDA are supported");
  TORCH_CHECK_VALUE(x.is_contiguous(), "x must be contiguous (call .contiguous() first)");
  check_like(out, "out", x);
  check_writable(out, "out");
}

void check_no_grad(std::initializer_list<const at::Tensor*> ts, at::TensorList hist) {
  auto bad = [](const at::Tensor& t) { return t.defined() && t.requires_grad(); };
  bool any = false;
  for (const at::Tensor* t : ts) any = any || bad(*t);
  for (const at::Tensor& t : hist) any = any || bad(t);
  TORCH_CHECK_VALUE(!(any && at::GradMode::is_enabled()),
                    "the fused update is not differentiable (it writes through raw pointers); call it under "
                    "torch.no_grad() or use indis.solvers.sample for training");
}

void launch(const IndisUpdateArgs& a, const at::Tensor& x) {
  if (x.is_cuda()) {
#ifdef INDIS_WITH_CUDA
    run_update(a, true, current_cuda_stream(x.device()));
#else
    TORCH_CHECK(false, "indis._C was built without CUDA, cannot update CUDA tensors (rebuild with nvcc available)");
#endif
  } else {
    run_update(a, false, 0);
  }
}

void fill_coefs(IndisUpdateArgs& a, const at::Tensor& u, const at::Tensor& w) {
  a.coef_dtype = u.scalar_type() == at::kDouble ? INDIS_F64 : INDIS_F32;
  a.u = u.data_ptr();
  a.u_sb = u.stride(0);
  a.w = w.data_ptr();
  a.w_sb = w.stride(0);
  a.w_sj = w.stride(1);
}

// Everything but the kernel: checks (all of them when `real`, metadata only on Meta tensors), then the pointers.
void fused_update_impl(const at::Tensor& out, const at::Tensor& x, at::TensorList hist, const at::Tensor& u,
                       const at::Tensor& w, bool check_finite, bool real) {
  check_state(out, x);
  const int64_t m = static_cast<int64_t>(hist.size());
  TORCH_CHECK_VALUE(m >= 1 && m <= INDIS_MAX_HIST, "hist must hold 1 to ", INDIS_MAX_HIST,
                    " tensors (the solver order M), got ", m);
  for (int64_t j = 0; j < m; ++j) check_like(hist[j], "hist[" + std::to_string(j) + "]", x);
  TORCH_CHECK_VALUE(u.defined(), "u is None / undefined");
  check_coef(u, "u", x, -1, u.scalar_type(), check_finite && real);
  check_coef(w, "w", x, m, u.scalar_type(), check_finite && real);
  check_no_grad({&out, &x, &u, &w}, hist);
  if (!real) return;
  // out may be x itself; it must not overlap any history entry (that would destroy the history).
  const Span so = span_of(out, "out"), sx = span_of(x, "x");
  TORCH_CHECK_VALUE(so.lo == sx.lo || !overlap(so, sx), "out partially overlaps x (it may be x itself or disjoint)");
  for (int64_t j = 0; j < m; ++j) {
    TORCH_CHECK_VALUE(!overlap(so, span_of(hist[j], "hist")), "out overlaps hist[", j,
                      "]; write the new state to x or a separate buffer");
  }
  // read-only inputs with their sign (a negative-bit view is materialised; out was checked above)
  const at::Tensor xr = resolved(x), ur = resolved(u), wr = resolved(w);
  std::vector<at::Tensor> hr;
  for (const auto& h : hist) hr.push_back(resolved(h));
  const int64_t B = x.size(0);
  IndisUpdateArgs a{};
  a.out = out.data_ptr();
  a.x = xr.data_ptr();
  for (int64_t j = 0; j < m; ++j) a.hist[j] = hr[j].data_ptr();
  a.m = static_cast<int>(m);
  a.has_pred = 0;
  a.dtype = data_dtype_code(x, "x");
  a.device = x.is_cuda() ? x.device().index() : -1;
  a.batch = B;
  a.inner = B > 0 ? x.numel() / B : 0;
  fill_coefs(a, ur, wr);
  launch(a, x);
}

void fused_update_x0_impl(const at::Tensor& out, const at::Tensor& x, const at::Tensor& pred, const at::Tensor& slot,
                          at::TensorList hist, const at::Tensor& p, const at::Tensor& q, const at::Tensor& u,
                          const at::Tensor& w, bool check_finite, bool real) {
  check_state(out, x);
  check_like(pred, "pred", x);
  check_like(slot, "slot", x);
  check_writable(slot, "slot");
  const int64_t m = static_cast<int64_t>(hist.size()) + 1;
  TORCH_CHECK_VALUE(m <= INDIS_MAX_HIST, "hist must hold 0 to ", INDIS_MAX_HIST - 1,
                    " older entries (the solver order M minus the new one), got ", m - 1);
  for (size_t j = 0; j < hist.size(); ++j) check_like(hist[j], "hist[" + std::to_string(j) + "]", x);
  TORCH_CHECK_VALUE(u.defined(), "u is None / undefined");
  const bool fin = check_finite && real;
  check_coef(u, "u", x, -1, u.scalar_type(), fin);
  check_coef(p, "p", x, -1, u.scalar_type(), fin);
  check_coef(q, "q", x, -1, u.scalar_type(), fin);
  check_coef(w, "w", x, m, u.scalar_type(), fin);
  check_no_grad({&out, &x, &pred, &slot, &p, &q, &u, &w}, hist);
  if (!real) return;
  const Span so = span_of(out, "out"), sx = span_of(x, "x"), ss = span_of(slot, "slot"), sp = span_of(pred, "pred");
  TORCH_CHECK_VALUE(so.lo == sx.lo || !overlap(so, sx), "out partially overlaps x (it may be x itself or disjoint)");
  TORCH_CHECK_VALUE(!overlap(so, sp), "out overlaps pred");
  TORCH_CHECK_VALUE(!overlap(ss, sx) && !overlap(ss, sp) && !overlap(ss, so),
                    "slot overlaps x, pred or out; it must be its own ring-buffer entry");
  for (size_t j = 0; j < hist.size(); ++j) {
    const Span sh = span_of(hist[j], "hist");
    TORCH_CHECK_VALUE(!overlap(so, sh) && !overlap(ss, sh), "out or slot overlaps hist[", j, "]");
  }
  // read-only inputs with their sign (a negative-bit view is materialised; out and slot were checked above)
  const at::Tensor xr = resolved(x), predr = resolved(pred), ur = resolved(u), wr = resolved(w), pr = resolved(p),
                   qr = resolved(q);
  std::vector<at::Tensor> hr;
  for (const auto& h : hist) hr.push_back(resolved(h));
  const int64_t B = x.size(0);
  IndisUpdateArgs a{};
  a.out = out.data_ptr();
  a.x = xr.data_ptr();
  a.pred = predr.data_ptr();
  a.slot = slot.data_ptr();
  for (size_t j = 0; j < hist.size(); ++j) a.hist[j + 1] = hr[j].data_ptr();
  a.m = static_cast<int>(m);
  a.has_pred = 1;
  a.dtype = data_dtype_code(x, "x");
  a.device = x.is_cuda() ? x.device().index() : -1;
  a.batch = B;
  a.inner = B > 0 ? x.numel() / B : 0;
  fill_coefs(a, ur, wr);
  a.p = pr.data_ptr();
  a.p_sb = pr.stride(0);
  a.q = qr.data_ptr();
  a.q_sb = qr.stride(0);
  launch(a, x);
}

// ---- operator kernels --------------------------------------------------------------------------
// CPU and CUDA (one function: the device decides the kernel), Meta (metadata checks only, no outputs to
// describe: the operators return nothing), Autograd (refuse tensors that require grad, then continue below).
void fused_update_kernel(const at::Tensor& out, const at::Tensor& x, at::TensorList hist, const at::Tensor& u,
                         const at::Tensor& w, bool check_finite) {
  fused_update_impl(out, x, hist, u, w, check_finite, true);
}

void fused_update_meta(const at::Tensor& out, const at::Tensor& x, at::TensorList hist, const at::Tensor& u,
                       const at::Tensor& w, bool check_finite) {
  fused_update_impl(out, x, hist, u, w, check_finite, false);
}

void fused_update_x0_kernel(const at::Tensor& out, const at::Tensor& x, const at::Tensor& pred, const at::Tensor& slot,
                            at::TensorList hist, const at::Tensor& p, const at::Tensor& q, const at::Tensor& u,
                            const at::Tensor& w, bool check_finite) {
  fused_update_x0_impl(out, x, pred, slot, hist, p, q, u, w, check_finite, true);
}

void fused_update_x0_meta(const at::Tensor& out, const at::Tensor& x, const at::Tensor& pred, const at::Tensor& slot,
                          at::TensorList hist, const at::Tensor& p, const at::Tensor& q, const at::Tensor& u,
                          const at::Tensor& w, bool check_finite) {
  fused_update_x0_impl(out, x, pred, slot, hist, p, q, u, w, check_finite, false);
}

template <typename Sig>
c10::TypedOperatorHandle<Sig> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

void fused_update_autograd(const at::Tensor& out, const at::Tensor& x, at::TensorList hist, const at::Tensor& u,
                           const at::Tensor& w, bool check_finite) {
  check_no_grad({&out, &x, &u, &w}, hist);
  static const auto op = op_handle<decltype(fused_update_kernel)>("indis::fused_update");
  at::AutoDispatchBelowAutograd below;  // next: ADInplaceOrView (version counters), then the device kernel
  op.call(out, x, hist, u, w, check_finite);
}

void fused_update_x0_autograd(const at::Tensor& out, const at::Tensor& x, const at::Tensor& pred,
                              const at::Tensor& slot, at::TensorList hist, const at::Tensor& p, const at::Tensor& q,
                              const at::Tensor& u, const at::Tensor& w, bool check_finite) {
  check_no_grad({&out, &x, &pred, &slot, &p, &q, &u, &w}, hist);
  static const auto op = op_handle<decltype(fused_update_x0_kernel)>("indis::fused_update_x0");
  at::AutoDispatchBelowAutograd below;
  op.call(out, x, pred, slot, hist, p, q, u, w, check_finite);
}

// The written tensors changed in place: their version counters move on, so that autograd notices a saved
// tensor that was overwritten (what the generated ADInplaceOrView kernels of in-place ATen ops do).
void fused_update_inplace(const at::Tensor& out, const at::Tensor& x, at::TensorList hist, const at::Tensor& u,
                          const at::Tensor& w, bool check_finite) {
  static const auto op = op_handle<decltype(fused_update_kernel)>("indis::fused_update");
  {
    at::AutoDispatchBelowADInplaceOrView below;
    op.call(out, x, hist, u, w, check_finite);
  }
  torch::autograd::impl::bump_version(out);
}

void fused_update_x0_inplace(const at::Tensor& out, const at::Tensor& x, const at::Tensor& pred,
                             const at::Tensor& slot, at::TensorList hist, const at::Tensor& p, const at::Tensor& q,
                             const at::Tensor& u, const at::Tensor& w, bool check_finite) {
  static const auto op = op_handle<decltype(fused_update_x0_kernel)>("indis::fused_update_x0");
  {
    at::AutoDispatchBelowADInplaceOrView below;
    op.call(out, x, pred, slot, hist, p, q, u, w, check_finite);
  }
  torch::autograd::impl::bump_version(out);
  torch::autograd::impl::bump_version(slot);
}

// Negative-bit and conjugate views (the Negative / Conjugate dispatch keys): PyTorch's generic fallback for
// them materialises a written view and expects the operator to return it, which these operators do not; this
// kernel takes its place: a written view is refused (check_writable), read-only views go on to the device
// kernel, which reads them with their sign (resolved()).
void fused_update_mathbits(const at::Tensor& out, const at::Tensor& x, at::TensorList hist, const at::Tensor& u,
                           const at::Tensor& w, bool check_finite) {
  check_writable(out, "out");
  static const auto op = op_handle<decltype(fused_update_kernel)>("indis::fused_update");
  c10::impl::ExcludeDispatchKeyGuard below(c10::DispatchKeySet({c10::DispatchKey::Negative, c10::DispatchKey::Conjugate}));
  op.call(out, x, hist, u, w, check_finite);
}

void fused_update_x0_mathbits(const at::Tensor& out, const at::Tensor& x, const at::Tensor& pred,
                              const at::Tensor& slot, at::TensorList hist, const at::Tensor& p, const at::Tensor& q,
                              const at::Tensor& u, const at::Tensor& w, bool check_finite) {
  check_writable(out, "out");
  check_writable(slot, "slot");
  static const auto op = op_handle<decltype(fused_update_x0_kernel)>("indis::fused_update_x0");
  c10::impl::ExcludeDispatchKeyGuard below(c10::DispatchKeySet({c10::DispatchKey::Negative, c10::DispatchKey::Conjugate}));
  op.call(out, x, pred, slot, hist, p, q, u, w, check_finite);
}

}  // namespace

int data_dtype_code(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return INDIS_F32;
    case at::kDouble:
      return INDIS_F64;
    case at::kHalf:
      return INDIS_F16;
    case at::kBFloat16:
      return INDIS_BF16;
    default:
      TORCH_CHECK_TYPE(false, name, " must be float32, float64, float16 or bfloat16, got ", t.scalar_type());
  }
  return -1;
}

void run_update(const IndisUpdateArgs& a, bool on_cuda, std::uintptr_t stream) {
  if (on_cuda) {
#ifdef INDIS_WITH_CUDA
    const int err = indis_cuda_fused_update(&a, stream);
    TORCH_CHECK(err == 0, "fused update: CUDA error ", err, ": ", indis_cuda_error_string(err));
    return;
#else
    (void)stream;
    TORCH_CHECK(false, "indis._C was built without CUDA");
#endif
  }
  switch (a.dtype) {
    case INDIS_F32:
      cpu_dispatch_coef<float>(a);
      break;
    case INDIS_F64:
      cpu_dispatch_coef<double>(a);
      break;
    case INDIS_F16:
      cpu_dispatch_coef<c10::Half>(a);
      break;
    case INDIS_BF16:
      cpu_dispatch_coef<c10::BFloat16>(a);
      break;
    default:
      TORCH_CHECK(false, "fused update: unknown dtype code ", a.dtype);
  }
}

std::uintptr_t current_cuda_stream(const c10::Device& device) {
  TORCH_CHECK(device.is_cuda(), "current_cuda_stream: ", device, " is not a CUDA device");
  const c10::impl::VirtualGuardImpl impl(c10::DeviceType::CUDA);
  return reinterpret_cast<std::uintptr_t>(impl.getStream(device).native_handle());
}

}  // namespace indis

// ---- registration --------------------------------------------------------------------------------
TORCH_LIBRARY(indis, m) {
  m.def("fused_update(Tensor(a!) out, Tensor x, Tensor[] hist, Tensor u, Tensor w, bool check_finite=True) -> ()");
  m.def(
      "fused_update_x0(Tensor(a!) out, Tensor x, Tensor pred, Tensor(b!) slot, Tensor[] hist, Tensor p, Tensor q, "
      "Tensor u, Tensor w, bool check_finite=True) -> ()");
}

TORCH_LIBRARY_IMPL(indis, CPU, m) {
  m.impl("fused_update", &indis::fused_update_kernel);
  m.impl("fused_update_x0", &indis::fused_update_x0_kernel);
}

#ifdef INDIS_WITH_CUDA
TORCH_LIBRARY_IMPL(indis, CUDA, m) {
  m.impl("fused_update", &indis::fused_update_kernel);
  m.impl("fused_update_x0", &indis::fused_update_x0_kernel);
}
#endif

TORCH_LIBRARY_IMPL(indis, Meta, m) {
  m.impl("fused_update", &indis::fused_update_meta);
  m.impl("fused_update_x0", &indis::fused_update_x0_meta);
}

TORCH_LIBRARY_IMPL(indis, Autograd, m) {
  m.impl("fused_update", &indis::fused_update_autograd);
  m.impl("fused_update_x0", &indis::fused_update_x0_autograd);
}

TORCH_LIBRARY_IMPL(indis, Negative, m) {
  m.impl("fused_update", &indis::fused_update_mathbits);
  m.impl("fused_update_x0", &indis::fused_update_x0_mathbits);
}

TORCH_LIBRARY_IMPL(indis, Conjugate, m) {
  m.impl("fused_update", &indis::fused_update_mathbits);
  m.impl("fused_update_x0", &indis::fused_update_x0_mathbits);
}

TORCH_LIBRARY_IMPL(indis, ADInplaceOrView, m) {
  m.impl("fused_update", &indis::fused_update_inplace);
  m.impl("fused_update_x0", &indis::fused_update_x0_inplace);
}
