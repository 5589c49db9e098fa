"""Quality per NFE and method against a many-step teacher (`indis bench --quality`, benchmarks/quality_vs_nfe.py and
benchmarks/quality_peers.py share this pipeline).

Per backbone: a training teacher set (seeds 0..n_train-1) and a held-out evaluation teacher set (seeds from
1,000,000), both 30-step iPNDM with the polynomial (rho = 7) schedule. Per NFE, the best heuristic of
{uniform, logsnr, polynomial} x solvers (x AFS) is chosen on training tuples by endpoint MSE; GOD, LD3 and INDIS
start from the best heuristic under the solver they are trained through and use the same loop, loss, steps and
batch, once per training seed; the training-free peers (GITS, DMN, SDM) are searched once. Evaluation on the
held-out seeds: endpoint MSE to the teacher and, for 1x16x16 digits backbones, Fréchet distances (digits-cnn-v1
features, indis.metrics.fid) of the student samples to (a) the teacher's samples of the same seeds and (b) the
held-out real digits; rows give the mean and the standard deviation over the training seeds. The readings for the
report: versus_strongest (INDIS against the strongest other method per NFE) and speedup_reading (the NFE the
strongest other method needs to reach INDIS's quality)."""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from typing import Dict, List, Optional, Sequence, Union

import torch

from ..baselines.common import Sampled, peer_schedule
from ..baselines.search import HEURISTIC_NAMES, best_heuristic, parse_afs
from ..data.digits import load_digits_split
from ..evaluate import QUALITY_LABELS, QUALITY_ORDER, evaluate_methods, plot_timesteps, predictor_overhead, quality_table
from ..io import atomic_write_json, atomic_write_text
from ..metrics.fid import digits_features, frechet_distance
from ..metrics.inception import inception_feature_fn
from ..sampling.fixed import schedule_name_for
from ..sampling.guidance import GuidedBackbone
from ..schedules import get_schedule
from ..sampling.load import load_predictor
from ..training.cli import load_backbone_spec
from ..training.teacher import TeacherConfig, generate_teacher, load_teacher
from ..training.train import METHODS, PEER_METHODS, TrainConfig, same_config, train

Tensor = torch.Tensor
# every method of the quality tables (issue 14): the training-free peers, the trained baselines, INDIS, INDIS from SDM
ALL_METHODS = ("gits", "dmn", "sdm", "amed", "god", "ld3", "indis", "indis+sdm")
# trained methods combined with SDM (issue 14): INDIS started from SDM's schedule and sampled with its order schedule
COMPOSITES = {"indis+sdm": {"method": "indis", "init_schedule": "sdm", "orders": "sdm"},
              "indis+sdm+afs": {"method": "indis", "init_schedule": "sdm", "orders": "sdm", "afs": True}}
# the paper's Fig. 5 ablations of INDIS (TrainConfig flags): w/o instance, w/o shift, w/o scale, w/o condition
ABLATIONS = {f"indis-{flag}": {"method": "indis", flag: True} for flag in ("no_instance", "no_shift", "no_scale", "no_cond")}
COMPOSITES.update(ABLATIONS)
# learned methods started from FLUX's resolution-dependent shift (the paper's FLUX baseline) instead of the best heuristic
COMPOSITES.update({"indis+rds": {"method": "indis", "init_schedule": "rds"}, "god+rds": {"method": "god", "init_schedule": "rds"}})


def decoded(bb, features):
    """features(x) for a backbone's samples: a latent backbone's (its `decode`) are decoded first; images of the
    pixel shape (such as the held-out real digits) are used as they are."""
    if not hasattr(bb, "decode"):
        return features
    latent = tuple(bb.data_shape)

    def fn(x: Tensor) -> Tensor:
        return features(bb.decode(x) if tuple(x.shape[1:]) == latent else x)

    return fn


def quality_features(bb):
    """The features for Fréchet distances (indis.metrics.fid's digits features), or None: for 1x16x16 digits
    backbones, and for a latent backbone whose `decode` gives 1x16x16 digits (its latents are decoded first)."""
    if tuple(bb.data_shape) == (1, 16, 16):
        return digits_features
    if not hasattr(bb, "decode"):
        return None
    with torch.no_grad():
        if tuple(bb.decode(torch.zeros(1, *bb.data_shape)).shape[1:]) != (1, 16, 16):
            return None
    return decoded(bb, digits_features)


def run_quality(
    backbone_spec: str,
    work: str,
    nfes: Sequence[int] = (3, 5, 7),
    methods: Sequence[str] = ALL_METHODS,
    n_train: int = 1000,
    n_eval: int = 500,
    steps: int = 300,
    batch: int = 16,
    lr: float = 5e-3,
    results_stem: Optional[str] = None,
    plot_dir: Optional[str] = None,
    progress: bool = True,
    log=print,
    heuristic_solvers: Sequence[str] = ("ipndm", "dpmpp_2m", "unipc"),
    peer_afs: str = "both",
    pilots: int = 128,
    learned_solvers: Sequence[str] = ("ipndm",),
    train_seeds: Union[Sequence[int], Dict[str, Sequence[int]]] = (0,),
    free_nfes: Sequence[int] = (),
    heuristics: Sequence[str] = HEURISTIC_NAMES,
    heuristic_rows: Sequence[str] = (),
    n_select: Optional[int] = None,
    cfg_scale: Optional[float] = None,
    val_fraction: float = 0.2,
    val_every: int = 25,
    backbone=None,
    cached_only: bool = False,
    inception_weights: Optional[str] = None,
) -> Dict:
    """Teacher sets, best heuristic, trained methods, evaluation. Returns {"rows": [...] (aggregated over training
    seeds), "seed_rows": [...] (one per method, NFE and seed), "meta": {...}, "models": {method: {nfe: module}}
    (the first seed's)}; writes `results_stem`.{json,md} when given.

    methods: any of god, ld3, indis, amed (trained), indis+sdm / indis+sdm+afs (INDIS from SDM's schedule with SDM's
    order schedule, and with AFS; COMPOSITES) and gits, dmn, sdm (training-free peers, indis.baselines: each is
    searched over the solvers of heuristic_solvers and with/without AFS per peer_afs, best on the validation split).
    The "best heuristic" row is the best of `heuristics` x heuristic_solvers (x AFS per peer_afs) by MSE on the
    first n_select training tuples (default all), sampled with its solver. GOD/LD3/INDIS are trained through each
    solver of learned_solvers (default iPNDM only), each from the best heuristic under that solver; the one with the
    least validation distance is the row (chosen per seed). AMED-Plugin (amed) is trained on iPNDM.
    indis-no_instance / -no_shift / -no_scale / -no_cond: the paper's Fig. 5 ablations (ABLATIONS); indis+rds /
    god+rds: INDIS / GOD started from the rds schedule (flow models; the paper's FLUX baseline). heuristics may
    name "rds" (FLUX's resolution-dependent shift, keyed on the backbone's image_seq_len); heuristic_rows: heuristics
    that also get a row of their own (each with its best solver / AFS on the same training scores). Fréchet
    distances per quality_features (a latent backbone's samples are decoded first).

    train_seeds: the training seeds of the learned methods (a list, or {method: list} with "*" as the default); a
    seed drives the predictor's initialisation, the train/validation split and the data order. The training-free
    peers and the heuristics are deterministic given their pilots and run once (the first seed). Rows aggregate
    over seeds: the mean of each metric, `<metric>_std` (standard deviation over seeds, ddof = 1; 0 with one seed),
    `<metric>_min` / `<metric>_max` and `<metric>_seeds` (the per-seed values), `n_seeds`.
    free_nfes: extra NFEs at which only the best heuristic and the training-free peers run (for the speed-up reading).

    Every (method, solver, NFE, seed) run lives in its own folder under WORK/<backbone>/ and is skipped when its
    predictor is there with the same training config (an interrupted learned run resumes from its checkpoint);
    its evaluation row is cached beside it (eval.json, keyed by the held-out teacher's fingerprint), so a rerun
    with more methods or seeds only does the new work. backbone: a loaded backbone for backbone_spec (else loaded
    from the spec); cfg_scale: classifier-free guidance of the teacher and the student calls (conditional backbones;
    default: the backbone's `default_guidance`, else 1).
    cached_only: train nothing; rows only for the runs already finished in WORK (what an interrupted job did).
    inception_weights: pytorch-fid's Inception-v3 weights file (indis.metrics.inception): adds "fid" (to the
    teacher's samples) and, for digits backbones, "fid_data" (to the held-out real digits) columns, on decoded
    samples for a latent backbone; its rows are cached apart from the rows without it."""
    nfes = [int(k) for k in nfes]
    free_nfes = [int(k) for k in free_nfes if int(k) not in nfes]
    if not nfes or min(nfes + free_nfes) < 1:
        raise ValueError(f"NFEs must be positive integers, got {nfes + free_nfes}")
    bad = [m for m in methods if m not in METHODS and m not in COMPOSITES]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; expected a subset of {', '.join(METHODS + tuple(COMPOSITES))}")
    if set(heuristic_rows) - set(heuristics):
        raise ValueError(f"heuristic_rows {sorted(set(heuristic_rows) - set(heuristics))} must be among heuristics {list(heuristics)}")
    seeds_of = _seed_table(train_seeds, methods)
    # Inception weights are loaded (and checked) first: a missing file fails before the teacher sets are made
    inception = None if inception_weights is None else inception_feature_fn(inception_weights)
    bb = load_backbone_spec(backbone_spec) if backbone is None else backbone
    if cfg_scale is None:  # the backbone's own guidance scale (bundled-flow: 1.5), else none
        cfg_scale = float(getattr(bb, "default_guidance", 1.0))
    work = os.path.join(work, backbone_spec.replace(":", "_").replace("/", "_"))
    t0 = time.time()
    generate_teacher(bb, f"{work}/teacher_train", TeacherConfig(count=n_train, shard_size=200, cfg_scale=cfg_scale), progress=progress)
    generate_teacher(bb, f"{work}/teacher_eval", TeacherConfig(count=n_eval, first_seed=1_000_000, shard_size=250, cfg_scale=cfg_scale),
                     progress=progress)
    t_teacher = time.time() - t0
    tr, ev = load_teacher(f"{work}/teacher_train", bb), load_teacher(f"{work}/teacher_eval", bb)
    net = GuidedBackbone(bb, cfg_scale)
    evaluator = _Evaluator(bb, ev, net, log, inception)
    all_nfes = sorted(set(nfes) | set(free_nfes))
    sel_pos = torch.arange(len(tr) if n_select is None else min(int(n_select), len(tr)))
    afs = parse_afs(peer_afs)
    names = tuple(schedule_name_for(bb, h) for h in heuristics)  # "rds" -> "rds:<the backbone's image tokens>"
    best_any, inits = {}, {}  # per NFE: the best heuristic; per (solver, NFE): the best heuristic under it without AFS
    seed_rows: List[Dict] = []
    models: Dict[str, Dict[int, torch.nn.Module]] = {"best heuristic": {}}
    for k in all_nfes:
        info = _cached_json(f"{work}/best_heuristic_nfe{k}.json", {"teacher": tr.fingerprint, "n": len(sel_pos), "names": list(names),
                                                                    "solvers": list(heuristic_solvers), "afs": list(afs)},
                            lambda: best_heuristic(bb, tr, k, names, tuple(heuristic_solvers), afs, positions=sel_pos)[1])
        best_any[k] = info
        for sol in heuristic_solvers:
            plain = [r for r in info["scores"] if r["solver"] == sol and not r["afs"]]
            inits[sol, k] = min(plain, key=lambda r: r["mse"])["name"]
        model = _heuristic_schedule(net, info["name"], k, info["solver"], info["afs"])
        models["best heuristic"][k] = model
        seed_rows.append(evaluator.row(f"{work}/best_heuristic_nfe{k}.eval.json", "best heuristic", k, model, seed=None))
        for h in heuristic_rows:  # a named heuristic as its own row (e.g. rds), with its best solver / AFS on the same scores
            sc = min((r for r in info["scores"] if r["name"] == schedule_name_for(bb, h)), key=lambda r: r["mse"])
            hm = _heuristic_schedule(net, sc["name"], k, sc["solver"], sc["afs"])
            models.setdefault(h, {})[k] = hm
            seed_rows.append(evaluator.row(f"{work}/heuristic_{h}_nfe{k}.eval.json", h, k, hm, seed=None))
    train_info = {}
    first = min((s for v in seeds_of.values() for s in v), default=0)
    jobs = []  # seed-major: every method's first seed before any second seed
    for s in sorted({s for v in seeds_of.values() for s in v}):
        for m in methods:
            base = COMPOSITES.get(m, {"method": m})
            trained = base["method"] not in PEER_METHODS
            if (trained and s in seeds_of[m]) or (not trained and s == first):
                jobs += [(m, k, s) for k in (nfes if trained else nfes + free_nfes)]
    t_jobs = time.time()
    for i, (m, k, s) in enumerate(jobs):
        base = COMPOSITES.get(m, {"method": m})
        cands = []
        for sol in (tuple(learned_solvers) if base["method"] in ("god", "ld3", "indis") else ("ipndm",)):
            if (sol, k) not in inits:
                raise ValueError(f"learned solver {sol!r} is not among heuristic_solvers {list(heuristic_solvers)}; the trained "
                                 "methods start from the best heuristic under their solver")
            tag = f"{m}_nfe{k}_seed{s}" if sol == "ipndm" else f"{m}_{sol}_nfe{k}_seed{s}"
            opts = dict(method=m, nfe=k, solver=sol, steps=steps, batch_size=batch, lr=lr, init_schedule=inits[sol, k],
                        val_every=val_every, ckpt_every=100, hidden=64, conv_width=16, val_fraction=val_fraction, seed=s,
                        peer_solvers=",".join(heuristic_solvers), peer_afs=peer_afs, pilots=pilots, cfg_scale=cfg_scale)
            cfg = TrainConfig(**{**opts, **base})
            cfg.init_schedule = schedule_name_for(bb, cfg.init_schedule)  # "rds" -> "rds:<image tokens>"
            done = _finished(bb, tr, cfg, f"{work}/{tag}", log)
            if done is None and cached_only:
                log(f"{tag}: not finished in {work}; left out (cached_only)")
                continue
            log(f"[{i + 1}/{len(jobs)} {time.time() - t_jobs:.0f} s] {tag}")
            model, info = done if done is not None else _train_cached(bb, tr, cfg, f"{work}/{tag}", progress)
            if sol != "ipndm" and not hasattr(model, "sampling"):  # evaluated with the solver it was trained through
                model = Sampled(model, sol)
            train_info[tag] = info
            log(f"{tag}: {'cached, ' if info['cached'] else ''}{info['seconds']:.0f} s, best validation {info['best_val']:.5g}")
            cands.append((info["best_val"], tag, model))
        if not cands:
            continue
        best_val, tag, model = min(cands, key=lambda c: c[0])
        if len(cands) > 1:
            train_info[f"{m}_nfe{k}_seed{s}_selected"] = tag
        model = model.eval()
        if s == first or k not in models.get(m, {}):
            models.setdefault(m, {})[k] = model
        row = evaluator.row(f"{work}/{tag}/eval.json", m, k, model, seed=s if base["method"] not in PEER_METHODS else None)
        row["train_seconds"] = sum(train_info[c[1]]["seconds"] for c in cands)
        row["run"] = tag
        seed_rows.append(row)
    rows = aggregate_seeds(seed_rows)
    teacher_fd_data = evaluator.teacher_fd_data()
    over = None
    if models.get("indis"):  # (cached_only may have INDIS at some NFEs only)
        have = [k for k in nfes if k in models["indis"]]
        k_plot = have[0]
        if plot_dir is not None:
            os.makedirs(plot_dir, exist_ok=True)
            pos = torch.arange(min(64, len(ev)))
            x_T, cond, _ = ev.batch(pos)
            stem = os.path.basename(results_stem) if results_stem else f"quality_{backbone_spec}"
            plot_timesteps(models["indis"][k_plot], x_T, cond, os.path.join(plot_dir, f"{stem}_timesteps_nfe{k_plot}.png"),
                           reference=get_schedule(inits[tuple(learned_solvers)[0], k_plot], net.process, k_plot), title=f"INDIS NFE {k_plot} on {backbone_spec}: 64 held-out seeds")
        pos = torch.arange(min(64, len(ev)))  # held-out conditions for a conditional backbone
        over = predictor_overhead(models["indis"][have[len(have) // 2]], bb, batch=len(pos), cond=ev.batch(pos)[1])
    meta = {"backbone": backbone_spec, "backbone_id": bb.backbone_id, "n_train_teacher": n_train, "n_eval_teacher": n_eval,
            "teacher": "ipndm 30 steps, polynomial rho=7, float64 state", "cfg_scale": cfg_scale,
            "train": {"steps": steps, "batch": batch, "lr": lr, "loss": "mse", "val_fraction": val_fraction, "val_every": val_every,
                      "learned_solvers": list(learned_solvers), "pilots": pilots, "peer_afs": peer_afs},
            "train_seeds": {m: list(v) for m, v in seeds_of.items()}, "free_nfes": free_nfes,
            "spread": "std over training seeds (ddof=1); _min/_max and _seeds per row",
            "best_heuristic": {k: {"name": best_any[k]["name"], "solver": best_any[k]["solver"], "afs": best_any[k]["afs"],
                                   "select_n": len(sel_pos), "train_mse": best_any[k]["scores"]} for k in all_nfes},
            "init_schedule": {f"{sol}_nfe{k}": name for (sol, k), name in inits.items()},
            "teacher_seconds": t_teacher, "training": train_info, "teacher_fd_to_heldout_data": teacher_fd_data, "overhead": over,
            "threads": torch.get_num_threads(), "seconds": time.time() - t0}
    if results_stem is not None:
        write_quality(results_stem, rows, meta, seed_rows)
    return {"rows": rows, "seed_rows": seed_rows, "meta": meta, "models": models, "backbone": bb}


METRICS = ("mse", "fd", "fd_data", "fid", "fid_data", "lpips")


def aggregate_seeds(seed_rows: List[Dict], metrics: Sequence[str] = METRICS + ("train_seconds",)) -> List[Dict]:
    """One row per (method, NFE) from rows per training seed: the mean of each metric and its spread over the seeds
    (`<m>_std`: standard deviation with ddof = 1, 0 for one seed; `<m>_min`, `<m>_max`; `<m>_seeds`: the values in
    seed order), `n_seeds` and `seeds`. The other fields are the first seed's (its solver, AFS, orders)."""
    groups: Dict = {}
    for r in seed_rows:
        groups.setdefault((r["method"], int(r["nfe"])), []).append(r)
    out = []
    for (m, k), rs in groups.items():
        rs = sorted(rs, key=lambda r: -1 if r.get("seed") is None else r["seed"])
        row = {key: v for key, v in rs[0].items() if key not in metrics}
        row.update(method=m, nfe=k, n_seeds=len(rs), seeds=[r.get("seed") for r in rs])
        for key in metrics:
            vals = [float(r[key]) for r in rs if r.get(key) is not None]
            if not vals:
                continue
            t = torch.tensor(vals, dtype=torch.float64)
            row[key] = float(t.mean())
            row[f"{key}_std"] = float(t.std()) if len(vals) > 1 else 0.0
            row[f"{key}_min"], row[f"{key}_max"] = min(vals), max(vals)
            row[f"{key}_seeds"] = vals
        out.append(row)
    return out


def nfe_to_reach(rows: List[Dict], method: str, target: float, metric: str = "fd") -> Dict:
    """The NFE at which `method` reaches `target` (lower is better) on its measured curve, read by linear
    interpolation of log(metric) against NFE between the two measured NFEs around the first crossing:
    {"nfe": value, "bound": "="}; {"nfe": the smallest measured NFE, "bound": "<="} when it is already reached
    there; {"nfe": the largest measured NFE, "bound": ">"} when it is not reached at any measured NFE."""
    pts = sorted((int(r["nfe"]), float(r[metric])) for r in rows if r["method"] == method and r.get(metric) is not None)
    if not pts:
        raise ValueError(f"no {metric} rows for method {method!r}")
    if target <= 0 or any(v <= 0 for _, v in pts):
        raise ValueError(f"the log-interpolated reading needs positive values of {metric} and target, got {target} and {pts}")
    if pts[0][1] <= target:
        return {"nfe": float(pts[0][0]), "bound": "<="}
    for (k1, v1), (k2, v2) in zip(pts, pts[1:]):
        if v2 <= target:
            f = (math.log(target) - math.log(v1)) / (math.log(v2) - math.log(v1))
            return {"nfe": k1 + f * (k2 - k1), "bound": "="}
    return {"nfe": float(pts[-1][0]), "bound": ">"}


def _is_target(method: str, target: str) -> bool:
    return method == target or method.startswith(target + "+")


def strongest_other(rows: List[Dict], nfe: int, metric: str = "fd", target: str = "indis") -> Optional[Dict]:
    """The best row at `nfe` by `metric` (lower is better) among the methods other than `target` and its
    combinations (target+...)."""
    cand = [r for r in rows if int(r["nfe"]) == int(nfe) and not _is_target(r["method"], target) and r.get(metric) is not None]
    return min(cand, key=lambda r: r[metric]) if cand else None


def versus_strongest(rows: List[Dict], metric: str = "fd", target: str = "indis") -> List[Dict]:
    """Per NFE where `target` has a row: the strongest other method by `metric`, the relative change of `target`
    against it ((target - other) / other; negative is better), and whether the difference is larger than the spread:
    `beyond_std` (|difference| > the sum of the two standard deviations over seeds) and `ranges_apart` (the per-seed
    min-max ranges do not overlap)."""
    out = []
    for r in sorted((r for r in rows if r["method"] == target and r.get(metric) is not None), key=lambda r: r["nfe"]):
        o = strongest_other(rows, r["nfe"], metric, target)
        if o is None:
            continue
        diff = r[metric] - o[metric]
        spread = r.get(f"{metric}_std", 0.0) + o.get(f"{metric}_std", 0.0)
        apart = r.get(f"{metric}_max", r[metric]) < o.get(f"{metric}_min", o[metric]) or \
            r.get(f"{metric}_min", r[metric]) > o.get(f"{metric}_max", o[metric])
        out.append({"nfe": int(r["nfe"]), "metric": metric, "target": target, "value": r[metric], "std": r.get(f"{metric}_std", 0.0),
                    "n_seeds": r.get("n_seeds", 1), "other": o["method"], "other_value": o[metric],
                    "other_std": o.get(f"{metric}_std", 0.0), "other_n_seeds": o.get("n_seeds", 1), "relative": diff / o[metric],
                    "beyond_std": abs(diff) > spread, "ranges_apart": bool(apart)})
    return out


def speedup_reading(rows: List[Dict], at: Sequence[int] = (3, 5), metric: str = "fd", target: str = "indis") -> List[Dict]:
    """The user's speed-up: for each NFE k of `at` where `target` has a row, the strongest other method at k (by
    `metric`) and the NFE it needs to reach `target`'s quality at k (nfe_to_reach on its measured curve), and
    `soonest`: the other method that reaches it at the fewest NFE (a method's curve need not be monotone, so the
    strongest at k is not always the first to get there)."""
    out = []
    for k in at:
        r = next((r for r in rows if r["method"] == target and int(r["nfe"]) == int(k) and r.get(metric) is not None), None)
        o = strongest_other(rows, k, metric, target) if r is not None else None
        if o is None:
            continue
        others = sorted({x["method"] for x in rows if not _is_target(x["method"], target) and x.get(metric) is not None})
        reach = {m: nfe_to_reach(rows, m, r[metric], metric) for m in others}
        ok = [(v["nfe"], m) for m, v in reach.items() if v["bound"] != ">"]
        soon = min(ok) if ok else None
        out.append({"nfe": int(k), "metric": metric, "target_value": r[metric], "peer": o["method"],
                    "peer_nfes": sorted(int(x["nfe"]) for x in rows if x["method"] == o["method"] and x.get(metric) is not None),
                    "peer_nfe": reach[o["method"]]["nfe"], "bound": reach[o["method"]]["bound"], "reach": reach,
                    "soonest": None if soon is None else {"method": soon[1], "nfe": soon[0], "bound": reach[soon[1]]["bound"]}})
    return out


def _need(nfe: float, bound: str) -> str:
    return {"=": f"NFE {nfe:.1f}", "<=": f"NFE <= {nfe:.0f} (already at its smallest measured NFE)",
            ">": f"NFE > {nfe:.0f} (not reached at any measured NFE)"}[bound]


def speedup_text(reading: Dict) -> str:
    """One line for a speed-up reading, e.g. "INDIS at NFE 3 (fd 4.1): the strongest other method there, dmn, needs
    NFE 6.3 (measured at 3, 5, 7); the first other method to reach it: gits at NFE 4.6"."""
    s = reading.get("soonest")
    first = ("no other method reaches it at any measured NFE" if s is None
             else f"the first other method to reach it: {s['method']} at {_need(s['nfe'], s['bound'])}")
    return (f"INDIS at NFE {reading['nfe']} ({reading['metric']} {reading['target_value']:.4g}): the strongest other method there, "
            f"{reading['peer']}, needs {_need(reading['peer_nfe'], reading['bound'])}; measured at NFE "
            f"{', '.join(map(str, reading['peer_nfes']))}; {first}")


def write_quality(stem, rows: List[Dict], meta: Dict, seed_rows: Optional[List[Dict]] = None) -> None:
    """stem.json (rows, per-seed rows, meta) and stem.md (quality_table and quality_readings)."""
    atomic_write_json(f"{stem}.json", {"rows": rows, "seed_rows": seed_rows or [], "meta": meta})
    atomic_write_text(f"{stem}.md", quality_table(rows) + "\n\n" + quality_readings(rows))


def quality_readings(rows: List[Dict], target: str = "indis", at: Sequence[int] = (3, 5),
                     goal: Optional[Dict[int, float]] = None) -> str:
    """Markdown: per NFE and metric (FD to teacher, MSE), `target` against the strongest other method (relative
    change, beyond the spread or not, and the paper's goal beside it), then the speed-up readings."""
    goal = PAPER_GOAL if goal is None else goal
    out = []
    for metric in ("fd", "mse"):
        vs = versus_strongest(rows, metric, target)
        if not vs:
            continue
        out += [f"{target} against the strongest other method by {QUALITY_LABELS.get(metric, metric)} (mean ± std over seeds):", "",
                "| NFE | " + target + " | strongest other | relative change | beyond the spread (std / min-max) | paper's goal |",
                "|---|---|---|---|---|---|"]
        for v in vs:
            g = goal.get(v["nfe"])
            out.append(f"| {v['nfe']} | {v['value']:.4g} ± {v['std']:.2g} ({v['n_seeds']} seeds) | {v['other']}: {v['other_value']:.4g}"
                       + (f" ± {v['other_std']:.2g} ({v['other_n_seeds']} seeds)" if v["other_n_seeds"] > 1 else " (1 run)")
                       + f" | {100 * v['relative']:+.0f}% | {'yes' if v['beyond_std'] else 'no'} / {'yes' if v['ranges_apart'] else 'no'}"
                       + f" | {'-' if g is None else f'{100 * g:+.0f}% (FID)'} |")
        out.append("")
    for metric in ("fd", "mse"):
        for r in speedup_reading(rows, at, metric, target):
            out.append(f"- Speed-up ({QUALITY_LABELS.get(metric, metric)}): " + speedup_text(r))
    return "\n".join(out) + "\n"


# the seed paper's goal: INDIS's FID against the strongest baseline at NFE 3 / 5 / 7
PAPER_GOAL = {3: -0.35, 5: -0.31, 7: -0.16}


def _seed_table(train_seeds, methods) -> Dict[str, List[int]]:
    if isinstance(train_seeds, dict):
        default = train_seeds.get("*", (0,))
        unknown = set(train_seeds) - set(methods) - {"*"}
        if unknown:
            raise ValueError(f"train_seeds names method(s) {sorted(unknown)} that are not among methods {list(methods)}")
        table = {m: list(train_seeds.get(m, default)) for m in methods}
    else:
        table = {m: list(train_seeds) for m in methods}
    for m, v in table.items():
        if not v or any(int(s) != s or s < 0 for s in v) or len(set(v)) != len(v):
            raise ValueError(f"training seeds of {m} must be distinct non-negative integers, got {v}")
    return table


def _cached_json(path: str, key: Dict, make) -> Dict:
    """The JSON at path if it was written for `key`, else make() (written with the key, atomically)."""
    if os.path.isfile(path):
        try:
            doc = json.load(open(path))
        except ValueError:
            doc = None
        if isinstance(doc, dict) and doc.get("key") == key:
            return doc["value"]
    value = json.loads(json.dumps(make()))
    atomic_write_json(path, {"key": key, "value": value})
    return value


def _heuristic_schedule(net, name: str, nfe: int, solver: str, afs: bool):
    """A heuristic schedule with nfe network calls sampled with its own solver (AFS: one more step)."""
    return peer_schedule(net, get_schedule(name, net.process, nfe + int(afs)), solver, afs=afs, method=f"heuristic:{name}").eval()


def _finished(bb, tr, cfg: TrainConfig, out: str, log):
    """(model, info) of a run finished in `out` with this config and teacher (its predictor and quality_info.json,
    written after the predictor), else None."""
    pred, info_path = os.path.join(out, "predictor.safetensors"), os.path.join(out, "quality_info.json")
    if not (os.path.isfile(pred) and os.path.isfile(info_path)):
        return None
    model, meta = load_predictor(pred, bb.backbone_id)
    info = json.load(open(info_path))
    if same_config(meta.get("train_config"), asdict(cfg)) and info.get("teacher") == tr.fingerprint:
        return model, dict(info, cached=True)
    log(f"{out}: an earlier run with other settings; it will be trained again")
    return None


def _train_cached(bb, tr, cfg: TrainConfig, out: str, progress: bool):
    """Train one run into `out` (resuming an interrupted one with the same config and teacher); (model, info)."""
    pred, info_path = os.path.join(out, "predictor.safetensors"), os.path.join(out, "quality_info.json")
    resume = False
    marker = os.path.join(out, "run.json")
    if cfg.method not in PEER_METHODS and os.path.isfile(marker) and not os.path.isfile(pred):
        try:
            old = json.load(open(marker))
            resume = same_config(old.get("config"), asdict(cfg)) and old.get("teacher_fingerprint") == tr.fingerprint
        except ValueError:
            resume = False
    for p in (pred, info_path, os.path.join(out, "eval.json")):
        if not resume and os.path.isfile(p):
            os.unlink(p)
    t1 = time.time()
    meta = train(bb, tr, cfg, out, resume=resume, overwrite=not resume, progress=progress)
    model, _ = load_predictor(pred, bb.backbone_id)
    info = {"seconds": time.time() - t1, "initial_val": meta["metrics"]["initial_val"], "best_val": meta["metrics"]["best_val"],
            "best_step": meta["metrics"]["best_step"], "params": meta["params"], "solver": cfg.solver, "seed": cfg.seed,
            "resumed": resume, "teacher": tr.fingerprint}
    if cfg.method in PEER_METHODS:
        search = meta["metrics"]["search"]
        info.update(solver=search["solver"], afs=search["afs"], orders=search["orders"], timesteps=search["timesteps"],
                    search_network_calls=search["search_network_calls"])
    atomic_write_json(info_path, info)
    return model, dict(info, cached=False)


class _Evaluator:
    """Evaluation rows on the held-out teacher set (MSE; for 1x16x16 digits backbones also the Fréchet distances
    to the teacher's samples and to the held-out real digits; with Inception weights also FID), each cached in a
    JSON file keyed by the set and the features."""

    def __init__(self, bb, ev, net, log, inception=None):
        self.bb, self.ev, self.net, self.log = bb, ev, net, log
        self.feats = quality_features(bb)  # a latent backbone's samples are decoded first
        self.columns = {} if self.feats is None else {"fd": self.feats}
        if inception is not None:  # inception_feature_fn's features
            self.columns["fid"] = decoded(bb, inception)
        self._data = None
        self._reference_features: Dict = {}  # the teacher's and the real data's features, once for every row

    def data(self):
        if self._data is None and self.feats is not None:
            self._data = load_digits_split("heldout")[0]
        return self._data

    def row(self, path: str, method: str, nfe: int, model, seed) -> Dict:
        key = {"teacher": self.ev.fingerprint, "features": self.feats is not None}
        if "fid" in self.columns:
            key["inception"] = True
            path = path.replace(".json", ".fid.json")
        t = time.time()
        row = _cached_json(path, key, lambda: evaluate_methods(self.bb, self.ev, {method: {nfe: model}}, features=self.columns or None,
                                                              data_reference=self.data(), reference_cache=self._reference_features)[0])
        self.log(f"evaluated {method} NFE {nfe}{'' if seed is None else f' seed {seed}'} ({time.time() - t:.0f} s): mse {row['mse']:.4g}"
                 + (f" fd {row['fd']:.4g} fd_data {row['fd_data']:.4g}" if "fd" in row else "")
                 + (f" fid {row['fid']:.4g}" if "fid" in row else ""))
        return dict(row, method=method, seed=seed)

    def teacher_fd_data(self) -> Optional[float]:
        if self.feats is None:
            return None
        return float(frechet_distance(self.feats(self.ev.x0), self.feats(self.data())))


def plot_quality(rows_by_backbone: Dict[str, List[Dict]], path: str, metrics: Sequence[str] = ("mse", "fd", "fd_data", "fid"),
                 methods: Sequence[str] = QUALITY_ORDER) -> None:
    """Quality against NFE for every method (log y), one panel per metric (columns) and backbone (rows): the mean over
    training seeds with bars from the per-seed minimum to maximum where a row has several seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows_by_backbone)
    shown = {n: [m for m in metrics if any(r.get(m) is not None for r in rows_by_backbone[n])] or ["mse"] for n in names}
    cols = max(len(v) for v in shown.values())
    fig, axes = plt.subplots(len(names), cols, figsize=(4.4 * cols, 3.6 * len(names)), squeeze=False)
    for ax_row, name in zip(axes, names):
        rows = rows_by_backbone[name]
        extra = [m for m in dict.fromkeys(r["method"] for r in rows) if m not in methods]
        present = [m for m in list(methods) + extra if any(r.get("method") == m for r in rows)]
        colour = {m: plt.cm.tab20(i % 20) for i, m in enumerate(present)}  # one colour per method (over 10 methods)
        for ax, metric in zip(ax_row, shown[name]):
            for m in present:
                pts = sorted((r for r in rows if r.get("method") == m and r.get(metric) is not None), key=lambda r: r["nfe"])
                if not pts:
                    continue
                y = [r[metric] for r in pts]
                lo = [r[metric] - r.get(f"{metric}_min", r[metric]) for r in pts]
                hi = [r.get(f"{metric}_max", r[metric]) - r[metric] for r in pts]
                ax.errorbar([r["nfe"] for r in pts], y, yerr=[lo, hi], fmt="o-", ms=4, capsize=3, label=m, color=colour[m],
                            lw=2.2 if m.startswith("indis") else 1.2)
            ax.set_yscale("log")
            ax.set_xlabel("NFE")
            ax.set_ylabel(QUALITY_LABELS.get(metric, metric))
            ax.set_title(f"{name}: {QUALITY_LABELS.get(metric, metric)}")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
        for ax in ax_row[len(shown[name]):]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
