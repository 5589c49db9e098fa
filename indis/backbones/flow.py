"""Flow-matching (velocity-prediction) backbones.

Process: flow matching OT / rectified flow, x_t = (1 - t) x0 + t eps, the network predicts v = eps - x0
(prediction type "velocity"). The resolution-dependent shift of SD3/FLUX, t' = s t / (1 + (s - 1) t), is the
default discretisation of these models (`default_timesteps`, indis.schedules.shifted_uniform).

* `FlowMLPBackbone`: a small velocity MLP for vector data (toy / tests), with `flow_matching_loss` to train it.
* `DiffusersAdapter`: wraps a diffusers model, UNet2DModel-like (`model(sample, timestep).sample`) or an
  SD3Transformer2DModel-like transformer (`model(hidden_states=, timestep=, encoder_hidden_states=,
  pooled_projections=).sample`). diffusers is imported lazily and only needed for `from_pretrained_dir` /
  model construction; install it with `pip install indis[diffusers]`. Nothing is ever downloaded: models come
  from a local directory or are built by the caller.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .base import Backbone, CondSpec, stable_hash

Tensor = torch.Tensor

DIFFUSERS_HINT = "pip install indis[diffusers]"


def hide_broken_torchvision() -> bool:
    """A torchvision build that does not match the installed torch (on CPU-only torch: "operator torchvision::nms
    does not exist") raises on import and breaks diffusers' model imports, which import it when it looks installed.
    If importing it fails that way, register it as absent (sys.modules entry None) so that diffusers and anything
    else treat it as not installed. Returns True if it had to be hidden."""
    import sys

    if "torchvision" in sys.modules:
        return sys.modules["torchvision"] is None
    try:
        import torchvision  # noqa: F401
    except ImportError:
        return False
    except Exception:  # RuntimeError from the operator registration of a mismatched build
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision"] = None
        return True
    return False


def require_diffusers():
    """Import diffusers (hiding a broken torchvision first) or raise an ImportError that says how to install it."""
    hide_broken_torchvision()
    try:
        import diffusers  # noqa: F401
    except ImportError as e:
        raise ImportError(f"this feature needs the optional dependency diffusers: {DIFFUSERS_HINT}") from e
    return diffusers


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
    from ..schedules import shifted_uniform

    return shifted_uniform(n, t0, T, shift=shift)


class FlowMLPBackbone(Backbone):
    """Velocity-prediction backbone on vectors of size dim under FlowOTProcess (t0 0.002, T 0.988)."""

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, n_classes: int = 0, shift: float = 1.0,
                 t0: float = 0.002, T: float = 0.988):
        from ..processes import FlowOTProcess

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


# ------------------------------------------------------------------------------------------------
# diffusers
# ------------------------------------------------------------------------------------------------
def pack_text_cond(encoder_hidden_states: Tensor, pooled: Optional[Tensor] = None) -> Tensor:
    """Pack text-encoder outputs [B, L, Dj] (and pooled [B, Dp]) into the [B, L*Dj + Dp] condition that the
    transformer adapter takes (CondSpec 'text')."""
    flat = encoder_hidden_states.reshape(encoder_hidden_states.shape[0], -1)
    return flat if pooled is None else torch.cat([flat, pooled], dim=1)


class DiffusersAdapter(Backbone):
    """Backbone over a diffusers denoiser.

    model: a diffusers UNet2DModel-like ('unet') or SD3Transformer2DModel-like ('transformer') module; the kind
      is read from the class name unless given.
    data_shape: [C, H, W] of one sample (latents for latent models).
    process / prediction_type: default flow matching OT + "velocity" (SD3/FLUX); a DDPM UNet2DModel is
      typically process "vp_linear" + "eps".
    timestep_scale: the model's timestep is t * timestep_scale (1000 for SD3-style flow models and for
      DDPM-style discrete models trained on t*1000).
    text_seq_len / text_dim / pooled_dim: the transformer's condition layout; the condition is
      pack_text_cond(encoder_hidden_states [B, L, text_dim], pooled [B, pooled_dim]).
    class conditioning of a UNet2DModel: n_classes (passed as class_labels).
    shift: the flow shift of the model's default schedule.
    """

    KINDS = ("unet", "transformer")

    def __init__(self, model: torch.nn.Module, data_shape: Sequence[int], process="flow",
                 prediction_type: str = "velocity", kind: Optional[str] = None, timestep_scale: float = 1000.0,
                 text_seq_len: int = 0, text_dim: int = 0, pooled_dim: int = 0, n_classes: int = 0,
                 shift: float = 1.0, model_name: Optional[str] = None):
        require_diffusers()
        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model must be a torch module, got {type(model).__name__}")
        if kind is None:
            cname = type(model).__name__.lower()
            kind = "transformer" if "transformer" in cname else "unet" if "unet" in cname else None
            if kind is None:
                raise ValueError(f"cannot tell whether {type(model).__name__} is a unet or a transformer; pass kind=")
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}")
        if kind == "transformer":
            if text_seq_len < 1 or text_dim < 1:
                raise ValueError("a transformer adapter needs text_seq_len >= 1 and text_dim >= 1 (its text condition layout)")
            cond = CondSpec("text", text_seq_len * text_dim + pooled_dim)
        else:
            if text_seq_len or text_dim or pooled_dim:
                raise ValueError("text conditioning is only supported for transformer models")
            cond = CondSpec("class", n_classes) if n_classes else CondSpec()
        super().__init__(process, prediction_type, data_shape, cond)
        self.model = model
        self.kind = kind
        self.timestep_scale = float(timestep_scale)
        self.text_seq_len, self.text_dim, self.pooled_dim = int(text_seq_len), int(text_dim), int(pooled_dim)
        self.n_classes = int(n_classes)
        self.shift = float(shift)
        self.model_name = model_name

    @classmethod
    def from_pretrained_dir(cls, path: str, subfolder: Optional[str] = None, **kwargs) -> "DiffusersAdapter":
        """Load a diffusers model from a LOCAL directory (local_files_only: never downloads)."""
        import os

        diffusers = require_diffusers()
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path} is not a local directory (indis never downloads models)")
        import json

        cfg_dir = os.path.join(path, subfolder) if subfolder else path
        with open(os.path.join(cfg_dir, "config.json")) as f:
            class_name = json.load(f).get("_class_name")
        model_cls = getattr(diffusers, class_name or "", None)
        if model_cls is None:
            raise ValueError(f"{cfg_dir}/config.json names an unknown diffusers class {class_name!r}")
        model = model_cls.from_pretrained(path, subfolder=subfolder, local_files_only=True)
        return cls(model, model_name=class_name, **kwargs)

    def config(self) -> Dict:
        cfg = super().config()
        mcfg = getattr(self.model, "config", None)
        mcfg = {k: v for k, v in dict(mcfg).items() if not k.startswith("_")} if mcfg is not None else {}
        cfg.update(kind=self.kind, model_class=type(self.model).__name__, model_config=mcfg,
                   timestep_scale=self.timestep_scale, text_seq_len=self.text_seq_len, text_dim=self.text_dim,
                   pooled_dim=self.pooled_dim, n_classes=self.n_classes, shift=self.shift)
        return cfg

    def default_timesteps(self, n: int) -> Tensor:
        p = self.process
        if p.name != "flow":
            from ..schedules import get_schedule

            return get_schedule("uniform", p, n)
        return default_timesteps(n, self.shift, p.t0, p.T)

    def predict(self, x, t, cond):
        dtype = next(self.model.parameters()).dtype
        ts = (t * self.timestep_scale).to(dtype)
        xin = x.to(dtype)
        if self.kind == "unet":
            kw = {}
            if cond is not None:
                kw["class_labels"] = cond.argmax(1)
            out = self.model(xin, ts, return_dict=False, **kw)[0]
        else:
            b = x.shape[0]
            n_seq = self.text_seq_len * self.text_dim
            ehs = cond[:, :n_seq].reshape(b, self.text_seq_len, self.text_dim).to(dtype)
            pooled = cond[:, n_seq:].to(dtype) if self.pooled_dim else None
            kw = dict(hidden_states=xin, timestep=ts, encoder_hidden_states=ehs, return_dict=False)
            if pooled is not None:
                kw["pooled_projections"] = pooled
            out = self.model(**kw)[0]
        return out.to(x.dtype)
