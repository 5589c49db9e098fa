"""What the training-free peer baselines share: the schedule module they produce, a per-step order schedule for
the multistep solvers, the analytical first step (AFS), and pilot trajectories with their model outputs.

PeerSchedule: a FixedDiscretization (fixed timesteps, no shift, unit scale) that also records how it must be
sampled: its solver and order, an optional per-step order list and whether the first network call is replaced
by the analytical estimate. `indis.sampling.solve.solve` (and so evaluation, `indis eval` and `indis sample`)
honours these through `sampling()`; it saves and loads through the predictor safetensors format.

Per-step orders (`order_scheduled`): step i of a multistep solver uses order min(orders[i], the solver's own
order at i); the coefficient formulas are the solver's own (indis.solvers is not changed), only the order
choice is overridden. With orders=None nothing is wrapped.

AFS (Dockhorn et al., GENIE, NeurIPS 2022; as used by diff-sampler's solvers): the network call at t = T is
replaced by eps ~= y_T / sqrt(1 + s_T^2) in the VE-equivalent variables y = x / alpha, s = sigma / alpha (for
EDM: eps = x_T / sqrt(1 + T^2)), which is the posterior mean of eps given x_T for unit-variance data around 0.
It saves one network call, so an N-call method with AFS integrates N + 1 steps.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..backbones.base import CondSpec
from ..discretization import DiscretizationParam
from ..processes import _bcast
from ..sampling.fixed import FixedDiscretization
from ..solvers import Solver, get_solver, sample

Tensor = torch.Tensor


def order_scheduled(solver, orders: Optional[Sequence[int]]) -> Solver:
    """The solver with step i's order capped at orders[i] (orders None: the solver unchanged). The returned
    object is an instance of a subclass of the solver's own class, so `sample` treats it exactly like the solver."""
    base = get_solver(solver)
    if orders is None:
        return base
    orders = tuple(int(k) for k in orders)
    if not orders or min(orders) < 1 or max(orders) > base.max_order:
        raise ValueError(f"{base.name}: per-step orders must lie in [1, {base.max_order}], got {list(orders)}")
    cls = type(base)

    class _OrderScheduled(cls):  # type: ignore[misc, valid-type]
        def step_order(self, i: int, n: int, order: int) -> int:
            if n != len(self.orders):
                raise ValueError(f"{self.name}: {len(self.orders)} per-step orders given for a schedule of {n} steps")
            return min(self.orders[i], super().step_order(i, n, order))

    _OrderScheduled.__name__ = f"OrderScheduled{cls.__name__}"
    inst = _OrderScheduled.__new__(_OrderScheduled)
    inst.__dict__.update(base.__dict__)
    inst.orders = orders
    return inst


def analytic_eps(process, x: Tensor, t: Tensor) -> Tensor:
    """AFS estimate of eps at (x, t): y / sqrt(1 + s^2) with y = x / alpha(t), s = sigma(t) / alpha(t)."""
    a, s = _bcast(process.alpha(t), x), _bcast(process.ve_sigma(t), x)
    return (x / a) / torch.sqrt(1 + s * s)


class AnalyticFirstStep(nn.Module):
    """Backbone wrapper: calls at t = T (the first call of a schedule that starts at T unshifted) return the AFS
    estimate in the backbone's prediction type without calling the network; other calls go to the backbone.
    `network_calls` counts the batched calls that reached the backbone."""

    def __init__(self, backbone):
        super().__init__()
        self.inner = backbone
        for k in ("process", "prediction_type", "data_shape"):
            setattr(self, k, getattr(backbone, k))
        self.cond_spec = getattr(backbone, "cond_spec", CondSpec())
        self.T = float(self.process.T)
        self.network_calls = 0

    @property
    def backbone_id(self) -> str:
        return self.inner.backbone_id

    def forward(self, x: Tensor, t, cond=None) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        at_T = t >= self.T * (1 - 1e-9)
        est = None
        if at_T.any():
            est = self.process.from_eps(analytic_eps(self.process, x, t), x, t, self.prediction_type)
            if at_T.all():
                return est
        self.network_calls += 1
        out = self.inner(x, t, cond)
        if est is None:
            return out
        return torch.where(_bcast(at_T, x), est.to(out.dtype), out)


class SamplerChoices:
    """Mixin of modules that carry their own sampler options (solver_name, order, orders, afs, network_calls)."""

    def sampling(self, solver, order, backbone):
        """(solver, order, backbone) this module is sampled with; the arguments are the caller's defaults and are
        replaced by the module's own choices."""
        s = order_scheduled(self.solver_name, self.orders)
        return s, self.order, AnalyticFirstStep(backbone) if self.afs else backbone

    def sampling_info(self) -> Dict:
        return {"solver": self.solver_name, "order": self.order, "orders": self.orders, "afs": self.afs,
                "network_calls": self.network_calls}


class PeerSchedule(SamplerChoices, FixedDiscretization):
    """A training-free peer's result: fixed timesteps [steps + 1] plus its sampling choices.
    solver/order: the solver it was selected with; orders: optional per-step order caps; afs: the first call is
    analytical (so the network is called steps - 1 times); method: a label ("gits", "dmn", "sdm", "heuristic:...")."""

    def __init__(self, param: DiscretizationParam, timesteps: Tensor, data_shape: Sequence[int] = (), cond_spec: CondSpec = CondSpec(),
                 solver: str = "ipndm", order: Optional[int] = None, orders: Optional[Sequence[int]] = None, afs: bool = False,
                 method: str = ""):
        super().__init__(param, timesteps, data_shape, cond_spec)
        s = get_solver(solver)
        self.solver_name = s.name
        self.order = s.check_order(order)
        self.orders = None if orders is None else [int(k) for k in orders]
        if self.orders is not None:
            if len(self.orders) != param.nfe:
                raise ValueError(f"PeerSchedule: {len(self.orders)} per-step orders for {param.nfe} steps")
            order_scheduled(s, self.orders)  # validates the range
        self.afs = bool(afs)
        if self.afs and param.nfe < 2:
            raise ValueError("PeerSchedule: AFS needs at least 2 steps (one analytical, one network call)")
        self.method = str(method)

    @property
    def network_calls(self) -> int:
        """Network evaluations per sample (the NFE of the method)."""
        return self.param.nfe - int(self.afs)

    def config(self) -> Dict:
        c = super().config()
        c.update({"class": "PeerSchedule", "solver": self.solver_name, "order": self.order, "orders": self.orders,
                  "afs": self.afs, "method": self.method})
        return c



def peer_schedule(backbone, timesteps: Tensor, solver: str = "ipndm", order: Optional[int] = None,
                  orders: Optional[Sequence[int]] = None, afs: bool = False, method: str = "") -> PeerSchedule:
    """A PeerSchedule for a backbone from a decreasing [steps + 1] schedule (pinned to T and t0)."""
    ts = torch.as_tensor(timesteps, dtype=torch.float64).detach().cpu().clone()
    proc = backbone.process
    if ts.dim() != 1 or len(ts) < 2:
        raise ValueError(f"a peer schedule must be a 1-D tensor of at least 2 times, got shape {tuple(ts.shape)}")
    ts[0], ts[-1] = proc.T, proc.t0
    proc.check_times(ts, f"{method or 'peer'} schedule")
    if not (ts[1:] < ts[:-1]).all():
        raise ValueError(f"{method or 'peer'} schedule is not strictly decreasing: {ts.tolist()}")
    param = DiscretizationParam(proc, len(ts) - 1, b_dtau=0.0, b_gamma=0.0)
    return PeerSchedule(param, ts, backbone.data_shape, getattr(backbone, "cond_spec", CondSpec()), solver, order, orders, afs, method)


class _Recorder(nn.Module):
    """Backbone wrapper that keeps every call's (t, eps) in float64 (for pilot trajectories)."""

    def __init__(self, backbone):
        super().__init__()
        self.inner = backbone
        for k in ("process", "prediction_type", "data_shape"):
            setattr(self, k, getattr(backbone, k))
        self.calls: List[Tuple[Tensor, Tensor]] = []

    def forward(self, x, t, cond=None):
        out = self.inner(x, t, cond)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0])
        self.calls.append((t.detach(), self.process.to_eps(out.to(torch.float64), x.to(torch.float64), t.to(torch.float64),
                                                           self.prediction_type).detach()))
        return out


@torch.no_grad()
def pilot_trajectory(backbone, x_T: Tensor, cond, timesteps: Tensor, solver="ipndm", order: Optional[int] = None,
                     orders: Optional[Sequence[int]] = None, afs: bool = False) -> Tuple[Tensor, Tensor]:
    """Run a multistep solver (Euler / iPNDM / DPM-Solver++(2M); not UniPC, whose calls are at predicted points)
    on a shared schedule in float64: (states [steps + 1, B, ...], eps [steps, B, ...]) where eps[i] is the model's
    eps-prediction at (states[i], timesteps[i]) (the analytical one at T when afs)."""
    s = order_scheduled(solver, orders)
    if s.name == "unipc":
        raise ValueError("pilot trajectories need a solver whose calls are at its states (euler, ipndm, dpmpp_2m), not unipc")
    net = AnalyticFirstStep(backbone) if afs else backbone
    rec = _Recorder(net)
    ts = torch.as_tensor(timesteps, dtype=torch.float64)
    _, traj = sample(rec, x_T.to(torch.float64), ts, solver=s, order=order, cond=cond, state_dtype=torch.float64,
                     return_trajectory=True)
    if len(rec.calls) != len(ts) - 1:
        raise RuntimeError(f"expected {len(ts) - 1} model calls, recorded {len(rec.calls)}")
    return torch.stack(traj), torch.stack([e for _, e in rec.calls])


def to_ve(process, x: Tensor, t: Tensor) -> Tensor:
    """y = x / alpha(t) (VE-equivalent state; dy/ds = eps with s = sigma / alpha)."""
    return x / _bcast(process.alpha(torch.as_tensor(t, dtype=x.dtype, device=x.device)).expand(x.shape[0]), x)


def ve_s(process, t: Tensor) -> Tensor:
    """s = sigma / alpha (the VE noise level) of times t."""
    return process.ve_sigma(torch.as_tensor(t, dtype=torch.float64))


def t_from_ve_s(process, s: Tensor) -> Tensor:
    """Times of VE noise levels s (inverse of ve_s)."""
    return process.t_from_log_snr(-torch.log(torch.as_tensor(s, dtype=torch.float64)))


def per_sample_norm(x: Tensor) -> Tensor:
    """L2 norm of each sample [B] over all its dimensions."""
    return x.reshape(x.shape[0], -1).norm(dim=1)


class Sampled(SamplerChoices, nn.Module):
    """A learned discretization (Predictor, GlobalDiscretization, LD3Discretization) together with the sampler
    options it was trained with: per-step orders and/or AFS (`indis train --orders ... --afs`, e.g. INDIS combined
    with SDM's order schedule). forward() is the inner module's, except that with AFS the first call's shift is
    zero (that call is analytical, at T); `sampling()` gives solve() the solver, orders and AFS backbone."""

    def __init__(self, inner: nn.Module, solver: str = "ipndm", order: Optional[int] = None,
                 orders: Optional[Sequence[int]] = None, afs: bool = False):
        super().__init__()
        self.inner = inner
        self.param = inner.param
        self.data_shape = inner.data_shape
        self.cond_spec = inner.cond_spec
        s = get_solver(solver)
        self.solver_name, self.order = s.name, s.check_order(order)
        self.orders = None if orders is None else [int(k) for k in orders]
        if self.orders is not None:
            if len(self.orders) != self.param.nfe:
                raise ValueError(f"Sampled: {len(self.orders)} per-step orders for {self.param.nfe} steps")
            order_scheduled(s, self.orders)
        self.afs = bool(afs)
        if self.afs and self.param.nfe < 2:
            raise ValueError("Sampled: AFS needs at least 2 steps")

    @property
    def network_calls(self) -> int:
        return self.param.nfe - int(self.afs)

    def config(self) -> Dict:
        return {"class": "Sampled", "inner": self.inner.config(), "solver": self.solver_name, "order": self.order,
                "orders": self.orders, "afs": self.afs}

    def forward(self, x_T: Tensor, cond=None):
        d = self.inner(x_T, cond)
        if self.afs and d.dtau is not None:
            d = type(d)(d.timesteps, torch.cat([torch.zeros_like(d.dtau[..., :1]), d.dtau[..., 1:]], dim=-1), d.gamma)
        return d
