"""AMED-Plugin (Zhou et al., "Fast ODE-based Sampling for Diffusion Models in Around 5 Steps", CVPR 2024) on iPNDM.

A coarse schedule t_0 = T > t_1 > ... > t_K = t0 (EDM's polynomial by default). In every coarse interval a small
network g predicts, per sample, an intermediate point and two scales from what the sampler has at t_n:
    r_n in (0, 1)                 s_mid = s_{n+1}^r s_n^(1 - r)  (geometric in the VE noise level s = sigma/alpha)
    a_n in [1 - s_t, 1 + s_t]     the network at the intermediate point is called at a_n s_mid ("scale_time")
    c_n in [1 - s_d, 1 + s_d]     the second half-step is scaled by c_n ("scale_dir")
and the step is two iPNDM half-steps sharing one history of eps-predictions (VE variables y = x / alpha, dy/ds = eps):
    d_n   = eps(x_n, t_n);                    push;  y_mid = y_n + (s_mid - s_n) AB(history)
    d_mid = eps(x_mid, t(a_n s_mid));         push;  y_{n+1} = y_mid + c_n (s_{n+1} - s_mid) AB(history)
(AB: iPNDM's fixed Adams-Bashforth mix of the last up to 4 entries). NFE = 2K; with AFS (used for odd NFE, as the
seed paper does) the call at T is the analytical estimate and NFE = 2K - 1.

The network (as AMED's): features of the sampler state -> Linear -> SiLU -> Linear -> 4 channels, concatenated
with embeddings of t_n and t_{n+1} (sinusoidal, 8 channels each, Linear + SiLU), one Linear + sigmoid per output.
Differences from AMED's code: (1) AMED reads the EDM U-Net's bottleneck activations through a hook; INDIS's
backbones have no common feature interface, so g encodes the state x_n (variance-normalised) and the model's
eps-prediction at it (the same information the bottleneck is computed from), with the predictor's encoders (MLP
for vectors, the strided conv encoder for images); (2) it is trained by INDIS's loop (endpoint distance to the
teacher, backpropagated through the whole solve) instead of AMED's per-coarse-step trajectory loss with one
optimiser step per coarse step. At initialisation (zero output weights) r = 1/2, a = c = 1: iPNDM on the coarse
schedule with geometric midpoints.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from ..backbones.base import CondSpec
from ..discretization import Discretization, DiscretizationParam
from ..predictor import _ImageEncoder
from ..processes import _bcast
from ..solvers import IPNDM_COEFFS
from .common import analytic_eps, to_ve

Tensor = torch.Tensor


def amed_steps(nfe: int) -> Tuple[int, bool]:
    """(coarse steps K, AFS) for an NFE: K = NFE / 2 without AFS for even NFE, (NFE + 1) / 2 with AFS for odd."""
    if nfe < 2:
        raise ValueError(f"AMED-Plugin needs at least 2 network calls, got NFE {nfe}")
    return (nfe // 2, False) if nfe % 2 == 0 else ((nfe + 1) // 2, True)


def _time_embedding(v: Tensor, dim: int = 8) -> Tensor:
    """Sinusoidal embedding [B, dim] of scalars v [B] (log noise levels)."""
    half = dim // 2
    freqs = torch.exp(-math.log(100.0) * torch.arange(half, dtype=v.dtype, device=v.device) / half)
    a = v.unsqueeze(1) * freqs.unsqueeze(0)
    return torch.cat([a.sin(), a.cos()], dim=1)


class AMEDPlugin(nn.Module):
    """AMED-Plugin on iPNDM. param: DiscretizationParam of the K coarse steps (its timesteps come from
    `coarse_timesteps`); nfe: network calls (2K, or 2K - 1 with AFS)."""

    runs_sampler = True  # solve() and the training loop call forward(x_T, cond, backbone) for the samples

    def __init__(self, param: DiscretizationParam, coarse_timesteps: Optional[Tensor] = None, data_shape: Sequence[int] = (),
                 cond_spec: CondSpec = CondSpec(), nfe: Optional[int] = None, hidden: int = 128, conv_width: int = 32,
                 scale_dir: float = 0.01, scale_time: float = 0.2):
        super().__init__()
        self.param = param
        k = param.nfe
        self.nfe = 2 * k if nfe is None else int(nfe)
        if self.nfe not in (2 * k, 2 * k - 1):
            raise ValueError(f"AMED-Plugin with {k} coarse steps makes {2 * k} or {2 * k - 1} (AFS) calls, not {self.nfe}")
        self.afs = self.nfe == 2 * k - 1
        self.data_shape = tuple(int(d) for d in data_shape)
        self.cond_spec = cond_spec
        self.hidden, self.conv_width = int(hidden), int(conv_width)
        self.scale_dir, self.scale_time = float(scale_dir), float(scale_time)
        ts = torch.zeros(k + 1, dtype=torch.float64) if coarse_timesteps is None else torch.as_tensor(coarse_timesteps, dtype=torch.float64)
        if ts.shape != (k + 1,):
            raise ValueError(f"coarse timesteps must have shape [{k + 1}], got {tuple(ts.shape)}")
        self.register_buffer("timesteps", ts.clone())
        if len(self.data_shape) == 1:
            d = self.data_shape[0]
            self.encoder = nn.Sequential(nn.Linear(2 * d, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        elif len(self.data_shape) == 3:
            self.encoder = _ImageEncoder(2 * self.data_shape[0], self.data_shape[1], hidden, conv_width)
        else:
            raise ValueError(f"data_shape must be [D] or [C, H, W], got {self.data_shape}")
        self.feat = nn.Sequential(nn.Linear(hidden, 128), nn.SiLU(), nn.Linear(128, 4))
        self.t_cur = nn.Sequential(nn.Linear(8, 8), nn.SiLU())
        self.t_next = nn.Sequential(nn.Linear(8, 8), nn.SiLU())
        self.heads = nn.Linear(20, 3)  # r, scale_dir, scale_time (one linear + sigmoid each)
        nn.init.zeros_(self.heads.weight)
        nn.init.zeros_(self.heads.bias)

    def config(self) -> Dict:
        return {"class": "AMEDPlugin", "param": self.param.config(), "data_shape": list(self.data_shape),
                "cond_spec": self.cond_spec.to_dict(), "nfe": self.nfe, "hidden": self.hidden, "conv_width": self.conv_width,
                "scale_dir": self.scale_dir, "scale_time": self.scale_time}

    def sampling_info(self) -> Dict:
        return {"solver": "ipndm+amed", "order": 4, "orders": None, "afs": self.afs, "network_calls": self.nfe}

    def outputs(self, x: Tensor, eps: Tensor, s_cur: Tensor, s_next: Tensor, zero: bool = False):
        """(r, c, a) [B] of one coarse step from the state, its eps-prediction and the step's noise levels."""
        b = x.shape[0]
        if zero:  # AMED feeds zeros for the AFS step
            f = torch.zeros(b, 4, dtype=self.heads.weight.dtype, device=x.device)
        else:
            xn = x / _bcast(torch.sqrt(1 + s_cur * s_cur), x)
            f = self.feat(self.encoder(torch.cat([xn, eps], dim=1).to(self.heads.weight.dtype)))
        dt = self.heads.weight.dtype
        emb = torch.cat([f, self.t_cur(_time_embedding(torch.log(s_cur).to(dt))), self.t_next(_time_embedding(torch.log(s_next).to(dt)))], 1)
        o = torch.sigmoid(self.heads(emb))
        r = o[:, 0]
        c = 1 - self.scale_dir + 2 * self.scale_dir * o[:, 1]
        a = 1 - self.scale_time + 2 * self.scale_time * o[:, 2]
        return r, c, a

    def forward(self, x_T: Tensor, cond=None, backbone=None, state_dtype=torch.float32, checkpoint: bool = False):
        """Without a backbone: the coarse schedule as a Discretization (for plots). With one: the samples x0."""
        b = x_T.shape[0]
        if backbone is None:
            ts = self.timesteps.to(x_T.device).expand(b, -1)
            return Discretization(ts, torch.zeros_like(ts[:, :-1]), torch.ones_like(ts[:, :-1]))
        proc, ptype = backbone.process, backbone.prediction_type
        ts = self.timesteps.to(device=x_T.device, dtype=state_dtype)
        s = proc.ve_sigma(ts)
        s_lo, s_hi = float(s[-1]), float(s[0])

        def t_of(sv: Tensor) -> Tensor:
            return proc.t_from_log_snr(-torch.log(sv))

        def eps_at(x: Tensor, t: Tensor) -> Tensor:
            def call(xx, tt):
                return proc.to_eps(backbone(xx, tt, cond).to(state_dtype), xx, tt, ptype)

            if checkpoint and torch.is_grad_enabled():
                return torch.utils.checkpoint.checkpoint(call, x, t, use_reentrant=False)
            return call(x, t)

        def ab(hist):
            k = min(4, len(hist))
            c = IPNDM_COEFFS[k - 1]
            return sum(c[j] * hist[j] for j in range(k))

        x = x_T.to(state_dtype)
        y = to_ve(proc, x, ts[0])
        hist = []
        for n in range(self.param.nfe):
            sn, sn1 = s[n].expand(b), s[n + 1].expand(b)
            tn = ts[n].expand(b)
            x = y * _bcast(proc.alpha(tn), y)
            first_afs = self.afs and n == 0
            d = analytic_eps(proc, x, tn) if first_afs else eps_at(x, tn)
            hist = [d] + hist[:3]
            r, c, a = self.outputs(x, d, sn, sn1, zero=first_afs)
            r, c, a = r.to(state_dtype), c.to(state_dtype), a.to(state_dtype)
            s_mid = torch.exp((1 - r) * torch.log(sn) + r * torch.log(sn1))
            y_mid = y + _bcast(s_mid - sn, y) * ab(hist)
            t_call = t_of((a * s_mid).clamp(s_lo, s_hi))
            d_mid = eps_at(y_mid * _bcast(proc.alpha(t_call), y_mid), t_call)
            hist = [d_mid] + hist[:3]
            y = y_mid + _bcast(c * (sn1 - s_mid), y) * ab(hist)
        return y * _bcast(proc.alpha(ts[-1]).expand(b), y)
