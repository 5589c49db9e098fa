"""Small exact backbones for tests and for runs without a trained network: a diagonal-covariance Gaussian
mixture over C x H x W "images" (GMMBackbone on the flattened vector, reshaped)."""
from __future__ import annotations

import torch

from .base import Backbone
from .gmm import GMMBackbone


class ImageGMM(Backbone):
    """GMMBackbone over flattened images. Means are smooth random images in [-1, 1]; per-pixel variances small."""

    def __init__(self, channels: int = 3, res: int = 8, components: int = 8, seed: int = 0, process="edm",
                 prediction_type: str = "x0", conditional: bool = False, std: float = 0.15):
        g = torch.Generator().manual_seed(seed)
        d = channels * res * res
        low = torch.randn(components, channels, 2, 2, generator=g, dtype=torch.float64)
        means = torch.nn.functional.interpolate(low, size=(res, res), mode="bilinear", align_corners=True)
        means = torch.tanh(1.5 * means).reshape(components, d)
        covs = (std * (0.5 + torch.rand(components, d, generator=g, dtype=torch.float64))) ** 2
        labels = torch.arange(components) % 2 if conditional else None
        gmm = GMMBackbone(means, covs, process=process, prediction_type=prediction_type, labels=labels, conditional=conditional)
        super().__init__(gmm.process, prediction_type, (channels, res, res), gmm.cond_spec)
        self.gmm = gmm
        self._cfg = {"channels": channels, "res": res, "components": components, "seed": seed, "std": std}

    def config(self):
        c = super().config()
        c.update(self._cfg)
        return c

    def predict(self, x, t, cond):
        b = x.shape[0]
        out = self.gmm.predict(x.reshape(b, -1), t, cond)
        return out.reshape(x.shape)
