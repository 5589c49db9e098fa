"""EDMBackbone: an EDMPrecond network (edm_nets.py) as an INDIS backbone.

Process "edm" (alpha = 1, sigma = t, t0 = 0.002, T = 80, sigma_data from the network), prediction type "x0"
(EDM's denoiser D(x; sigma)), data shape [C, R, R], condition "class" (label_dim) when the network is
class-conditional, else none.

Presets reproduce the configurations of EDM's published checkpoints (Karras et al. 2022, NVlabs/edm); their parameter
counts equal the published ones: cifar10_uncond 55,733,891, cifar10_cond 55,735,299, ffhq64 / afhq64
61,805,571, imagenet64 295,899,267.

Precision: `compute_dtype` "float32" (default), "float16" or "bfloat16" runs the network body in that dtype
with float32 parameters, input and output (as EDM's use_fp16). The backbone always returns the dtype of x.
"""
from __future__ import annotations

import copy
from typing import Dict, Optional

import torch

from ..processes import EDMProcess
from .base import Backbone, CondSpec
from .edm_nets import COMPUTE_DTYPES, EDMPrecond, count_parameters

Tensor = torch.Tensor

_DDPMPP = dict(model_type="SongUNet", model_channels=128, channel_mult_noise=1, embedding_type="positional",
               encoder_type="standard", decoder_type="standard", resample_filter=[1, 1], num_blocks=4,
               attn_resolutions=[16], augment_dim=9)

#: EDM's published configurations (training/train.py of NVlabs/edm with the paper's options).
PRESETS: Dict[str, Dict] = {
    "cifar10_uncond": dict(img_resolution=32, img_channels=3, label_dim=0, **_DDPMPP, channel_mult=[2, 2, 2], dropout=0.13),
    "cifar10_cond": dict(img_resolution=32, img_channels=3, label_dim=10, **_DDPMPP, channel_mult=[2, 2, 2], dropout=0.13),
    "ffhq64": dict(img_resolution=64, img_channels=3, label_dim=0, **_DDPMPP, channel_mult=[1, 2, 2, 2], dropout=0.05),
    "afhq64": dict(img_resolution=64, img_channels=3, label_dim=0, **_DDPMPP, channel_mult=[1, 2, 2, 2], dropout=0.25),
    "imagenet64": dict(img_resolution=64, img_channels=3, label_dim=1000, model_type="DhariwalUNet", model_channels=192,
                       channel_mult=[1, 2, 3, 4], dropout=0.10),
}

#: parameter counts of EDM's published checkpoints (Karras et al. 2022, NVlabs/edm)
PUBLISHED_PARAM_COUNTS = {
    "cifar10_uncond": 55_733_891,
    "cifar10_cond": 55_735_299,
    "ffhq64": 61_805_571,
    "afhq64": 61_805_571,
    "imagenet64": 295_899_267,
}


def preset_kwargs(name: str) -> Dict:
    if name not in PRESETS:
        raise ValueError(f"unknown EDM preset {name!r}; expected one of {sorted(PRESETS)}")
    return copy.deepcopy(PRESETS[name])


class EDMBackbone(Backbone):
    """Wrap an EDMPrecond. Build with `EDMBackbone(net)`, `EDMBackbone.from_preset(name)` or
    `EDMBackbone.from_kwargs(**EDMPrecond kwargs)`.

    t0, T: the sampling interval of the process (default EDM's 0.002 and 80).
    """

    def __init__(self, net: EDMPrecond, t0: float = 0.002, T: float = 80.0, name: Optional[str] = None):
        if not isinstance(net, EDMPrecond):
            raise ValueError(f"EDMBackbone wraps an indis EDMPrecond, got {type(net).__name__}")
        cond = CondSpec("class", net.label_dim) if net.label_dim else CondSpec()
        super().__init__(EDMProcess(t0=t0, T=T, sigma_data=net.sigma_data), "x0",
                         (net.img_channels, net.img_resolution, net.img_resolution), cond)
        self.net = net
        self.name = name

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_kwargs(cls, t0: float = 0.002, T: float = 80.0, name: Optional[str] = None, device=None, **net_kwargs):
        if device is not None:
            with torch.device(device):
                net = EDMPrecond(**net_kwargs)
        else:
            net = EDMPrecond(**net_kwargs)
        return cls(net, t0=t0, T=T, name=name)

    @classmethod
    def from_preset(cls, name: str, compute_dtype: str = "float32", seed: Optional[int] = None, device=None,
                    **overrides):
        """A randomly initialised network with the configuration of an EDM checkpoint (load weights with
        `load_state_dict` or indis.backbones.convert). device="meta" builds it without memory (for counting)."""
        kw = preset_kwargs(name)
        kw.update(overrides)
        if seed is not None:
            torch.manual_seed(seed)
        return cls.from_kwargs(name=name, compute_dtype=compute_dtype, device=device, **kw)

    # -- protocol -----------------------------------------------------------------------------------
    def net_kwargs(self) -> Dict:
        return self.net.init_kwargs()

    def config(self) -> Dict:
        cfg = super().config()
        kw = self.net_kwargs()
        kw.pop("compute_dtype", None)  # precision does not change the weights or the function (up to rounding)
        kw.pop("use_fp16", None)
        kw.pop("dropout", None)  # training-only
        cfg.update(net=kw)
        return cfg

    @property
    def compute_dtype(self) -> str:
        return self.net.compute_dtype

    def set_compute_dtype(self, dtype: str) -> "EDMBackbone":
        if dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype must be one of {sorted(COMPUTE_DTYPES)}, got {dtype!r}")
        self.net.compute_dtype = dtype
        return self

    def num_parameters(self) -> int:
        return count_parameters(self.net)

    def predict(self, x: Tensor, t: Tensor, cond: Optional[Tensor]) -> Tensor:
        out = self.net(x.float(), t.float(), class_labels=cond)
        return out.to(x.dtype)
