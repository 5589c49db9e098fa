"""LD3 (Tong et al., "Learning to Discretize Denoising Diffusion ODEs", ICLR 2025; code vinhsuhi/LD3) as a baseline
trained by the same machinery.

LD3Discretization: one global schedule (logits -> softmax -> cumsum -> affine map in a warp space, the same
map as INDIS's tau) with a decoupled shift of each interior network call. The shift of call i >= 1 is
0.5 * (smallest gap of the current schedule in warp units) * tanh(s_i): LD3 clamps the shift to that range;
tanh keeps the same bound while staying differentiable. The first call (at T) is never shifted, the update
coefficients use the unshifted grid (sample() does that with dtau), and there is no output scale.

Soft x_T ball: each training latent (in unit-variance space, z = x_T / sigma_T) may move inside an L2 ball of
radius r = factor * D / N^2 (factor 0.001 in LD3; D = numel of one sample) around its original noise. Once
per batch, a proposal moves z by a step of length r along its negative loss gradient and projects it back
into the ball; the move is kept for a sample only if its loss (with the updated schedule) fell.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import nn

from ..backbones.base import CondSpec
from ..discretization import Discretization, DiscretizationParam

Tensor = torch.Tensor


class LD3Discretization(nn.Module):
    def __init__(self, param: DiscretizationParam, init_timesteps: Optional[Tensor] = None, data_shape: Sequence[int] = (),
                 cond_spec: CondSpec = CondSpec(), use_shift: bool = True):
        super().__init__()
        if param.b_gamma != 0 or param.b_dtau != 0:
            param = DiscretizationParam(param.process, param.nfe, param.t0, param.T, param.warp.kind, param.warp.rho, 0.0, 0.0)
        self.param = param
        self.data_shape = tuple(int(d) for d in data_shape)
        self.cond_spec = cond_spec
        self.use_shift = bool(use_shift)
        o = torch.zeros(param.nfe)
        if init_timesteps is not None:
            o = param.logits_for_schedule(torch.as_tensor(init_timesteps, dtype=torch.float64)).float()
        self.logits = nn.Parameter(o)
        self.shift = nn.Parameter(torch.zeros(param.nfe))

    def config(self) -> Dict:
        return {"class": "LD3Discretization", "param": self.param.config(), "data_shape": list(self.data_shape),
                "cond_spec": self.cond_spec.to_dict(), "use_shift": self.use_shift}

    def global_discretization(self) -> Discretization:
        tau = self.param.timesteps(self.logits)
        t = tau[:-1]
        if not self.use_shift:
            return Discretization(tau, torch.zeros_like(t), torch.ones_like(t))
        warp = self.param.warp
        w = warp(tau)
        min_gap = (w[:-1] - w[1:]).abs().min()
        mask = torch.ones_like(t)
        mask[0] = 0.0
        w_call = w[:-1] + mask * 0.5 * min_gap * torch.tanh(self.shift)
        return Discretization(tau, warp.inverse(w_call) - t, torch.ones_like(t))

    def raw(self, x_T: Tensor, cond=None) -> Tensor:
        o = torch.stack([self.logits, self.shift, torch.zeros_like(self.shift)])
        return o.unsqueeze(0).expand(x_T.shape[0], -1, -1)

    def forward(self, x_T: Tensor, cond=None) -> Discretization:
        d = self.global_discretization()
        b = x_T.shape[0]
        return Discretization(d.timesteps.expand(b, -1), d.dtau.expand(b, -1), d.gamma.expand(b, -1))


def ball_radius(data_shape: Sequence[int], nfe: int, factor: float = 0.001) -> float:
    d = 1
    for s in data_shape:
        d *= int(s)
    return factor * d / nfe**2


def ball_proposal(z: Tensor, z0: Tensor, grad: Tensor, radius: float) -> Tensor:
    """One normalised gradient step of length `radius` from z, projected into the ball |z - z0| <= radius."""
    b = z.shape[0]
    g = grad.reshape(b, -1)
    step = g / g.norm(dim=1, keepdim=True).clamp_min(1e-30) * radius
    d = (z - z0).reshape(b, -1) - step
    n = d.norm(dim=1, keepdim=True)
    d = d * torch.clamp(radius / n.clamp_min(1e-30), max=1.0)
    return z0 + d.reshape(z.shape)
