"""The few-step solve of a discretization model: what the student, evaluation and `indis sample --backend torch`
run. The model's discretization of (x_T, cond), then indis.solvers.sample; plugin samplers (AMED) and peers with
their own solver, orders or AFS take over the parts they decide."""
from __future__ import annotations

import torch

from ..discretization import Discretization
from ..solvers import sample


def solve(model_or_disc, backbone, x_T, cond, solver="ipndm", order=None, state_dtype=torch.float32, checkpoint=False):
    """x0 of the student: the discretization of model(x_T, cond), then the few-step solve. A model with a
    `sampling` method (indis.baselines.PeerSchedule) replaces solver, order and backbone by its own choices."""
    disc = model_or_disc(x_T, cond) if callable(model_or_disc) and not isinstance(model_or_disc, Discretization) else model_or_disc
    if getattr(model_or_disc, "runs_sampler", False):  # a plugin sampler (AMED) runs the solve itself
        return model_or_disc(x_T, cond, backbone, state_dtype=state_dtype, checkpoint=checkpoint)
    if hasattr(model_or_disc, "sampling"):  # a method with its own solver, per-step orders or AFS (indis.baselines)
        solver, order, backbone = model_or_disc.sampling(solver, order, backbone)
    return sample(backbone, x_T, disc, solver=solver, order=order, cond=cond, state_dtype=state_dtype, checkpoint=checkpoint)
