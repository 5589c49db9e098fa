// A backbone evaluated without Python (e.g. a TensorRT execution context, csrc/trt/): the sampler
// loop calls run() with preallocated tensors, so no Python and no allocation happens per step.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace indis {

class NativeBackbone {
 public:
  virtual ~NativeBackbone() = default;
  // pred <- backbone(x, t): x, pred [B, ...] contiguous in the state dtype, t [B]; asynchronous on
  // `stream` for CUDA (the sampler loop's: the caller's current stream). Must not keep references to x or
  // pred beyond the call.
  virtual void run(const at::Tensor& x, const at::Tensor& t, at::Tensor& pred, std::uintptr_t stream) = 0;
  virtual const char* name() const = 0;
};

}  // namespace indis
