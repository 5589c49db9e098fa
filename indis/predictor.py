"""The prior-conditioning network phi(x_T, c) -> O in R^{3 x N} -> {tau, dtau, gamma} (paper Fig. 4).

  * vector priors (data_shape [D]): an MLP;
  * image priors ([C, H, W]): average-pooled to at most 32x32, then a small strided-conv encoder;
  * video priors ([C, F, H, W]): the same encoder with the F frames folded into C * F channels;
  * class labels: one-hot scaled by 1/sqrt(label_dim) through a linear layer, added to the features;
  * text: a pooled embedding (mean-pooled T5 tokens concatenated with the CLIP pooled vector, see
    `pool_text`) through a linear layer, added to the features.
The output head starts at zero weight with its bias at the logits of an initial schedule, so an untrained
predictor reproduces that heuristic exactly (no shift, unit scale).

`GlobalDiscretization` is the same interface with one learned set O (GOD / LD3-style baselines).
Ablations: `use_instance=False` drops x_T from the input (only the condition remains), `use_cond=False`
drops the condition; shifts and scales are switched off by the bounds of the DiscretizationParam.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from .backbones.base import CondSpec
from .discretization import Discretization, DiscretizationParam
from .io import save_tensors

Tensor = torch.Tensor


def pool_text(t5_tokens: Tensor, clip_pooled: Tensor, t5_mask: Optional[Tensor] = None) -> Tensor:
    """Text condition of the paper: mean-pooled T5 tokens [B, L, D1] (masked) concatenated with CLIP pooled [B, D2]."""
    if t5_tokens.dim() != 3 or clip_pooled.dim() != 2 or t5_tokens.shape[0] != clip_pooled.shape[0]:
        raise ValueError("expected T5 tokens [B, L, D1] and CLIP pooled [B, D2] with the same B")
    if t5_mask is None:
        pooled = t5_tokens.mean(dim=1)
    else:
        m = t5_mask.to(t5_tokens.dtype).unsqueeze(-1)
        pooled = (t5_tokens * m).sum(1) / m.sum(1).clamp_min(1)
    return torch.cat([pooled, clip_pooled], dim=1)


TEXT_POOL_KEYS = ("seq_len", "dim", "pooled_dim", "token_start")


def pool_packed_text(cond: Tensor, layout: Dict) -> Tensor:
    """The paper's pooled text condition [B, dim + pooled_dim] from a packed one [B, seq_len * dim + pooled_dim]
    (tokens then the pooled vector, indis.backbones.diffusers.pack_text_cond): the mean of the tokens from
    `token_start` on (the T5 tokens; SD3 packs its 77 CLIP tokens first) concatenated with the pooled vector."""
    n = layout["seq_len"] * layout["dim"]
    tokens = cond[:, :n].reshape(cond.shape[0], layout["seq_len"], layout["dim"])[:, layout["token_start"]:]
    return pool_text(tokens, cond[:, n:])


class _ImageEncoder(nn.Module):
    def __init__(self, channels: int, res: int, hidden: int, width: int = 32):
        super().__init__()
        self.pool = max(1, res // 32)
        r = res // self.pool
        layers, c = [], channels
        for w in (width, 2 * width):
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1), nn.SiLU()]
            c, r = w, (r + 1) // 2
        self.convs = nn.Sequential(*layers)
        self.out = nn.Sequential(nn.AdaptiveAvgPool2d(min(4, r)), nn.Flatten(), nn.Linear(c * min(4, r) ** 2, hidden), nn.SiLU())

    def forward(self, x):
        if x.dim() == 5:  # a video [B, C, F, H, W]: frames folded into channels
            x = x.flatten(1, 2)
        if self.pool > 1:
            x = nn.functional.avg_pool2d(x, self.pool)
        return self.out(self.convs(x))


class Predictor(nn.Module):
    """phi(x_T, c). Args:
      param: DiscretizationParam (process, N, warp, bounds).
      data_shape: shape of one prior sample.
      cond_spec: CondSpec of the backbone's condition.
      hidden: feature width.
      init_timesteps: optional [N+1] schedule the untrained predictor reproduces (default: uniform in warp).
      use_instance / use_cond: ablation switches (see module doc).
      text_pool: for a packed text condition (indis.backbones.diffusers), its layout {seq_len, dim, pooled_dim,
        token_start}: phi then takes the pooled embedding (pool_packed_text, dim + pooled_dim numbers) instead of
        the whole sequence (DiffusersAdapter.text_pooling() gives it).
    """

    def __init__(
        self,
        param: DiscretizationParam,
        data_shape: Sequence[int],
        cond_spec: CondSpec = CondSpec(),
        hidden: int = 128,
        init_timesteps: Optional[Tensor] = None,
        use_instance: bool = True,
        use_cond: bool = True,
        conv_width: int = 32,
        text_pool: Optional[Dict] = None,
    ):
        super().__init__()
        self.text_pool = None if text_pool is None else {k: int(text_pool[k]) for k in TEXT_POOL_KEYS}
        if self.text_pool is not None:
            tp = self.text_pool
            if cond_spec.kind != "text" or tp["seq_len"] * tp["dim"] + tp["pooled_dim"] != cond_spec.dim \
                    or not 0 <= tp["token_start"] < tp["seq_len"]:
                raise ValueError(f"text_pool {tp} does not fit the condition {cond_spec}: a text condition of "
                                 "seq_len * dim + pooled_dim numbers with 0 <= token_start < seq_len")
        self.param = param
        self.data_shape = tuple(int(d) for d in data_shape)
        self.cond_spec = cond_spec
        self.hidden, self.conv_width = int(hidden), int(conv_width)
        self.use_instance, self.use_cond = bool(use_instance), bool(use_cond)
        if not self.use_instance and (cond_spec.kind == "none" or not self.use_cond):
            raise ValueError("a predictor with neither instance nor condition input is a global schedule: use GlobalDiscretization")
        with torch.device("cpu"):  # a Python float, also when the module is built on the meta device
            self.prior_std = param.process.prior_std(param.T)
        n = param.nfe
        if self.use_instance:
            if len(self.data_shape) == 1:
                self.encoder = nn.Sequential(nn.Linear(self.data_shape[0], hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
            elif len(self.data_shape) == 3:
                if self.data_shape[1] != self.data_shape[2]:
                    raise ValueError(f"image priors must be square, got {self.data_shape}")
                self.encoder = _ImageEncoder(self.data_shape[0], self.data_shape[1], hidden, conv_width)
            elif len(self.data_shape) == 4:  # video latents [C, F, H, W]: the F frames' channels side by side
                if self.data_shape[2] != self.data_shape[3]:
                    raise ValueError(f"video priors must have square frames, got {self.data_shape}")
                self.encoder = _ImageEncoder(self.data_shape[0] * self.data_shape[1], self.data_shape[2], hidden, conv_width)
            else:
                raise ValueError(f"data_shape must be [D], [C, H, W] or [C, F, H, W], got {self.data_shape}")
        if cond_spec.kind != "none" and self.use_cond:
            in_dim = cond_spec.dim if self.text_pool is None else self.text_pool["dim"] + self.text_pool["pooled_dim"]
            self.cond_proj = nn.Linear(in_dim, hidden)
        self.trunk = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU())
        self.head = nn.Linear(hidden, 3 * n)
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            bias = torch.zeros(3, n)
            if init_timesteps is not None:
                bias[0] = param.logits_for_schedule(torch.as_tensor(init_timesteps, dtype=torch.float64)).float()
            self.head.bias.copy_(bias.flatten())

    def config(self) -> Dict:
        return {
            "class": "Predictor",
            "param": self.param.config(),
            "data_shape": list(self.data_shape),
            "cond_spec": self.cond_spec.to_dict(),
            "hidden": self.hidden,
            "conv_width": self.conv_width,
            "use_instance": self.use_instance,
            "use_cond": self.use_cond,
            **({} if self.text_pool is None else {"text_pool": dict(self.text_pool)}),
        }

    def raw(self, x_T: Tensor, cond=None) -> Tensor:
        """O [B, 3, N] (float32)."""
        if x_T.dim() != len(self.data_shape) + 1 or tuple(x_T.shape[1:]) != self.data_shape:
            raise ValueError(f"predictor: x_T must have shape [B, {', '.join(map(str, self.data_shape))}], got {tuple(x_T.shape)}")
        b = x_T.shape[0]
        dt = self.head.weight.dtype
        feat = torch.zeros(b, self.hidden, dtype=dt, device=x_T.device)
        if self.use_instance:
            feat = feat + self.encoder((x_T / self.prior_std).to(dt))
        c = self.cond_spec.check(cond, b, "predictor")
        if c is not None and self.use_cond:
            c = c.to(dt)
            if self.cond_spec.kind == "class":
                c = c / math.sqrt(self.cond_spec.dim)
            if self.text_pool is not None:
                c = pool_packed_text(c, self.text_pool)
            feat = feat + self.cond_proj(c)
        return self.head(self.trunk(feat)).view(b, 3, self.param.nfe)

    def forward(self, x_T: Tensor, cond=None) -> Discretization:
        return self.param(self.raw(x_T, cond))


class GlobalDiscretization(nn.Module):
    """One learned set O [3, N] shared by all samples (GOD). Same call interface as Predictor."""

    def __init__(self, param: DiscretizationParam, init_timesteps: Optional[Tensor] = None, data_shape: Sequence[int] = (), cond_spec: CondSpec = CondSpec()):
        super().__init__()
        self.param = param
        self.data_shape = tuple(int(d) for d in data_shape)
        self.cond_spec = cond_spec
        o = torch.zeros(3, param.nfe)
        if init_timesteps is not None:
            o[0] = param.logits_for_schedule(torch.as_tensor(init_timesteps, dtype=torch.float64)).float()
        self.logits = nn.Parameter(o)

    def config(self) -> Dict:
        return {"class": "GlobalDiscretization", "param": self.param.config(), "data_shape": list(self.data_shape), "cond_spec": self.cond_spec.to_dict()}

    def raw(self, x_T: Tensor, cond=None) -> Tensor:
        return self.logits.unsqueeze(0).expand(x_T.shape[0], -1, -1)

    def forward(self, x_T: Tensor, cond=None) -> Discretization:
        d = self.param(self.logits)
        b = x_T.shape[0]
        return Discretization(d.timesteps.expand(b, -1), d.dtau.expand(b, -1), d.gamma.expand(b, -1))


def save_predictor(path, model: nn.Module, metadata: Optional[Dict] = None) -> None:
    """safetensors + JSON metadata (config plus whatever the caller adds: NFE, solver, backbone id, metrics)."""
    meta = dict(metadata or {})
    meta["config"] = model.config()
    meta.setdefault("nfe", model.param.nfe)
    save_tensors(path, model.state_dict(), meta)
