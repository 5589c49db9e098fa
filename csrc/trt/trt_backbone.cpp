// A TensorRT execution context as a native backbone of the sampler loop (_C.TensorRTBackbone).
//
// UNTESTED: compiled only when CMake finds TensorRT (INDIS_WITH_TENSORRT; setup.py INDIS_TENSORRT=1),
// and no machine this was written on has TensorRT. Kept minimal: one engine with a state input
// (same shape and dtype as the sampler state), a time input [B] (float32, or float64 for a float64
// state) and one output of the state's shape/dtype; dynamic batch via setInputShape. TensorRT >= 10
// API (enqueueV3, setTensorAddress).
#ifdef INDIS_WITH_TENSORRT

#include <torch/extension.h>

#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "indis_native.h"
#include "native_backbone.h"

namespace indis {
namespace {

class TrtLogger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* msg) noexcept override {
    if (severity <= Severity::kWARNING) std::fprintf(stderr, "[indis TensorRT] %s\n", msg);
  }
};

TrtLogger& logger() {
  static TrtLogger l;
  return l;
}

nvinfer1::DataType trt_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return nvinfer1::DataType::kFLOAT;
    case at::kHalf:
      return nvinfer1::DataType::kHALF;
    case at::kBFloat16:
      return nvinfer1::DataType::kBF16;
    default:
      TORCH_CHECK_TYPE(false, "TensorRT backbone: unsupported dtype ", t);
  }
  return nvinfer1::DataType::kFLOAT;
}

nvinfer1::Dims dims_of(const at::Tensor& t) {
  nvinfer1::Dims d{};
  TORCH_CHECK_VALUE(t.dim() <= nvinfer1::Dims::MAX_DIMS, "TensorRT backbone: too many dimensions");
  d.nbDims = static_cast<int32_t>(t.dim());
  for (int64_t i = 0; i < t.dim(); ++i) d.d[i] = t.size(i);
  return d;
}

class TrtBackbone : public NativeBackbone {
 public:
  TrtBackbone(const std::string& path, std::string in, std::string tname, std::string out)
      : in_(std::move(in)), t_(std::move(tname)), out_(std::move(out)) {
    std::ifstream f(path, std::ios::binary);
    TORCH_CHECK_VALUE(f.good(), "TensorRT backbone: cannot read engine file '", path, "'");
    std::vector<char> blob((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    runtime_.reset(nvinfer1::createInferRuntime(logger()));
    TORCH_CHECK(runtime_, "TensorRT backbone: createInferRuntime failed");
    engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
    TORCH_CHECK(engine_, "TensorRT backbone: could not deserialize '", path,
                "' (built with another TensorRT version or for another GPU?)");
    ctx_.reset(engine_->createExecutionContext());
    TORCH_CHECK(ctx_, "TensorRT backbone: createExecutionContext failed");
    for (const std::string* n : {&in_, &t_, &out_}) {
      bool found = false;
      for (int32_t i = 0; i < engine_->getNbIOTensors(); ++i) found = found || (*n == engine_->getIOTensorName(i));
      TORCH_CHECK_VALUE(found, "TensorRT backbone: the engine has no I/O tensor named '", *n, "'");
    }
  }

  void run(const at::Tensor& x, const at::Tensor& t, at::Tensor& pred, std::uintptr_t stream) override {
    TORCH_CHECK_VALUE(x.is_cuda() && t.is_cuda() && pred.is_cuda(), "TensorRT backbone: tensors must be on CUDA");
    TORCH_CHECK_TYPE(engine_->getTensorDataType(in_.c_str()) == trt_type(x.scalar_type()),
                     "TensorRT backbone: input '", in_, "' dtype differs from the state dtype ", x.scalar_type());
    TORCH_CHECK_TYPE(engine_->getTensorDataType(out_.c_str()) == trt_type(pred.scalar_type()),
                     "TensorRT backbone: output '", out_, "' dtype differs from the state dtype");
    TORCH_CHECK_TYPE(engine_->getTensorDataType(t_.c_str()) == trt_type(t.scalar_type()),
                     "TensorRT backbone: time input '", t_, "' dtype differs from ", t.scalar_type());
    TORCH_CHECK(ctx_->setInputShape(in_.c_str(), dims_of(x)), "TensorRT backbone: input shape ", x.sizes(),
                " not accepted by the engine's optimisation profile");
    TORCH_CHECK(ctx_->setInputShape(t_.c_str(), dims_of(t)), "TensorRT backbone: time shape ", t.sizes(),
                " not accepted");
    TORCH_CHECK(ctx_->setTensorAddress(in_.c_str(), const_cast<void*>(x.data_ptr())), "setTensorAddress failed");
    TORCH_CHECK(ctx_->setTensorAddress(t_.c_str(), const_cast<void*>(t.data_ptr())), "setTensorAddress failed");
    TORCH_CHECK(ctx_->setTensorAddress(out_.c_str(), pred.data_ptr()), "setTensorAddress failed");
    TORCH_CHECK(ctx_->enqueueV3(reinterpret_cast<cudaStream_t>(stream)), "TensorRT backbone: enqueueV3 failed");
  }

  const char* name() const override { return "tensorrt"; }

 private:
  std::string in_, t_, out_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> ctx_;
};

}  // namespace

void register_tensorrt(pybind11::module_& m) {
  namespace py = pybind11;
  py::class_<TrtBackbone, NativeBackbone, std::shared_ptr<TrtBackbone>>(
      m, "TensorRTBackbone",
      "A serialized TensorRT engine run by _C.sample_loop without Python per step (untested; see "
      "csrc/trt/trt_backbone.cpp).")
      .def(py::init<const std::string&, std::string, std::string, std::string>(), py::arg("engine_path"),
           py::arg("input_name") = "x", py::arg("time_name") = "t", py::arg("output_name") = "out");
}

}  // namespace indis

#endif  // INDIS_WITH_TENSORRT
