"""Differentiable few-step ODE solvers with per-sample timesteps, shifts and scales.

All solvers work in the VE-equivalent variables y = x / alpha, s = sigma / alpha = exp(-lambda), where the
probability-flow ODE of every process reads dy/ds = eps(x, t) (see processes.py). Each step is linear in the
state and in a short history of model predictions (paper Eq. 2):

    x_{i+1} = u_i * x_i + sum_{j=0}^{M-1} w_{i,j} * h_{i-j}

with per-sample coefficients u [B], w [B, M] that depend only on the timesteps. The history h holds the
solver's *basis*: the scaled eps-prediction eps_hat = gamma * eps(x, tau + dtau) ("eps" basis: Euler,
iPNDM), or the data prediction built from it, x0_hat = (x - sigma eps_hat) / alpha ("x0" basis:
DPM-Solver++(2M), UniPC). `step_coefficients` returns (u, w) for one step; `linear_form` also folds gamma into
w for the eps basis, so that w applies to the raw eps outputs: that is the contract of the fused native
update (csrc/). `step_tables` evaluates them for all steps of a batch (with the map from the backbone output to the
basis and the call times); the native loop reads those tables and restates no formula of this file.

Formulas (h_i = lambda_{i+1} - lambda_i, a = alpha, s = sigma/alpha; EDM: a = 1, s = t):
  Euler:     y_{i+1} = y_i + (s_{i+1} - s_i) eps_i                    (= DDIM; = velocity Euler for flow OT)
  iPNDM:     y_{i+1} = y_i + (s_{i+1} - s_i) sum_k c_k eps_{i-k}, order k = min(max_order, i + 1),
             c = [1]; [3, -1]/2; [23, -16, 5]/12; [55, -59, 37, -9]/24 (fixed-step Adams-Bashforth,
             Zhang & Chen 2022, as used by LD3/GITS/AMED/INDIS)
  DPM-Solver++(2M) (Lu et al. 2022): x_{i+1} = (sigma_{i+1}/sigma_i) x_i - a_{i+1} expm1(-h_i) D,
             D = D_i + (D_i - D_{i-1}) / (2 r_i), r_i = h_{i-1} / h_i; first step first order.
  UniPC-bh2 (Zhao et al. 2023), data prediction, B(h) = expm1(-h): a predictor UniP-p and a corrector UniC-p
             that reuses the model output at the new point (no extra call); no corrector after the last step.

Nothing is detached: gradients flow to the timesteps, shifts, scales and x_T through every step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from .discretization import Discretization
from .processes import PREDICTION_TYPES, Process, _bcast, get_process

Tensor = torch.Tensor

IPNDM_COEFFS = (
    (1.0,),
    (3.0 / 2, -1.0 / 2),
    (23.0 / 12, -16.0 / 12, 5.0 / 12),
    (55.0 / 24, -59.0 / 24, 37.0 / 24, -9.0 / 24),
)


@dataclass
class Grid:
    """Per-sample quantities of a schedule, each [B, N+1]."""

    t: Tensor
    alpha: Tensor
    sigma: Tensor
    s: Tensor  # sigma / alpha
    lam: Tensor  # log(alpha / sigma)

    @property
    def nfe(self) -> int:
        return self.t.shape[1] - 1


def make_grid(process: Process, timesteps: Tensor) -> Grid:
    """timesteps [B, N+1] -> Grid."""
    a, sg = process.alpha(timesteps), process.sigma(timesteps)
    lam = process.log_snr(timesteps)
    return Grid(timesteps, a, sg, sg / a, lam)


# ------------------------------------------------------------------------------------------------
# Solvers: coefficient functions
# ------------------------------------------------------------------------------------------------
class Solver:
    name: str = ""
    basis: str = "eps"
    max_order: int = 1
    default_order: int = 1

    def check_order(self, order: Optional[int]) -> int:
        order = self.default_order if order is None else order
        if not isinstance(order, int) or isinstance(order, bool) or not 1 <= order <= self.max_order:
            raise ValueError(f"{self.name}: order must be an integer in [1, {self.max_order}], got {order!r}")
        return order

    def step_order(self, i: int, n: int, order: int) -> int:
        """Order actually used at step i of n (lower-order warm start)."""
        return min(order, i + 1)

    def step_coefficients(self, grid: Grid, i: int, order: Optional[int] = None) -> Tuple[Tensor, Tensor]:
        """(u [B], w [B, M]) for step i (from t_i to t_{i+1}); w[:, j] multiplies history entry h_{i-j}."""
        raise NotImplementedError


class EulerSolver(Solver):
    name, basis, max_order, default_order = "euler", "eps", 1, 1

    def step_coefficients(self, grid, i, order=None):
        self.check_order(order)
        a0, a1 = grid.alpha[:, i], grid.alpha[:, i + 1]
        return a1 / a0, (a1 * (grid.s[:, i + 1] - grid.s[:, i])).unsqueeze(1)


_IPNDM_TENSORS: Dict[tuple, Tensor] = {}


def ipndm_coeffs(k: int, dtype, device) -> Tensor:
    """IPNDM_COEFFS[k - 1] as a tensor, made once per (k, dtype, device) and reused: no host-to-device copy after
    the first call, so that a CUDA-graph capture (which follows warm-up calls) can compute the step tables."""
    key = (k, dtype, torch.device(device))
    c = _IPNDM_TENSORS.get(key)
    if c is None:
        c = _IPNDM_TENSORS[key] = torch.tensor(IPNDM_COEFFS[k - 1], dtype=dtype, device=device)
    return c


class IPNDMSolver(Solver):
    name, basis, max_order, default_order = "ipndm", "eps", 4, 4

    def step_coefficients(self, grid, i, order=None):
        k = self.step_order(i, grid.nfe, self.check_order(order))
        a0, a1 = grid.alpha[:, i], grid.alpha[:, i + 1]
        step = a1 * (grid.s[:, i + 1] - grid.s[:, i])
        return a1 / a0, step.unsqueeze(1) * ipndm_coeffs(k, grid.t.dtype, grid.t.device).unsqueeze(0)


class DPMSolverPP2M(Solver):
    name, basis, max_order, default_order = "dpmpp_2m", "x0", 2, 2

    def step_coefficients(self, grid, i, order=None):
        k = self.step_order(i, grid.nfe, self.check_order(order))
        sig0, sig1, a1 = grid.sigma[:, i], grid.sigma[:, i + 1], grid.alpha[:, i + 1]
        h = grid.lam[:, i + 1] - grid.lam[:, i]
        phi = -torch.expm1(-h)  # 1 - sigma_{i+1} alpha_i / (sigma_i alpha_{i+1})
        u = sig1 / sig0
        if k == 1:
            return u, (a1 * phi).unsqueeze(1)
        r = (grid.lam[:, i] - grid.lam[:, i - 1]) / h
        w0 = a1 * phi * (1 + 1 / (2 * r))
        w1 = -a1 * phi / (2 * r)
        return u, torch.stack([w0, w1], dim=1)


class UniPCSolver(Solver):
    """UniPC with B(h) = expm1(-h) ('bh2', equal to h phi_1(h), so one local holds both), data prediction.
    step_coefficients gives the predictor; corrector_coefficients the corrector, whose history has the new model
    output first."""

    name, basis, max_order, default_order = "unipc", "x0", 3, 2

    def __init__(self, lower_order_final: bool = True):
        self.lower_order_final = lower_order_final

    def step_order(self, i, n, order):
        k = min(order, i + 1)
        if self.lower_order_final:
            k = min(k, n - i)
        return k

    def _setup(self, grid: Grid, i: int, k: int):
        lam0, lam1 = grid.lam[:, i], grid.lam[:, i + 1]
        h = lam1 - lam0
        hh = -h
        h_phi_1 = torch.expm1(hh)  # also B(h) of the 'bh2' variant
        rks = [(grid.lam[:, i - m] - lam0) / h for m in range(1, k)] + [torch.ones_like(h)]
        rks = torch.stack(rks, dim=1)  # [B, k]
        R = torch.stack([rks ** j for j in range(k)], dim=1)  # [B, k(rows: power), k(cols: point)]
        b = []
        h_phi_k = h_phi_1 / hh - 1
        fact = 1
        for j in range(1, k + 1):
            b.append(h_phi_k * fact / h_phi_1)
            fact *= j + 1
            h_phi_k = h_phi_k / hh - 1 / fact
        b = torch.stack(b, dim=1)  # [B, k]
        u = grid.sigma[:, i + 1] / grid.sigma[:, i]
        return u, h_phi_1, rks, R, b

    def step_coefficients(self, grid, i, order=None):
        k = self.step_order(i, grid.nfe, self.check_order(order))
        u, h_phi_1, rks, R, b = self._setup(grid, i, k)
        a1 = grid.alpha[:, i + 1]
        w0 = -a1 * h_phi_1
        if k == 1:
            return u, w0.unsqueeze(1)
        if k == 2:
            rhos = torch.full_like(b[:, :1], 0.5)
        else:
            rhos = torch.linalg.solve(R[:, :-1, :-1], b[:, :-1])  # [B, k-1]
        # pred_res = sum_m rhos_m (h_{i-m} - h_i) / r_m
        coef = rhos / rks[:, :-1]  # [B, k-1]
        w_hist = -a1.unsqueeze(1) * h_phi_1.unsqueeze(1) * coef
        w0 = w0 + a1 * h_phi_1 * coef.sum(dim=1)
        return u, torch.cat([w0.unsqueeze(1), w_hist], dim=1)

    def corrector_coefficients(self, grid: Grid, i: int, order: Optional[int] = None) -> Tuple[Tensor, Tensor]:
        """(u, w) of UniC for step i: x_c = u x_i + w[:,0] h_{i+1} + w[:,1] h_i + sum_{m>=1} w[:,m+1] h_{i-m}."""
        k = self.step_order(i, grid.nfe, self.check_order(order))
        u, h_phi_1, rks, R, b = self._setup(grid, i, k)
        a1 = grid.alpha[:, i + 1]
        if k == 1:
            rhos = torch.full_like(b[:, :1], 0.5)
        else:
            rhos = torch.linalg.solve(R, b)  # [B, k]
        w_new = -a1 * h_phi_1 * rhos[:, -1]
        coef = rhos[:, :-1] / rks[:, :-1]  # [B, k-1]
        w_hist = -a1.unsqueeze(1) * h_phi_1.unsqueeze(1) * coef
        w_cur = -a1 * h_phi_1 + a1 * h_phi_1 * (coef.sum(dim=1) + rhos[:, -1])
        return u, torch.cat([w_new.unsqueeze(1), w_cur.unsqueeze(1), w_hist], dim=1)


SOLVERS: Dict[str, Callable[[], Solver]] = {
    "euler": EulerSolver,
    "ipndm": IPNDMSolver,
    "dpmpp_2m": DPMSolverPP2M,
    "unipc": UniPCSolver,
}


def get_solver(name) -> Solver:
    if isinstance(name, Solver):
        return name
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; expected one of {sorted(SOLVERS)}")
    return SOLVERS[name]()


def linear_form(
    solver, process, timesteps: Tensor, i: int, gamma: Optional[Tensor] = None, order: Optional[int] = None
) -> Tuple[Tensor, Tensor]:
    """Per-sample coefficients of step i, x_{i+1} = u x_i + sum_j w_j h_{i-j} (paper Eq. 2).

    timesteps: [B, N+1] or [N+1]; gamma: [B, N] or [N] or None. For eps-basis solvers gamma is folded in,
    so w applies to the raw (unscaled) eps-predictions eps_{i-j}; for x0-basis solvers h is the data
    prediction built from gamma * eps and gamma is not folded.
    """
    solver, process = get_solver(solver), get_process(process)
    ts = timesteps if timesteps.dim() == 2 else timesteps.unsqueeze(0)
    n = ts.shape[1] - 1
    if not 0 <= i < n:
        raise ValueError(f"step index {i} out of range for {n} steps")
    u, w = solver.step_coefficients(make_grid(process, ts), i, order)
    if gamma is not None and solver.basis == "eps":
        g = gamma if gamma.dim() == 2 else gamma.unsqueeze(0)
        w = w * _gamma_windows(g, w.shape[1])[:, i].to(w.dtype)
    return u, w


def _gamma_windows(gamma: Tensor, m: int) -> Tensor:
    """[B, N, m]: entry (i, j) is the scale gamma_{i-j} of the history entry h_{i-j} that w[:, i, j] multiplies
    (eps basis: gamma folded into w), 1 where i - j < 0 (no such entry; its w is 0)."""
    padded = torch.cat([gamma.new_ones(gamma.shape[0], m - 1), gamma], dim=1)
    return padded.unfold(1, m, 1).flip(-1)


def _x0_from_eps_hat(x: Tensor, eps_hat: Tensor, sigma: Tensor, alpha: Tensor) -> Tensor:
    """The x0 basis value (x - sigma eps_hat) / alpha, per-sample sigma and alpha [B]."""
    return (x - _bcast(sigma, x) * eps_hat) / _bcast(alpha, x)


class StepTables(NamedTuple):
    """Per-sample coefficients of all N steps of a multistep solver (the contract of the native loop, csrc/).

    Step i calls the backbone at t_call[:, i], forms the solver's basis value h_i = p[:, i] x_i + q[:, i] pred_i
    and updates x_{i+1} = u[:, i] x_i + sum_{j < orders[i]} w[:, i, j] h_{i-j} (w[:, i, orders[i]:] is zero).
    pred_is_basis: p = 0 and q = 1 (eps-prediction backbone, eps-basis solver): h is the backbone's output.
    """

    u: Tensor  # [B, N]
    w: Tensor  # [B, N, M], M = the solver order
    p: Tensor  # [B, N]
    q: Tensor  # [B, N]
    t_call: Tensor  # [B, N]: tau + dtau
    orders: Tuple[int, ...]  # history entries used at each step
    pred_is_basis: bool


def step_tables(solver, process, timesteps: Tensor, dtau: Optional[Tensor] = None, gamma: Optional[Tensor] = None,
                order: Optional[int] = None, prediction_type: str = "eps", batch: Optional[int] = None) -> StepTables:
    """The coefficients of all N steps for a batch, computed by the solvers' own per-step code (one copy of the
    maths): u, w from `Solver.step_coefficients` with gamma folded in as `linear_form` does (eps basis), and the
    map from the backbone output to the solver's basis, p x + q pred, from `Process.to_eps` and the x0 conversion
    of `sample`, evaluated on the unit vectors (x, pred) = (1, 0) and (0, 1) (exact: the maps are linear).

    timesteps [N+1] or [B, N+1] (float32 / float64), dtau / gamma [N] or [B, N] or None; batch: B for a shared
    schedule (default: the schedule's batch, or 1). Evaluated in float64 and rounded once to the dtype of the
    timesteps, on their device; t_call = timesteps[:, :-1] + dtau in that dtype, as `sample` calls the backbone.
    No checks of the values and no host synchronisation, so that it can run inside a CUDA-graph capture: validate
    the schedule first (`sample` and `indis.native.sample` do).
    Euler, iPNDM and DPM-Solver++(2M); UniPC's corrector needs the model output at the new point (no table form).
    """
    solver, process = get_solver(solver), get_process(process)
    order = solver.check_order(order)
    if isinstance(solver, UniPCSolver):
        raise ValueError("unipc has no per-step table form (its corrector uses the model output at the new point); "
                         "use indis.solvers.sample")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
    if not isinstance(timesteps, Tensor) or timesteps.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"timesteps must be a float32 or float64 tensor, got {type(timesteps).__name__}"
                        f"{'' if not isinstance(timesteps, Tensor) else ' of dtype ' + str(timesteps.dtype)}")
    if timesteps.dim() not in (1, 2) or timesteps.shape[-1] < 2:
        raise ValueError(f"timesteps must have shape [N+1] or [B, N+1] with N >= 1, got {tuple(timesteps.shape)}")
    n = timesteps.shape[-1] - 1
    b = int(batch) if batch is not None else (timesteps.shape[0] if timesteps.dim() == 2 else 1)
    if b < 1 or (timesteps.dim() == 2 and timesteps.shape[0] != b):
        raise ValueError(f"timesteps of shape {tuple(timesteps.shape)} do not match a batch of {b}")
    dtype, dev = timesteps.dtype, timesteps.device

    def rows(v: Optional[Tensor], what: str, width: int, to) -> Optional[Tensor]:
        if v is None:
            return None
        if v.dim() not in (1, 2) or v.shape[-1] != width or (v.dim() == 2 and v.shape[0] != b):
            raise ValueError(f"{what} must have shape [{width}] or [{b}, {width}], got {tuple(v.shape)}")
        v = v.to(device=dev, dtype=to)
        return v.unsqueeze(0).expand(b, -1) if v.dim() == 1 else v

    ts = rows(timesteps, "timesteps", n + 1, dtype)
    t_call = ts[:, :-1] if dtau is None else ts[:, :-1] + rows(dtau, "dtau", n, dtype)
    g64 = rows(gamma, "gamma", n, torch.float64)
    grid = make_grid(process, ts.to(torch.float64))
    orders = tuple(solver.step_order(i, n, order) for i in range(n))
    us, ws = [], []
    for i in range(n):
        u, w = solver.step_coefficients(grid, i, order)
        us.append(u)
        ws.append(w if w.shape[1] == order else torch.nn.functional.pad(w, (0, order - w.shape[1])))
    w = torch.stack(ws, dim=1)
    if g64 is not None and solver.basis == "eps":
        w = w * _gamma_windows(g64, order)
    # prediction -> basis on the unit vectors: column 0 of the result is p, column 1 is q
    x = torch.zeros(b * n, 2, dtype=torch.float64, device=dev)
    x[:, 0] = 1.0
    pred = x.flip(1)
    h = process.to_eps(pred, x, t_call.to(torch.float64).reshape(-1), prediction_type)
    if solver.basis == "x0":
        if g64 is not None:
            h = _bcast(g64.reshape(-1), h) * h
        h = _x0_from_eps_hat(x, h, grid.sigma[:, :-1].reshape(-1), grid.alpha[:, :-1].reshape(-1))
    # one rounding to the tables' dtype for all of them (views of one [B, N, M + 3] tensor)
    m = order
    table = torch.cat([torch.stack(us, dim=1).unsqueeze(-1), w, h.reshape(b, n, 2)], dim=-1).to(dtype)
    return StepTables(u=table[..., 0], w=table[..., 1 : m + 1], p=table[..., m + 1], q=table[..., m + 2],
                      t_call=t_call, orders=orders, pred_is_basis=prediction_type == "eps" and solver.basis == "eps")


# ------------------------------------------------------------------------------------------------
# Input validation
# ------------------------------------------------------------------------------------------------
def _check_schedule(process: Process, x_T: Tensor, ts: Tensor, dtau, gamma):
    if not isinstance(x_T, Tensor) or not x_T.is_floating_point() or x_T.dim() < 1:
        raise ValueError("x_T must be a floating-point tensor of shape [B, ...]")
    if not torch.isfinite(x_T).all():
        raise ValueError("x_T contains NaN or inf")
    b = x_T.shape[0]
    if not isinstance(ts, Tensor):
        ts = torch.as_tensor(ts, dtype=torch.float64)
    if ts.dim() not in (1, 2) or ts.shape[-1] < 2:
        raise ValueError(f"timesteps must have shape [N+1] or [B, N+1] with N >= 1, got {tuple(ts.shape)}")
    if ts.dim() == 2 and ts.shape[0] != b:
        raise ValueError(f"timesteps have batch size {ts.shape[0]} but x_T has batch size {b}")
    n = ts.shape[-1] - 1
    process.check_times(ts.detach(), "timesteps")
    if not (ts[..., 1:] < ts[..., :-1]).all():
        raise ValueError("timesteps must be strictly decreasing (T first, t0 last) for every sample")

    def _chk(v, what):
        if v is None:
            return None
        if not isinstance(v, Tensor):
            v = torch.as_tensor(v, dtype=torch.float64)
        if v.dim() not in (1, 2) or v.shape[-1] != n or (v.dim() == 2 and v.shape[0] != b):
            raise ValueError(f"{what} must have shape [{n}] or [{b}, {n}] to match {n} steps, got {tuple(v.shape)}")
        if not torch.isfinite(v).all():
            raise ValueError(f"{what} contains NaN or inf")
        return v

    dtau, gamma = _chk(dtau, "dtau"), _chk(gamma, "gamma")
    if dtau is not None:
        process.check_times((ts[..., :-1] + dtau).detach(), "shifted call times tau + dtau")
    return ts, n, dtau, gamma


def unpack_discretization(timesteps, dtau, gamma):
    """(timesteps, dtau, gamma) from a Discretization or from separate arguments, not both."""
    if isinstance(timesteps, Discretization):
        if dtau is not None or gamma is not None:
            raise ValueError("pass dtau/gamma either inside the Discretization or as arguments, not both")
        return timesteps.timesteps, timesteps.dtau, timesteps.gamma
    return timesteps, dtau, gamma


def _per_sample(v: Optional[Tensor], b: int, dtype, device) -> Optional[Tensor]:
    if v is None:
        return None
    v = v.to(dtype=dtype, device=device)
    return v.unsqueeze(0).expand(b, -1) if v.dim() == 1 else v


# ------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------
def _shares_memory(a: Tensor, b: Tensor) -> bool:
    """True if a and b are (views of) the same storage."""
    return a.device == b.device and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _resolve_model(backbone, process, prediction_type):
    process = getattr(backbone, "process", None) if process is None else process
    prediction_type = getattr(backbone, "prediction_type", None) if prediction_type is None else prediction_type
    if process is None:
        raise ValueError("the backbone declares no process; pass process=...")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
    return get_process(process), prediction_type


def sample(
    backbone,
    x_T: Tensor,
    timesteps,
    *,
    solver="ipndm",
    order: Optional[int] = None,
    dtau: Optional[Tensor] = None,
    gamma: Optional[Tensor] = None,
    cond=None,
    process=None,
    prediction_type: Optional[str] = None,
    state_dtype: Optional[torch.dtype] = None,
    model_dtype: Optional[torch.dtype] = None,
    checkpoint: bool = False,
    return_trajectory: bool = False,
):
    """Integrate the probability-flow ODE from x_T with N network calls.

    backbone: callable (x, t[B], cond) -> prediction; its `process` and `prediction_type` attributes are used
      unless given here.
    timesteps: [N+1] shared or [B, N+1] per sample, strictly decreasing; or a Discretization (then dtau and
      gamma are taken from it).
    dtau, gamma: [N] or [B, N]; the network is called as gamma_i * eps(x_i, tau_i + dtau_i).
    state_dtype: float32 or float64 for the solver state (default: x_T's dtype if float32/64, else float32).
    model_dtype: dtype of the network input (default: state dtype); its output is cast back.
    checkpoint: recompute each network call in the backward pass (saves memory for large backbones).
    Returns x_0 [B, ...] (and the list of states if return_trajectory).
    """
    timesteps, dtau, gamma = unpack_discretization(timesteps, dtau, gamma)
    solver = get_solver(solver)
    order = solver.check_order(order)
    process, ptype = _resolve_model(backbone, process, prediction_type)
    ts, n, dtau, gamma = _check_schedule(process, x_T, timesteps, dtau, gamma)
    if state_dtype is None:
        state_dtype = x_T.dtype if x_T.dtype in (torch.float32, torch.float64) else torch.float32
    if state_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"state_dtype must be torch.float32 or torch.float64, got {state_dtype}")
    model_dtype = state_dtype if model_dtype is None else model_dtype
    b, dev = x_T.shape[0], x_T.device
    ts = _per_sample(ts, b, state_dtype, dev)
    dtau = _per_sample(dtau, b, state_dtype, dev)
    gamma = _per_sample(gamma, b, state_dtype, dev)
    grid = make_grid(process, ts)
    t_call = ts[:, :-1] if dtau is None else ts[:, :-1] + dtau

    def model_eps(x: Tensor, i: int) -> Tensor:
        """gamma_i * eps(x, tau_i + dtau_i), in the state dtype."""
        tc = t_call[:, i]

        def call(xx, tt):
            out = backbone(xx.to(model_dtype), tt, cond)
            eps = process.to_eps(out.to(state_dtype), xx, tt, ptype)
            # The history may keep eps for several steps: a backbone that returns one buffer and overwrites it
            # on the next call would change it there. Keep a copy when eps is the backbone's own memory.
            return eps.clone() if gamma is None and _shares_memory(eps, out) else eps

        if checkpoint and torch.is_grad_enabled():
            eps = torch.utils.checkpoint.checkpoint(call, x, tc, use_reentrant=False)
        else:
            eps = call(x, tc)
        return eps if gamma is None else _bcast(gamma[:, i], eps) * eps

    def to_basis(eps_hat: Tensor, x: Tensor, i: int) -> Tensor:
        if solver.basis == "eps":
            return eps_hat
        return _x0_from_eps_hat(x, eps_hat, grid.sigma[:, i], grid.alpha[:, i])

    def combine(u: Tensor, w: Tensor, x: Tensor, hist: Sequence[Tensor]) -> Tensor:
        out = _bcast(u, x) * x
        for j in range(w.shape[1]):
            out = out + _bcast(w[:, j], x) * hist[j]
        return out

    x = x_T.to(state_dtype)
    traj = [x]
    if isinstance(solver, UniPCSolver):
        hist: List[Tensor] = [to_basis(model_eps(x, 0), x, 0)]
        for i in range(n):
            u, w = solver.step_coefficients(grid, i, order)
            x_pred = combine(u, w, x, hist)
            if i < n - 1:
                h_new = to_basis(model_eps(x_pred, i + 1), x_pred, i + 1)
                uc, wc = solver.corrector_coefficients(grid, i, order)
                x = combine(uc, wc, x, [h_new] + hist)
                hist = ([h_new] + hist)[: solver.max_order]
            else:
                x = x_pred
            traj.append(x)
    else:
        hist = []
        for i in range(n):
            hist = ([to_basis(model_eps(x, i), x, i)] + hist)[: solver.max_order]
            u, w = solver.step_coefficients(grid, i, order)
            x = combine(u, w, x, hist)
            traj.append(x)
    return (x, traj) if return_trajectory else x
