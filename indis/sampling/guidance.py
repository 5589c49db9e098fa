"""Classifier-free guidance (Ho & Salimans 2022) as a backbone wrapper: every sampler, the teacher and the
student call a conditional network through it."""
from __future__ import annotations

from typing import Optional

import torch

from ..backbones.base import CondSpec


class GuidedBackbone(torch.nn.Module):
    """Classifier-free guidance around a conditional backbone: out = u + scale (c - u), where u is the
    prediction with the null condition (an all-zero one-hot / embedding, as EDM-style label dropout trains it).
    Guidance is applied to the raw prediction, which is linear in eps, x0 and velocity alike. scale = 1 is the
    plain conditional model (one call); other scales cost one batched call of twice the batch.
    null_cond: the unconditional condition ([dim] or [B, dim], e.g. encoded negative prompts) instead of zeros."""

    def __init__(self, backbone, scale: float = 1.0, null_cond: Optional[torch.Tensor] = None):
        super().__init__()
        self.inner = backbone
        self.scale = float(scale)
        self.null_cond = null_cond
        self.process = backbone.process
        self.prediction_type = backbone.prediction_type
        self.data_shape = tuple(backbone.data_shape)
        self.cond_spec = getattr(backbone, "cond_spec", CondSpec())
        if self.scale != 1.0 and self.cond_spec.kind == "none":
            raise ValueError("a classifier-free guidance scale needs a conditional backbone")

    @property
    def backbone_id(self) -> str:
        return self.inner.backbone_id

    def forward(self, x, t, cond=None):
        if self.scale == 1.0 or cond is None:
            return self.inner(x, t, cond)
        c = self.cond_spec.check(cond, x.shape[0], "guidance").to(x.dtype)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        unc = torch.zeros_like(c) if self.null_cond is None else self.null_cond.to(c).expand_as(c)
        out = self.inner(torch.cat([x, x]), torch.cat([t, t]), torch.cat([c, unc]))
        cnd, unc = out.chunk(2)
        return unc + self.scale * (cnd - unc)
