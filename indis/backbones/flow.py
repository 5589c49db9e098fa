"""Flow-matching (velocity-prediction) backbones.

Process: flow matching OT / rectified flow, x_t = (1 - t) x0 + t eps, the network predicts v = eps - x0
(prediction type "velocity"). The resolution-dependent shift of SD3/FLUX, t' = s t / (1 + (s - 1) t), is the
default discretisation of these models (`default_timesteps`, indis.schedules.shifted_uniform).

* `FlowMLPBackbone`: a small velocity MLP for vector data (toy / tests), with `flow_matching_loss` to train it.
* `DiffusersAdapter` (defined in indis.backbones.diffusers, re-exported here): wraps a diffusers model.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..processes import FlowOTProcess
from ..schedules import shifted_uniform
from .base import Backbone, CondSpec

Tensor = torch.Tensor

def _time_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    arg = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([arg.cos(), arg.sin()], dim=1)


class VelocityMLP(torch.nn.Module):
    """v(x, t[, c]) for flat vectors: sinusoidal time embedding, residual SiLU MLP."""

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, time_dim: int = 64, cond_dim: int = 0):
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 1:
            raise ValueError("dim, hidden and depth must be positive")
        self.dim, self.hidden, self.depth, self.time_dim, self.cond_dim = dim, hidden, depth, time_dim, cond_dim
        self.inp = torch.nn.Linear(dim, hidden)
        self.temb = torch.nn.Sequential(torch.nn.Linear(time_dim, hidden), torch.nn.SiLU(), torch.nn.Linear(hidden, hidden))
        self.cemb = torch.nn.Linear(cond_dim, hidden, bias=False) if cond_dim else None
        self.blocks = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.LayerNorm(hidden), torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
                                torch.nn.Linear(hidden, hidden)) for _ in range(depth))
        self.out = torch.nn.Sequential(torch.nn.LayerNorm(hidden), torch.nn.Linear(hidden, dim))

    def forward(self, x: Tensor, t: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        e = self.temb(_time_embedding(t, self.time_dim).to(x.dtype))
        if self.cemb is not None and cond is not None:
            e = e + self.cemb(cond.to(x.dtype))
        h = self.inp(x)
        for blk in self.blocks:
            h = h + blk(h + e)
        return self.out(h)


def default_timesteps(n: int, shift: float = 3.0, t0: float = 0.002, T: float = 0.988) -> Tensor:
    """The flow-matching shift schedule (SD3/FLUX) with n steps on [t0, T]."""
    return shifted_uniform(n, t0, T, shift=shift)


class FlowMLPBackbone(Backbone):
    """Velocity-prediction backbone on vectors of size dim under FlowOTProcess (t0 0.002, T 0.988)."""

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, n_classes: int = 0, shift: float = 1.0,
                 t0: float = 0.002, T: float = 0.988):
        if shift <= 0:
            raise ValueError(f"shift must be positive, got {shift}")
        super().__init__(FlowOTProcess(t0=t0, T=T), "velocity", (dim,),
                         CondSpec("class", n_classes) if n_classes else CondSpec())
        self.shift = float(shift)
        self.net = VelocityMLP(dim, hidden, depth, cond_dim=n_classes)

    def config(self):
        cfg = super().config()
        n = self.net
        cfg.update(hidden=n.hidden, depth=n.depth, time_dim=n.time_dim, shift=self.shift)
        return cfg

    def default_timesteps(self, n: int) -> Tensor:
        return default_timesteps(n, self.shift, self.process.t0, self.process.T)

    def predict(self, x, t, cond):
        return self.net(x, t, cond)


def flow_matching_loss(backbone: Backbone, x0: Tensor, generator: Optional[torch.Generator] = None,
                       cond=None, logit_normal: bool = True) -> Tensor:
    """Conditional flow matching: t ~ logit-normal(0, 1) (SD3) or uniform, x_t = (1-t) x0 + t eps,
    loss = |v(x_t, t) - (eps - x0)|^2 (mean)."""
    if backbone.prediction_type != "velocity":
        raise ValueError(f"flow_matching_loss trains velocity backbones, got prediction type {backbone.prediction_type!r}")
    b = x0.shape[0]
    u = torch.randn(b, generator=generator) if logit_normal else None
    t = torch.sigmoid(u) if logit_normal else torch.rand(b, generator=generator)
    t = t.clamp(1e-4, 1 - 1e-4).to(x0.dtype)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    tt = t.reshape(-1, *([1] * (x0.dim() - 1)))
    xt = (1 - tt) * x0 + tt * eps
    return ((backbone(xt, t, cond) - (eps - x0)) ** 2).mean()
