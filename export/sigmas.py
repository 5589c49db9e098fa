"""Per-sample sigma schedules for tools that take a custom schedule: diffusers pipelines (`sigmas=`) and node
UIs (a SIGMAS list, e.g. ComfyUI's). No mainstream scheduler accepts a schedule per sample in a batch
(diffusers issue #1784), so the schedules are exported per seed and used one sample at a time.

The noise level convention of those tools:
  * flow matching (process "flow"): sigma = t (diffusers FlowMatchEulerDiscreteScheduler, SD3/FLUX in UIs);
  * EDM / VP processes: the VE-equivalent sigma = sigma(t) / alpha(t) (k-diffusion, diffusers'
    EulerDiscreteScheduler / EDMEulerScheduler, UIs); for EDM this is t itself.

sigmas.json (written atomically):
  {"format": "indis-sigmas", "version": 1, "process", "prediction_type", "nfe", "solver", "backbone_id",
   "predictor_id", "sigma_convention",
   "samples": [{"seed", "class_label" (class-conditional models), "sigmas" [N+1] (T ... t0: exactly the INDIS
                schedule, for SIGMAS lists), "diffusers_sigmas" [N] (first N values: diffusers' schedulers
                append their own terminal sigma 0), "timesteps" [N+1], "call_timesteps" [N] (tau + dtau),
                "gamma" [N]}]}

What a plain sigma list cannot carry: the per-step time shift dtau and scale gamma of INDIS (they are in the
file for tools that can use them, and are identity for predictors trained without them), and INDIS's solver
(use the matching sampler: Euler for "euler", the tool's multistep sampler otherwise). A diffusers scheduler
steps from the last listed sigma to 0 where INDIS stops at t0; the difference is one step of size t0 (0.002
by default). The worked example in docs/export.md checks both facts numerically.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

from ..io import atomic_write_json

Tensor = torch.Tensor


def tool_sigmas(process, t: Tensor) -> Tensor:
    """Noise levels in the convention of diffusers / node UIs (see module docstring)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return t.clone() if process.name == "flow" else process.ve_sigma(t)


@torch.no_grad()
def schedules_for_seeds(model, backbone, seeds: Sequence[int], table=None) -> Dict:
    """Per-seed schedules of `model` (a predictor) for the prior noise x_T of each seed (indis.training.seeds)."""
    from ..training.seeds import draw

    seeds = [int(s) for s in seeds]
    x_T, cond = draw(seeds, backbone.data_shape, backbone.process.prior_std(), backbone.cond_spec, table)
    d = model.eval()(x_T, cond)
    n = d.timesteps.shape[-1] - 1
    ts = d.timesteps.double().expand(len(seeds), -1)
    dtau = torch.zeros(len(seeds), n, dtype=torch.float64) if d.dtau is None else d.dtau.double().expand(len(seeds), -1)
    gamma = torch.ones(len(seeds), n, dtype=torch.float64) if d.gamma is None else d.gamma.double().expand(len(seeds), -1)
    sig = tool_sigmas(backbone.process, ts)
    samples = []
    for i, s in enumerate(seeds):
        row = {"seed": s, "sigmas": sig[i].tolist(), "diffusers_sigmas": sig[i, :-1].tolist(), "timesteps": ts[i].tolist(),
               "call_timesteps": (ts[i, :-1] + dtau[i]).tolist(), "gamma": gamma[i].tolist()}
        if backbone.cond_spec.kind == "class" and cond is not None:
            row["class_label"] = int(cond[i])
        samples.append(row)
    return {"nfe": n, "samples": samples}


def export_sigmas(model, backbone, seeds: Sequence[int], path, solver: Optional[str] = None, predictor_id: Optional[str] = None,
                  table=None) -> Dict:
    """Write sigmas.json for the seeds; returns its content."""
    body = schedules_for_seeds(model, backbone, seeds, table)
    doc = {"format": "indis-sigmas", "version": 1, "process": backbone.process.config(),
           "prediction_type": backbone.prediction_type, "solver": solver, "backbone_id": backbone.backbone_id,
           "predictor_id": predictor_id,
           "sigma_convention": "t (flow matching)" if backbone.process.name == "flow" else "sigma/alpha (VE-equivalent)",
           **body}
    atomic_write_json(path, doc)
    return doc


def sigmas_for_seed(doc: Dict, seed: int, for_diffusers: bool = False):
    """The sigma list of one seed from a sigmas.json document (N+1 values; N with for_diffusers)."""
    for row in doc["samples"]:
        if row["seed"] == int(seed):
            return list(row["diffusers_sigmas" if for_diffusers else "sigmas"])
    raise KeyError(f"seed {seed} is not in this sigmas file (seeds {[r['seed'] for r in doc['samples']][:10]}...)")
