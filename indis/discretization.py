"""The learned discretization of INDIS (paper Eqs. 5-7): raw outputs O in R^{3 x N} -> {tau, dtau, gamma}.

    tau   : softmax(o_tau) -> cumulative sum -> affine map onto [w(t0), w(T)] in a warp space w -> w^{-1}
    dtau  : b_dtau * tanh(o_dtau / 2), a shift of the time at which the network is called
    gamma : b_gamma * tanh(o_gamma / 2) + 1, a scale of the network's eps-prediction

and the network call becomes eps_hat_n = gamma_n * eps(x_n, tau_n + dtau_n).

Choices the paper leaves to its appendix, written down here:
  * Warp spaces (all increasing in t): "t" (the paper's Eq. 7 literally), "logsnr" (w = -lambda, LD3's
    CIFAR setting), "sigma_rho" (w = (sigma/alpha)^(1/rho), EDM's polynomial space; equals sigma^(1/rho) for
    EDM). With zero logits the map gives the uniform schedule of that space.
  * The shift is applied in the same warp space, w(tau + dtau) = w(tau) + b_dtau tanh(o/2), so that a bound
    means the same thing at T = 80 and at t0 = 0.002; `dtau` is returned in time units. The shifted time is
    clamped inside [w(t0), w(T)] widened by the bound, and never outside the process's valid range.
  * Strictness: the softmax is mixed with a uniform floor, p = (1 - m) softmax + m / N with m = 1e-3, so the
    schedule stays strictly decreasing even when float32 softmax underflows for extreme logits.
  * The endpoints tau_0 = T and tau_N = t0 are exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional

import torch

from .processes import Process, get_process

Tensor = torch.Tensor

WARPS = ("t", "logsnr", "sigma_rho")
FLOOR_MASS = 1e-3


@dataclass
class Discretization:
    """A per-sample (or shared) discretization in sampling order.

    timesteps: [B, N+1] (or [N+1]) strictly decreasing, T first, t0 last.
    dtau:      [B, N] (or [N]) shift of the network-call time at each of the N calls.
    gamma:     [B, N] (or [N]) scale of the eps-prediction at each call.
    """

    timesteps: Tensor
    dtau: Optional[Tensor] = None
    gamma: Optional[Tensor] = None

    @property
    def nfe(self) -> int:
        return self.timesteps.shape[-1] - 1

    def to(self, *args, **kwargs) -> "Discretization":
        f = lambda v: None if v is None else v.to(*args, **kwargs)
        return Discretization(f(self.timesteps), f(self.dtau), f(self.gamma))

    def detach(self) -> "Discretization":
        f = lambda v: None if v is None else v.detach()
        return Discretization(f(self.timesteps), f(self.dtau), f(self.gamma))

    def call_times(self) -> Tensor:
        """Times at which the network is evaluated: timesteps[..., :N] + dtau."""
        t = self.timesteps[..., :-1]
        return t if self.dtau is None else t + self.dtau


class Warp:
    """A monotone increasing reparameterisation w(t) of time for a process, with its inverse."""

    def __init__(self, process: Process, kind: str = "logsnr", rho: float = 7.0):
        if kind not in WARPS:
            raise ValueError(f"unknown warp space {kind!r}; expected one of {WARPS}")
        if rho <= 0:
            raise ValueError(f"rho must be positive, got {rho}")
        self.process, self.kind, self.rho = process, kind, float(rho)

    def __call__(self, t: Tensor) -> Tensor:
        if self.kind == "t":
            return t
        lam = self.process.log_snr(t)
        return -lam if self.kind == "logsnr" else torch.exp(-lam / self.rho)

    def inverse(self, w: Tensor) -> Tensor:
        if self.kind == "t":
            return w
        lam = -w if self.kind == "logsnr" else -self.rho * torch.log(w)
        return self.process.t_from_log_snr(lam)


class DiscretizationParam(torch.nn.Module):
    """Maps raw outputs O ([B, 3, N] per sample, or [3, N] for one global set) to a Discretization.

    Args:
      process: noise process (name or instance).
      nfe: number of steps N.
      t0, T: sampling interval (default: the process's).
      warp: "t", "logsnr" or "sigma_rho" (see module docstring).
      rho: exponent of the sigma_rho warp.
      b_dtau: bound of the shift, in warp-space units (0 disables shifts).
      b_gamma: bound of the scale around 1 (0 disables scales).
    """

    def __init__(
        self,
        process,
        nfe: int,
        t0: float | None = None,
        T: float | None = None,
        warp: str = "logsnr",
        rho: float = 7.0,
        b_dtau: float = 0.05,
        b_gamma: float = 0.05,
    ):
        super().__init__()
        process = get_process(process)
        if not isinstance(nfe, int) or nfe < 1:
            raise ValueError(f"nfe must be a positive integer, got {nfe!r}")
        self.process = process
        self.nfe = nfe
        self.t0 = process.t0 if t0 is None else float(t0)
        self.T = process.T if T is None else float(T)
        if not 0 < self.t0 < self.T:
            raise ValueError(f"need 0 < t0 < T, got t0={self.t0}, T={self.T}")
        process.check_times(torch.tensor([self.t0, self.T], dtype=torch.float64), "[t0, T]")
        if b_dtau < 0 or b_gamma < 0 or not (math.isfinite(b_dtau) and math.isfinite(b_gamma)):
            raise ValueError(f"bounds must be finite and >= 0, got b_dtau={b_dtau}, b_gamma={b_gamma}")
        if b_gamma >= 1:
            raise ValueError(f"b_gamma must be < 1 so that gamma stays positive, got {b_gamma}")
        self.warp = Warp(process, warp, rho)
        self.b_dtau, self.b_gamma = float(b_dtau), float(b_gamma)

    def config(self) -> Dict:
        return {
            "process": self.process.config(),
            "nfe": self.nfe,
            "t0": self.t0,
            "T": self.T,
            "warp": self.warp.kind,
            "rho": self.warp.rho,
            "b_dtau": self.b_dtau,
            "b_gamma": self.b_gamma,
        }

    @classmethod
    def from_config(cls, cfg: Dict) -> "DiscretizationParam":
        cfg = dict(cfg)
        return cls(get_process(cfg.pop("process")), **cfg)

    def _w_bounds(self, dtype) -> tuple:
        ends = torch.tensor([self.t0, self.T], dtype=torch.float64)
        w0, wT = self.warp(ends).tolist()
        return w0, wT

    def timesteps(self, o_tau: Tensor) -> Tensor:
        """[..., N] logits -> [..., N+1] strictly decreasing times, T first, t0 last."""
        n = o_tau.shape[-1]
        p = torch.softmax(o_tau, dim=-1) * (1 - FLOOR_MASS) + FLOOR_MASS / n
        c = torch.cumsum(p, dim=-1)
        c = c / c[..., -1:]  # exactly 1 at the end
        frac = torch.cat([torch.zeros_like(c[..., :1]), c], dim=-1)  # 0 .. 1, increasing
        w0, wT = self._w_bounds(o_tau.dtype)
        w = wT + frac * (w0 - wT)  # from w(T) down to w(t0)
        t = self.warp.inverse(w)
        # exact endpoints, without in-place writes that would break autograd
        first = torch.full_like(t[..., :1], self.T)
        last = torch.full_like(t[..., :1], self.t0)
        return torch.cat([first, t[..., 1:-1], last], dim=-1)

    def forward(self, o: Tensor) -> Discretization:
        if not isinstance(o, Tensor) or o.dim() not in (2, 3) or o.shape[-2] != 3 or o.shape[-1] != self.nfe:
            shape = tuple(o.shape) if isinstance(o, Tensor) else type(o).__name__
            raise ValueError(
                f"raw discretization outputs must have shape [B, 3, {self.nfe}] or [3, {self.nfe}], got {shape}"
            )
        if not torch.isfinite(o).all():
            raise ValueError("raw discretization outputs contain NaN or inf")
        o_tau, o_dtau, o_gamma = o.unbind(dim=-2)
        tau = self.timesteps(o_tau)
        gamma = self.b_gamma * torch.tanh(o_gamma / 2) + 1
        t = tau[..., :-1]
        if self.b_dtau > 0:
            shift = self.b_dtau * torch.tanh(o_dtau / 2)
            w0, wT = self._w_bounds(o.dtype)
            lo_w, hi_w = w0 - self.b_dtau, wT + self.b_dtau
            # keep the shifted warp coordinate inside the warp's own domain and the process's valid range
            lo_valid, hi_valid = self.process.t_valid
            if self.warp.kind == "sigma_rho":
                lo_w = max(lo_w, 1e-12)
            if math.isfinite(hi_valid):
                hi_w = min(hi_w, float(self.warp(torch.tensor(hi_valid - 1e-6, dtype=torch.float64))))
            lo_w = max(lo_w, float(self.warp(torch.tensor(max(lo_valid, 0.0) + 1e-6, dtype=torch.float64))))
            w_call = torch.clamp(self.warp(t) + shift, lo_w, hi_w)
            dtau = self.warp.inverse(w_call) - t
        else:
            dtau = torch.zeros_like(t)
        return Discretization(tau, dtau, gamma)

    def identity_logits(self, batch: int | None = None, dtype=torch.float32) -> Tensor:
        """Zero logits: the uniform schedule of the warp space, no shift, unit scale."""
        shape = (3, self.nfe) if batch is None else (batch, 3, self.nfe)
        return torch.zeros(shape, dtype=dtype)

    def logits_for_schedule(self, timesteps: Tensor) -> Tensor:
        """Logits o_tau whose map reproduces a given decreasing schedule (up to the uniform floor): the
        initialisation used to start learned schedules from a heuristic one."""
        w = self.warp(timesteps.to(torch.float64))
        w0, wT = self._w_bounds(torch.float64)
        frac = (wT - w) / (wT - w0)
        gaps = (frac[..., 1:] - frac[..., :-1]).clamp_min(1e-12)
        n = gaps.shape[-1]
        p = ((gaps - FLOOR_MASS / n) / (1 - FLOOR_MASS)).clamp_min(1e-12)
        return torch.log(p)
