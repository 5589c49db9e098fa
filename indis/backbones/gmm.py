"""Exact Gaussian-mixture backbone: the closed-form denoiser of a GMM under any noise process.

Data x0 ~ sum_k pi_k N(mu_k, Sigma_k). Under x_t = a x0 + s eps the marginal is
sum_k pi_k N(a mu_k, a^2 Sigma_k + s^2 I), and with Sigma_k = V_k diag(e_k) V_k^T

    E[x0 | x_t, k] = mu_k + V_k diag(a e_k / (a^2 e_k + s^2)) V_k^T (x_t - a mu_k),
    E[x0 | x_t]    = sum_k r_k(x_t) E[x0 | x_t, k],  r_k = posterior component weights.

Covariances may be full ([K, D, D], stored by eigendecomposition), diagonal ([K, D]) or isotropic ([K]).
Components may carry a class label; the class-conditional model restricts the mixture to that class.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..processes import get_process
from .base import Backbone, CondSpec

Tensor = torch.Tensor


class GMMBackbone(Backbone):
    """Args:
      means: [K, D]; covs: [K, D, D] (full), [K, D] (diagonal) or [K] (isotropic variances);
      weights: [K] unnormalised mixture weights (default: equal);
      process: noise process; prediction_type: what forward() returns ("x0", "eps" or "velocity");
      labels: optional [K] integer class of each component; with conditional=True the model takes class
        labels as its condition;
      chunk: max elements of the [B, K, D] working tensors (memory bound).
    """

    def __init__(
        self,
        means: Tensor,
        covs: Tensor,
        weights: Optional[Tensor] = None,
        process="edm",
        prediction_type: str = "x0",
        labels: Optional[Tensor] = None,
        conditional: bool = False,
        chunk: int = 1 << 23,
    ):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.dim() != 2:
            raise ValueError(f"means must have shape [K, D], got {tuple(means.shape)}")
        k, d = means.shape
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if covs.shape == (k, d, d):
            if not torch.allclose(covs, covs.transpose(1, 2), atol=1e-10):
                raise ValueError("full covariances must be symmetric")
            evals, evecs = torch.linalg.eigh(covs)
            kind = "full"
        elif covs.shape == (k, d):
            evals, evecs, kind = covs, None, "diag"
        elif covs.shape == (k,):
            evals, evecs, kind = covs.unsqueeze(1).expand(k, d).clone(), None, "iso"
        else:
            raise ValueError(f"covs must have shape [K, D, D], [K, D] or [K] with K={k}, D={d}; got {tuple(covs.shape)}")
        if (evals < -1e-12).any():
            raise ValueError("covariances must be positive semi-definite")
        weights = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if weights.shape != (k,) or (weights <= 0).any():
            raise ValueError(f"weights must be {k} positive numbers")
        n_classes = 0
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long)
            if labels.shape != (k,) or (labels < 0).any():
                raise ValueError(f"labels must be {k} non-negative integers")
            n_classes = int(labels.max()) + 1
        if conditional and labels is None:
            raise ValueError("a conditional GMM needs component labels")
        super().__init__(process, prediction_type, (d,), CondSpec("class", n_classes) if conditional else CondSpec())
        self.cov_kind = kind
        self.chunk = int(chunk)
        self.register_buffer("means", means)
        self.register_buffer("evals", evals.clamp_min(0.0))
        self.register_buffer("evecs", evecs if evecs is not None else torch.empty(0, dtype=torch.float64))
        self.register_buffer("log_weights", torch.log(weights / weights.sum()))
        self.register_buffer("labels", labels if labels is not None else torch.empty(0, dtype=torch.long))
        self.n_classes = n_classes

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def config(self):
        cfg = super().config()
        cfg.update(cov_kind=self.cov_kind, num_components=self.num_components, n_classes=self.n_classes)
        return cfg

    # -- core ------------------------------------------------------------------------------------
    def _component_terms(self, x: Tensor, t: Tensor, cond: Optional[Tensor]):
        """Yield (slice, log r (unnormalised) [b, K], conditional means [b, K, D]) over batch chunks."""
        dt = x.dtype
        a = self.process.alpha(t).to(dt)[:, None, None]
        s = self.process.sigma(t).to(dt)[:, None, None]
        mu, ev = self.means.to(dt), self.evals.to(dt)
        k, d = mu.shape
        step = max(1, self.chunk // max(1, k * d))
        for lo in range(0, x.shape[0], step):
            sl = slice(lo, lo + step)
            diff = x[sl, None, :] - a[sl] * mu[None]  # [b, K, D]
            z = torch.einsum("bkd,kde->bke", diff, self.evecs.to(dt)) if self.cov_kind == "full" else diff
            var = a[sl] ** 2 * ev[None] + s[sl] ** 2  # [b, K, D]
            logp = -0.5 * (z**2 / var).sum(-1) - 0.5 * torch.log(var).sum(-1) - 0.5 * d * math.log(2 * math.pi)
            logp = logp + self.log_weights.to(dt)[None]
            if cond is not None:
                in_class = cond[sl].to(dt)[:, self.labels] > 0.5  # [b, K]
                logp = logp.masked_fill(~in_class, -math.inf)
            gain = a[sl] * ev[None] / var * z
            if self.cov_kind == "full":
                gain = torch.einsum("bke,kde->bkd", gain, self.evecs.to(dt))
            yield sl, logp, mu[None] + gain

    def denoise(self, x: Tensor, t: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """E[x0 | x_t = x], t [B]."""
        out = torch.empty_like(x)
        parts = []
        for sl, logp, m in self._component_terms(x, t, cond):
            r = torch.softmax(logp, dim=1)
            parts.append((sl, torch.einsum("bk,bkd->bd", r, m)))
        if len(parts) == 1:
            return parts[0][1]
        return torch.cat([p for _, p in parts], dim=0) if parts else out

    def predict(self, x, t, cond):
        x0 = self.denoise(x, t, cond)
        return self.process.from_x0(x0, x, t, self.prediction_type)

    def log_prob(self, x: Tensor, t, cond=None) -> Tensor:
        """log p_t(x) of the noised mixture, [B]. Differentiable in x (score = grad log p)."""
        t, cond = self.check_inputs(x, t, cond)
        return torch.cat([torch.logsumexp(logp, dim=1) for _, logp, _ in self._component_terms(x, t, cond)])

    def sample_data(self, n: int, generator: Optional[torch.Generator] = None, labels: Optional[Tensor] = None) -> Tensor:
        """Draw n samples of x0 (float64). labels: optional [n] classes to draw from."""
        logw = self.log_weights.expand(n, -1).clone()
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long)
            if labels.shape != (n,):
                raise ValueError(f"labels must have shape [{n}]")
            logw = logw.masked_fill(self.labels[None, :] != labels[:, None], -math.inf)
        comp = torch.multinomial(torch.softmax(logw, dim=1), 1, generator=generator).squeeze(1)
        z = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        z = z * self.evals[comp].sqrt()
        if self.cov_kind == "full":
            z = torch.einsum("nkd,nd->nk", self.evecs[comp], z)
        return self.means[comp] + z

    def mean_and_cov(self):
        """Mixture mean [D] and covariance [D, D] of the data distribution."""
        w = self.log_weights.exp()
        mu = (w[:, None] * self.means).sum(0)
        if self.cov_kind == "full":
            covs = torch.einsum("kde,ke,kfe->kdf", self.evecs, self.evals, self.evecs)
        else:
            covs = torch.diag_embed(self.evals)
        diff = self.means - mu
        cov = (w[:, None, None] * (covs + diff[:, :, None] * diff[:, None, :])).sum(0)
        return mu, cov


def gaussian_backbone(mean, std: float, process="edm", prediction_type: str = "x0") -> GMMBackbone:
    """A single isotropic Gaussian N(mean, std^2 I): the PF-ODE has a closed-form solution (see exact_gaussian_flow)."""
    mean = torch.as_tensor(mean, dtype=torch.float64).reshape(1, -1)
    return GMMBackbone(mean, torch.tensor([std**2], dtype=torch.float64), process=process, prediction_type=prediction_type)


def exact_gaussian_flow(process, x_T: Tensor, T: float, t: float, mean, std: float) -> Tensor:
    """Exact PF-ODE solution for Gaussian data N(mean, std^2 I): in VE-equivalent variables y = x/alpha,
    s = sigma/alpha, y(s) - mean = sqrt(std^2 + s^2) / sqrt(std^2 + s_T^2) (y_T - mean)."""
    p = get_process(process)
    tt = torch.tensor([T, t], dtype=torch.float64)
    a, s = p.alpha(tt), p.ve_sigma(tt)
    mean = torch.as_tensor(mean, dtype=x_T.dtype)
    y_T = x_T / a[0]
    y = mean + math.sqrt(std**2 + s[1] ** 2) / math.sqrt(std**2 + s[0] ** 2) * (y_T - mean)
    return y * a[1]
