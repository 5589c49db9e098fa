// Per-sample solver coefficients of the INDIS samplers, for host C++ and CUDA device code.
//
// No torch and no CUDA headers here: this header is included by csrc/coeffs.cpp (host, with ATen)
// and csrc/cuda/coeffs.cu (nvcc, without torch). The formulas mirror indis/processes.py and
// indis/solvers.py (the specification); every quantity is evaluated in double precision whatever
// the storage type T of the inputs and outputs, so fp32 results are the fp64 result rounded once.
//
// For one sample with timesteps tau_0 > ... > tau_N (T first), shifts dtau_i and scales gamma_i,
// step i of the sampler is
//
//     pred  = backbone(x_i, tc_i),           tc_i = tau_i + dtau_i   (rounded to T, as in Python)
//     h_i   = p_i * x_i + q_i * pred         (the solver's basis: raw eps, or x0_hat for DPM-Solver++)
//     x_{i+1} = u_i * x_i + sum_{j<k_i} w_{i,j} * h_{i-j}
//
// with k_i = min(order, i + 1) (Euler: 1) and w_{i,j} = 0 for j >= k_i. For eps-basis solvers
// (Euler, iPNDM) h is the raw eps = a*x + b*pred of the prediction type and gamma is folded into w
// (w_{i,j} *= gamma_{i-j}; indis.solvers.linear_form(..., gamma)); for the x0-basis solver
// (DPM-Solver++(2M)) h is x0_hat = (x - sigma_i * gamma_i * eps) / alpha_i, which is again linear in
// (x, pred), so p and q carry gamma, sigma_i and alpha_i and w is the plain linear form.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define INDIS_HD __host__ __device__ inline
#else
#define INDIS_HD inline
#endif

namespace indis {
namespace coeffs {

enum ProcessKind : int { kEDM = 0, kFlow = 1, kVPLinear = 2, kVPCosine = 3 };
enum SolverKind : int { kEuler = 0, kIPNDM = 1, kDPMpp2M = 2 };
enum PredKind : int { kPredEps = 0, kPredX0 = 1, kPredVelocity = 2 };

constexpr int kMaxOrder = 4;  // iPNDM's highest order: the ring buffer / fused update handle M <= 4

struct ProcessCfg {
  int kind = kEDM;
  double beta0 = 0.1, beta1 = 20.0;     // vp_linear
  double cos_s = 0.008, log_alpha0 = 0;  // vp_cosine: s and log(cos(pi/2 s/(1+s)))
};

// Valid open time interval of each process (indis.processes.*.t_valid).
INDIS_HD void valid_range(const ProcessCfg& c, double* lo, double* hi) {
  *lo = 0.0;
  if (c.kind == kEDM) {
    *hi = HUGE_VAL;
  } else if (c.kind == kVPLinear) {
    *hi = 1.0 + 1e-9;
  } else {
    *hi = 1.0;
  }
}

struct ProcVals {
  double alpha, sigma, lam, dalpha, dsigma;
};

INDIS_HD ProcVals eval_process(const ProcessCfg& c, double t) {
  ProcVals v;
  switch (c.kind) {
    case kEDM:
      v.alpha = 1.0;
      v.sigma = t;
      v.lam = -log(t);
      v.dalpha = 0.0;
      v.dsigma = 1.0;
      break;
    case kFlow:
      v.alpha = 1.0 - t;
      v.sigma = t;
      v.lam = log(v.alpha) - log(v.sigma);
      v.dalpha = -1.0;
      v.dsigma = 1.0;
      break;
    case kVPLinear: {
      const double db = c.beta1 - c.beta0;
      const double la = -0.25 * t * t * db - 0.5 * t * c.beta0;
      const double em = -expm1(2.0 * la);
      v.alpha = exp(la);
      v.sigma = sqrt(em);
      v.lam = la - 0.5 * log(em);
      v.dalpha = v.alpha * (-0.5 * t * db - 0.5 * c.beta0);
      v.dsigma = -v.alpha * v.dalpha / v.sigma;
      break;
    }
    default: {  // kVPCosine
      const double half_pi = 1.5707963267948966;
      const double arg = half_pi * (t + c.cos_s) / (1.0 + c.cos_s);
      const double la = log(cos(arg)) - c.log_alpha0;
      const double em = -expm1(2.0 * la);
      v.alpha = exp(la);
      v.sigma = sqrt(em);
      v.lam = la - 0.5 * log(em);
      v.dalpha = -sin(arg) * (half_pi / (1.0 + c.cos_s)) / exp(c.log_alpha0);
      v.dsigma = -v.alpha * v.dalpha / v.sigma;
      break;
    }
  }
  return v;
}

// Adams-Bashforth coefficients of iPNDM, row k-1 for order k (indis.solvers.IPNDM_COEFFS).
INDIS_HD double ipndm_coeff(int k, int j) {
  switch (k) {
    case 1:
      return 1.0;
    case 2:
      return j == 0 ? 1.5 : -0.5;
    case 3:
      return j == 0 ? 23.0 / 12 : (j == 1 ? -16.0 / 12 : 5.0 / 12);
    default:
      return j == 0 ? 55.0 / 24 : (j == 1 ? -59.0 / 24 : (j == 2 ? 37.0 / 24 : -9.0 / 24));
  }
}

INDIS_HD int solver_max_order(int solver) {
  return solver == kEuler ? 1 : (solver == kIPNDM ? 4 : 2);
}

INDIS_HD bool solver_x0_basis(int solver) { return solver == kDPMpp2M; }

// Order used at step i (lower-order warm start), as Solver.step_order.
INDIS_HD int step_order(int solver, int order, int64_t i) {
  if (solver == kEuler) return 1;
  return (int64_t)order < i + 1 ? order : (int)(i + 1);
}

// Strided read-only view of one sample's row (stride 0 broadcasts a shared [N] row over the batch).
template <typename T>
struct Row {
  const T* ptr;
  int64_t stride;
  INDIS_HD double operator[](int64_t i) const { return (double)ptr[i * stride]; }
};

// All N steps of one sample. Outputs (each sample's own contiguous block):
//   u[i], w[i*M + j] (M = columns of w, >= order), p[i], q[i], tc[i] (the call time, in T)
// dtau / gamma may have ptr == nullptr (zero shift / unit scale); p, q, tc may be nullptr.
template <typename T>
INDIS_HD void sample_coeffs(const ProcessCfg& pc, int solver, int order, int pred_kind, Row<T> ts,
                            Row<T> dtau, Row<T> gamma, int64_t n, int M, T* u, T* w, T* p, T* q,
                            T* tc) {
  const bool x0_basis = solver_x0_basis(solver);
  ProcVals cur = eval_process(pc, ts[0]);
  double lam_prev = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const ProcVals nxt = eval_process(pc, ts[i + 1]);
    const int k = step_order(solver, order, i);
    double wj[kMaxOrder] = {0.0, 0.0, 0.0, 0.0};
    double ui;
    if (solver == kDPMpp2M) {
      const double h = nxt.lam - cur.lam;
      const double phi = -expm1(-h);
      ui = nxt.sigma / cur.sigma;
      if (k == 1) {
        wj[0] = nxt.alpha * phi;
      } else {
        const double r = (cur.lam - lam_prev) / h;
        wj[0] = nxt.alpha * phi * (1.0 + 1.0 / (2.0 * r));
        wj[1] = -nxt.alpha * phi / (2.0 * r);
      }
    } else {  // Euler, iPNDM: y_{i+1} = y_i + (s_{i+1} - s_i) sum_j c_j eps_{i-j}
      ui = nxt.alpha / cur.alpha;
      const double step = nxt.alpha * (nxt.sigma / nxt.alpha - cur.sigma / cur.alpha);
      for (int j = 0; j < k; ++j) {
        double c = step * ipndm_coeff(k, j);
        if (gamma.ptr != nullptr) c *= gamma[i - j];
        wj[j] = c;
      }
    }
    u[i] = (T)ui;
    for (int j = 0; j < M; ++j) w[i * M + j] = (T)(j < kMaxOrder ? wj[j] : 0.0);

    // Call time (rounded to T like `ts[:, :-1] + dtau` in Python) and the prediction -> eps map
    // eps = a * x + b * pred at that time.
    const T tct = dtau.ptr == nullptr ? (T)ts.ptr[i * ts.stride]
                                      : (T)(ts.ptr[i * ts.stride] + dtau.ptr[i * dtau.stride]);
    if (tc != nullptr) tc[i] = tct;
    if (p != nullptr || q != nullptr) {
      double a = 0.0, b = 1.0;
      if (pred_kind != kPredEps) {
        const ProcVals cv = eval_process(pc, (double)tct);
        if (pred_kind == kPredX0) {  // eps = (x - alpha x0) / sigma
          a = 1.0 / cv.sigma;
          b = -cv.alpha / cv.sigma;
        } else {  // velocity: eps = (alpha v - alpha' x) / (alpha sigma' - sigma alpha')
          const double den = cv.alpha * cv.dsigma - cv.sigma * cv.dalpha;
          a = -cv.dalpha / den;
          b = cv.alpha / den;
        }
      }
      if (x0_basis) {  // x0_hat = (x - sigma_i gamma_i eps) / alpha_i
        const double g = gamma.ptr != nullptr ? gamma[i] : 1.0;
        const double sg = cur.sigma * g;
        a = (1.0 - sg * a) / cur.alpha;
        b = -sg * b / cur.alpha;
      }
      if (p != nullptr) p[i] = (T)a;
      if (q != nullptr) q[i] = (T)b;
    }
    lam_prev = cur.lam;
    cur = nxt;
  }
}

}  // namespace coeffs
}  // namespace indis
