"""Per-sample sigma schedules for tools that take a custom schedule: diffusers schedulers and pipelines
(`sigmas=`) and node UIs (a SIGMAS list, e.g. ComfyUI's). No mainstream scheduler accepts a schedule per sample in a
batch (diffusers issue #1784), so the schedules are exported per seed and used one sample at a time.

The noise level convention of those tools:
  * flow matching (process "flow"): sigma = t (diffusers FlowMatchEulerDiscreteScheduler, SD3/FLUX in UIs);
  * EDM / VP processes: the VE-equivalent sigma = sigma(t) / alpha(t) (k-diffusion, diffusers'
    EulerDiscreteScheduler, UIs); for EDM this is t itself.

Each diffusers scheduler reads a `sigmas=` list differently, and some re-shape it: FlowMatchEulerDiscreteScheduler
takes N values, applies its `shift` (SD3: 3.0) or, with use_dynamic_shifting (FLUX), a resolution-dependent shift
exp(mu), then appends 0; EulerDiscreteScheduler takes all N+1 values and ends at the last; EDMEulerScheduler reads
its `sigmas` as N positions of a 0..1 ramp of its own Karras / exponential schedule and appends 0. So a list is only
meaningful with the scheduler it was made for: `scheduler_sigmas(scheduler, sigmas)` gives the list for a given
scheduler object and its config (pre-images under its shift, ramp positions), `set_indis_sigmas(scheduler, sigmas)`
configures a scheduler to step exactly through INDIS's N+1 noise levels and checks that it does, and every other
scheduler or option that would change the list (Karras / exponential / beta sigmas on the flow scheduler,
shift_terminal, inverted or stochastic sampling, multistep schedulers) is refused with a message, never used
silently.

sigmas.json (written atomically), format version 2:
  {"format": "indis-sigmas", "version": 2, "process", "prediction_type", "nfe", "solver", "backbone_id",
   "predictor_id", "sigma_convention",
   "samples": [{"seed", "class_label" (class-conditional models), "sigmas" [N+1] (T ... t0: exactly the INDIS
                schedule, for SIGMAS lists), "diffusers" {"scheduler", "config", "sigmas", "steps", "terminal"}
                (the one list for the named scheduler with the named config: FlowMatchEulerDiscreteScheduler with
                shift 1 and no dynamic shifting, N values, ending at 0; EulerDiscreteScheduler, N+1 values, ending at
                t0), "timesteps" [N+1], "call_timesteps" [N] (tau + dtau), "gamma" [N]}]}

What a plain sigma list cannot carry: the per-step time shift dtau and scale gamma of INDIS (they are in the
file for tools that can use them, and are identity for predictors trained without them), and INDIS's solver
(use the matching sampler: Euler for "euler", the tool's multistep sampler otherwise). FlowMatchEuler steps from the
last listed sigma to 0 where INDIS stops at t0 (a difference of one step of size t0, 0.002 by default) unless
set_indis_sigmas sets its terminal. The worked example in docs/export.md checks both facts numerically.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from ..backbones.diffusers import flow_shift
from ..io import atomic_write_json
from ..backbones.base import stable_hash
from ..sampling.seeds import draw

Tensor = torch.Tensor

FORMAT_VERSION = 2
#: the schedulers whose `sigmas=` INDIS knows how to fill (see scheduler_sigmas)
SUPPORTED_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "EulerDiscreteScheduler", "EDMEulerScheduler")
#: FlowMatchEulerDiscreteScheduler options that re-derive the sigmas in ways that are not inverted here
_FLOW_REFUSED = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "shift_terminal", "invert_sigmas",
                 "stochastic_sampling")


def tool_sigmas(process, t: Tensor) -> Tensor:
    """Noise levels in the convention of diffusers / node UIs (see module docstring)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return t.clone() if process.name == "flow" else process.ve_sigma(t)


def _check_sigmas(sigmas) -> Tensor:
    s = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if s.numel() < 2 or not torch.isfinite(s).all() or not (s.diff() < 0).all() or s[-1] <= 0:
        raise ValueError(f"expected INDIS's N+1 noise levels, positive and strictly decreasing (T ... t0), got {s.tolist()}")
    return s


def _check_flow_options(name: str, cfg: Dict) -> None:
    bad = [k for k in _FLOW_REFUSED if cfg.get(k)]
    if bad:
        raise ValueError(f"{name} with {', '.join(f'{k}={cfg[k]!r}' for k in bad)} re-derives the sigmas it is "
                         "given; INDIS's per-sample sigmas need these options off (from_config(..., "
                         + ", ".join(f"{k}=None" if k == "shift_terminal" else f"{k}=False" for k in bad) + "))")


def _flow_shift_of(cfg: Dict, image_seq_len: Optional[int]) -> float:
    """The shift the scheduler will apply in set_timesteps (sigma -> s sigma / (1 + (s - 1) sigma))."""
    if cfg.get("use_dynamic_shifting", False) and image_seq_len is None:
        raise ValueError("this FlowMatchEulerDiscreteScheduler uses dynamic shifting (FLUX): its pipeline shifts the "
                         "sigmas by exp(mu) for the image size; pass image_seq_len (the number of latent tokens, "
                         "(H/2)*(W/2) for FLUX latents [C, H, W]), or use set_indis_sigmas, which sets mu itself")
    return flow_shift(cfg, int(image_seq_len or 0))  # the length only matters with dynamic shifting


def scheduler_sigmas(scheduler, sigmas, image_seq_len: Optional[int] = None) -> List[float]:
    """The `sigmas=` list that makes `scheduler` (a diffusers scheduler object) step through INDIS's noise levels
    `sigmas` [N+1] (T ... t0, the "sigmas" of a sigmas.json row), for `scheduler.set_timesteps(sigmas=...)` or a
    pipeline's `sigmas=` argument:

      FlowMatchEulerDiscreteScheduler  N values, pre-images under its shift (static, or the pipeline's dynamic
                                       shift exp(mu) for image_seq_len tokens), so that its shift gives INDIS's
                                       values back; it then steps to 0
      EulerDiscreteScheduler           all N+1 values; it ends at t0
      EDMEulerScheduler                N positions on the ramp of its own sigma_schedule (karras / exponential,
                                       its sigma_min / sigma_max / rho); it then steps to 0

    Any other scheduler, and flow-scheduler options that re-derive the sigmas otherwise, raise ValueError."""
    s = _check_sigmas(sigmas)
    name = type(scheduler).__name__
    cfg = dict(getattr(scheduler, "config", {}) or {})
    if name == "FlowMatchEulerDiscreteScheduler":
        _check_flow_options(name, cfg)
        if s[0] >= 1:
            raise ValueError(f"flow-matching sigmas lie in (0, 1); got {s[0].item()} (a VP/EDM schedule? use "
                             "EulerDiscreteScheduler)")
        shift = _flow_shift_of(cfg, image_seq_len)
        head = s[:-1]
        return (head / (shift - (shift - 1) * head)).tolist()  # inverse of y = shift x / (1 + (shift - 1) x)
    if name == "EulerDiscreteScheduler":
        return s.tolist()
    if name == "EDMEulerScheduler":
        head = s[:-1]
        smin, smax = float(cfg.get("sigma_min", 0.002)), float(cfg.get("sigma_max", 80.0))
        kind = cfg.get("sigma_schedule", "karras")
        if kind == "karras":
            rho = float(cfg.get("rho", 7.0))
            lo, hi = smin ** (1 / rho), smax ** (1 / rho)
            return ((head ** (1 / rho) - hi) / (lo - hi)).tolist()
        raise ValueError(f"{name} with sigma_schedule={kind!r} ignores the values it is given (it spaces its own "
                         "sigmas evenly in log sigma); use sigma_schedule='karras' or EulerDiscreteScheduler")
    raise ValueError(f"{name}: INDIS can fill the sigmas of {', '.join(SUPPORTED_SCHEDULERS)} only; other schedulers "
                     "derive their own schedule or take sigmas in another sense (multistep solvers: sample with "
                     "indis.sample or the INDIS pipeline instead)")


def set_indis_sigmas(scheduler, sigmas, device=None):
    """Configure `scheduler` to step exactly through INDIS's noise levels `sigmas` [N+1] (T ... t0): N steps, N model
    calls, ending at t0 (a terminal 0 appended by the scheduler is replaced by t0). A FLUX-style scheduler with
    dynamic shifting is given the mu that makes its shift the identity. The scheduler's resulting sigmas are
    checked against INDIS's (relative 1e-5); returns the scheduler."""
    s = _check_sigmas(sigmas)
    name = type(scheduler).__name__
    cfg = dict(getattr(scheduler, "config", {}) or {})
    if name == "FlowMatchEulerDiscreteScheduler" and cfg.get("use_dynamic_shifting", False):
        # exp(mu) = 1 (exponential time shift) or mu = 1 (linear): the shift is the identity
        mu = 1.0 if cfg.get("time_shift_type", "exponential") == "linear" else 0.0
        _check_flow_options(name, cfg)
        if s[0] >= 1:
            raise ValueError(f"flow-matching sigmas lie in (0, 1); got {s[0].item()}")
        scheduler.set_timesteps(sigmas=s[:-1].tolist(), mu=mu, device=device)
    elif name == "EDMEulerScheduler":
        scheduler.set_timesteps(sigmas=torch.tensor(scheduler_sigmas(scheduler, s), dtype=torch.float64), device=device)
    else:
        scheduler.set_timesteps(sigmas=scheduler_sigmas(scheduler, s), device=device)
    got = scheduler.sigmas
    if got.shape[0] == s.shape[0] and name != "EulerDiscreteScheduler":
        got[-1] = float(s[-1])  # the appended terminal 0 -> t0, where INDIS stops
    if got.shape[0] != s.shape[0] or not torch.allclose(got.double(), s, rtol=1e-5, atol=1e-8):
        raise ValueError(f"{name} would step through {got.tolist()} instead of INDIS's {s.tolist()}; refusing")
    return scheduler


def _diffusers_row(process_name: str, sig: Tensor) -> Dict:
    """The sigmas.json "diffusers" entry: the one scheduler and config the list is made for."""
    if process_name == "flow":
        return {"scheduler": "FlowMatchEulerDiscreteScheduler", "config": {"shift": 1.0, "use_dynamic_shifting": False},
                "sigmas": sig[:-1].tolist(), "steps": sig.shape[0] - 1, "terminal": 0.0}
    return {"scheduler": "EulerDiscreteScheduler", "config": {}, "sigmas": sig.tolist(), "steps": sig.shape[0] - 1,
            "terminal": float(sig[-1])}


def check_prompt_table(backbone, table, what: str = "this"):
    """A text-conditional backbone needs a prompt table [M, cond dim] (each seed draws one row, indis.sampling.seeds);
    other backbones take none. Raises ValueError that says what to pass."""
    cs = backbone.cond_spec
    if cs.kind != "text":
        if table is not None:
            raise ValueError(f"a prompt table applies to text-conditional backbones; this one's condition is {cs.kind!r}")
        return
    if table is None:
        raise ValueError(f"{what} needs each seed's prompt: this backbone is text-conditional, so pass --prompt-table "
                         f"(a safetensors file with 'table' [M, {cs.dim}]: one condition row per prompt, e.g. the teacher "
                         "set's prompt_table.safetensors)")
    if not isinstance(table, torch.Tensor) or table.dim() != 2 or table.shape[1] != cs.dim or table.shape[0] < 1:
        shape = tuple(table.shape) if isinstance(table, torch.Tensor) else type(table).__name__
        raise ValueError(f"the prompt table must have shape [M, {cs.dim}] (M >= 1 prompts), got {shape}")


def prompt_table_sha256(table) -> str:
    """The id of a prompt table (its dtype, shape and bytes), recorded beside the rows that index it."""
    return stable_hash({}, {"table": table}, n_hex=64)


@torch.no_grad()
def schedules_for_seeds(model, backbone, seeds: Sequence[int], table=None) -> Dict:
    """Per-seed schedules of `model` (a predictor) for the prior noise x_T of each seed (indis.sampling.seeds)."""
    seeds = [int(s) for s in seeds]
    check_prompt_table(backbone, table, "per-seed schedules")
    x_T, cond, idx = draw(seeds, backbone.data_shape, backbone.process.prior_std(), backbone.cond_spec, table,
                          with_index=True)
    prompt_index = None if table is None else idx  # the row of the table each seed drew
    d = model.eval()(x_T, cond)
    n = d.timesteps.shape[-1] - 1
    ts = d.timesteps.double().expand(len(seeds), -1)
    dtau = torch.zeros(len(seeds), n, dtype=torch.float64) if d.dtau is None else d.dtau.double().expand(len(seeds), -1)
    gamma = torch.ones(len(seeds), n, dtype=torch.float64) if d.gamma is None else d.gamma.double().expand(len(seeds), -1)
    sig = tool_sigmas(backbone.process, ts)
    samples = []
    for i, s in enumerate(seeds):
        row = {"seed": s, "sigmas": sig[i].tolist(), "diffusers": _diffusers_row(backbone.process.name, sig[i]),
               "timesteps": ts[i].tolist(), "call_timesteps": (ts[i, :-1] + dtau[i]).tolist(), "gamma": gamma[i].tolist()}
        if backbone.cond_spec.kind == "class" and cond is not None:
            row["class_label"] = int(cond[i])
        if prompt_index is not None:
            row["prompt_index"] = int(prompt_index[i])
        samples.append(row)
    out = {"nfe": n, "samples": samples}
    if table is not None:
        out["prompt_table"] = {"count": int(table.shape[0]), "sha256": prompt_table_sha256(table)}
    return out


def export_sigmas(model, backbone, seeds: Sequence[int], path, solver: Optional[str] = None, predictor_id: Optional[str] = None,
                  table=None) -> Dict:
    """Write sigmas.json for the seeds; returns its content."""
    body = schedules_for_seeds(model, backbone, seeds, table)
    doc = {"format": "indis-sigmas", "version": FORMAT_VERSION, "process": backbone.process.config(),
           "prediction_type": backbone.prediction_type, "solver": solver, "backbone_id": backbone.backbone_id,
           "predictor_id": predictor_id,
           "sigma_convention": "t (flow matching)" if backbone.process.name == "flow" else "sigma/alpha (VE-equivalent)",
           **body}
    atomic_write_json(path, doc)
    return doc


def sigmas_for_seed(doc: Dict, seed: int, for_diffusers: bool = False):
    """The sigma list of one seed from a sigmas.json document: INDIS's N+1 values, or with for_diffusers the list
    for the scheduler named in the row's "diffusers" entry (for any other scheduler: scheduler_sigmas)."""
    if doc.get("version") != FORMAT_VERSION:
        raise ValueError(f"sigmas.json version {doc.get('version')!r}; this INDIS reads version {FORMAT_VERSION} "
                         "(re-export with --sigmas-seeds)")
    for row in doc["samples"]:
        if row["seed"] == int(seed):
            return list(row["diffusers"]["sigmas"] if for_diffusers else row["sigmas"])
    raise KeyError(f"seed {seed} is not in this sigmas file (seeds {[r['seed'] for r in doc['samples']][:10]}...)")
