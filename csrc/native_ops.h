// Internal interfaces between the torch-facing translation units of indis._C (fused_update.cpp,
// sampler_loop.cpp, trt/trt_backbone.cpp). Includes ATen; not for the .cu files.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

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

// The caller's current CUDA stream on `device` (the stream at::cuda::getCurrentCUDAStream(device) returns:
// torch.cuda.current_stream(), or the capture stream inside torch.cuda.graph), as a cudaStream_t handle.
// Read through c10's device-generic stream interface, so this code needs neither the CUDA headers nor
// libc10_cuda and also builds against a CPU-only torch.
std::uintptr_t current_cuda_stream(const c10::Device& device);

// ---- fused update (fused_update.cpp) ---------------------------------------------------------
// Run one update described by raw pointers on the CPU (OpenMP via at::parallel_for) or on CUDA
// (stream handle `stream`). No checks: callers validate tensors first.
void run_update(const IndisUpdateArgs& a, bool on_cuda, std::uintptr_t stream);
// INDIS_F32 / ... code of a data dtype; throws a TypeError-style c10 error for others.
int data_dtype_code(const at::Tensor& t, const char* name);

}  // namespace indis
