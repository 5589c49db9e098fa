"""The few-step solve of a discretization model, differentiable: what training (the student's loss), evaluation
and the peers' searches run. The model's discretization of (x_T, cond), then indis.solvers.sample; plugin samplers
(AMED) and peers with their own solver, orders or AFS take over the parts they decide. Inference (`indis sample`,
the engines, the benchmarks, the pipelines) goes through indis.sampling.sampler.Sampler instead."""
from __future__ import annotations

import torch

from ..discretization import Discretization
from ..solvers import sample


def sampling_choices(model, solver, order, backbone):
    """(solver, order, backbone) a discretization model is sampled with: a model with a `sampling` method
    (indis.baselines PeerSchedule / Sampled) replaces the caller's solver and order by its own (per-step orders,
    the analytical first step as a backbone wrapper); any other model keeps the caller's."""
    if hasattr(model, "sampling"):
        return model.sampling(solver, order, backbone)
    return solver, order, backbone


def solve(model_or_disc, backbone, x_T, cond, solver="ipndm", order=None, state_dtype=torch.float32, checkpoint=False):
    """x0 of the student: the discretization of model(x_T, cond), then the few-step solve. A model with a
    `sampling` method (indis.baselines.PeerSchedule) replaces solver, order and backbone by its own choices."""
    disc = model_or_disc(x_T, cond) if callable(model_or_disc) and not isinstance(model_or_disc, Discretization) else model_or_disc
    if getattr(model_or_disc, "runs_sampler", False):  # a plugin sampler (AMED) runs the solve itself
        return model_or_disc(x_T, cond, backbone, state_dtype=state_dtype, checkpoint=checkpoint)
    solver, order, backbone = sampling_choices(model_or_disc, solver, order, backbone)
    return sample(backbone, x_T, disc, solver=solver, order=order, cond=cond, state_dtype=state_dtype, checkpoint=checkpoint)
