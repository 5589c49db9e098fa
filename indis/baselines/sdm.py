"""SDM (Jo & Choi, "Formalizing the Sampling Design Space of Diffusion-Based Generative Models via Adaptive
Solvers and Wasserstein-Bounded Timesteps", arXiv 2602.12624, 2026).

Everything is in the VE-equivalent variables y = x / alpha, s = sigma / alpha, where the probability-flow ODE is
dy/ds = eps (for EDM: y = x, s = sigma = t, and eps is EDM's d = (x - D) / sigma). Norms are per-sample L2 norms
over all dimensions, averaged over the pilot batch (SDM's batch_mean_norm).

1. Wasserstein-bounded adaptive timesteps (SDM's scheduler). A tolerance per noise level
       eta(s) = eta_min + (eta_max - eta_min) (s / s_max)^eta_p
   bounds the estimated local error of an Euler step of length h, eta_hat = h^2 S / 2 with the slope
   S = mean ||d(y', s') - d(y, s)|| / h (y' the Euler endpoint): a bound on the step's contribution to the
   Wasserstein distance between the sampled and the exact marginals. From the current level: a trial step of one
   bin of EDM's polynomial grid; while within tolerance it expands to 2 then 4 bins, otherwise it halves (at
   most twice each); the next step is h = 0.95 sqrt(2 eta / S) with the accepted trial's S, clipped to
   [accepted trial h, distance to s_min]. The number of steps is an output.
   Difference from SDM's code (documented in docs/peers.md): with verify=True (default) the taken step's
   error is measured with the drift at its endpoint (which the next step needs anyway, so it costs no extra
   call unless the step is rejected) and the step is halved until eta_hat <= eta(s): every step of the result
   respects the bound exactly on the pilot batch, which SDM's predicted step size does only approximately.
2. N-step resampling: eta_i of each interval of that schedule (an Euler run along it), lengths
   L_i = eta_i^power (s_max / s_{i+1})^q, and N + 1 points placed uniformly in the cumulative length, mapped
   back by monotone cubic (PCHIP) interpolation in u = s^(1/rho); ends pinned to T and t0.
3. Adaptive order (SDM's solver): kappa_i = mean ||d_i - d_{i-1}|| / (|s_i - s_{i-1}| ||d_{i-1}||) along the
   first-order trajectory (kappa_0 = 0); at the first step with kappa_i >= tau_k the solver switches from first
   order to its higher order and stays there. SDM switches Euler -> Heun (or DPM-Solver++ 1M -> 2M, the same
   rule); here the multistep solvers keep one call per step and switch their order (Euler/DDIM -> iPNDM's
   Adams-Bashforth, DPM-Solver++(2M) or UniPC-2), so the NFE stays fixed. SDM's last step is Euler because its
   schedule ends at sigma = 0; ours ends at t0 > 0 (euler_last=True restores SDM's choice).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..processes import _bcast
from ..schedules import get_schedule
from ..solvers import get_solver
from .common import per_sample_norm, pilot_trajectory, t_from_ve_s, to_ve, ve_s

Tensor = torch.Tensor


def eta_bound(s: float, s_max: float, eta_min: float = 0.02, eta_max: float = 0.2, eta_p: float = 1.0) -> float:
    """SDM's tolerance eta(s) at noise level s."""
    r = min(1.0, max(0.0, float(s) / float(s_max)))
    return float(eta_min + (eta_max - eta_min) * r ** eta_p)


class _Drift:
    """d(y, s) = eps of the backbone at VE level s (float64), counting network calls."""

    def __init__(self, backbone, cond):
        self.bb, self.cond, self.proc = backbone, cond, backbone.process
        self.calls = 0

    def __call__(self, y: Tensor, s: float) -> Tensor:
        t = t_from_ve_s(self.proc, torch.tensor([s], dtype=torch.float64)).to(y.device).expand(y.shape[0])
        x = y * _bcast(self.proc.alpha(t), y)
        self.calls += 1
        out = self.bb(x, t, self.cond)
        return self.proc.to_eps(out.to(torch.float64), x, t, self.bb.prediction_type)


def _mean_norm(x: Tensor) -> float:
    return float(per_sample_norm(x).mean())


@torch.no_grad()
def adaptive_schedule(backbone, x_T: Tensor, cond, eta_min: float = 0.02, eta_max: float = 0.2, eta_p: float = 1.0,
                      grid_steps: int = 40, rho: float = 7.0, gamma_step: float = 0.95, c_shrink: float = 0.5,
                      max_expand: int = 2, max_shrink: int = 2, verify: bool = True, max_steps: int = 1000) -> Tuple[Tensor, Dict]:
    """SDM's Wasserstein-bounded schedule from pilot noises x_T: (timesteps [K + 1] float64, info with the per-step
    log: s, h, eta (bound), eta_hat (measured when verify), S)."""
    proc = backbone.process
    sg = ve_s(proc, get_schedule("polynomial", proc, grid_steps, rho=rho))
    s_max, s_min = float(sg[0]), float(sg[-1])
    drift = _Drift(backbone, cond)
    s_cur = s_max
    y = to_ve(proc, x_T.to(torch.float64), proc.T)
    d_cur = drift(y, s_cur)
    path, log = [s_cur], []
    while s_cur > s_min * (1 + 1e-12):
        if len(log) >= max_steps:
            raise RuntimeError(f"SDM's scheduler took more than {max_steps} steps; raise eta_min/eta_max")
        eta = eta_bound(s_cur, s_max, eta_min, eta_max, eta_p)
        remaining = s_cur - s_min
        idx = int((sg >= s_cur * (1 - 1e-12)).sum()) - 1  # the grid bin [sg[idx], sg[idx+1]) holding s_cur
        delta = min(remaining, max(float(s_cur - sg[min(idx + 1, len(sg) - 1)]), 0.0)) or remaining
        best = None
        n_exp = n_shr = 0
        shrunk = False
        prev = None
        while True:
            s_trial = max(s_min, s_cur - delta)
            if prev is not None and s_trial == prev:
                break
            prev = s_trial
            h = s_cur - s_trial
            d_trial = drift(y + (s_trial - s_cur) * d_cur, s_trial)
            S = _mean_norm(d_trial - d_cur) / max(h, 1e-300)
            eta_trial = 0.5 * h * h * S
            if eta_trial <= eta:
                best = (S, h)
                if n_exp < max_expand and not shrunk:
                    j = idx + 2 ** (n_exp + 1)
                    if j > len(sg) - 1:
                        break
                    new = min(remaining, float(s_cur - sg[j]))
                    if new <= delta + 1e-15:
                        break
                    delta, n_exp = new, n_exp + 1
                    continue
                break
            if n_shr < max_shrink:
                delta, n_shr, shrunk = max(delta * c_shrink, 1e-12), n_shr + 1, True
                continue
            break
        if best is None:
            best = (S, h)
        S_best, h_best = best
        h = gamma_step * math.sqrt(2 * eta / max(S_best, 1e-300))
        h = min(remaining, max(h_best, h))
        while True:
            s_next = max(s_min, s_cur - h)
            y_next = y + (s_next - s_cur) * d_cur
            d_next = drift(y_next, s_next)
            eta_hat = 0.5 * (s_cur - s_next) * _mean_norm(d_next - d_cur)
            if not verify or eta_hat <= eta or h <= 1e-12 * s_max:
                break
            h *= c_shrink
        log.append({"s": s_cur, "h": s_cur - s_next, "eta": eta, "eta_hat": eta_hat, "S": S_best})
        s_cur, y, d_cur = s_next, y_next, d_next
        path.append(s_cur)
    t = t_from_ve_s(proc, torch.tensor(path, dtype=torch.float64))
    t[0], t[-1] = proc.T, proc.t0
    return t, {"steps": len(log), "log": log, "network_calls_per_pilot": drift.calls, "pilots": int(x_T.shape[0]),
               "eta": {"min": eta_min, "max": eta_max, "p": eta_p}, "verify": verify}


@torch.no_grad()
def interval_errors(backbone, x_T: Tensor, cond, timesteps: Tensor) -> Tensor:
    """eta_i = h_i mean ||d_{i+1} - d_i|| / 2 of each interval of an Euler run along `timesteps` [K + 1] (SDM's
    Wasserstein-bound estimate per interval): [K] float64."""
    proc = backbone.process
    s = ve_s(proc, torch.as_tensor(timesteps, dtype=torch.float64))
    drift = _Drift(backbone, cond)
    y = to_ve(proc, x_T.to(torch.float64), proc.T)
    d = drift(y, float(s[0]))
    out = []
    for i in range(len(s) - 1):
        y = y + float(s[i + 1] - s[i]) * d
        d_new = drift(y, float(s[i + 1]))
        out.append(0.5 * float(s[i] - s[i + 1]) * _mean_norm(d_new - d))
        d = d_new
    return torch.tensor(out, dtype=torch.float64)


def resample(process, timesteps: Tensor, eta: Tensor, steps: int, power: float = 0.5, q: float = 0.1, rho: float = 7.0) -> Tensor:
    """SDM's N-step resampling of a schedule with per-interval errors eta [K] to `steps` steps: [steps + 1] times."""
    from scipy.interpolate import PchipInterpolator

    s = ve_s(process, torch.as_tensor(timesteps, dtype=torch.float64)).numpy()
    e = np.asarray(eta, dtype=np.float64)
    if len(e) != len(s) - 1:
        raise ValueError(f"{len(s) - 1} intervals need as many errors, got {len(e)}")
    length = np.maximum(e, 0.0) ** power * (s[0] / s[1:]) ** q
    if not np.isfinite(length).all() or length.sum() <= 0:
        raise ValueError("SDM resampling: the interval errors are all zero or not finite")
    length = np.maximum(length, 1e-12 * length.sum())  # keeps the cumulative length strictly increasing
    cum = np.concatenate([[0.0], np.cumsum(length)])
    u = s ** (1.0 / rho)
    u_new = PchipInterpolator(cum, u)(np.linspace(0.0, cum[-1], steps + 1))
    s_new = np.maximum(u_new, 0.0) ** rho
    t = t_from_ve_s(process, torch.as_tensor(s_new, dtype=torch.float64).clamp_min(1e-300))
    t[0], t[-1] = process.T, process.t0
    return t


@torch.no_grad()
def order_schedule(backbone, x_T: Tensor, cond, timesteps: Tensor, solver="ipndm", tau_k: float = 2e-4,
                   high: Optional[int] = None, afs: bool = False, euler_last: bool = False) -> Tuple[List[int], List[float]]:
    """SDM's adaptive order on a schedule: (orders [steps], kappa [steps]); orders are 1 until the first step with
    kappa >= tau_k, then `high` (default: the solver's default order) to the end."""
    sol = get_solver(solver)
    high = sol.default_order if high is None else sol.check_order(high)
    ts = torch.as_tensor(timesteps, dtype=torch.float64)
    n = len(ts) - 1
    _, eps = pilot_trajectory(backbone, x_T, cond, ts, solver="euler", afs=afs)
    s = ve_s(backbone.process, ts)
    kappa = [0.0]
    for i in range(1, n):
        num = per_sample_norm(eps[i] - eps[i - 1])
        den = float(abs(s[i] - s[i - 1])) * per_sample_norm(eps[i - 1]).clamp_min(1e-300)
        kappa.append(float((num / den).mean()))
    orders, on = [], False
    for i in range(n):
        on = on or kappa[i] >= tau_k
        orders.append(high if on else 1)
    if euler_last:
        orders[-1] = 1
    return orders, kappa


@torch.no_grad()
def sdm_schedule(backbone, x_T: Tensor, cond, steps: int, solver="ipndm", afs: bool = False, tau_k: float = 2e-4,
                 power: float = 0.5, q: float = 0.1, rho: float = 7.0, euler_last: bool = False, **adaptive) -> Tuple[Tensor, List[int], Dict]:
    """SDM for `steps` steps: adaptive schedule, N-step resampling, adaptive order. (timesteps, orders, info)."""
    t_ad, info = adaptive_schedule(backbone, x_T, cond, rho=rho, **adaptive)
    eta = interval_errors(backbone, x_T, cond, t_ad)
    ts = resample(backbone.process, t_ad, eta, steps, power, q, rho)
    orders, kappa = order_schedule(backbone, x_T, cond, ts, solver, tau_k, afs=afs, euler_last=euler_last)
    info = {"adaptive_timesteps": t_ad.tolist(), "adaptive_steps": info["steps"], "adaptive_log": info["log"],
            "interval_eta": eta.tolist(), "orders": orders, "kappa": kappa, "tau_k": tau_k, "power": power, "q": q,
            "search_nfe_per_pilot": info["network_calls_per_pilot"] + len(t_ad) + steps - 1}
    return ts, orders, info
