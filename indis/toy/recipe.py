"""How much of the per-instance oracle's gain does the learned phi recover, and what in its training recipe
raises that share? (issue 14, "the predictor recipe, measured")

For one NFE the references are those of the study (indis.toy.study, same functions and budgets): the global
timesteps-only schedule (b), GOD (b+, the full set {tau, dtau, gamma} shared by every prior) and the per-prior
full-set oracle (c+). The oracle is fitted on the study's fit priors AND, as a per-prior bound to compare phi
against where phi was not trained, on held-out priors as well (the oracle never sees another prior, so fitting
it on the held-out set is what "the oracle on held-out priors" means). phi is trained on the training priors
only, as in the study: a timesteps-only stage from (b) then a full-set stage. On each split

    share = (MSE_GOD - MSE_phi) / (MSE_GOD - MSE_oracle)

0 = phi is no better than GOD, 1 = phi matches the per-prior oracle (negative: worse than GOD).

`Recipe` is phi's training recipe; its defaults are the study's (width 64, 100 + 60 Adam iterations of 128
priors, lr 3e-3 cosine, endpoint-MSE loss, x_T / prior std as input, the full-set stage started from the
timesteps stage with zero shift/scale logits). `SWEEP` changes one factor at a time from it.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..discretization import DiscretizationParam
from ..io import atomic_write_json, load_tensors, save_tensors
from ..predictor import Predictor
from ..schedules import uniform_t
from .study import (DT, LR_SCHEDULES, PHI_LOSSES, StudyConfig, _loss, _rollout, _shared, build_backbone,
                    train_global, train_indis, train_oracle)

FEATURES = ("norm", "polar", "fourier")
FULL_INITS = ("timesteps", "god")


@dataclass(frozen=True)
class Recipe:
    hidden: int = 64  # phi width
    iters: int = 100  # timesteps-only stage (Adam iterations)
    full_iters: int = 60  # full-set stage
    batch: int = 128
    num_train: int = 20000  # training priors phi draws its minibatches from
    lr: float = 3e-3
    lr_schedule: str = "cosine"  # cosine | constant | warmup_cosine (indis.toy.study.lr_lambda)
    loss: str = "mse"  # mse | log_mse (indis.toy.study.phi_loss)
    features: str = "norm"  # norm: x_T / prior std (Predictor's own input) | polar: + |x_T|, x_T / |x_T| | fourier
    full_init: str = "timesteps"  # full-set stage starts at: the timesteps stage (shift/scale logits 0) | god

    def check(self) -> "Recipe":
        for name, v, ok in (("lr_schedule", self.lr_schedule, LR_SCHEDULES), ("loss", self.loss, PHI_LOSSES),
                            ("features", self.features, FEATURES), ("full_init", self.full_init, FULL_INITS)):
            if v not in ok:
                raise ValueError(f"Recipe.{name} = {v!r}; expected one of {ok}")
        if min(self.hidden, self.iters, self.full_iters, self.batch, self.num_train) < 1 or not self.lr > 0:
            raise ValueError(f"Recipe sizes and lr must be positive, got {self}")
        return self


# One factor at a time from the study's recipe: (factor, setting label, changes).
SWEEP: Tuple[Tuple[str, str, Dict], ...] = (
    ("baseline", "study recipe", {}),
    ("init", "full stage starts at GOD", {"full_init": "god"}),
    ("training length", "x3 iterations (300 + 180)", {"iters": 300, "full_iters": 180}),
    ("lr", "1e-2", {"lr": 1e-2}),
    ("lr", "1e-3", {"lr": 1e-3}),
    ("loss", "log MSE", {"loss": "log_mse"}),
    ("features", "polar (+|x_T|, direction)", {"features": "polar"}),
    ("features", "Fourier (16 random, scale 2)", {"features": "fourier"}),
    ("width", "hidden 256", {"hidden": 256}),
    ("width", "hidden 16", {"hidden": 16}),
    ("data", "2,000 priors", {"num_train": 2000}),
    ("data", "500 priors", {"num_train": 500}),
    ("lr schedule", "constant", {"lr_schedule": "constant"}),
    ("lr schedule", "warm-up + cosine", {"lr_schedule": "warmup_cosine"}),
    ("training length", "full stage x4 (100 + 240)", {"full_iters": 240}),
)

# The factors that helped, together (run after the sweep: `--sweep combined`).
COMBINED: Tuple[Tuple[str, str, Dict], ...] = (
    ("combined", "GOD start + x3 iterations", {"full_init": "god", "iters": 300, "full_iters": 180}),
    ("combined", "GOD start + x3 iterations + lr 1e-2", {"full_init": "god", "iters": 300, "full_iters": 180, "lr": 1e-2}),
    ("combined", "GOD start + x9 iterations (900 + 540)", {"full_init": "god", "iters": 900, "full_iters": 540}),
)


class FeaturePhi(nn.Module):
    """phi on features of x_T: Predictor over [x_T, |x_T|, x_T / |x_T|] (polar) or over 16 random Fourier
    features [sin(B x_T), cos(B x_T)], B ~ N(0, 2^2) fixed by `seed` (fourier), together with x_T. Predictor
    divides its input by the prior std (0.988 here), so the features reach the MLP scaled by 1 / 0.988."""

    def __init__(self, param: DiscretizationParam, features: str, hidden: int, seed: int = 0, n_fourier: int = 8):
        super().__init__()
        if features not in ("polar", "fourier"):
            raise ValueError(f"FeaturePhi: features must be 'polar' or 'fourier', got {features!r}")
        self.features = features
        g = torch.Generator().manual_seed(seed + 4242)
        self.register_buffer("B", torch.randn(2, n_fourier, generator=g) * 2.0)
        dim = 5 if features == "polar" else 2 + 2 * n_fourier
        self.pred = Predictor(param, (dim,), hidden=hidden)
        self.param, self.head = param, self.pred.head

    def feats(self, x: torch.Tensor) -> torch.Tensor:
        if self.features == "polar":
            r = x.norm(dim=1, keepdim=True)
            return torch.cat([x, r, x / r.clamp_min(1e-6)], 1)
        z = x @ self.B
        return torch.cat([x, torch.sin(z), torch.cos(z)], 1)

    def forward(self, x_T, cond=None):
        return self.pred(self.feats(x_T), cond)


def make_phi(param: DiscretizationParam, recipe: Recipe, init_logits: torch.Tensor, seed: int) -> nn.Module:
    """phi for a recipe, its hidden layers initialised from `seed`, its head at zero weight and `init_logits` bias
    (so it starts at that schedule)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if recipe.features == "norm":
            phi = Predictor(param, (2,), hidden=recipe.hidden)
        else:
            phi = FeaturePhi(param, recipe.features, recipe.hidden, seed)
    with torch.no_grad():
        phi.head.bias.copy_(init_logits.flatten())
    return phi


@dataclass
class ShareConfig:
    backbone: str = "exact"
    nfes: Tuple[int, ...] = (3, 5, 7)
    seeds: Tuple[int, ...] = (0, 1, 2)
    num_fit: int = 256  # the study's fit priors (first num_fit training priors)
    num_heldout: int = 256  # held-out priors, the oracle fitted on them too
    max_train: int = 20000  # training priors with ground truth (Recipe.num_train <= this)
    study: Optional[Dict] = None  # StudyConfig overrides (budgets of the references)

    def study_config(self) -> StudyConfig:
        return StudyConfig(backbone=self.backbone, num_train=self.max_train, num_fit=self.num_fit,
                           num_eval=self.num_heldout, **(self.study or {}))


def quick_share_config(**over) -> ShareConfig:
    cfg = dict(nfes=(3,), seeds=(0, 1), num_fit=32, num_heldout=32, max_train=400,
               study=dict(global_iters=20, global_batch=64, global_full_iters=10, oracle_iters=10, oracle_full_iters=10))
    cfg.update(over)
    return ShareConfig(**cfg)


def share(mse_god: float, mse_phi: float, mse_oracle: float) -> float:
    """(MSE_GOD - MSE_phi) / (MSE_GOD - MSE_oracle): phi's part of the oracle's gain over GOD."""
    gap = mse_god - mse_oracle
    if not gap > 0:
        raise ValueError(f"share: the oracle ({mse_oracle:.6g}) is not below GOD ({mse_god:.6g}); the share is undefined")
    return (mse_god - mse_phi) / gap


class ShareRunner:
    """References per NFE (computed once, cached under out_dir) and phi runs per (recipe, seed, NFE), every
    result appended to out_dir/share.json (a rerun skips what is there)."""

    def __init__(self, cfg: ShareConfig, out_dir, cache_dir=None, log=print):
        self.cfg, self.out, self.log = cfg, Path(out_dir), log
        self.out.mkdir(parents=True, exist_ok=True)
        self.scfg = cfg.study_config()
        self.bb, _, _ = build_backbone(self.scfg, cache_dir or self.out / "cache", progress=False)
        p = self.bb.process
        g = torch.Generator().manual_seed(self.scfg.seed)  # the study's priors: train (fit = its head), then eval
        std = p.prior_std()
        self.x_train = (torch.randn(cfg.max_train, 2, generator=g, dtype=torch.float64) * std).to(DT)
        self.x_ho = (torch.randn(cfg.num_heldout, 2, generator=g, dtype=torch.float64) * std).to(DT)
        self.path = self.out / "share.json"
        self.doc = {"config": self.ref_key(), "references": {}, "runs": []}
        if self.path.is_file():
            old = json.loads(self.path.read_text())
            if old.get("config") == self.ref_key():
                self.doc = old
        self._gt()
        self.refs: Dict[int, Dict] = {}

    def ref_key(self) -> Dict:
        """What the priors, ground truth and references depend on (not the NFE list or the phi seeds, so runs
        with other NFEs or seeds resume from the same folder)."""
        d = json.loads(json.dumps(asdict(self.cfg)))
        d.pop("nfes"), d.pop("seeds")
        return d

    def _gt(self):
        f = self.out / "ground_truth.safetensors"
        key = json.dumps({"backbone": self.bb.backbone_id, "n": self.cfg.max_train, "h": self.cfg.num_heldout,
                          "steps": self.scfg.teacher_steps})
        if f.is_file():
            t, meta = load_tensors(f)
            if meta.get("key") == key:
                self.gt_train, self.gt_ho = t["train"], t["heldout"]
                return
        ts = uniform_t(self.scfg.teacher_steps, self.bb.process.t0, self.bb.process.T).to(DT)
        t0 = time.time()
        with torch.no_grad():
            self.gt_train = _rollout(self.bb, self.x_train, ts, "euler", None)
            self.gt_ho = _rollout(self.bb, self.x_ho, ts, "euler", None)
        save_tensors(f, {"train": self.gt_train, "heldout": self.gt_ho}, {"key": key, "seconds": time.time() - t0})

    def params(self, nfe):
        s = self.scfg
        return (DiscretizationParam(self.bb.process, nfe, warp="t", b_dtau=0.0, b_gamma=0.0),
                DiscretizationParam(self.bb.process, nfe, warp="t", b_dtau=s.b_dtau, b_gamma=s.b_gamma))

    def mse(self, disc_fn, split) -> float:
        x, gt = (self.x_train[: self.cfg.num_fit], self.gt_train[: self.cfg.num_fit]) if split == "fit" else (self.x_ho, self.gt_ho)
        with torch.no_grad():
            return float(_loss(self.bb, x, gt, disc_fn(x), "euler", None).mean())

    def references(self, nfe) -> Dict:
        """global, GOD and the full-set oracle on both splits, by the study's procedure and budgets."""
        if nfe in self.refs:
            return self.refs[nfe]
        f = self.out / f"references_nfe{nfe}.safetensors"
        if f.is_file():
            t, meta = load_tensors(f)
            if meta.get("config") == self.ref_key():
                self.refs[nfe] = {**t, **meta["mse"]}
                self.doc["references"][str(nfe)] = meta["mse"]
                return self.refs[nfe]
        s, (p0, p1) = self.scfg, self.params(nfe)
        g = torch.Generator().manual_seed(s.seed * 1000 + nfe)
        t0 = time.time()
        xt, gt = self.x_train, self.gt_train
        o_g = train_global(self.bb, p0, xt, gt, None, "euler", s.global_iters, s.global_batch, s.global_lr, g)
        o_gf = train_global(self.bb, p1, xt, gt, None, "euler", s.global_full_iters, s.global_batch, s.global_lr, g, init=o_g)
        mse, tensors = {}, {"global": o_g, "god": o_gf}
        for split, x, y in (("fit", xt[: self.cfg.num_fit], gt[: self.cfg.num_fit]), ("heldout", self.x_ho, self.gt_ho)):
            o_or = train_oracle(self.bb, p0, x, y, None, "euler", s.oracle_iters, s.oracle_lr, o_g)
            init = o_or.clone()
            init[:, 1:] = o_gf[1:]  # the oracle's timesteps with GOD's shifts and scales (as the study)
            o_orf = train_oracle(self.bb, p1, x, y, None, "euler", s.oracle_full_iters, s.oracle_lr, init)
            tensors[f"oracle_full_{split}"] = o_orf
            mse[f"global_{split}"] = self.mse(lambda z: _shared(p0, o_g), split)
            mse[f"god_{split}"] = self.mse(lambda z: _shared(p1, o_gf), split)
            with torch.no_grad():
                mse[f"oracle_full_{split}"] = float(_loss(self.bb, x, y, p1(o_orf), "euler", None).mean())
        mse["seconds"] = time.time() - t0
        save_tensors(f, tensors, {"config": self.ref_key(), "mse": mse})
        self.doc["references"][str(nfe)] = mse
        atomic_write_json(self.path, self.doc)
        self.refs[nfe] = {**tensors, **mse}
        self.log(f"NFE {nfe} references: GOD fit {mse['god_fit']:.4g} / held-out {mse['god_heldout']:.4g}, "
                 f"oracle full fit {mse['oracle_full_fit']:.4g} / held-out {mse['oracle_full_heldout']:.4g} "
                 f"({mse['seconds']:.0f} s)")
        return self.refs[nfe]

    def god_check(self, nfe: int, extra_iters: Sequence[int] = (120, 360)) -> Dict:
        """Is GOD converged at the study's budget? GOD re-trained from (b) with more full-set iterations (same lr,
        batch and minibatch stream), its MSE on both splits, next to the reference's."""
        ref, s, (p0, p1) = self.references(nfe), self.scfg, self.params(nfe)
        out = {"study_iters": s.global_full_iters, "god_fit": ref["god_fit"], "god_heldout": ref["god_heldout"]}
        for it in extra_iters:
            g = torch.Generator().manual_seed(s.seed * 1000 + nfe + 1)
            o = train_global(self.bb, p1, self.x_train, self.gt_train, None, "euler", it, s.global_batch, s.global_lr, g,
                             init=ref["global"])
            for sp in ("fit", "heldout"):
                out[f"god{it}_{sp}"] = self.mse(lambda z: _shared(p1, o), sp)
        return out

    def train_phi(self, recipe: Recipe, seed: int, nfe: int) -> nn.Module:
        recipe.check()
        if recipe.num_train > self.cfg.max_train:
            raise ValueError(f"Recipe.num_train {recipe.num_train} > ShareConfig.max_train {self.cfg.max_train}")
        ref, (p0, p1) = self.references(nfe), self.params(nfe)
        g = torch.Generator().manual_seed(seed * 1000 + nfe + 5)
        xt, gt = self.x_train[: recipe.num_train], self.gt_train[: recipe.num_train]
        phi = make_phi(p0, recipe, ref["global"], seed * 1000 + nfe + 17)
        train_indis(self.bb, phi, xt, gt, None, "euler", recipe.iters, recipe.batch, recipe.lr, g,
                    schedule=recipe.lr_schedule, loss=recipe.loss)
        phi_f = make_phi(p1, recipe, ref["global"], seed * 1000 + nfe + 17)
        phi_f.load_state_dict(phi.state_dict())
        if recipe.full_init == "god":
            with torch.no_grad():
                phi_f.head.bias.copy_(ref["god"].flatten())
        return train_indis(self.bb, phi_f, xt, gt, None, "euler", recipe.full_iters, recipe.batch, recipe.lr, g,
                           schedule=recipe.lr_schedule, loss=recipe.loss)

    def run(self, recipe: Recipe, seed: int, nfe: int, factor: str = "", setting: str = "") -> Dict:
        rd = asdict(recipe)
        for r in self.doc["runs"]:
            if r["recipe"] == rd and r["seed"] == seed and r["nfe"] == nfe:
                return r
        t0 = time.time()
        phi = self.train_phi(recipe, seed, nfe)
        ref = self.references(nfe)
        row = {"factor": factor, "setting": setting, "recipe": rd, "seed": seed, "nfe": nfe}
        for split in ("fit", "heldout"):
            m = self.mse(lambda z: phi(z, None), split)
            row[f"mse_{split}"] = m
            row[f"share_{split}"] = share(ref[f"god_{split}"], m, ref[f"oracle_full_{split}"])
            row[f"vs_god_{split}"] = (m - ref[f"god_{split}"]) / ref[f"god_{split}"]
        row["seconds"] = time.time() - t0
        self.doc["runs"].append(row)
        atomic_write_json(self.path, self.doc)
        self.log(f"{factor or 'recipe'} / {setting or '-'} seed {seed} NFE {nfe}: share fit {row['share_fit']:+.3f} "
                 f"held-out {row['share_heldout']:+.3f}, MSE vs GOD held-out {100 * row['vs_god_heldout']:+.1f}% "
                 f"({row['seconds']:.0f} s)")
        return row

    def run_recipe(self, recipe: Recipe, factor: str = "", setting: str = "") -> List[Dict]:
        return [self.run(recipe, s, n, factor, setting) for n in self.cfg.nfes for s in self.cfg.seeds]

    def sweep(self, entries: Sequence[Tuple[str, str, Dict]] = SWEEP, base: Recipe = Recipe()) -> List[Dict]:
        """Every entry at every NFE and seed, NFE by NFE (so a sweep cut short has every factor at the first NFEs)."""
        recipes = [(replace(base, **changes).check(), factor, setting) for factor, setting, changes in entries]
        return [self.run(r, s, n, f, st) for n in self.cfg.nfes for r, f, st in recipes for s in self.cfg.seeds]


def merge_share_docs(docs: Sequence[Dict]) -> Dict:
    """One share document from several (runs of the same priors and references in different folders, e.g. NFEs
    run side by side): references by NFE, runs deduplicated by (recipe, seed, NFE); the first document wins."""
    out = {"config": docs[0]["config"], "references": {}, "runs": []}
    seen = set()
    for d in docs:
        for n, r in d["references"].items():
            out["references"].setdefault(n, r)
        for r in d["runs"]:
            k = (json.dumps(r["recipe"], sort_keys=True), r["seed"], r["nfe"])
            if k not in seen:
                seen.add(k)
                out["runs"].append(r)
    return out


def against_god(doc: Dict, god: Dict[int, Dict[str, float]]) -> Dict:
    """The share document re-expressed against another GOD (e.g. a longer-trained one from god_check): for each
    NFE in `god` ({nfe: {"fit": mse, "heldout": mse}}) the references' GOD MSE is replaced and every run's share
    and MSE-vs-GOD recomputed; NFEs not in `god` are dropped."""
    out = {"config": doc["config"], "references": {}, "runs": []}
    for n, g in god.items():
        ref = dict(doc["references"][str(n)])
        ref.update({f"god_{sp}": g[sp] for sp in ("fit", "heldout")})
        out["references"][str(n)] = ref
    for r in doc["runs"]:
        if r["nfe"] in god:
            ref, r = out["references"][str(r["nfe"])], dict(r)
            for sp in ("fit", "heldout"):
                r[f"share_{sp}"] = share(ref[f"god_{sp}"], r[f"mse_{sp}"], ref[f"oracle_full_{sp}"])
                r[f"vs_god_{sp}"] = (r[f"mse_{sp}"] - ref[f"god_{sp}"]) / ref[f"god_{sp}"]
            out["runs"].append(r)
    return out


def _ms(v: Sequence[float]) -> str:
    v = np.asarray(v, dtype=float)
    return f"{v.mean():+.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"


def share_table(doc: Dict, recipe: Optional[Dict] = None) -> str:
    """Per NFE: MSE of GOD / oracle / phi and phi's share on both splits, mean ± sample std over seeds."""
    runs = [r for r in doc["runs"] if recipe is None or r["recipe"] == recipe]
    lines = ["| NFE | split | GOD | oracle full | phi (mean over seeds) | share (mean ± std) | phi vs GOD |",
             "|---|---|---|---|---|---|---|"]
    for n in sorted({r["nfe"] for r in runs}):
        ref = doc["references"][str(n)]
        rs = [r for r in runs if r["nfe"] == n]
        for sp in ("fit", "heldout"):
            lines.append(f"| {n} | {sp} | {ref[f'god_{sp}']:.4g} | {ref[f'oracle_full_{sp}']:.4g} | "
                         f"{np.mean([r[f'mse_{sp}'] for r in rs]):.4g} | {_ms([r[f'share_{sp}'] for r in rs])} | "
                         f"{100 * np.mean([r[f'vs_god_{sp}'] for r in rs]):+.1f}% |")
    return "\n".join(lines)


def before_after_table(doc: Dict, before: Dict, after: Dict, god_alt: Optional[Dict[int, Dict[str, float]]] = None,
                       alt_label: str = "GOD, longer") -> str:
    """Per NFE and split: GOD, the oracle, and the share of two recipes (asdict(Recipe)) as mean ± std over
    seeds; with god_alt also the shares against that other GOD (against_god)."""
    alt = against_god(doc, god_alt) if god_alt else None
    head = "| NFE | split | MSE GOD | MSE oracle full | share before | share after |"
    if alt:
        head += f" MSE {alt_label} | share before vs it | share after vs it |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    have = lambda rec: {r["nfe"] for r in doc["runs"] if r["recipe"] == rec}
    for n in sorted(have(before) & have(after)):  # the NFEs where both recipes ran
        for sp in ("fit", "heldout"):
            ref = doc["references"][str(n)]
            cell = lambda d, rec: _ms([r[f"share_{sp}"] for r in d["runs"] if r["nfe"] == n and r["recipe"] == rec] or [float("nan")])
            row = f"| {n} | {sp} | {ref[f'god_{sp}']:.4g} | {ref[f'oracle_full_{sp}']:.4g} | {cell(doc, before)} | {cell(doc, after)} |"
            if alt:
                row += (f" {alt['references'][str(n)][f'god_{sp}']:.4g} | {cell(alt, before)} | {cell(alt, after)} |"
                        if str(n) in alt["references"] else " | | |")
            lines.append(row)
    return "\n".join(lines)


def sweep_table(doc: Dict, nfes: Optional[Sequence[int]] = None) -> str:
    """One row per (factor, setting): share on fit / held-out priors and MSE vs GOD (held-out), each the mean
    over NFEs (those in `nfes`, default all) and seeds, ± the std over seeds of the per-seed NFE means."""
    runs = [r for r in doc["runs"] if nfes is None or r["nfe"] in nfes]
    keys: List[Tuple[str, str]] = []
    for r in runs:
        if (r["factor"], r["setting"]) not in keys:
            keys.append((r["factor"], r["setting"]))
    lines = ["| factor | setting | share fit | share held-out | MSE vs GOD held-out | NFEs × seeds | s / run |",
             "|---|---|---|---|---|---|---|"]
    for k in keys:
        rs = [r for r in runs if (r["factor"], r["setting"]) == k]
        seeds = sorted({r["seed"] for r in rs})
        per = lambda key: [np.mean([r[key] for r in rs if r["seed"] == s]) for s in seeds]
        lines.append(f"| {k[0]} | {k[1]} | {_ms(per('share_fit'))} | {_ms(per('share_heldout'))} | "
                     f"{100 * np.mean(per('vs_god_heldout')):+.1f}% | {len({r['nfe'] for r in rs})} × {len(seeds)} | "
                     f"{np.mean([r['seconds'] for r in rs]):.0f} |")
    return "\n".join(lines)
