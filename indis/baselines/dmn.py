"""DMN (Xue et al., "Accelerating Diffusion Sampling with Optimized Time Steps", CVPR 2024).

Training-free and data-free: the timesteps minimise an error proxy of a data-prediction multistep solver
(DPM-Solver++ / UniPC family) over the logSNR values lambda_0 < lambda_1 < ... < lambda_N (lambda = log(alpha /
sigma), lambda_0 at T, lambda_N at t0; ends fixed), by a trust-region method with linear constraints.

The exact solution of the data-prediction ODE over step s is
    x_{s+1} = (sigma_{s+1} / sigma_s) x_s + sigma_{s+1} int_{lambda_s}^{lambda_{s+1}} e^lambda x_theta(lambda) dlambda,
and the solver replaces x_theta by the Lagrange polynomial through its last k data predictions (order k: 1 at
the first and last step, 2 at the second and second-to-last, 3 elsewhere). Each node n then enters step s with
the weight J_{s,n} = int_0^{h_s} e^{lambda_s + u} L_n(u) du (L_n the Lagrange basis polynomial of node n in
u = lambda - lambda_s), computed from G_p(h) = int_0^h u^p e^u du (G_0 = e^h - 1, G_1 = h e^h - G_0,
G_2 = h^2 e^h - 2 G_1). A data prediction at node n carries an error of size w_n = sigma_n^p / alpha_n (VP alpha
and sigma of lambda; p = 2 in DMN's code, which mentions p = 1 for pixel models). The objective, as in DMN:
  order-1 steps:                |w_s J_{s,s}|
  order >= 2 steps with s < 3:  ||(w_n J_{s,n})_n||_2          (independent errors within a step)
  the other steps:              sum_n |sum_s w_n J_{s,n}|        (errors of one node accumulate over steps)
(the truncation 3 is DMN's setting for NFE <= 7). This module derives the weights from the Lagrange basis for
any order instead of DMN's closed forms (identical for orders 1-3; tests compare the order-2 case).

Initialisation: uniform in lambda (DMN's "unif", its choice for pixel models) or any heuristic schedule.
The minimiser is scipy's trust-constr (as DMN) on the interior lambdas with lambda_{i+1} - lambda_i >= a small
positive gap (so the schedule is strictly decreasing in t); the result is kept only if it lowers the objective.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, Tuple

import numpy as np
import torch

from ..schedules import get_schedule

Tensor = torch.Tensor


def _g(h: float, kmax: int) -> np.ndarray:
    """G_p(h) = int_0^h u^p e^u du for p = 0 .. kmax - 1."""
    out = np.zeros(kmax)
    eh = math.exp(h)
    out[0] = math.expm1(h)
    for p in range(1, kmax):
        out[p] = h ** p * eh - p * out[p - 1]
    return out


def step_order(s: int, n: int) -> int:
    """DMN's order of step s of n: 1 at the ends, 2 next to them, 3 elsewhere."""
    if s in (0, n - 1):
        return 1
    if s in (1, n - 2):
        return 2
    return 3


def node_weights(lam: np.ndarray, s: int, order: int) -> Tuple[np.ndarray, np.ndarray]:
    """(node indices [k], J [k]) of step s: J_n = int_{lam_s}^{lam_{s+1}} e^lambda L_n(lambda) dlambda for the
    Lagrange basis through nodes s - k + 1 .. s."""
    nodes = np.arange(s - order + 1, s + 1)
    if nodes[0] < 0:
        raise ValueError(f"step {s} cannot use order {order}")
    h = lam[s + 1] - lam[s]
    u = lam[nodes] - lam[s]  # node offsets (<= 0)
    # Lagrange basis coefficients: V c = I, V[i, p] = u_i^p -> L_n(u) = sum_p C[p, n] u^p
    vander = np.vander(u, order, increasing=True)
    coef = np.linalg.solve(vander, np.eye(order))
    g = _g(h, order)
    return nodes, math.exp(lam[s]) * (g @ coef)


def error_weights(lam: np.ndarray, sigma_power: float = 2.0) -> np.ndarray:
    """w_n = sigma_n^p / alpha_n with VP alpha = (1 + e^{-2 lambda})^{-1/2}, sigma = (1 + e^{2 lambda})^{-1/2}."""
    alpha = 1 / np.sqrt(1 + np.exp(-2 * lam))
    sigma = 1 / np.sqrt(1 + np.exp(2 * lam))
    return sigma ** sigma_power / alpha


def objective(lam_full: np.ndarray, sigma_power: float = 2.0, trunc: int = 3) -> float:
    """DMN's error proxy of a logSNR schedule lam_full [N + 1] (increasing: T first)."""
    lam = np.asarray(lam_full, dtype=np.float64)
    n = len(lam) - 1
    w = error_weights(lam, sigma_power)
    res = 0.0
    acc = np.zeros(n + 1)
    for s in range(n):
        k = step_order(s, n)
        nodes, j = node_weights(lam, s, k)
        wj = w[nodes] * j
        if k == 1:
            res += abs(wj[0])
        elif s < trunc:
            res += float(np.sqrt((wj ** 2).sum()))
        else:
            acc[nodes] += wj
    return res + float(np.abs(acc).sum())


def dmn_schedule(process, steps: int, init: str = "logsnr", sigma_power: float = 2.0, trunc: int = 3,
                 min_gap: float = 1e-3, maxiter: int = 2000) -> Tuple[Tensor, Dict]:
    """DMN's timesteps [steps + 1] (float64, decreasing) for a process, and info (objective before/after)."""
    from scipy.optimize import LinearConstraint, minimize

    t_init = get_schedule(init, process, steps)
    lam0 = process.log_snr(t_init).numpy().astype(np.float64)
    lam_T, lam_e = float(lam0[0]), float(lam0[-1])
    f0 = objective(lam0, sigma_power, trunc)
    info = {"init": init, "objective_init": f0, "sigma_power": sigma_power, "trunc": trunc}
    if steps < 2:
        info.update(objective=f0, improved=False)
        return t_init, info
    gap = min_gap * (lam_e - lam_T) / steps
    # constraints on the interior z (N - 1 values): z_0 - lam_T >= gap, z_{i+1} - z_i >= gap, lam_e - z_{N-2} >= gap
    a = np.zeros((steps, steps - 1))
    lb = np.full(steps, gap)
    for i in range(steps):
        if i < steps - 1:
            a[i, i] = 1.0
        if i > 0:
            a[i, i - 1] = -1.0
    lb[0] += lam_T
    lb[-1] -= lam_e
    cons = LinearConstraint(a, lb, np.full(steps, np.inf))

    def f(z):
        return objective(np.concatenate([[lam_T], z, [lam_e]]), sigma_power, trunc)

    with warnings.catch_warnings():  # trust-constr's quasi-Newton warns on flat stretches of the piecewise objective
        warnings.simplefilter("ignore", UserWarning)
        r = minimize(f, lam0[1:-1], method="trust-constr", constraints=[cons], options={"maxiter": maxiter, "verbose": 0})
    lam = np.concatenate([[lam_T], r.x, [lam_e]])
    f1 = objective(lam, sigma_power, trunc)
    ok = np.isfinite(f1) and f1 < f0 and (np.diff(lam) > 0).all()
    if not ok:
        lam, f1 = lam0, f0
    t = process.t_from_log_snr(torch.as_tensor(lam, dtype=torch.float64))
    t[0], t[-1] = process.T, process.t0
    if not (t[1:] < t[:-1]).all():  # the map back to t could merge nearly equal points
        t, f1, ok = t_init, f0, False
    info.update(objective=f1, improved=bool(ok), optimizer_message=str(r.message), iterations=int(getattr(r, "nit", 0)))
    return t, info
