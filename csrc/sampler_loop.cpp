// The native sampler loop, _C.sample_loop: N backbone calls, each followed by one fused update
// (csrc/fused_update.cpp, csrc/cuda/fused_update.cu), with coefficients for all steps computed once
// up front (csrc/coeffs.h) and a preallocated ring buffer of past basis values.
//
// Two ring modes:
//   * references (eps-prediction backbone, eps-basis solver: Euler, iPNDM): the ring keeps the
//     backbone's own output tensors (raw eps) and gamma is folded into w, so a step is one pass
//     with M+1 reads and 1 write and the loop copies nothing;
//   * buffer (x0/velocity prediction, or the x0-basis DPM-Solver++(2M), or a native backbone that
//     reuses its output buffer): ring slots are preallocated once; each step forms the basis value
//     h = p*x + q*pred in the same pass as the update (2 writes: slot and state).
// The state x is updated in place. Per step the loop allocates no tensor memory itself; a Python
// backbone allocates its own output (unless it reuses a buffer; then use buffer mode, see
// reuses_output), and an output in another dtype than the state is cast (one allocation).
#include <torch/extension.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "native_backbone.h"
#include "native_ops.h"

namespace py = pybind11;

namespace indis {
namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

py::dict sample_loop(py::object backbone, const at::Tensor& x_T, const at::Tensor& timesteps,
                     const c10::optional<at::Tensor>& dtau_in, const c10::optional<at::Tensor>& gamma_in,
                     const std::string& solver, int order, const std::string& process,
                     const std::vector<double>& process_params, const std::string& prediction_type,
                     bool reuses_output, std::uintptr_t stream, bool validate, bool timing) {
  // ---- inputs --------------------------------------------------------------------------------------
  TORCH_CHECK_VALUE(x_T.defined(), "x_T is None / undefined");
  const int dcode = data_dtype_code(x_T, "x_T (the state dtype)");
  TORCH_CHECK_VALUE(x_T.dim() >= 1 && x_T.size(0) >= 1 && x_T.numel() > 0, "x_T must have shape [B, ...] with B >= 1, got ",
                    x_T.sizes());
  TORCH_CHECK_VALUE(x_T.device().is_cpu() || x_T.device().is_cuda(), "x_T is on ", x_T.device(),
                    "; only CPU and CUDA are supported");
#ifndef INDIS_WITH_CUDA
  TORCH_CHECK(!x_T.is_cuda(), "indis._C was built without CUDA; cannot sample on ", x_T.device());
#endif
  const bool on_cuda = x_T.is_cuda();
  const int64_t B = x_T.size(0);
  // Coefficients in float64 for a float64 state, else float32 (as indis.solvers.sample, which computes
  // them in the state dtype; here they are evaluated in float64 and rounded once).
  const auto coef_type = x_T.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  auto prep = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK_VALUE(t.device() == x_T.device(), name, " is on ", t.device(), " but x_T is on ", x_T.device());
    TORCH_CHECK_TYPE(t.is_floating_point(), name, " must be a floating-point tensor, got ", t.scalar_type());
    return t.to(coef_type);
  };
  TORCH_CHECK_VALUE(timesteps.defined(), "timesteps is None / undefined");
  const at::Tensor ts = prep(timesteps, "timesteps");
  c10::optional<at::Tensor> dtau, gamma;
  if (dtau_in.has_value() && dtau_in->defined()) dtau = prep(*dtau_in, "dtau");
  if (gamma_in.has_value() && gamma_in->defined()) gamma = prep(*gamma_in, "gamma");
  if (validate) {
    TORCH_CHECK_VALUE(at::isfinite(x_T).all().item<bool>(), "x_T contains NaN or inf");
  }
  const StepCoeffs C = compute_step_coeffs(solver, order, process, process_params, ts, dtau, gamma, prediction_type, B,
                                           0, validate, stream);
  const int64_t N = C.u.size(1);
  const int M = C.M;
  const int sk = parse_solver(solver);
  const int pk = parse_pred(prediction_type);

  // ---- backbone -----------------------------------------------------------------------------------
  std::shared_ptr<NativeBackbone> native;
  if (py::isinstance<NativeBackbone>(backbone)) {
    native = backbone.cast<std::shared_ptr<NativeBackbone>>();
    reuses_output = true;
  } else {
    TORCH_CHECK_TYPE(PyCallable_Check(backbone.ptr()), "backbone must be callable as backbone(x, t) -> prediction");
  }
  const bool buffered = reuses_output || pk != coeffs::kPredEps || coeffs::solver_x0_basis(sk);

  at::NoGradGuard no_grad;
  const auto t_start = Clock::now();
  // state (a private contiguous copy: x_T is never modified) and per-step call times [N][B]
  at::Tensor x = x_T.clone(at::MemoryFormat::Contiguous);
  const at::Tensor tc_steps = C.tc.t().contiguous();
  std::vector<at::Tensor> t_call;
  t_call.reserve(N);
  for (int64_t i = 0; i < N; ++i) t_call.push_back(tc_steps[i]);
  // ring of the last M basis values
  std::vector<at::Tensor> ring(M);
  std::vector<const void*> ring_ptr(M, nullptr);
  at::Tensor ring_buf, native_out;
  if (buffered) {
    std::vector<int64_t> shape{M};
    for (auto s : x.sizes()) shape.push_back(s);
    ring_buf = at::empty(shape, x.options());
    for (int j = 0; j < M; ++j) {
      ring[j] = ring_buf[j];
      ring_ptr[j] = ring[j].data_ptr();
    }
  }
  if (native) native_out = at::empty_like(x);

  IndisUpdateArgs a{};
  a.out = x.data_ptr();
  a.x = x.data_ptr();
  a.dtype = dcode;
  a.coef_dtype = coef_type == at::kDouble ? INDIS_F64 : INDIS_F32;
  a.device = on_cuda ? x.device().index() : -1;
  a.batch = B;
  a.inner = x.numel() / B;
  a.has_pred = buffered ? 1 : 0;
  a.u_sb = N;
  a.w_sb = N * M;
  a.w_sj = 1;
  a.p_sb = N;
  a.q_sb = N;
  const char* u0 = static_cast<const char*>(C.u.data_ptr());
  const char* w0 = static_cast<const char*>(C.w.data_ptr());
  const char* p0 = static_cast<const char*>(C.p.data_ptr());
  const char* q0 = static_cast<const char*>(C.q.data_ptr());
  const int64_t esz = C.u.element_size();

  double backbone_ms = 0.0, update_ms = 0.0;
  py::object x_py = py::cast(x);  // the same torch.Tensor object every step
  for (int64_t i = 0; i < N; ++i) {
    // ---- backbone call --------------------------------------------------------------------------
    auto t0 = Clock::now();
    at::Tensor pred;
    if (native) {
      native->run(x, t_call[i], native_out, stream);
      pred = native_out;
    } else {
      py::object r = backbone(x_py, py::cast(t_call[i]));
      try {
        pred = r.cast<at::Tensor>();
      } catch (const py::cast_error&) {
        throw py::type_error("backbone(x, t) must return a torch.Tensor, got " +
                             std::string(py::str(py::type::of(r).attr("__name__"))));
      }
      TORCH_CHECK_VALUE(pred.sizes() == x.sizes(), "backbone returned shape ", pred.sizes(), " for input shape ",
                        x.sizes());
      TORCH_CHECK_VALUE(pred.device() == x.device(), "backbone returned a tensor on ", pred.device(),
                        " for input on ", x.device());
      TORCH_CHECK_TYPE(pred.is_floating_point(), "backbone returned dtype ", pred.scalar_type(),
                       "; expected a floating-point prediction");
      if (pred.scalar_type() != x.scalar_type()) pred = pred.to(x.scalar_type());
      if (!pred.is_contiguous()) pred = pred.contiguous();
      // In reference mode the ring keeps pred across the in-place state update: it must not share
      // memory with the state (e.g. a backbone returning x or a view of it).
      if (!buffered && pred.is_alias_of(x)) pred = pred.clone();
    }
    if (timing) {
      if (on_cuda && timing) {
        // host time only: CUDA work is asynchronous (use the benchmarks' synchronised timers)
      }
      backbone_ms += ms_since(t0);
    }

    // ---- fused update ---------------------------------------------------------------------------
    t0 = Clock::now();
    const int k = coeffs::step_order(sk, order, i);
    const int slot = static_cast<int>(i % M);
    for (int j = 0; j < INDIS_MAX_HIST; ++j) a.hist[j] = nullptr;
    for (int j = 1; j < k; ++j) a.hist[j] = ring_ptr[(slot - j + M) % M];
    if (buffered) {
      a.pred = pred.data_ptr();
      a.slot = const_cast<void*>(ring_ptr[slot]);
      a.p = p0 + i * esz;
      a.q = q0 + i * esz;
    } else {
      ring[slot] = pred;  // keep the output alive while it is in the history
      ring_ptr[slot] = pred.data_ptr();
      a.hist[0] = ring_ptr[slot];
    }
    a.m = k;
    a.u = u0 + i * esz;
    a.w = w0 + i * M * esz;
    if (on_cuda) {
      run_update(a, true, stream);
    } else {
      py::gil_scoped_release nogil;
      run_update(a, false, stream);
    }
    if (timing) update_ms += ms_since(t0);
  }
  py::dict res;
  res["x"] = x;
  res["steps"] = N;
  res["ring"] = buffered ? "buffer" : "references";
  if (timing) {
    res["backbone_ms"] = backbone_ms;
    res["update_ms"] = update_ms;
    res["loop_ms"] = ms_since(t_start);
  }
  return res;
}

}  // namespace

void register_sampler_loop(py::module_& m) {
  py::class_<NativeBackbone, std::shared_ptr<NativeBackbone>>(
      m, "NativeBackbone", "Base class of backbones evaluated without Python (e.g. TensorRT); not constructible.")
      .def_property_readonly("name", [](const NativeBackbone& b) { return std::string(b.name()); });
  m.def("sample_loop", &sample_loop, py::arg("backbone"), py::arg("x_T"), py::arg("timesteps"),
        py::arg("dtau") = py::none(), py::arg("gamma") = py::none(), py::arg("solver") = "ipndm", py::arg("order") = 4,
        py::arg("process") = "edm", py::arg("process_params") = std::vector<double>{},
        py::arg("prediction_type") = "eps", py::arg("reuses_output") = false, py::arg("stream") = 0,
        py::arg("validate") = true, py::arg("timing") = true,
        "Sample with N backbone calls, each followed by one fused update (no per-step allocation by the loop).\n"
        "backbone: a callable (x [B,...], t [B]) -> prediction (torch module, ONNX Runtime wrapper, ...; close "
        "over the condition) or an indis._C.NativeBackbone. x_T: the prior sample; its dtype is the state dtype "
        "(float32/float64/float16/bfloat16; coefficients float64 for a float64 state, else float32). timesteps "
        "[N+1] or [B,N+1], dtau/gamma [N] or [B,N] or None: the discretization. solver 'euler'|'ipndm'|'dpmpp_2m', "
        "process 'edm'|'flow'|'vp_linear'|'vp_cosine' with process_params (see step_coeffs), prediction_type "
        "'eps'|'x0'|'velocity'. reuses_output: the callable returns the same buffer every call (forces the "
        "copying ring). stream: CUDA stream handle for the kernels. validate: check inputs (synchronises on CUDA; "
        "pass False inside CUDA-graph capture). Returns a dict: x (the sample), steps, ring ('references' or "
        "'buffer') and, if timing, backbone_ms, update_ms, loop_ms (host wall times).");
}

}  // namespace indis
