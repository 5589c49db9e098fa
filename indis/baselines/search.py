"""The peers' search: `indis train --method gits|dmn|sdm` (indis.training.train.train hands these methods to
indis.training.train.train_peer, which calls `select` here) builds the method's schedule from pilot samples of the
training teacher set, for every solver of `peer_solvers` and with/without AFS (`peer_afs`), and keeps the candidate
with the least
validation distance to the teacher, as the seed paper reports each baseline with its best solver and the best of
with and without AFS. The result is a PeerSchedule in predictor.safetensors (load_predictor reads it; its
metadata `nfe` is the number of network calls). `best_heuristic` does the same for the heuristic schedules.
"""
from __future__ import annotations

import json
import time
from typing import Dict, Optional, Sequence, Tuple

import torch

from ..metrics.distances import mse
from ..sampling.guidance import GuidedBackbone
from ..sampling.solve import solve
from ..schedules import get_schedule
from ..solvers import get_solver
from . import dmn, gits, sdm
from .common import PeerSchedule, peer_schedule

Tensor = torch.Tensor
PEER_METHODS = ("gits", "dmn", "sdm")
SEARCH_SOLVERS = ("ipndm", "dpmpp_2m", "unipc")
HEURISTIC_NAMES = ("uniform", "logsnr", "polynomial")
AFS_SETTINGS = {"off": (False,), "on": (True,), "both": (False, True)}  # peer_afs -> the AFS settings searched
OPTIONS = {  # method options (TrainConfig.peer_options), the keyword arguments of each method's functions
    "gits": ("grid_steps", "grid", "metric", "gamma", "teacher_solver"),
    "dmn": ("init", "sigma_power", "trunc", "min_gap", "maxiter"),
    "sdm": ("eta_min", "eta_max", "eta_p", "grid_steps", "gamma_step", "c_shrink", "max_expand", "max_shrink", "verify",
            "rho", "power", "q", "tau_k", "high", "euler_last"),
}


def parse_afs(spec: str) -> Tuple[bool, ...]:
    """'off' | 'on' | 'both' -> the AFS settings to try."""
    if spec not in AFS_SETTINGS:
        raise ValueError(f"peer_afs must be one of {sorted(AFS_SETTINGS)}, got {spec!r}")
    return AFS_SETTINGS[spec]


def parse_solvers(spec) -> Tuple[str, ...]:
    names = tuple(s.strip() for s in spec.split(",") if s.strip()) if isinstance(spec, str) else tuple(spec)
    if not names:
        raise ValueError("give at least one solver to search")
    for s in names:
        get_solver(s)
    return names


class _Candidates:
    """Builds each method's schedules for (afs, solver), sharing the parts that do not depend on the solver."""

    def __init__(self, method: str, backbone, nfe: int, x_T: Tensor, cond, options: Optional[Dict] = None):
        if method not in PEER_METHODS and not method.startswith("heuristic:"):
            raise ValueError(f"unknown peer method {method!r}; expected one of {PEER_METHODS} or heuristic:NAME")
        self.method, self.bb, self.nfe, self.x_T, self.cond = method, backbone, int(nfe), x_T, cond
        self.opts = dict(options or {})
        unknown = set(self.opts) - set(OPTIONS.get(method, ()))
        if unknown:
            raise ValueError(f"unknown {method} option(s) {sorted(unknown)}; expected some of {sorted(OPTIONS.get(method, ()))}")
        self._cache: Dict = {}
        self.search_nfe = 0

    def build(self, solver: str, afs: bool) -> Tuple[PeerSchedule, Dict]:
        steps = self.nfe + int(afs)
        m, o = self.method, self.opts
        orders = None
        if m.startswith("heuristic:"):
            ts, info = get_schedule(m.split(":", 1)[1], self.bb.process, steps), {}
        elif m == "gits":
            ts, full = gits.gits_schedule(self.bb, self.x_T, self.cond, steps, afs=afs, pilot=self._cache.get("gits_pilot"), **o)
            self._cache["gits_pilot"] = full["pilot"]  # one pilot run serves every AFS setting
            self.search_nfe += full["search_nfe"]
            info = {k: v for k, v in full.items() if k not in ("cost", "grid", "pilot")}
        elif m == "dmn":
            key = ("dmn", steps)
            if key not in self._cache:
                self._cache[key] = dmn.dmn_schedule(self.bb.process, steps, **o)
            ts, info = self._cache[key]
        else:
            ad_keys = ("eta_min", "eta_max", "eta_p", "grid_steps", "gamma_step", "c_shrink", "max_expand", "max_shrink", "verify")
            ad = {k: v for k, v in o.items() if k in ad_keys}
            rest = {k: v for k, v in o.items() if k not in ad_keys}
            rho = rest.pop("rho", 7.0)
            if "adaptive" not in self._cache:
                t_ad, ad_info = sdm.adaptive_schedule(self.bb, self.x_T, self.cond, rho=rho, **ad)
                eta = sdm.interval_errors(self.bb, self.x_T, self.cond, t_ad)
                self._cache["adaptive"] = (t_ad, eta, ad_info)
                self.search_nfe += self.x_T.shape[0] * (ad_info["network_calls_per_pilot"] + len(t_ad))
            t_ad, eta, ad_info = self._cache["adaptive"]
            power, q = rest.pop("power", 0.5), rest.pop("q", 0.1)
            ts = sdm.resample(self.bb.process, t_ad, eta, steps, power, q, rho)
            orders, kappa = sdm.order_schedule(self.bb, self.x_T, self.cond, ts, solver, afs=afs, **rest)
            self.search_nfe += self.x_T.shape[0] * (steps - int(afs))
            info = {"adaptive_steps": ad_info["steps"], "adaptive_timesteps": t_ad.tolist(), "interval_eta": eta.tolist(),
                    "orders": orders, "kappa": kappa, "power": power, "q": q, **{k: v for k, v in rest.items()}}
        return peer_schedule(self.bb, ts, solver, orders=orders, afs=afs, method=m), info


@torch.no_grad()
def score(model, net, x_T, cond, x0s, distance, batch: int = 256, state_dtype=torch.float32) -> Dict[str, float]:
    """Mean distance and mean MSE of model's samples from x_T against the teacher endpoints x0s."""
    d = m = 0.0
    for lo in range(0, len(x_T), batch):
        c = None if cond is None else cond[lo : lo + batch]
        x0 = solve(model, net, x_T[lo : lo + batch], c, state_dtype=state_dtype)
        d += float(distance(x0, x0s[lo : lo + batch]).sum())
        m += float(mse(x0, x0s[lo : lo + batch]).sum())
    return {"distance": d / len(x_T), "mse": m / len(x_T)}


def select(method: str, backbone, nfe: int, pilots: Tuple[Tensor, object], val: Tuple[Tensor, object, Tensor],
           solvers: Sequence[str] = SEARCH_SOLVERS, afs: Sequence[bool] = (False, True), distance=None,
           options: Optional[Dict] = None, net=None, log=None) -> Tuple[PeerSchedule, Dict]:
    """Every (solver, AFS) candidate of a method at `nfe` network calls, scored on the validation triple
    (x_T, cond, teacher x0) by `distance` (default: MSE); returns the best and a report of all."""
    distance = mse if distance is None else distance
    net = backbone if net is None else net
    t0 = time.time()
    cands = _Candidates(method, net, nfe, pilots[0], pilots[1], options)
    rows, best = [], None
    for a in afs:
        if a and nfe + 1 < 2:
            continue
        for s in solvers:
            model, info = cands.build(s, a)
            sc = score(model, net, *val, distance)
            rows.append({"solver": s, "afs": a, **sc, "timesteps": model.timesteps.tolist(), "orders": model.orders})
            if log:
                log(f"{method} NFE {nfe} {s}{' +AFS' if a else ''}: validation distance {sc['distance']:.5g}")
            if best is None or sc["distance"] < best[1]["distance"]:
                best = (model, sc, info)
    model, sc, info = best
    report = {"method": method, "nfe": int(nfe), "solver": model.solver_name, "afs": model.afs, "orders": model.orders,
              "timesteps": model.timesteps.tolist(), "best_val": sc["distance"], "best_val_mse": sc["mse"], "candidates": rows,
              "search_seconds": time.time() - t0, "search_network_calls": cands.search_nfe, "pilots": int(pilots[0].shape[0]),
              "info": _jsonable(info)}
    return model.eval(), report


def _jsonable(d):
    try:
        return json.loads(json.dumps(d))
    except TypeError:
        return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool, list, type(None)))}


def best_heuristic(backbone, teacher, nfe: int, names: Sequence[str] = HEURISTIC_NAMES, solvers: Sequence[str] = SEARCH_SOLVERS,
                   afs: Sequence[bool] = (False,), positions=None, key: str = "mse", batch: int = 256) -> Tuple[PeerSchedule, Dict]:
    """The best heuristic schedule over names x solvers (x AFS) on a teacher set by `key` ("mse"): the seed paper's
    "best heuristic" row, each sampled with its own solver."""
    pos = torch.arange(len(teacher)) if positions is None else torch.as_tensor(positions)
    x_T, cond, x0s = teacher.batch(pos)
    net = GuidedBackbone(backbone, teacher.manifest["teacher"].get("cfg_scale", 1.0))
    best, rows = None, []
    for name in names:
        cands = _Candidates(f"heuristic:{name}", net, nfe, x_T, cond)
        for a in afs:
            for s in solvers:
                model, _ = cands.build(s, a)
                sc = score(model, net, x_T, cond, x0s, mse, batch)
                rows.append({"name": name, "solver": s, "afs": a, **sc})
                if best is None or sc[key] < best[1][key]:
                    best = (model, sc, name)
    model, sc, name = best
    return model.eval(), {"name": name, "solver": model.solver_name, "afs": model.afs, "scores": rows}
