"""The exact ideal denoiser of an empirical dataset: a high-dimensional backbone whose score is known.

For data {y_i}, i = 1..N (the empirical distribution, a mixture of N point masses) and x_t = a y + s eps,

    p_t(x)      = 1/N sum_i N(x; a y_i, s^2 I),
    E[y | x_t]  = sum_i softmax_i(-|x - a y_i|^2 / (2 s^2)) y_i          (EDM: a = 1, s = sigma)

and eps = (x - a E[y|x]) / s = -s grad_x log p_t(x). Sampling its probability-flow ODE exactly reproduces training
points (it memorises), which makes it the reference for discretisation error with a known score on real,
high-dimensional data (e.g. the 16x16 digits: D = 256).

Computation: pairwise squared distances by |x|^2 - 2 a <x, y> + a^2 |y|^2 in float64 (cancellation-safe at the
float32 inputs' precision), with a streaming (online) softmax over data chunks so memory is O(batch x chunk).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .base import Backbone, CondSpec

Tensor = torch.Tensor


class IdealDenoiser(Backbone):
    """Args:
      data: [N, *data_shape] training points.
      process: any noise process (name, dict or instance); prediction_type: output type.
      labels: optional [N] integer classes; with conditional=True the denoiser is restricted to the points of the
        given class (condition: class labels).
      chunk: number of data points processed at once.
      compute_dtype: dtype of the distance computation (float64 default).
    """

    def __init__(self, data: Tensor, process="edm", prediction_type: str = "x0", labels: Optional[Tensor] = None,
                 conditional: bool = False, chunk: int = 4096, compute_dtype: torch.dtype = torch.float64):
        data = torch.as_tensor(data)
        if data.dim() < 2 or data.shape[0] < 1:
            raise ValueError(f"data must have shape [N, ...] with N >= 1, got {tuple(data.shape)}")
        if not data.is_floating_point():
            raise ValueError(f"data must be floating point, got {data.dtype}")
        if not torch.isfinite(data).all():
            raise ValueError("data contains NaN or inf")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        n_classes = 0
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.long)
            if labels.shape != (data.shape[0],) or (labels < 0).any():
                raise ValueError(f"labels must be {data.shape[0]} non-negative integers")
            n_classes = int(labels.max()) + 1
        if conditional and labels is None:
            raise ValueError("a conditional ideal denoiser needs labels")
        super().__init__(process, prediction_type, tuple(data.shape[1:]),
                         CondSpec("class", n_classes) if conditional else CondSpec())
        self.chunk = int(chunk)
        self.compute_dtype = compute_dtype
        flat = data.reshape(data.shape[0], -1).to(compute_dtype)
        self.register_buffer("data", flat)
        self.register_buffer("sq_norms", (flat**2).sum(1))
        self.register_buffer("labels", labels if labels is not None else torch.empty(0, dtype=torch.long))
        self.n_classes = n_classes

    @property
    def num_points(self) -> int:
        return self.data.shape[0]

    def config(self):
        cfg = super().config()
        cfg.update(num_points=self.num_points, n_classes=self.n_classes)
        return cfg

    def _stream(self, x: Tensor, t: Tensor, cond: Optional[Tensor], want_mean: bool = True):
        """Return (logsumexp_i of -|x - a y_i|^2/(2 s^2) [B], posterior mean of y [B, D] or None)."""
        dt = self.compute_dtype
        xf = x.reshape(x.shape[0], -1).to(dt)
        a = self.process.alpha(t).to(dt).reshape(-1, 1)
        s = self.process.sigma(t).to(dt).reshape(-1, 1)
        x_sq = (xf**2).sum(1, keepdim=True)
        m = torch.full((x.shape[0], 1), -math.inf, dtype=dt, device=x.device)
        z = torch.zeros_like(m)
        acc = torch.zeros_like(xf) if want_mean else None
        for lo in range(0, self.num_points, self.chunk):
            y = self.data[lo: lo + self.chunk]
            d2 = x_sq - 2 * a * (xf @ y.T) + a**2 * self.sq_norms[lo: lo + self.chunk][None]
            logit = -d2.clamp_min(0) / (2 * s**2)
            if cond is not None:
                mask = cond.to(dt)[:, self.labels[lo: lo + self.chunk]] > 0.5
                logit = logit.masked_fill(~mask, -math.inf)
            m_new = torch.maximum(m, logit.max(1, keepdim=True).values)
            safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
            scale = torch.exp(m - safe)
            w = torch.exp(logit - safe)
            z = z * scale + w.sum(1, keepdim=True)
            if want_mean:
                acc = acc * scale + w @ y
            m = m_new
        lse = (m + torch.log(z)).squeeze(1)
        return lse, (acc / z if want_mean else None)

    def denoise(self, x: Tensor, t: Tensor, cond: Optional[Tensor] = None) -> Tensor:
        """E[y | x_t = x] with the shape and dtype of x."""
        _, mean = self._stream(x, t, cond)
        return mean.reshape(x.shape).to(x.dtype)

    def predict(self, x, t, cond):
        return self.process.from_x0(self.denoise(x, t, cond), x, t, self.prediction_type)

    def log_prob(self, x: Tensor, t, cond=None) -> Tensor:
        """log p_t(x) [B] (over the points of the class if conditional); differentiable in x."""
        t, cond = self.check_inputs(x, t, cond)
        lse, _ = self._stream(x, t, cond, want_mean=False)
        s = self.process.sigma(t).to(lse.dtype)
        d = self.data.shape[1]
        if cond is not None:
            counts = cond.to(lse.dtype) @ torch.bincount(self.labels, minlength=cond.shape[1]).to(lse.dtype)
        else:
            counts = torch.full_like(lse, float(self.num_points))
        return lse - torch.log(counts) - 0.5 * d * torch.log(2 * math.pi * s**2)

    def nearest(self, x0: Tensor) -> Tensor:
        """Index of the nearest training point of each x0 (for checking memorisation)."""
        xf = x0.reshape(x0.shape[0], -1).to(self.compute_dtype)
        d2 = (xf**2).sum(1, keepdim=True) - 2 * xf @ self.data.T + self.sq_norms[None]
        return d2.argmin(1)
