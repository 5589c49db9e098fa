"""The FID Inception-v3 feature extractor (pytorch-fid's network and weights), in plain torch.

FID of natural images is conventionally computed with the Inception-v3 graph of the original TensorFlow FID code;
pytorch-fid (github.com/mseitzer/pytorch-fid) ported its weights to the file
`pt_inception-2015-12-05-6726825d.pth`. This module rebuilds that network without torchvision, with the same
module and parameter names, so the file loads by name with `load_state_dict(strict=True)`:

  Conv2d_1a_3x3 .. Conv2d_4a_3x3       stem (each unit: `conv` 2-d convolution without bias, `bn` BatchNorm eps 1e-3, ReLU)
  Mixed_5b/5c/5d                       Inception-A blocks   (branch1x1, branch5x5_1/2, branch3x3dbl_1/2/3, branch_pool)
  Mixed_6a                             Inception-B (grid reduction)
  Mixed_6b/6c/6d/6e                    Inception-C blocks   (branch7x7_*, branch7x7dbl_*, ...)
  Mixed_7a                             Inception-D (grid reduction)
  Mixed_7b, Mixed_7c                   Inception-E blocks
  fc                                   the 1008-way classifier (kept only so the file loads strictly; unused)
No auxiliary classifier (the file has none).

The FID-specific differences from torchvision's Inception-v3, as in pytorch-fid: the pooling branch of the A, C and
E blocks averages with count_include_pad=False (TensorFlow's average pool ignores the padding), and the last E block
(Mixed_7c) max-pools in that branch instead.

Input and output (pytorch-fid's behaviour): images [N, 3, H, W] in [0, 1] (or in [-1, 1] with
input_range=(-1, 1), the package's image convention), clipped to that range, resized bilinearly to 299x299
(align_corners=False), scaled to [-1, 1]; the feature is the 2048-d global average of Mixed_7c ("pool3").
Grayscale images [N, 1, H, W] are repeated to three channels (as pytorch-fid's image loader does when it converts
grayscale files to RGB), so their FIDs are comparable with those of RGB images of the same content.

Weights are never downloaded: `load_fid_inception(path)` reads the file the user gives, or the torch hub cache
($TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth, TORCH_HOME defaulting to ~/.cache/torch, the
place pytorch-fid itself downloads it to). The file is published as a release asset of pytorch-fid:
  https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILE}"
EXTRACTOR_NAME = "fid-inception-v3-pool3"
FEATURE_DIM = 2048
NUM_CLASSES = 1008


class ConvUnit(nn.Module):
    """Convolution (no bias) -> BatchNorm (eps 1e-3) -> ReLU; parameters under `conv` and `bn`."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: Tensor) -> Tensor:
    # TensorFlow's 3x3 'SAME' average pool: padded positions are left out of the mean
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _max3(x: Tensor) -> Tensor:
    return F.max_pool2d(x, 3, stride=1, padding=1)


class BlockA(nn.Module):
    """Inception-A (35x35): 64 + 64 + 96 + pool_features channels."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvUnit(cin, 64, 1)
        self.branch5x5_1 = ConvUnit(cin, 48, 1)
        self.branch5x5_2 = ConvUnit(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvUnit(cin, 64, 1)
        self.branch3x3dbl_2 = ConvUnit(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvUnit(96, 96, 3, padding=1)
        self.branch_pool = ConvUnit(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch1x1(x)
        b = self.branch5x5_2(self.branch5x5_1(x))
        c = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        d = self.branch_pool(_avg3(x))
        return torch.cat([a, b, c, d], 1)


class BlockB(nn.Module):
    """Inception-B grid reduction 35 -> 17: 384 + 96 + cin channels."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = ConvUnit(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvUnit(cin, 64, 1)
        self.branch3x3dbl_2 = ConvUnit(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvUnit(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch3x3(x)
        b = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class BlockC(nn.Module):
    """Inception-C (17x17) with factorised 7x7 convolutions: 4 x 192 channels."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = ConvUnit(cin, 192, 1)
        self.branch7x7_1 = ConvUnit(cin, c7, 1)
        self.branch7x7_2 = ConvUnit(c7, c7, **row)
        self.branch7x7_3 = ConvUnit(c7, 192, **col)
        self.branch7x7dbl_1 = ConvUnit(cin, c7, 1)
        self.branch7x7dbl_2 = ConvUnit(c7, c7, **col)
        self.branch7x7dbl_3 = ConvUnit(c7, c7, **row)
        self.branch7x7dbl_4 = ConvUnit(c7, c7, **col)
        self.branch7x7dbl_5 = ConvUnit(c7, 192, **row)
        self.branch_pool = ConvUnit(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch1x1(x)
        b = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        c = x
        for unit in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            c = unit(c)
        d = self.branch_pool(_avg3(x))
        return torch.cat([a, b, c, d], 1)


class BlockD(nn.Module):
    """Inception-D grid reduction 17 -> 8: 320 + 192 + cin channels."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = ConvUnit(cin, 192, 1)
        self.branch3x3_2 = ConvUnit(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvUnit(cin, 192, 1)
        self.branch7x7x3_2 = ConvUnit(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvUnit(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvUnit(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch3x3_2(self.branch3x3_1(x))
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([a, b, F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):
    """Inception-E (8x8), 320 + 768 + 768 + 192 = 2048 channels. pool='avg' (Mixed_7b) or 'max' (Mixed_7c, the
    FID graph's quirk)."""

    def __init__(self, cin: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        row, col = dict(kernel=(1, 3), padding=(0, 1)), dict(kernel=(3, 1), padding=(1, 0))
        self.branch1x1 = ConvUnit(cin, 320, 1)
        self.branch3x3_1 = ConvUnit(cin, 384, 1)
        self.branch3x3_2a = ConvUnit(384, 384, **row)
        self.branch3x3_2b = ConvUnit(384, 384, **col)
        self.branch3x3dbl_1 = ConvUnit(cin, 448, 1)
        self.branch3x3dbl_2 = ConvUnit(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvUnit(384, 384, **row)
        self.branch3x3dbl_3b = ConvUnit(384, 384, **col)
        self.branch_pool = ConvUnit(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        a = self.branch1x1(x)
        s = self.branch3x3_1(x)
        b = torch.cat([self.branch3x3_2a(s), self.branch3x3_2b(s)], 1)
        t = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        c = torch.cat([self.branch3x3dbl_3a(t), self.branch3x3dbl_3b(t)], 1)
        d = self.branch_pool(_max3(x) if self.pool == "max" else _avg3(x))
        return torch.cat([a, b, c, d], 1)


class FIDInceptionV3(nn.Module):
    """pytorch-fid's FID Inception-v3 up to pool3: forward(images) -> [N, 2048] features.

    input_range: (0, 1) (pytorch-fid's convention) or (-1, 1). Images are clipped to it, 1-channel images are
    repeated to 3 channels, resized bilinearly to 299x299 (skipped if resize=False) and scaled to [-1, 1]."""

    def __init__(self, input_range: Sequence[float] = (0.0, 1.0), resize: bool = True):
        super().__init__()
        lo, hi = (float(v) for v in input_range)
        if (lo, hi) not in ((0.0, 1.0), (-1.0, 1.0)):
            raise ValueError(f"input_range must be (0, 1) or (-1, 1), got {tuple(input_range)}")
        self.input_range: Tuple[float, float] = (lo, hi)
        self.resize = bool(resize)
        self.Conv2d_1a_3x3 = ConvUnit(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvUnit(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvUnit(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvUnit(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvUnit(80, 192, 3)
        self.Mixed_5b = BlockA(192, 32)
        self.Mixed_5c = BlockA(256, 64)
        self.Mixed_5d = BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b = BlockC(768, 128)
        self.Mixed_6c = BlockC(768, 160)
        self.Mixed_6d = BlockC(768, 160)
        self.Mixed_6e = BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b = BlockE(1280, pool="avg")
        self.Mixed_7c = BlockE(2048, pool="max")
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)  # the file's classifier; not part of the feature

    def preprocess(self, x: Tensor) -> Tensor:
        """[N, 1 or 3, H, W] in input_range -> [N, 3, 299, 299] in [-1, 1]."""
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"the Inception feature extractor takes [N, 3, H, W] (or grayscale [N, 1, H, W]) images, got {tuple(x.shape)}")
        x = x.to(dtype=self.fc.weight.dtype, device=self.fc.weight.device)
        lo, hi = self.input_range
        x = x.clamp(lo, hi)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.resize:
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        return 2 * x - 1 if lo == 0.0 else x

    def forward(self, x: Tensor) -> Tensor:
        x = self.preprocess(x)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))  # global average pool -> [N, 2048]


def default_weights_path() -> Path:
    """$TORCH_HOME/hub/checkpoints/pt_inception-2015-12-05-6726825d.pth (TORCH_HOME defaults to ~/.cache/torch)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def resolve_weights_path(path=None) -> Path:
    """The weights file: `path` (a file, or a folder holding WEIGHTS_FILE), else the torch hub cache."""
    how = (f"{WEIGHTS_FILE} is pytorch-fid's port of the TensorFlow FID Inception weights, published at {WEIGHTS_URL} "
           f"(a release asset of github.com/mseitzer/pytorch-fid; nothing is downloaded here)")
    if path is not None:
        p = Path(os.path.expanduser(str(path)))
        if p.is_dir():
            p = p / WEIGHTS_FILE
        if not p.is_file():
            raise FileNotFoundError(f"FID Inception weights not found at {p} (folder {p.parent}). {how}")
        return p
    p = default_weights_path()
    if not p.is_file():
        raise FileNotFoundError(
            f"FID Inception weights {WEIGHTS_FILE} not found: put the file in {p.parent} (the torch hub cache, "
            f"$TORCH_HOME/hub/checkpoints) or pass its path (--inception-weights). {how}")
    return p


def _check_state_dict(net: nn.Module, sd) -> Dict[str, Tensor]:
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in sd.items()):
        raise ValueError("the FID Inception weights file must hold a state dict (names -> tensors)")
    ours = net.state_dict()
    sd = dict(sd)
    # BatchNorm's num_batches_tracked counters do not matter in eval mode; files saved without them are fine
    for k, v in ours.items():
        if k.endswith(".num_batches_tracked") and k not in sd:
            sd[k] = v.clone()
    missing = sorted(set(ours) - set(sd))
    unexpected = sorted(set(sd) - set(ours))
    mismatched = sorted(f"{k}: file {list(sd[k].shape)}, expected {list(ours[k].shape)}"
                        for k in set(ours) & set(sd) if sd[k].shape != ours[k].shape)
    if missing or unexpected or mismatched:
        def show(xs):
            return ", ".join(xs[:12]) + (f", ... ({len(xs)} in all)" if len(xs) > 12 else "") if xs else "none"

        raise ValueError(f"not pytorch-fid's FID Inception weights ({WEIGHTS_FILE}): missing keys: {show(missing)}; "
                         f"unexpected keys: {show(unexpected)}; shape mismatches: {show(mismatched)}")
    return sd


_CACHE: Dict[tuple, FIDInceptionV3] = {}


def load_fid_inception(path=None, input_range: Sequence[float] = (0.0, 1.0), cache: bool = True) -> FIDInceptionV3:
    """The FID Inception network with pytorch-fid's weights from `path` (file or folder) or the torch hub cache,
    frozen, in eval mode, on the CPU. FileNotFoundError if the file is absent (never downloads); ValueError if its
    keys or shapes are not those of the network."""
    p = resolve_weights_path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_mtime_ns, st.st_size, tuple(float(v) for v in input_range))
    if cache and key in _CACHE:
        return _CACHE[key]
    net = FIDInceptionV3(input_range=input_range)
    sd = torch.load(p, map_location="cpu", weights_only=True)
    net.load_state_dict(_check_state_dict(net, sd), strict=True)
    net = net.eval().requires_grad_(False)
    if cache:
        _CACHE[key] = net
    return net


def inception_feature_fn(path=None, input_range: Sequence[float] = (-1.0, 1.0), batch: int = 32,
                         device=None) -> Callable[[Tensor], Tensor]:
    """A feature function for the Fréchet distance (indis.evaluate): images [N, 3 or 1, H, W] in input_range (by
    default the package's [-1, 1]) -> [N, 2048] float64 on the CPU. Loads (and checks) the weights now, so a missing
    file fails before any sampling. Runs in chunks of `batch` on `device` (default: CUDA if available, else CPU)."""
    net = load_fid_inception(path, input_range)
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type != "cpu":
        net = _to_device(net, input_range, dev)  # a copy: the cached CPU network stays on the CPU

    @torch.no_grad()
    def features(x: Tensor) -> Tensor:
        return torch.cat([net(x[i: i + batch].to(dev)).double().cpu() for i in range(0, x.shape[0], batch)])

    return features


def _to_device(net: FIDInceptionV3, input_range, dev) -> FIDInceptionV3:
    copy = FIDInceptionV3(input_range=input_range)
    copy.load_state_dict(net.state_dict())
    return copy.to(dev).eval().requires_grad_(False)
