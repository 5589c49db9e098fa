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


def schedule_name_for(backbone, name: str) -> str:
    """A heuristic's full name for this backbone: plain "rds" becomes "rds:SEQ_LEN" with the backbone's
    `image_seq_len` (its transformer's image token count); other names are returned as they are."""
    if name != "rds":
        return name
    seq = getattr(backbone, "image_seq_len", None)
    if seq is None:
        raise ValueError(f"the rds schedule needs the image sequence length and {type(backbone).__name__} has no "
                         "image_seq_len: name it rds:SEQ_LEN")
    return f"rds:{int(seq)}"


def heuristic(backbone, name: str, nfe: int) -> FixedDiscretization:
    param = DiscretizationParam(backbone.process, nfe, b_dtau=0.0, b_gamma=0.0)
    ts = get_schedule(schedule_name_for(backbone, name), backbone.process, nfe)
    return FixedDiscretization(param, ts, backbone.data_shape, getattr(backbone, "cond_spec", CondSpec()))
