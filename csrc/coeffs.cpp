// Per-sample solver coefficients for all N steps (host; CUDA tensors go to csrc/cuda/coeffs.cu),
// exposed as _C.step_coeffs. Formulas: csrc/coeffs.h (= indis/solvers.py + indis/processes.py).
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "native_ops.h"

#ifdef INDIS_WITH_CUDA
#include "cuda/indis_cuda.h"
#endif

namespace indis {

int parse_solver(const std::string& s) {
  if (s == "euler") return coeffs::kEuler;
  if (s == "ipndm") return coeffs::kIPNDM;
  if (s == "dpmpp_2m") return coeffs::kDPMpp2M;
  TORCH_CHECK_VALUE(false, "native solver must be 'euler', 'ipndm' or 'dpmpp_2m', got '", s,
                    "' (UniPC runs only in Python: indis.solvers.sample)");
  return -1;
}

int parse_pred(const std::string& s) {
  if (s == "eps") return coeffs::kPredEps;
  if (s == "x0") return coeffs::kPredX0;
  if (s == "velocity") return coeffs::kPredVelocity;
  TORCH_CHECK_VALUE(false, "prediction_type must be 'eps', 'x0' or 'velocity', got '", s, "'");
  return -1;
}

coeffs::ProcessCfg parse_process(const std::string& name, const std::vector<double>& params) {
  coeffs::ProcessCfg c;
  auto need = [&](size_t n, const char* what) {
    TORCH_CHECK_VALUE(params.size() == n, "process '", name, "' takes ", n, " parameter(s) (", what, "), got ",
                      params.size());
    for (double v : params) TORCH_CHECK_VALUE(std::isfinite(v), "process '", name, "': parameters must be finite");
  };
  if (name == "edm" || name == "ve") {
    need(0, "none");
    c.kind = coeffs::kEDM;
  } else if (name == "flow" || name == "flow_ot") {
    need(0, "none");
    c.kind = coeffs::kFlow;
  } else if (name == "vp_linear") {
    need(2, "beta_0, beta_1");
    c.kind = coeffs::kVPLinear;
    c.beta0 = params[0];
    c.beta1 = params[1];
  } else if (name == "vp_cosine") {
    need(1, "s");
    c.kind = coeffs::kVPCosine;
    c.cos_s = params[0];
    c.log_alpha0 = std::log(std::cos(M_PI / 2 * c.cos_s / (1 + c.cos_s)));
  } else {
    TORCH_CHECK_VALUE(false, "native process must be 'edm', 'flow', 'vp_linear' or 'vp_cosine', got '", name, "'");
  }
  return c;
}

namespace {

// [N] (shared) or [B, N] -> (sample stride, step stride) in elements.
std::pair<int64_t, int64_t> row_strides(const at::Tensor& t) {
  if (t.dim() == 1) return {0, t.stride(0)};
  return {t.stride(0), t.stride(1)};
}

void check_row(const at::Tensor& t, const char* name, const at::Tensor& ts, int64_t batch, int64_t n) {
  TORCH_CHECK_VALUE(t.device() == ts.device(), name, " is on ", t.device(), " but timesteps are on ", ts.device());
  TORCH_CHECK_TYPE(t.scalar_type() == ts.scalar_type(), name, " has dtype ", t.scalar_type(),
                   " but timesteps have dtype ", ts.scalar_type());
  TORCH_CHECK_VALUE((t.dim() == 1 && t.size(0) == n) || (t.dim() == 2 && t.size(0) == batch && t.size(1) == n), name,
                    " must have shape [", n, "] or [", batch, ", ", n, "] to match ", n, " steps, got ", t.sizes());
}

bool all_true(const at::Tensor& t) { return t.numel() == 0 || t.all().item<bool>(); }

}  // namespace

StepCoeffs compute_step_coeffs(const std::string& solver_name, int order, const std::string& process,
                               const std::vector<double>& params, const at::Tensor& ts_in,
                               const c10::optional<at::Tensor>& dtau_opt, const c10::optional<at::Tensor>& gamma_opt,
                               const std::string& pred_type, int64_t batch, int m_cols, bool validate,
                               std::uintptr_t stream) {
  const at::Tensor ts = resolved(ts_in);  // the kernels read raw memory: sign-bit views materialised
  const int solver = parse_solver(solver_name);
  const int pred = parse_pred(pred_type);
  const coeffs::ProcessCfg cfg = parse_process(process, params);
  const int max_order = coeffs::solver_max_order(solver);
  TORCH_CHECK_VALUE(order >= 1 && order <= max_order, solver_name, ": order must be an integer in [1, ", max_order,
                    "], got ", order);
  TORCH_CHECK_VALUE(ts.defined(), "timesteps is None / undefined");
  TORCH_CHECK_TYPE(ts.scalar_type() == at::kFloat || ts.scalar_type() == at::kDouble,
                   "timesteps must be float32 or float64, got ", ts.scalar_type());
  TORCH_CHECK_VALUE(ts.device().is_cpu() || ts.device().is_cuda(), "timesteps are on ", ts.device(),
                    "; only CPU and CUDA are supported");
  TORCH_CHECK_VALUE(ts.dim() == 1 || ts.dim() == 2, "timesteps must have shape [N+1] or [B, N+1], got ", ts.sizes());
  if (batch < 0) batch = ts.dim() == 2 ? ts.size(0) : 1;
  TORCH_CHECK_VALUE(ts.dim() == 1 || ts.size(0) == batch, "timesteps have batch size ", ts.size(0), " but the batch is ",
                    batch);
  const int64_t n = ts.size(-1) - 1;
  TORCH_CHECK_VALUE(n >= 1, "timesteps must hold N+1 >= 2 times (N >= 1 steps), got ", ts.size(-1));
  const int used = solver == coeffs::kEuler ? 1 : order;
  const int M = m_cols < 1 ? used : m_cols;
  TORCH_CHECK_VALUE(M >= used && M <= coeffs::kMaxOrder, "m_cols must be in [", used, ", ", coeffs::kMaxOrder, "], got ",
                    M);
  at::Tensor dtau, gamma;
  if (dtau_opt.has_value() && dtau_opt->defined()) {
    dtau = resolved(*dtau_opt);
    check_row(dtau, "dtau", ts, batch, n);
  }
  if (gamma_opt.has_value() && gamma_opt->defined()) {
    gamma = resolved(*gamma_opt);
    check_row(gamma, "gamma", ts, batch, n);
  }
  double lo = 0, hi = 0;
  coeffs::valid_range(cfg, &lo, &hi);
  if (validate) {
    // (Synchronises on CUDA; the CUDA-graph path validates before capture and passes validate=False.)
    TORCH_CHECK_VALUE(all_true(at::isfinite(ts)), "timesteps contain NaN or inf");
    TORCH_CHECK_VALUE(all_true(ts.narrow(-1, 1, n) < ts.narrow(-1, 0, n)),
                      "timesteps must be strictly decreasing (T first, t0 last) for every sample");
    // (compared in float64: vp_linear's upper bound 1 + 1e-9 rounds to 1 in float32)
    const at::Tensor tsd = ts.to(at::kDouble);
    TORCH_CHECK_VALUE(all_true((tsd > lo) & (tsd < hi)), "timesteps must lie inside the valid range (", lo, ", ", hi,
                      ") of the ", process, " process");
    if (dtau.defined()) TORCH_CHECK_VALUE(all_true(at::isfinite(dtau)), "dtau contains NaN or inf");
    if (gamma.defined()) TORCH_CHECK_VALUE(all_true(at::isfinite(gamma)), "gamma contains NaN or inf");
  }

  const auto opts = ts.options();
  StepCoeffs out;
  out.M = M;
  out.u = at::empty({batch, n}, opts);
  out.w = at::empty({batch, n, M}, opts);
  out.p = at::empty({batch, n}, opts);
  out.q = at::empty({batch, n}, opts);
  out.tc = at::empty({batch, n}, opts);
  const auto [ts_sb, ts_si] = row_strides(ts);
  const auto [d_sb, d_si] = dtau.defined() ? row_strides(dtau) : std::pair<int64_t, int64_t>{0, 0};
  const auto [g_sb, g_si] = gamma.defined() ? row_strides(gamma) : std::pair<int64_t, int64_t>{0, 0};

  if (ts.is_cuda()) {
#ifdef INDIS_WITH_CUDA
    const int err = indis_cuda_coeffs(
        &cfg, solver, order, pred, ts.scalar_type() == at::kDouble ? 1 : 0, batch, n, M, ts.data_ptr(), ts_sb, ts_si,
        dtau.defined() ? dtau.data_ptr() : nullptr, d_sb, d_si, gamma.defined() ? gamma.data_ptr() : nullptr, g_sb,
        g_si, out.u.data_ptr(), out.w.data_ptr(), out.p.data_ptr(), out.q.data_ptr(), out.tc.data_ptr(),
        ts.device().index(), stream);
    TORCH_CHECK(err == 0, "step coefficients: CUDA error ", err, ": ", indis_cuda_error_string(err));
#else
    (void)stream;
    TORCH_CHECK(false, "indis._C was built without CUDA, cannot compute coefficients for CUDA tensors");
#endif
  } else {
    AT_DISPATCH_FLOATING_TYPES(ts.scalar_type(), "indis_step_coeffs", [&] {
      const scalar_t* tp = ts.data_ptr<scalar_t>();
      const scalar_t* dp = dtau.defined() ? dtau.data_ptr<scalar_t>() : nullptr;
      const scalar_t* gp = gamma.defined() ? gamma.data_ptr<scalar_t>() : nullptr;
      scalar_t* up = out.u.data_ptr<scalar_t>();
      scalar_t* wp = out.w.data_ptr<scalar_t>();
      scalar_t* pp = out.p.data_ptr<scalar_t>();
      scalar_t* qp = out.q.data_ptr<scalar_t>();
      scalar_t* cp = out.tc.data_ptr<scalar_t>();
      at::parallel_for(0, batch, 64, [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          coeffs::Row<scalar_t> rt{tp + b * ts_sb, ts_si};
          coeffs::Row<scalar_t> rd{dp == nullptr ? nullptr : dp + b * d_sb, d_si};
          coeffs::Row<scalar_t> rg{gp == nullptr ? nullptr : gp + b * g_sb, g_si};
          coeffs::sample_coeffs<scalar_t>(cfg, solver, order, pred, rt, rd, rg, n, M, up + b * n, wp + b * n * M,
                                          pp + b * n, qp + b * n, cp + b * n);
        }
      });
    });
  }
  if (validate) {
    const at::Tensor tcd = out.tc.to(at::kDouble);
    TORCH_CHECK_VALUE(all_true((tcd > lo) & (tcd < hi)), "shifted call times tau + dtau must lie inside the "
                      "valid range (", lo, ", ", hi, ") of the ", process, " process");
    const bool finite = all_true(at::isfinite(out.u)) && all_true(at::isfinite(out.w)) &&
                        all_true(at::isfinite(out.p)) && all_true(at::isfinite(out.q));
    TORCH_CHECK_VALUE(finite, "the solver coefficients are NaN or inf for these timesteps (", solver_name, ", ", process,
                      "); check that the times are inside the process's valid range and not too close together");
  }
  return out;
}

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> step_coeffs_py(
    const std::string& solver, int order, const std::string& process, const std::vector<double>& params,
    const at::Tensor& ts, const c10::optional<at::Tensor>& dtau, const c10::optional<at::Tensor>& gamma,
    const std::string& prediction_type, int64_t batch, int m_cols, bool validate, std::uintptr_t stream) {
  StepCoeffs c = compute_step_coeffs(solver, order, process, params, ts, dtau, gamma, prediction_type, batch, m_cols,
                                     validate, stream);
  return {c.u, c.w, c.p, c.q, c.tc};
}

}  // namespace

void register_coeffs(pybind11::module_& m) {
  namespace py = pybind11;
  m.def("step_coeffs", &step_coeffs_py, py::arg("solver"), py::arg("order"), py::arg("process"),
        py::arg("process_params"), py::arg("timesteps"), py::arg("dtau") = py::none(), py::arg("gamma") = py::none(),
        py::arg("prediction_type") = "eps", py::arg("batch") = -1, py::arg("m_cols") = 0, py::arg("validate") = true,
        py::arg("stream") = 0,
        "Per-sample coefficients of all N steps -> (u [B,N], w [B,N,M], p [B,N], q [B,N], t_call [B,N]).\n"
        "solver: 'euler' | 'ipndm' | 'dpmpp_2m'; process: 'edm' | 'flow' | 'vp_linear' (params [beta_0, beta_1]) | "
        "'vp_cosine' (params [s]). timesteps [N+1] or [B,N+1] (float32/float64, CPU or CUDA), dtau/gamma [N] or "
        "[B,N] or None. Step i: h_i = p x_i + q pred_i (the solver's basis: raw eps for euler/ipndm with gamma "
        "folded into w, x0_hat for dpmpp_2m), x_{i+1} = u x_i + sum_j w[:, i, j] h_{i-j}; w[:, i, :k_i] with "
        "k_i = min(order, i+1) (euler: 1), zero beyond. Computed in float64 whatever the storage dtype. "
        "validate: check inputs and that the result is finite (synchronises on CUDA).");
}

}  // namespace indis
