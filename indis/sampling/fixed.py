"""Fixed schedules with the predictor interface: a heuristic discretization (indis.schedules) sampled the same
way as a learned one (no shift dtau, unit scale gamma)."""
from __future__ import annotations

from typing import Dict, Sequence

import torch
from torch import nn

from ..backbones.base import CondSpec
from ..discretization import Discretization, DiscretizationParam
from ..schedules import get_schedule

Tensor = torch.Tensor


class FixedDiscretization(nn.Module):
    """A fixed (heuristic) schedule with the predictor interface."""

    def __init__(self, param: DiscretizationParam, timesteps: Tensor, data_shape: Sequence[int] = (), cond_spec: CondSpec = CondSpec()):
        super().__init__()
        self.param = param
        self.data_shape = tuple(int(d) for d in data_shape)
        self.cond_spec = cond_spec
        self.register_buffer("timesteps", torch.as_tensor(timesteps, dtype=torch.float64).clone())

    def config(self) -> Dict:
        return {"class": "FixedDiscretization", "param": self.param.config(), "data_shape": list(self.data_shape), "cond_spec": self.cond_spec.to_dict()}

    def forward(self, x_T: Tensor, cond=None) -> Discretization:
        b = x_T.shape[0]
        ts = self.timesteps.to(x_T.device).expand(b, -1)
        return Discretization(ts, torch.zeros_like(ts[:, :-1]), torch.ones_like(ts[:, :-1]))


def heuristic(backbone, name: str, nfe: int) -> FixedDiscretization:
    param = DiscretizationParam(backbone.process, nfe, b_dtau=0.0, b_gamma=0.0)
    return FixedDiscretization(param, get_schedule(name, backbone.process, nfe), backbone.data_shape, getattr(backbone, "cond_spec", CondSpec()))
