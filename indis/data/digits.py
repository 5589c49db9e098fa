"""scikit-learn's bundled 8x8 handwritten digits (1,797 images, UCI optdigits test set), no download.

`sklearn.datasets.load_digits` reads a CSV that ships inside the scikit-learn wheel. Pixels are integers
0..16; we scale them to [-1, 1] (x / 8 - 1) and optionally upsample to 16x16 or 32x32 with bilinear
interpolation (align_corners=False), which keeps values in [-1, 1]. Images are [N, 1, R, R] float32.

The train / held-out split is deterministic: a permutation from numpy's RandomState(DIGITS_SPLIT_SEED); the
first `n_heldout` (default 297) indices are held out, the remaining 1,500 are the training split.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

Tensor = torch.Tensor

DIGITS_SPLIT_SEED = 0
DIGITS_N_HELDOUT = 297
RESOLUTIONS = (8, 16, 32)


def _raw_digits() -> Tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("the digits dataset needs scikit-learn: pip install scikit-learn") from e
    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)


def load_digits_tensor(resolution: int = 16) -> Tuple[Tensor, Tensor]:
    """All 1,797 digits as ([N, 1, R, R] float32 in [-1, 1], labels [N] int64)."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"digits resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    img, lab = _raw_digits()
    x = torch.from_numpy(img / 8.0 - 1.0).unsqueeze(1)
    if resolution != 8:
        x = torch.nn.functional.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return x.clamp(-1, 1).contiguous(), torch.from_numpy(lab)


def load_digits_split(split: str = "train", resolution: int = 16, n_heldout: int = DIGITS_N_HELDOUT,
                      seed: int = DIGITS_SPLIT_SEED) -> Tuple[Tensor, Tensor]:
    """The 'train' or 'heldout' split (or 'all') as (images, labels); see the module docstring."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', got {split!r}")
    x, y = load_digits_tensor(resolution)
    if not 0 < n_heldout < x.shape[0]:
        raise ValueError(f"n_heldout must be in (0, {x.shape[0]}), got {n_heldout}")
    if split == "all":
        return x, y
    perm = torch.from_numpy(np.random.RandomState(seed).permutation(x.shape[0]))
    idx = perm[:n_heldout] if split == "heldout" else perm[n_heldout:]
    idx = idx.sort().values
    return x[idx].contiguous(), y[idx].contiguous()
