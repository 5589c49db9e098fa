// Internal interfaces between the torch-facing translation units of indis._C
// (fused_update.cpp, coeffs.cpp, sampler_loop.cpp). Includes ATen; not for the .cu files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <pybind11/pybind11.h>

#include "coeffs.h"
#include "update_args.h"

namespace indis {

// The bytes [lo, hi) a tensor's elements span (contiguous tensors), for overlap checks between buffers.
struct Span {
  const char* name;
  uintptr_t lo, hi;
};

inline Span span_of(const at::Tensor& t, const char* name) {
  const auto lo = reinterpret_cast<uintptr_t>(t.data_ptr());
  return {name, lo, lo + static_cast<uintptr_t>(t.numel()) * t.element_size()};
}

// Two non-empty spans share at least one byte.
inline bool overlap(const Span& a, const Span& b) { return a.lo < b.hi && b.lo < a.hi && a.hi > a.lo && b.hi > b.lo; }

// A tensor whose memory holds its values as read: a negative-bit view (e.g. a complex tensor's
// .conj().imag) or a conjugate view is materialised (one copy); any other tensor is returned as is.
// The native entry points read data_ptr() of their inputs through this: the bits are not the values.
inline at::Tensor resolved(const at::Tensor& t) {
  if (!t.defined() || !(t.is_neg() || t.is_conj())) return t;
  return t.resolve_conj().resolve_neg();
}

// ---- fused update (fused_update.cpp) ---------------------------------------------------------
// Run one update described by raw pointers on the CPU (OpenMP via at::parallel_for) or on CUDA
// (stream handle `stream`). No checks: callers validate tensors first.
void run_update(const IndisUpdateArgs& a, bool on_cuda, std::uintptr_t stream);
// INDIS_F32 / ... code of a data dtype; throws a TypeError-style c10 error for others.
int data_dtype_code(const at::Tensor& t, const char* name);
void register_fused_update(pybind11::module_& m);

// ---- coefficients (coeffs.cpp) ------------------------------------------------------------------
struct StepCoeffs {
  at::Tensor u, w, p, q, tc;  // [B, N], [B, N, M], [B, N], [B, N], [B, N]; contiguous, dtype of ts
  int M = 1;
};
int parse_solver(const std::string& s);
int parse_pred(const std::string& s);
coeffs::ProcessCfg parse_process(const std::string& name, const std::vector<double>& params);
// Validated coefficient tables; ts / dtau / gamma must already share one float dtype and device.
// m_cols < 1: the solver's number of history entries for `order`.
StepCoeffs compute_step_coeffs(const std::string& solver, int order, const std::string& process,
                               const std::vector<double>& params, const at::Tensor& ts,
                               const c10::optional<at::Tensor>& dtau,
                               const c10::optional<at::Tensor>& gamma, const std::string& pred_type,
                               int64_t batch, int m_cols, bool validate, std::uintptr_t stream);
void register_coeffs(pybind11::module_& m);

// ---- sampler loop (sampler_loop.cpp) ------------------------------------------------------------
void register_sampler_loop(pybind11::module_& m);

#ifdef INDIS_WITH_TENSORRT
// ---- TensorRT execution context (csrc/trt/trt_backbone.cpp; only with TensorRT) ----------------
void register_tensorrt(pybind11::module_& m);
#endif

}  // namespace indis
