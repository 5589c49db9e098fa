"""Metrics of the synthetic study, with fixed estimators so that the numbers are reproducible.

* mse: endpoint error against the 100-step Euler ground truth from the same prior, the mean over samples and
  over the two coordinates of (x - x_gt)^2 (the paper's "MSE").
* kl: KL(P_data || Q_gen) between 2D histograms. Box [-2, 2]^2 (holds > 99.9 % of the tree's mass), 32 x 32
  equal bins (width 0.125); samples outside the box are dropped. Both histograms are smoothed by adding a
  pseudo-count of 0.5 to every bin before normalising (Jeffreys prior), so empty bins of Q give a finite KL.
  P comes from `ref_n` = 100,000 samples of the true distribution drawn with a fixed seed.
  The estimator is biased upwards by the finite size of Q: `kl_floor` is the same estimator applied to an
  independent true sample of the same size (the value a perfect sampler would get).
* w2: exact 2-Wasserstein distance between the empirical measures of the first `w2_n` = 1000 generated
  samples and 1000 fixed true samples: the optimal one-to-one matching of squared Euclidean costs by
  scipy.optimize.linear_sum_assignment, W2 = sqrt(mean matched squared distance). `w2_floor` is the same for
  an independent true sample.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Optional

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class MetricSpec:
    box: float = 2.0
    bins: int = 32
    pseudo_count: float = 0.5
    ref_n: int = 100_000
    w2_n: int = 1000
    seed: int = 12345

    def to_dict(self) -> Dict:
        return asdict(self)


def mse(x: torch.Tensor, x_gt: torch.Tensor) -> float:
    return float(((x.double() - x_gt.double()) ** 2).mean())


def per_sample_se(x: torch.Tensor, x_gt: torch.Tensor) -> torch.Tensor:
    """[B] mean over coordinates of the squared endpoint error."""
    return ((x.double() - x_gt.double()) ** 2).mean(dim=1)


def histogram2d(x: np.ndarray, spec: MetricSpec) -> np.ndarray:
    edges = np.linspace(-spec.box, spec.box, spec.bins + 1)
    h, _, _ = np.histogram2d(x[:, 0], x[:, 1], bins=[edges, edges])
    h = h + spec.pseudo_count
    return h / h.sum()


def kl_hist(p_samples: np.ndarray, q_samples: np.ndarray, spec: MetricSpec) -> float:
    p, q = histogram2d(p_samples, spec), histogram2d(q_samples, spec)
    return float((p * (np.log(p) - np.log(q))).sum())


def w2_exact(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    a, b = a[:n].astype(np.float64), b[:n].astype(np.float64)
    cost = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    r, c = linear_sum_assignment(cost)
    return float(np.sqrt(cost[r, c].mean()))


class DistributionMetrics:
    """Holds the fixed reference samples of the true distribution. `labels_fn(n, gen)` draws class labels for
    a conditional study (the reference then has the same class mix); None means the unconditional mixture."""

    def __init__(self, backbone, spec: MetricSpec = MetricSpec(), class_probs: Optional[torch.Tensor] = None):
        self.spec = spec
        g = torch.Generator().manual_seed(spec.seed)

        def draw(n):
            labels = None
            if class_probs is not None:
                labels = torch.multinomial(class_probs, n, replacement=True, generator=g)
            return backbone.sample_data(n, generator=g, labels=labels).numpy()

        self.ref_hist_samples = draw(spec.ref_n)
        self.ref_w2 = draw(spec.w2_n)
        self._draw = draw
        self._floors: Dict[int, Dict[str, float]] = {}

    def __call__(self, x: torch.Tensor) -> Dict[str, float]:
        xn = x.detach().double().cpu().numpy()
        return {"kl": kl_hist(self.ref_hist_samples, xn, self.spec), "w2": w2_exact(xn[: self.spec.w2_n], self.ref_w2)}

    def floors(self, n: int) -> Dict[str, float]:
        """Values of the estimators for an independent true sample of size n (what a perfect sampler gets)."""
        if n not in self._floors:
            ind = self._draw(n)
            self._floors[n] = {"kl_floor": kl_hist(self.ref_hist_samples, ind, self.spec),
                               "w2_floor": w2_exact(ind[: self.spec.w2_n], self.ref_w2)}
        return self._floors[n]
