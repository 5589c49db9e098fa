"""A small learned velocity model of the tree (the paper's toy used a trained network, and a trained network
has the errors that the shifts dtau and scales gamma exist for).

MLPVelocity: v(x, t) = MLP([x, t, sin(pi k t), cos(pi k t) for k = 1..8]), 3 hidden layers of 128 SiLU.
Trained with the flow-matching loss E || v(x_t, t) - (eps - x0) ||^2 on x_t = (1 - t) x0 + t eps, x0 drawn
from the exact tree mixture, t ~ U(0, 1), Adam with a cosine learning rate. Deterministic given the seed
(one torch.Generator for data and initialisation, one thread). Cached as safetensors (indis.io) with its
training config, final loss and a many-step-sample check (100-step Euler from N(0, T^2 I) against the true
distribution, estimators of indis.toy.metrics) in the metadata.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from ..backbones.base import Backbone, stable_hash
from ..io import load_tensors, save_tensors
from ..processes import FlowOTProcess
from ..schedules import uniform_t
from ..solvers import sample
from .metrics import DistributionMetrics
from .tree import T0_TOY, T_TOY, tree_backbone

DEFAULT_TRAIN = {"hidden": 128, "depth": 3, "steps": 6000, "batch": 2048, "lr": 2e-3, "seed": 0}
QUICK_TRAIN = {"hidden": 64, "depth": 3, "steps": 600, "batch": 1024, "lr": 3e-3, "seed": 0}


class MLPVelocity(Backbone):
    def __init__(self, hidden: int = 128, depth: int = 3, n_freq: int = 8, t0: float = T0_TOY, T: float = T_TOY):
        super().__init__(FlowOTProcess(t0=t0, T=T), "velocity", (2,))
        self.hidden, self.depth, self.n_freq = int(hidden), int(depth), int(n_freq)
        layers, d = [], 2 + 1 + 2 * n_freq
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), nn.SiLU()]
            d = hidden
        layers.append(nn.Linear(d, 2))
        self.net = nn.Sequential(*layers)
        self.register_buffer("freqs", math.pi * torch.arange(1, n_freq + 1, dtype=torch.float32))

    def config(self):
        cfg = super().config()
        cfg.update(hidden=self.hidden, depth=self.depth, n_freq=self.n_freq)
        return cfg

    def predict(self, x, t, cond):
        tt = t.to(torch.float32)[:, None]
        ang = tt * self.freqs[None]
        h = torch.cat([x.to(torch.float32), tt, torch.sin(ang), torch.cos(ang)], dim=1)
        return self.net(h).to(x.dtype)


def train_mlp(cfg: Dict, progress: bool = True) -> Tuple[MLPVelocity, Dict]:
    """Train from scratch; returns (model, info with the loss curve summary)."""
    from tqdm import tqdm

    cfg = {**DEFAULT_TRAIN, **cfg}
    gt = tree_backbone()
    g = torch.Generator().manual_seed(int(cfg["seed"]))
    with torch.random.fork_rng():
        torch.manual_seed(int(cfg["seed"]))
        model = MLPVelocity(cfg["hidden"], cfg["depth"])
    opt = torch.optim.Adam(model.net.parameters(), lr=cfg["lr"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg["steps"])
    losses = []
    t_start = time.time()
    for _ in tqdm(range(cfg["steps"]), desc="train MLP velocity", disable=not progress, leave=False, mininterval=2.0):
        x0 = gt.sample_data(cfg["batch"], generator=g).float()
        eps = torch.randn(cfg["batch"], 2, generator=g)
        t = torch.rand(cfg["batch"], generator=g)
        xt = (1 - t[:, None]) * x0 + t[:, None] * eps
        loss = ((model.predict(xt, t, None) - (eps - x0)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    k = max(1, len(losses) // 20)
    info = {
        "train_config": cfg,
        "loss_first": sum(losses[:k]) / k,
        "loss_final": sum(losses[-k:]) / k,
        "train_seconds": time.time() - t_start,
    }
    model.refresh_id()
    return model, info


def many_step_check(model: Backbone, n: int = 4000, steps: int = 100, seed: int = 7) -> Dict:
    """100-step Euler samples of `model` against the true tree: KL / W2 with the study's estimators, next to
    the floors of an independent true sample of the same size."""
    p = model.process
    g = torch.Generator().manual_seed(seed)
    xT = torch.randn(n, 2, generator=g) * p.prior_std()
    with torch.no_grad():
        x = sample(model, xT, uniform_t(steps, p.t0, p.T).float(), solver="euler")
    dm = DistributionMetrics(tree_backbone())
    out = {f"check_{k}": v for k, v in dm(x).items()}
    out.update({f"check_{k}": v for k, v in dm.floors(n).items()})
    out["check_n"], out["check_steps"] = n, steps
    return out


def default_cache_dir() -> Path:
    return Path(os.environ.get("INDIS_CACHE", Path.home() / ".cache" / "indis")) / "toy"


def load_or_train(cfg: Optional[Dict] = None, cache_dir=None, progress: bool = True) -> Tuple[MLPVelocity, Dict]:
    """The learned tree backbone for a training config, from the cache if present (keyed by the config hash)."""
    cfg = {**DEFAULT_TRAIN, **(cfg or {})}
    key = stable_hash({"model": "MLPVelocity-tree", **cfg})
    path = Path(cache_dir or default_cache_dir()) / f"tree_mlp_velocity_{key}.safetensors"
    if path.is_file():
        tensors, meta = load_tensors(path)
        model = MLPVelocity(cfg["hidden"], cfg["depth"])
        model.load_state_dict(tensors)
        model.refresh_id()
        meta["cache_path"] = str(path)
        meta["cached"] = True
        return model, meta
    model, info = train_mlp(cfg, progress)
    info.update(many_step_check(model))
    info["backbone_id"] = model.backbone_id
    save_tensors(path, model.state_dict(), info)
    info["cache_path"] = str(path)
    info["cached"] = False
    return model, info
