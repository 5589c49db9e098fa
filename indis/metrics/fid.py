"""Fréchet distance between feature sets, and the documented feature extractor for the 16x16 digits.

Fréchet distance (FID when the features are Inception's): for features with means m1, m2 and covariances
C1, C2 (unbiased, float64),  d^2 = |m1 - m2|^2 + tr(C1 + C2 - 2 (C1 C2)^{1/2}),  with the matrix square root
from scipy.linalg.sqrtm (imaginary round-off dropped).

Digits feature extractor ("digits-cnn-v1"): a small CNN classifier of the 16x16 digits in [-1, 1]:
  conv3x3(1->32) ReLU, conv3x3(32->32) ReLU, maxpool2, conv3x3(32->64) ReLU, maxpool2, flatten (64*4*4),
  linear(1024->64) ReLU  <- the 64-d feature,  linear(64->10) logits.
Trained on the digits *train* split only (indis.data.digits, 1500 images): seed 0, one thread, Adam lr 1e-3,
batch 64, 30 epochs, cross-entropy, no augmentation. Its weights are frozen in
indis/assets/digits_features.safetensors (reproduce with `train_digits_features()`); the held-out accuracy is
recorded in the companion JSON. The feature is the ReLU output of the 64-unit layer, in eval mode.
"""
from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np
import torch

from ..data.digits import load_digits_split
from ..io import atomic_write_json, save_tensors

Tensor = torch.Tensor

EXTRACTOR_NAME = "digits-cnn-v1"
_ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
FEATURES_WEIGHTS = os.path.join(_ASSETS, "digits_features.safetensors")
FEATURES_INFO = os.path.join(_ASSETS, "digits_features.json")


def frechet_distance(f1, f2) -> float:
    """Fréchet distance between two feature sets [N1, D] and [N2, D] (numpy or torch)."""
    from scipy import linalg

    a = np.asarray(f1.detach().cpu() if isinstance(f1, Tensor) else f1, dtype=np.float64)
    b = np.asarray(f2.detach().cpu() if isinstance(f2, Tensor) else f2, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be [N, D] with equal D, got {a.shape} and {b.shape}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("each feature set needs at least 2 samples")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("features contain NaN or inf")
    m1, m2 = a.mean(0), b.mean(0)
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    import warnings

    with warnings.catch_warnings():  # singular covariances (dead features) are fine here
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(c1 @ c2)
        if not np.isfinite(covmean).all():
            off = np.eye(c1.shape[0]) * 1e-6
            covmean = linalg.sqrtm((c1 + off) @ (c2 + off))
    covmean = np.real(covmean)
    d = float(((m1 - m2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean))
    return max(d, 0.0)


class DigitsFeatureNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * 4 * 4, 64), nn.ReLU(),
        )
        self.head = nn.Linear(64, 10)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def _check_images(x: Tensor) -> Tensor:
    if x.dim() != 4 or tuple(x.shape[1:]) != (1, 16, 16):
        raise ValueError(f"the digits feature extractor takes [N, 1, 16, 16] images in [-1, 1], got {tuple(x.shape)}")
    return x.float().clamp(-1, 1)


def train_digits_features(epochs: int = 30, seed: int = 0, save: bool = False) -> Dict:
    """Train the extractor as documented above; returns {'net', 'heldout_accuracy'}; save=True writes the assets."""
    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        x, y = load_digits_split("train", 16)
        xh, yh = load_digits_split("heldout", 16)
        net = DigitsFeatureNet()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            perm = torch.randperm(x.shape[0], generator=g)
            for lo in range(0, x.shape[0], 64):
                idx = perm[lo: lo + 64]
                loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            acc = float((net(xh).argmax(1) == yh).float().mean())
    finally:
        torch.set_num_threads(n_threads)
    if save:
        save_tensors(FEATURES_WEIGHTS, net.state_dict())
        atomic_write_json(FEATURES_INFO, {"name": EXTRACTOR_NAME, "heldout_accuracy": acc, "epochs": epochs, "seed": seed,
                                          "torch": torch.__version__, "doc": "indis/metrics/fid.py"})
    return {"net": net, "heldout_accuracy": acc}


_CACHE: Dict[str, DigitsFeatureNet] = {}


def load_digits_features(path: Optional[str] = None) -> DigitsFeatureNet:
    path = path or FEATURES_WEIGHTS
    if path not in _CACHE:
        from safetensors.torch import load_file

        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing; rebuild it with indis.metrics.fid.train_digits_features(save=True)")
        net = DigitsFeatureNet()
        net.load_state_dict(load_file(path))
        _CACHE[path] = net.eval().requires_grad_(False)
    return _CACHE[path]


@torch.no_grad()
def digits_features(x: Tensor, batch: int = 512) -> Tensor:
    """64-d features of [N, 1, 16, 16] images in [-1, 1] (values outside are clipped)."""
    x = _check_images(x)
    net = load_digits_features()
    return torch.cat([net.features(x[i: i + batch]) for i in range(0, x.shape[0], batch)]).double()


def digits_fid(samples: Tensor, reference: Tensor) -> float:
    """Fréchet distance in the digits-cnn-v1 feature space."""
    return frechet_distance(digits_features(samples), digits_features(reference))
