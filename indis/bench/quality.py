"""Quality per NFE and method against a many-step teacher (`indis bench --quality`, the quickstart and
benchmarks/quality_issue4.py share this pipeline).

Per backbone: a training teacher set (seeds 0..n_train-1) and a held-out evaluation teacher set (seeds from
1,000,000), both 30-step iPNDM with the polynomial (rho = 7) schedule. Per NFE, the best heuristic of
{uniform, logsnr, polynomial} is chosen on the training teacher set by endpoint MSE; GOD, LD3 and INDIS start
from it and are trained with the same loop, loss, steps and batch. Evaluation on the held-out seeds: endpoint MSE
to the teacher and, for 1x16x16 digits backbones, Fréchet distances (digits-cnn-v1 features, indis.metrics.fid)
of the student samples to (a) the teacher's samples of the same seeds and (b) the held-out real digits.
"""
from __future__ import annotations

import os
import time
from typing import Dict, List, Optional, Sequence

import torch

from ..baselines.common import Sampled
from ..baselines.search import HEURISTIC_NAMES, best_heuristic, parse_afs
from ..data.digits import load_digits_split
from ..evaluate import best_heuristics, evaluate_methods, plot_timesteps, predictor_overhead, student_samples, write_results
from ..metrics.fid import digits_features, frechet_distance
from ..sampling.fixed import heuristic, schedule_name_for
from ..sampling.guidance import GuidedBackbone
from ..sampling.load import load_predictor
from ..training.cli import load_backbone_spec
from ..training.teacher import TeacherConfig, generate_teacher, load_teacher
from ..training.train import METHODS, PEER_METHODS, TrainConfig, train

Tensor = torch.Tensor
# trained methods combined with SDM (issue 14): INDIS started from SDM's schedule and sampled with its order schedule
COMPOSITES = {"indis+sdm": {"method": "indis", "init_schedule": "sdm", "orders": "sdm"},
              "indis+sdm+afs": {"method": "indis", "init_schedule": "sdm", "orders": "sdm", "afs": True}}
# the paper's Fig. 5 ablations of INDIS (TrainConfig flags): w/o instance, w/o shift, w/o scale, w/o condition
ABLATIONS = {f"indis-{flag}": {"method": "indis", flag: True} for flag in ("no_instance", "no_shift", "no_scale", "no_cond")}
COMPOSITES.update(ABLATIONS)


def quality_features(bb):
    """(features of samples, features of the held-out real digits) for Fréchet distances, or (None, None): the digits
    features (indis.metrics.fid) of 1x16x16 samples, or of a latent backbone's decoded samples (its `decode`) when
    they are 1x16x16 digits."""
    feats = None
    if tuple(bb.data_shape) == (1, 16, 16):
        feats = digits_features
    elif hasattr(bb, "decode"):
        with torch.no_grad():
            shape = tuple(bb.decode(torch.zeros(1, *bb.data_shape)).shape[1:])
        if shape == (1, 16, 16):
            def feats(z):
                return digits_features(bb.decode(z))
    if feats is None:
        return None, None
    return feats, digits_features(load_digits_split("heldout")[0])


def run_quality(
    backbone_spec: str,
    work: str,
    nfes: Sequence[int] = (3, 5, 7),
    methods: Sequence[str] = ("god", "ld3", "indis"),
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
    cfg_scale: float = 1.0,
    heuristics: Sequence[str] = HEURISTIC_NAMES,
    seed: int = 0,
) -> Dict:
    """Teacher sets, best heuristic, trained methods, evaluation. Returns {"rows": [...], "meta": {...},
    "models": {method: {nfe: module}}}; writes `results_stem`.{json,md} when given.
    methods: any of god, ld3, indis, amed (trained), indis+sdm / indis+sdm+afs (INDIS from SDM's schedule with SDM's
    order schedule, and with AFS; COMPOSITES) and gits, dmn, sdm (training-free peers, indis.baselines: each is
    searched over the solvers of heuristic_solvers and with/without AFS per peer_afs, best on the validation split).
    The "best heuristic" row is the best of uniform/logsnr/polynomial x heuristic_solvers (x AFS per peer_afs) by
    training-set MSE, sampled with its solver. GOD/LD3/INDIS are trained through each solver of learned_solvers (default
    iPNDM only), each from the best heuristic under that solver; the one with the least validation distance is the row.
    AMED-Plugin (amed) is trained on iPNDM. indis-no_instance / -no_shift / -no_scale / -no_cond: the Fig. 5
    ablations (ABLATIONS). cfg_scale: classifier-free guidance of the teacher sets and of every student (conditional
    backbones). heuristics: the heuristic schedules (rows, and the best-heuristic search), e.g. "rds" for flow models.
    Fréchet distances per quality_features (a latent backbone's samples are decoded first). seed: the training seed."""
    nfes = [int(k) for k in nfes]
    if not nfes or min(nfes) < 1:
        raise ValueError(f"NFEs must be positive integers, got {nfes}")
    bad = [m for m in methods if m not in METHODS and m not in COMPOSITES]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; expected a subset of {', '.join(METHODS + tuple(COMPOSITES))}")
    bb = load_backbone_spec(backbone_spec)
    work = os.path.join(work, backbone_spec.replace(":", "_").replace("/", "_"))
    t0 = time.time()
    generate_teacher(bb, f"{work}/teacher_train", TeacherConfig(count=n_train, shard_size=200, cfg_scale=cfg_scale), progress=progress)
    generate_teacher(bb, f"{work}/teacher_eval", TeacherConfig(count=n_eval, first_seed=1_000_000, shard_size=250, cfg_scale=cfg_scale),
                     progress=progress)
    t_teacher = time.time() - t0
    tr, ev = load_teacher(f"{work}/teacher_train", bb), load_teacher(f"{work}/teacher_eval", bb)
    models: Dict[str, Dict[int, torch.nn.Module]] = {h: {k: heuristic(bb, h, k) for k in nfes} for h in heuristics}
    names = tuple(schedule_name_for(bb, h) for h in heuristics)
    best = best_heuristics(bb, tr, nfes, names=names)
    best_any = {k: best_heuristic(bb, tr, k, names, tuple(heuristic_solvers), parse_afs(peer_afs)) for k in nfes}
    models["best heuristic"] = {k: best_any[k][0] for k in nfes}
    train_info = {}
    inits = {"ipndm": best}  # per solver: the best heuristic under it, where the trained methods start
    for m in methods:
        models[m] = {}
        for k in nfes:
            cands = []
            base = COMPOSITES.get(m, {"method": m})
            for sol in (tuple(learned_solvers) if base["method"] in ("god", "ld3", "indis") else ("ipndm",)):
                if sol not in inits:
                    inits[sol] = best_heuristics(bb, tr, nfes, names=names, solver=sol)
                tag = f"{m}_nfe{k}" if sol == "ipndm" else f"{m}_{sol}_nfe{k}"
                opts = dict(method=m, nfe=k, solver=sol, steps=steps, batch_size=batch, lr=lr, init_schedule=inits[sol][k]["name"],
                            val_every=25, ckpt_every=100, hidden=64, conv_width=16, val_fraction=0.2, seed=seed,
                            peer_solvers=",".join(heuristic_solvers), peer_afs=peer_afs, pilots=pilots, cfg_scale=cfg_scale)
                cfg = TrainConfig(**{**opts, **base})
                t1 = time.time()
                meta = train(bb, tr, cfg, f"{work}/{tag}", overwrite=True, progress=progress)  # its own scratch runs
                model, _ = load_predictor(f"{work}/{tag}/predictor.safetensors", bb.backbone_id)
                if sol != "ipndm" and not hasattr(model, "sampling"):  # evaluated with the solver it was trained through
                    model = Sampled(model, sol)
                info = {"seconds": time.time() - t1, "initial_val": meta["metrics"]["initial_val"], "best_val": meta["metrics"]["best_val"],
                        "best_step": meta["metrics"]["best_step"], "params": meta["params"], "solver": sol}
                if m in PEER_METHODS:
                    search = meta["metrics"]["search"]
                    info.update(solver=search["solver"], afs=search["afs"], orders=search["orders"],
                                timesteps=search["timesteps"], search_network_calls=search["search_network_calls"])
                train_info[tag] = info
                log(f"{m} NFE {k}: {info}")
                cands.append((meta["metrics"]["best_val"], tag, model))
            best_val, tag, model = min(cands, key=lambda c: c[0])
            models[m][k] = model.eval()
            if len(cands) > 1:
                train_info[f"{m}_nfe{k}_selected"] = tag
    feats, rf = quality_features(bb)
    rows = evaluate_methods(bb, ev, models, features=feats)
    teacher_fd_data = None
    if feats is not None:
        net = GuidedBackbone(bb, cfg_scale)
        for r in rows:
            r["fd_data"] = float(frechet_distance(feats(student_samples(models[r["method"]][r["nfe"]], net, ev)), rf))
        teacher_fd_data = float(frechet_distance(feats(ev.x0), rf))
    over = None
    if "indis" in models:
        k_plot = nfes[0]
        if plot_dir is not None:
            os.makedirs(plot_dir, exist_ok=True)
            pos = torch.arange(min(64, len(ev)))
            x_T, cond, _ = ev.batch(pos)
            stem = os.path.basename(results_stem) if results_stem else f"quality_{backbone_spec}"
            plot_timesteps(models["indis"][k_plot], x_T, cond, os.path.join(plot_dir, f"{stem}_timesteps_nfe{k_plot}.png"),
                           reference=models["best heuristic"][k_plot].timesteps, title=f"INDIS NFE {k_plot} on {backbone_spec}: 64 held-out seeds")
        pos = torch.arange(min(64, len(ev)))  # held-out conditions for a conditional backbone
        over = predictor_overhead(models["indis"][nfes[len(nfes) // 2]], bb, batch=len(pos), cond=ev.batch(pos)[1])
    meta = {"backbone": backbone_spec, "backbone_id": bb.backbone_id, "n_train_teacher": n_train, "n_eval_teacher": n_eval,
            "teacher": "ipndm 30 steps, polynomial rho=7, float64 state", "cfg_scale": cfg_scale, "train": {"steps": steps, "batch": batch, "lr": lr, "loss": "mse"},
            "best_heuristic": {k: {"name": best_any[k][1]["name"], "solver": best_any[k][1]["solver"], "train_mse": best_any[k][1]["scores"]}
                               for k in nfes},
            "init_schedule_ipndm": {k: {"name": best[k]["name"], "train_mse": best[k]["scores"]} for k in nfes},
            "teacher_seconds": t_teacher, "training": train_info, "teacher_fd_to_heldout_data": teacher_fd_data, "overhead": over,
            "threads": torch.get_num_threads()}
    if results_stem is not None:
        write_results(results_stem, rows, meta, metrics=("mse", "fd", "fd_data") if feats is not None else ("mse",))
    return {"rows": rows, "meta": meta, "models": models, "backbone": bb}


def plot_quality(rows_by_backbone: Dict[str, List[Dict]], path: str, metric: str = "mse",
                 methods: Sequence[str] = ("best heuristic", "gits", "dmn", "sdm", "amed", "god", "ld3", "indis", "indis+sdm",
                                           "indis+sdm+afs")) -> None:
    """Fig. 3-style plot: a metric against NFE (log scale), one panel per backbone, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows_by_backbone)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = rows_by_backbone[name]
        m_key = metric if any(metric in r for r in rows) else "mse"
        for m in methods:
            pts = sorted((r["nfe"], r[m_key]) for r in rows if r.get("method") == m and r.get(m_key) is not None)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=m)
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel(m_key)
        ax.set_title(name)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
