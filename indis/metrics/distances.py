"""Distances d(x0, x0*) between a student endpoint and its teacher target, per sample ([B] outputs).

  mse           mean squared error over all elements
  l1            mean absolute error
  pseudo_huber  sqrt(||x - y||^2 / D + c^2) - c with c = 0.00054 sqrt(D) (Song & Dhariwal 2023's choice,
                written per element so it does not depend on the resolution)
  lpips         LPIPS v0.1 (Zhang et al. 2018) with an AlexNet or VGG16 trunk

LPIPS without torchvision. The `lpips` package imports torchvision, which fails on CPU-only torch builds
("operator torchvision::nms does not exist"). So the trunks are declared here with torchvision's layer layout
(`features.<i>.weight`), which makes torchvision's own weight files load by name:
  alexnet-owt-7be5be79.pth  (AlexNet)    vgg16-397923af.pth  (VGG16)
They are looked up in $TORCH_HOME/hub/checkpoints (default ~/.cache/torch/hub/checkpoints), where torch.hub
puts them, or at a path the user gives. The calibrated linear heads (lin0..lin4, 1x1 convolutions) are the
ones that ship inside the lpips package (lpips/weights/v0.1/{alex,vgg}.pth); they are read from the package's
folder without importing it. The computation follows lpips.LPIPS(version='0.1', lpips=True, spatial=False):
scaling layer, unit-normalised channel features, squared differences, linear heads, spatial mean, sum.

Inputs are images in [-1, 1]. Grayscale images are repeated to 3 channels; images smaller than
`min_size` are upsampled bilinearly first (AlexNet's first stride-4 layer and pools need at least ~32 px).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
import torch.nn.functional as F

Tensor = torch.Tensor

TRUNK_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
# (features index ranges of the five slices, channels), as in lpips.pretrained_networks
_ALEX_CFG = [("c", 3, 64, 11, 4, 2), ("r",), ("m",), ("c", 64, 192, 5, 1, 2), ("r",), ("m",), ("c", 192, 384, 3, 1, 1), ("r",),
             ("c", 384, 256, 3, 1, 1), ("r",), ("c", 256, 256, 3, 1, 1), ("r",)]
_ALEX_TAPS = (1, 4, 7, 9, 11)
_VGG_WIDTHS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_VGG_TAPS = (3, 8, 15, 22, 29)


def hub_checkpoint_dir() -> Path:
    """torch.hub's checkpoint folder: $TORCH_HOME/hub/checkpoints (TORCH_HOME defaults to ~/.cache/torch)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _build_features(net: str) -> nn.Sequential:
    layers = []
    if net == "alex":
        for spec in _ALEX_CFG:
            if spec[0] == "c":
                _, ci, co, k, s, p = spec
                layers.append(nn.Conv2d(ci, co, k, stride=s, padding=p))
            elif spec[0] == "r":
                layers.append(nn.ReLU())
            else:
                layers.append(nn.MaxPool2d(3, 2))
    elif net == "vgg":
        ci = 3
        for w in _VGG_WIDTHS:
            if w == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(ci, w, 3, padding=1), nn.ReLU()]
                ci = w
    else:
        raise ValueError(f"unknown LPIPS trunk {net!r}; expected one of {sorted(TRUNK_FILES)}")
    return nn.Sequential(*layers)


def lpips_linear_weights_path(net: str) -> Path:
    """lpips/weights/v0.1/<net>.pth inside the installed lpips package (found without importing it)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("LPIPS needs the `lpips` package for its calibrated linear layers; install it without its "
                          "dependencies (they include a torchvision that breaks diffusers on CPU-only torch): "
                          "pip install --no-deps lpips==0.1.4")
    p = Path(list(spec.submodule_search_locations)[0]) / "weights" / "v0.1" / f"{net}.pth"
    if not p.is_file():
        raise FileNotFoundError(f"the lpips package has no linear-layer weights at {p}")
    return p


def resolve_trunk_path(net: str, path=None) -> Path:
    fname = TRUNK_FILES[net]
    if path is not None:
        p = Path(path)
        if p.is_dir():
            p = p / fname
        if not p.is_file():
            raise FileNotFoundError(f"LPIPS trunk weights {fname} not found at {p}")
        return p
    p = hub_checkpoint_dir() / fname
    if not p.is_file():
        raise FileNotFoundError(
            f"LPIPS ({net}) needs torchvision's ImageNet weights {fname}: put the file in {p.parent} "
            f"(the torch hub cache, $TORCH_HOME/hub/checkpoints) or pass its path (--lpips-weights)"
        )
    return p


class LPIPS(nn.Module):
    """LPIPS v0.1 distance, per sample [B]. Frozen; gradients flow to the inputs."""

    def __init__(self, net: str = "vgg", trunk_path=None, linear_path=None, min_size: int = 64):
        super().__init__()
        self.net_name, self.min_size = net, int(min_size)
        self.features = _build_features(net)
        self.taps = _ALEX_TAPS if net == "alex" else _VGG_TAPS
        chns = [m.out_channels for m in self.features if isinstance(m, nn.Conv2d)]
        tap_ch = []
        last = 3
        for i, m in enumerate(self.features):
            if isinstance(m, nn.Conv2d):
                last = m.out_channels
            if i in self.taps:
                tap_ch.append(last)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in tap_ch)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        trunk = torch.load(resolve_trunk_path(net, trunk_path), map_location="cpu", weights_only=True)
        feats = {k[len("features."):]: v for k, v in trunk.items() if k.startswith("features.")}
        missing, _ = self.features.load_state_dict(feats, strict=False)
        if missing:
            raise ValueError(f"LPIPS trunk file lacks {missing[:3]}...: is it torchvision's {TRUNK_FILES[net]}?")
        lin = torch.load(linear_path or lpips_linear_weights_path(net), map_location="cpu", weights_only=True)
        for i, m in enumerate(self.lins):
            m.weight.data.copy_(lin[f"lin{i}.model.1.weight"])
        self.requires_grad_(False)
        self.eval()

    def _prep(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"LPIPS needs images [B, C, H, W], got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(f"LPIPS needs 1 or 3 channels, got {x.shape[1]}")
        if min(x.shape[-2:]) < self.min_size:
            f = self.min_size / min(x.shape[-2:])
            x = F.interpolate(x, size=(round(x.shape[-2] * f), round(x.shape[-1] * f)), mode="bilinear", align_corners=False)
        return (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)

    def _taps(self, x: Tensor):
        out = []
        for i, m in enumerate(self.features):
            x = m(x)
            if i in self.taps:
                out.append(x)
            if i >= self.taps[-1]:
                break
        return out

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        dt = self.lins[0].weight.dtype
        fx, fy = self._taps(self._prep(x.to(dt))), self._taps(self._prep(y.to(dt)))
        total = 0
        for a, b, lin in zip(fx, fy, self.lins):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((a - b) ** 2).mean(dim=(2, 3))
        return total.flatten()


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1)


def mse(x: Tensor, y: Tensor) -> Tensor:
    return (_flat(x) - _flat(y)).pow(2).mean(1)


def l1(x: Tensor, y: Tensor) -> Tensor:
    return (_flat(x) - _flat(y)).abs().mean(1)


def pseudo_huber(x: Tensor, y: Tensor, c: Optional[float] = None) -> Tensor:
    d = _flat(x).shape[1]
    c = 0.00054 * d**0.5 if c is None else float(c)
    return torch.sqrt((_flat(x) - _flat(y)).pow(2).mean(1) + c * c) - c


LOSSES = ("mse", "l1", "pseudo_huber", "lpips")


def distance_name(name: str) -> str:
    """The registry spelling of a distance's name (pseudo-huber -> pseudo_huber)."""
    return name.replace("-", "_")


def get_distance(name: str, lpips_net: str = "vgg", lpips_weights=None, device=None) -> Callable[[Tensor, Tensor], Tensor]:
    """A per-sample distance by name. lpips_weights: path of the trunk file (or its folder); default torch hub cache."""
    name = distance_name(name)
    if name == "mse":
        return mse
    if name == "l1":
        return l1
    if name == "pseudo_huber":
        return pseudo_huber
    if name == "lpips":
        return LPIPS(lpips_net, lpips_weights).to(device or "cpu")
    raise ValueError(f"unknown distance {name!r}; expected one of {LOSSES}")
