"""Noise processes x_t = alpha(t) x0 + sigma(t) eps and conversions between prediction types.

Every process exposes alpha(t), sigma(t), their time derivatives, the log signal-to-noise ratio
lambda(t) = log(alpha/sigma) and its inverse, and the default sampling interval [t0, T].

The solvers work in the "VE-equivalent" variables y = x / alpha and s = sigma / alpha = exp(-lambda),
in which every process's probability-flow ODE reads dy/ds = eps(x, t) (DEIS/iPNDM, DPM-Solver). For the
EDM/VE process (alpha = 1, sigma = t) these are x and t themselves, so the EDM-form solvers (Euler, Karras et
al. 2022; iPNDM, Zhang & Chen 2023, DEIS; DPM-Solver++, Lu et al. 2022) are reproduced exactly; for flow matching OT an Euler step in (y, s) equals an
Euler step on the velocity in (x, t).

Prediction types:
  "eps"       the noise eps;
  "x0"        the data (EDM's denoiser D(x; sigma));
  "velocity"  the ODE velocity of the conditional path, v = alpha'(t) x0 + sigma'(t) eps
              (for flow matching OT: v = eps - x0).
"""
from __future__ import annotations

import math
from typing import Dict, Tuple, Type

import torch

Tensor = torch.Tensor

PREDICTION_TYPES = ("eps", "x0", "velocity")


def _as_tensor(t, like: Tensor | None = None) -> Tensor:
    if isinstance(t, Tensor):
        return t
    dtype = like.dtype if like is not None and like.is_floating_point() else torch.float64
    device = like.device if like is not None else None
    return torch.as_tensor(t, dtype=dtype, device=device)


def _bcast(coef: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample coefficient [B] (or scalar) so it broadcasts against x [B, ...]."""
    coef = coef.to(x.dtype) if coef.is_floating_point() else coef
    if coef.dim() == 0:
        return coef
    if coef.dim() != 1 or coef.shape[0] not in (1, x.shape[0]):
        raise ValueError(
            f"per-sample coefficient of shape {tuple(coef.shape)} does not match a batch of shape {tuple(x.shape)}"
        )
    return coef.reshape(coef.shape[0], *([1] * (x.dim() - 1)))


class Process:
    """Base class of a Gaussian noise process. Subclasses define alpha, sigma and their derivatives."""

    name: str = "base"
    #: open interval of valid times (alpha > 0 and sigma > 0 strictly inside it)
    t_valid: Tuple[float, float] = (0.0, math.inf)
    #: default sampling interval
    t0: float = 1e-3
    T: float = 1.0

    # --- to be defined by subclasses -------------------------------------------------------
    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        raise NotImplementedError

    # --- shared ----------------------------------------------------------------------------
    def log_snr(self, t: Tensor) -> Tensor:
        t = _as_tensor(t)
        return torch.log(self.alpha(t)) - torch.log(self.sigma(t))

    def ve_sigma(self, t: Tensor) -> Tensor:
        """s = sigma / alpha = exp(-lambda): the noise level in VE-equivalent units."""
        t = _as_tensor(t)
        return self.sigma(t) / self.alpha(t)

    def prior_std(self, T: float | None = None) -> float:
        """Standard deviation of the Gaussian prior x_T ~ N(0, sigma(T)^2 I) used to start sampling."""
        T = self.T if T is None else T
        return float(self.sigma(torch.tensor(T, dtype=torch.float64)))

    def config(self) -> Dict:
        return {"name": self.name}

    def check_times(self, t: Tensor, what: str = "timesteps") -> None:
        """Raise ValueError if any time lies outside the process's valid open interval or is not finite."""
        if not torch.isfinite(t).all():
            raise ValueError(f"{what} contain NaN or inf")
        lo, hi = self.t_valid
        # compare in float64: against a Python bound a float32 tensor rounds the bound to float32 (1 + 1e-9 -> 1.0)
        t = t.detach().to(torch.float64)
        if (t <= lo).any() or (t >= hi).any():
            bad = t[(t <= lo) | (t >= hi)].flatten()[0].item()
            raise ValueError(
                f"{what} must lie inside the valid range ({lo}, {hi}) of the {self.name} process; got {bad}"
            )

    # --- conversions between prediction types ------------------------------------------------
    def to_eps(self, pred: Tensor, x: Tensor, t: Tensor, prediction_type: str) -> Tensor:
        """Convert a network output of the given type at (x, t) into an eps-prediction. t: scalar or [B]."""
        t = _as_tensor(t, x)
        if prediction_type == "eps":
            return pred
        a, s = _bcast(self.alpha(t), x), _bcast(self.sigma(t), x)
        if prediction_type == "x0":
            return (x - a * pred) / s
        if prediction_type == "velocity":
            da, ds = _bcast(self.d_alpha(t), x), _bcast(self.d_sigma(t), x)
            return (a * pred - da * x) / (a * ds - s * da)
        raise ValueError(f"unknown prediction type {prediction_type!r}; expected one of {PREDICTION_TYPES}")

    def to_x0(self, pred: Tensor, x: Tensor, t: Tensor, prediction_type: str) -> Tensor:
        t = _as_tensor(t, x)
        if prediction_type == "x0":
            return pred
        a, s = _bcast(self.alpha(t), x), _bcast(self.sigma(t), x)
        if prediction_type == "eps":
            return (x - s * pred) / a
        if prediction_type == "velocity":
            da, ds = _bcast(self.d_alpha(t), x), _bcast(self.d_sigma(t), x)
            return (ds * x - s * pred) / (a * ds - s * da)
        raise ValueError(f"unknown prediction type {prediction_type!r}; expected one of {PREDICTION_TYPES}")

    def from_x0(self, x0: Tensor, x: Tensor, t: Tensor, prediction_type: str) -> Tensor:
        """Express a data prediction x0 at (x, t) as a prediction of the given type."""
        t = _as_tensor(t, x)
        if prediction_type == "x0":
            return x0
        a, s = _bcast(self.alpha(t), x), _bcast(self.sigma(t), x)
        eps = (x - a * x0) / s
        if prediction_type == "eps":
            return eps
        if prediction_type == "velocity":
            return _bcast(self.d_alpha(t), x) * x0 + _bcast(self.d_sigma(t), x) * eps
        raise ValueError(f"unknown prediction type {prediction_type!r}; expected one of {PREDICTION_TYPES}")

    def from_eps(self, eps: Tensor, x: Tensor, t: Tensor, prediction_type: str) -> Tensor:
        t = _as_tensor(t, x)
        if prediction_type == "eps":
            return eps
        a, s = _bcast(self.alpha(t), x), _bcast(self.sigma(t), x)
        return self.from_x0((x - s * eps) / a, x, t, prediction_type)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class EDMProcess(Process):
    """EDM / variance exploding: alpha = 1, sigma = t (Karras et al. 2022)."""

    name = "edm"
    t_valid = (0.0, math.inf)

    def __init__(self, t0: float = 0.002, T: float = 80.0, sigma_data: float = 0.5):
        self.t0, self.T, self.sigma_data = float(t0), float(T), float(sigma_data)

    def alpha(self, t):
        return torch.ones_like(_as_tensor(t))

    def sigma(self, t):
        return _as_tensor(t).clone()

    def d_alpha(self, t):
        return torch.zeros_like(_as_tensor(t))

    def d_sigma(self, t):
        return torch.ones_like(_as_tensor(t))

    def log_snr(self, t):
        return -torch.log(_as_tensor(t))

    def t_from_log_snr(self, lam):
        return torch.exp(-_as_tensor(lam))

    def config(self):
        return {"name": self.name, "t0": self.t0, "T": self.T, "sigma_data": self.sigma_data}


class FlowOTProcess(Process):
    """Flow matching with the optimal-transport (rectified flow) path: alpha = 1 - t, sigma = t."""

    name = "flow"
    t_valid = (0.0, 1.0)

    def __init__(self, t0: float = 0.002, T: float = 0.988):
        self.t0, self.T = float(t0), float(T)

    def alpha(self, t):
        return 1.0 - _as_tensor(t)

    def sigma(self, t):
        return _as_tensor(t).clone()

    def d_alpha(self, t):
        return -torch.ones_like(_as_tensor(t))

    def d_sigma(self, t):
        return torch.ones_like(_as_tensor(t))

    def t_from_log_snr(self, lam):
        # alpha/sigma = (1-t)/t = e^lam  ->  t = 1 / (1 + e^lam) = sigmoid(-lam)
        return torch.sigmoid(-_as_tensor(lam))

    def config(self):
        return {"name": self.name, "t0": self.t0, "T": self.T}


class VPLinearProcess(Process):
    """Variance preserving with DDPM's linear betas in continuous time:
    log alpha(t) = -(beta_1 - beta_0) t^2 / 4 - beta_0 t / 2, sigma = sqrt(1 - alpha^2), t in (0, 1]."""

    name = "vp_linear"
    t_valid = (0.0, 1.0 + 1e-9)

    def __init__(self, t0: float = 1e-3, T: float = 1.0, beta_0: float = 0.1, beta_1: float = 20.0):
        self.t0, self.T, self.beta_0, self.beta_1 = float(t0), float(T), float(beta_0), float(beta_1)

    def _log_alpha(self, t):
        t = _as_tensor(t)
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def alpha(self, t):
        return torch.exp(self._log_alpha(t))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2.0 * self._log_alpha(t)))

    def d_alpha(self, t):
        t = _as_tensor(t)
        return self.alpha(t) * (-0.5 * t * (self.beta_1 - self.beta_0) - 0.5 * self.beta_0)

    def d_sigma(self, t):
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def log_snr(self, t):
        la = self._log_alpha(t)
        return la - 0.5 * torch.log(-torch.expm1(2.0 * la))

    def t_from_log_snr(self, lam):
        lam = _as_tensor(lam)
        tmp = 2.0 * (self.beta_1 - self.beta_0) * torch.logaddexp(-2.0 * lam, torch.zeros_like(lam))
        delta = self.beta_0**2 + tmp
        return tmp / (torch.sqrt(delta) + self.beta_0) / (self.beta_1 - self.beta_0)

    def config(self):
        return {"name": self.name, "t0": self.t0, "T": self.T, "beta_0": self.beta_0, "beta_1": self.beta_1}


class VPCosineProcess(Process):
    """Variance preserving with the cosine schedule of improved DDPM:
    alpha(t) = cos(pi/2 (t + s)/(1 + s)) / cos(pi/2 s/(1 + s)), sigma = sqrt(1 - alpha^2)."""

    name = "vp_cosine"

    def __init__(self, t0: float = 1e-3, T: float = 0.9946, s: float = 0.008):
        self.t0, self.T, self.s = float(t0), float(T), float(s)
        self._log_alpha0 = math.log(math.cos(math.pi / 2 * self.s / (1 + self.s)))
        # alpha reaches 0 at t = 1; keep sigma < 1 strictly inside
        self.t_valid = (0.0, 1.0)

    def _log_alpha(self, t):
        t = _as_tensor(t)
        return torch.log(torch.cos(math.pi / 2 * (t + self.s) / (1 + self.s))) - self._log_alpha0

    def alpha(self, t):
        return torch.exp(self._log_alpha(t))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2.0 * self._log_alpha(t)))

    def d_alpha(self, t):
        t = _as_tensor(t)
        arg = math.pi / 2 * (t + self.s) / (1 + self.s)
        return -torch.sin(arg) * (math.pi / 2 / (1 + self.s)) / math.exp(self._log_alpha0)

    def d_sigma(self, t):
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)

    def log_snr(self, t):
        la = self._log_alpha(t)
        return la - 0.5 * torch.log(-torch.expm1(2.0 * la))

    def t_from_log_snr(self, lam):
        lam = _as_tensor(lam)
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lam), -2.0 * lam)
        return torch.arccos(torch.exp(log_alpha + self._log_alpha0)) * 2.0 * (1.0 + self.s) / math.pi - self.s

    def config(self):
        return {"name": self.name, "t0": self.t0, "T": self.T, "s": self.s}


PROCESSES: Dict[str, Type[Process]] = {
    "edm": EDMProcess,
    "ve": EDMProcess,
    "flow": FlowOTProcess,
    "flow_ot": FlowOTProcess,
    "vp_linear": VPLinearProcess,
    "vp_cosine": VPCosineProcess,
}


def get_process(name_or_process, **kwargs) -> Process:
    """Return a process by name ("edm", "flow", "vp_linear", "vp_cosine") or pass an instance through."""
    if isinstance(name_or_process, Process):
        if kwargs:
            raise ValueError("keyword arguments are only accepted with a process name")
        return name_or_process
    if isinstance(name_or_process, dict):
        cfg = dict(name_or_process)
        return get_process(cfg.pop("name"), **cfg)
    if name_or_process not in PROCESSES:
        raise ValueError(f"unknown process {name_or_process!r}; expected one of {sorted(PROCESSES)}")
    return PROCESSES[name_or_process](**kwargs)
