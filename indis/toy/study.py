"""The synthetic study of paper section 4.1 (Figs. 2-3): global versus instance-specific discretizations.

Per NFE N, on one backbone (exact tree GMM or the learned MLP), all with the flow-OT process, T = 0.988,
t0 = 0.002, priors x_T ~ N(0, T^2 I), float32 state throughout, ground truth = 100-step Euler on the uniform
grid from the same prior:

  uniform      tau_i evenly spaced in t (the paper's (a)).
  global       (b) one set of N timesteps (logits O [3, N], DiscretizationParam with warp "t", b_dtau =
               b_gamma = 0), Adam on the MSE to the ground truth, minibatches drawn from the num_train priors.
  global_full  (b+, GOD) the same with shifts and scales (b_dtau, b_gamma > 0), initialised at `global`.
  oracle       (c) one schedule per prior, optimised for that prior alone: logits O [B, 3, N] of the num_fit
               "fit" priors (the first num_fit training priors), optimised jointly with Adam on the SUM of
               the per-sample losses. The samples do not interact, so the gradient of the sum with respect to
               sample b's logits is the gradient of sample b's own loss, and Adam's update is elementwise:
               one batched run equals B separate optimisations. Initialised at the global schedule.
  oracle_full  (c+) the same over {tau, dtau, gamma}, initialised at the oracle's timesteps.
  indis        (d) Predictor phi(x_T[, class]) -> O, timesteps only, trained on the num_train priors,
               its output head initialised at the global schedule (so it starts at (b)).
  indis_full   (d+) phi over the full set, initialised at `indis`.
  iPNDM:       uniform, global and indis trained and evaluated with the iPNDM solver.

Evaluation splits: "train" = the fit priors (every strategy, oracle included; the paper's Fig. 2 protocol:
(b) and (c) trained and evaluated on the same priors), "heldout" = num_eval fresh priors (every strategy
but the oracle). Metrics in indis.toy.metrics.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..discretization import Discretization, DiscretizationParam
from ..io import atomic_write_json
from ..predictor import Predictor
from ..schedules import uniform_t
from ..solvers import sample
from .learned import QUICK_TRAIN, load_or_train
from .metrics import DistributionMetrics, MetricSpec, per_sample_se
from .tree import tree_backbone

DT = torch.float32
BACKBONES = ("exact", "learned")  # the tree's exact GMM denoiser, or an MLP trained on it


@dataclass
class StudyConfig:
    backbone: str = "exact"  # one of BACKBONES
    conditional: bool = False
    nfes: Tuple[int, ...] = (3, 4, 5, 6, 7, 8, 9, 10)
    num_train: int = 20000
    num_fit: int = 256
    num_eval: int = 1000
    teacher_steps: int = 100
    seed: int = 0
    b_dtau: float = 0.05  # warp "t": time units
    b_gamma: float = 0.05
    global_iters: int = 80
    global_batch: int = 128
    global_lr: float = 0.05
    global_full_iters: int = 40
    oracle_iters: int = 40
    oracle_lr: float = 0.05
    oracle_full_iters: int = 30
    indis_iters: int = 100
    indis_batch: int = 128
    indis_lr: float = 3e-3
    indis_hidden: int = 64
    indis_full_iters: int = 60
    ipndm: bool = True
    learned_train: Optional[Dict] = None  # MLP training config (None: learned.DEFAULT_TRAIN)
    metrics: Dict = field(default_factory=lambda: MetricSpec().to_dict())

    def key(self) -> str:
        d = asdict(self)
        d.pop("nfes")
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def quick_config(**over) -> StudyConfig:
    cfg = dict(nfes=(3,), num_train=800, num_fit=64, num_eval=256, global_iters=30, global_batch=64,
               global_full_iters=15, oracle_iters=25, oracle_full_iters=10, indis_iters=40, indis_batch=64,
               indis_full_iters=20, metrics=MetricSpec(ref_n=20000, w2_n=256).to_dict())
    cfg["learned_train"] = dict(QUICK_TRAIN)
    cfg.update(over)
    return StudyConfig(**cfg)


# ------------------------------------------------------------------------------------------------
def build_backbone(cfg: StudyConfig, cache_dir=None, progress=True):
    exact = tree_backbone(conditional=cfg.conditional)
    if cfg.backbone == "exact":
        return exact, exact, {}
    if cfg.backbone == "learned":
        if cfg.conditional:
            raise ValueError("the conditional variant uses the exact class-conditional mixture (--backbone exact)")
        model, info = load_or_train(cfg.learned_train, cache_dir=cache_dir, progress=progress)
        return model, exact, info
    raise ValueError(f"unknown backbone {cfg.backbone!r}; expected one of {BACKBONES}")


def _rollout(bb, xT, disc, solver, cond, chunk=4096):
    outs = []
    for lo in range(0, xT.shape[0], chunk):
        sl = slice(lo, lo + chunk)
        d = disc
        if isinstance(disc, Discretization) and disc.timesteps.dim() == 2 and disc.timesteps.shape[0] == xT.shape[0]:
            d = Discretization(disc.timesteps[sl], None if disc.dtau is None else disc.dtau[sl],
                               None if disc.gamma is None else disc.gamma[sl])
        outs.append(sample(bb, xT[sl], d, solver=solver, cond=None if cond is None else cond[sl]))
    return torch.cat(outs, 0)


def _loss(bb, xT, x_gt, disc, solver, cond):
    x = sample(bb, xT, disc, solver=solver, cond=cond)
    return ((x - x_gt) ** 2).mean(dim=1)  # [B] per-sample MSE


def _shared(param, o):
    d = param(o)
    return Discretization(d.timesteps, d.dtau, d.gamma)


def train_global(bb, param, xT, x_gt, cond, solver, iters, batch, lr, gen, init=None):
    o = (torch.zeros(3, param.nfe) if init is None else init.clone()).requires_grad_(True)
    opt = torch.optim.Adam([o], lr=lr)
    for _ in range(iters):
        idx = torch.randint(xT.shape[0], (batch,), generator=gen)
        loss = _loss(bb, xT[idx], x_gt[idx], _shared(param, o), solver, None if cond is None else cond[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return o.detach()


def train_oracle(bb, param, xT, x_gt, cond, solver, iters, lr, init):
    """init: [B, 3, N] (or [3, N], broadcast). Sum of per-sample losses: B independent optimisations."""
    o = init.expand(xT.shape[0], 3, param.nfe).clone().requires_grad_(True)
    opt = torch.optim.Adam([o], lr=lr)
    best = torch.full((xT.shape[0],), math.inf)
    best_o = o.detach().clone()
    for it in range(iters + 1):
        per = _loss(bb, xT, x_gt, param(o), solver, cond)
        with torch.no_grad():  # keep each sample's best iterate (an oracle may keep its best)
            better = per.detach() < best
            best = torch.where(better, per.detach(), best)
            best_o[better] = o.detach()[better]
        if it == iters:
            break
        opt.zero_grad()
        per.sum().backward()
        opt.step()
    return best_o


LR_SCHEDULES = ("cosine", "constant", "warmup_cosine")
PHI_LOSSES = ("mse", "log_mse")


def lr_lambda(schedule: str, iters: int):
    """Multiplier of the peak learning rate at iteration i for the schedules other than the study's cosine
    (torch's CosineAnnealingLR): constant, or a linear warm-up over the first 10 % followed by a cosine to 0."""
    if schedule == "constant":
        return lambda i: 1.0
    if schedule == "warmup_cosine":
        w = max(1, iters // 10)
        return lambda i: (i + 1) / w if i < w else 0.5 * (1 + math.cos(math.pi * (i - w) / max(1, iters - w)))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}; expected one of {LR_SCHEDULES}")


def phi_loss(per_sample, loss: str):
    """The phi training objective from the per-sample endpoint MSE [B]: its mean ('mse', the study's) or the
    mean of its log ('log_mse': every prior's relative error counts alike, so the many small-error priors near
    the centre are not drowned by the few large-error outer ones)."""
    if loss == "mse":
        return per_sample.mean()
    if loss == "log_mse":
        return torch.log(per_sample + 1e-10).mean()
    raise ValueError(f"unknown phi loss {loss!r}; expected one of {PHI_LOSSES}")


def train_indis(bb, pred, xT, x_gt, cond, solver, iters, batch, lr, gen, schedule="cosine", loss="mse"):
    opt = torch.optim.Adam(pred.parameters(), lr=lr)
    if schedule == "cosine":  # the study's (kept as the built-in scheduler so its numbers are unchanged)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(schedule, iters))
    for _ in range(iters):
        idx = torch.randint(xT.shape[0], (batch,), generator=gen)
        c = None if cond is None else cond[idx]
        loss_v = phi_loss(_loss(bb, xT[idx], x_gt[idx], pred(xT[idx], c), solver, c), loss)
        opt.zero_grad()
        loss_v.backward()
        opt.step()
        sched.step()
    return pred


# ------------------------------------------------------------------------------------------------
class Study:
    def __init__(self, cfg: StudyConfig, out_dir, progress: bool = True, cache_dir=None, log=print):
        self.cfg, self.out = cfg, Path(out_dir)
        self.progress, self.log = progress, log
        self.out.mkdir(parents=True, exist_ok=True)
        self.bb, self.exact, self.backbone_info = build_backbone(cfg, cache_dir or self.out / "cache", progress)
        self.process = self.bb.process
        g = torch.Generator().manual_seed(cfg.seed)
        std = self.process.prior_std()
        self.x_train = (torch.randn(cfg.num_train, 2, generator=g, dtype=torch.float64) * std).to(DT)
        self.x_eval = (torch.randn(cfg.num_eval, 2, generator=g, dtype=torch.float64) * std).to(DT)
        self.c_train = self.c_eval = None
        class_probs = None
        if cfg.conditional:
            class_probs = torch.tensor([0.5, 0.5], dtype=torch.float64)
            self.c_train = torch.randint(2, (cfg.num_train,), generator=g)
            self.c_eval = torch.randint(2, (cfg.num_eval,), generator=g)
        self.metrics = DistributionMetrics(self.exact, MetricSpec(**cfg.metrics), class_probs)
        n_fit = min(cfg.num_fit, cfg.num_train)
        self.x_fit = self.x_train[:n_fit]
        self.c_fit = None if self.c_train is None else self.c_train[:n_fit]
        self.results_path = self.out / "results.json"
        self.results: List[Dict] = []
        self.extra: Dict = {}
        if self.results_path.is_file():
            try:
                old = json.loads(self.results_path.read_text())
                if old.get("config_key") == cfg.key():
                    self.results = old.get("results", [])
                    self.extra = old.get("extra", {})
            except (json.JSONDecodeError, OSError):
                pass

    # -- bookkeeping ------------------------------------------------------------------------------
    def _param(self, nfe, full):
        bd, bg = (self.cfg.b_dtau, self.cfg.b_gamma) if full else (0.0, 0.0)
        return DiscretizationParam(self.process, nfe, warp="t", b_dtau=bd, b_gamma=bg)

    def expected(self, nfe) -> List[Tuple[str, str, str]]:
        keys = [("euler", s, "train") for s in ("uniform", "global", "global_full", "oracle", "oracle_full", "indis", "indis_full")]
        keys += [("euler", s, "heldout") for s in ("uniform", "global", "global_full", "indis", "indis_full")]
        if self.cfg.ipndm:
            keys += [("ipndm", s, sp) for s in ("uniform", "global", "indis") for sp in ("train", "heldout")]
        return keys

    def done(self, nfe) -> bool:
        have = {(r["solver"], r["strategy"], r["split"]) for r in self.results if r["nfe"] == nfe}
        return set(self.expected(nfe)) <= have and (self.out / f"errors_nfe{nfe}.npz").is_file()

    def save(self):
        doc = {
            "process": self.process.config(),
            "backbone": self.cfg.backbone,
            "backbone_id": self.bb.backbone_id,
            "backbone_info": self.backbone_info,
            "teacher_steps": self.cfg.teacher_steps,
            "num_train": self.cfg.num_train,
            "num_fit": len(self.x_fit),
            "num_eval": self.cfg.num_eval,
            "conditional": self.cfg.conditional,
            "config": asdict(self.cfg),
            "config_key": self.cfg.key(),
            "metric_floors": {
                "train": self.metrics.floors(len(self.x_fit)),
                "heldout": self.metrics.floors(self.cfg.num_eval),
            },
            "results": sorted(self.results, key=lambda r: (r["nfe"], r["solver"], r["split"], r["strategy"])),
            "extra": self.extra,
        }
        atomic_write_json(self.results_path, doc)

    # -- the work ---------------------------------------------------------------------------------
    def ground_truth(self):
        ts = uniform_t(self.cfg.teacher_steps, self.process.t0, self.process.T).to(DT)
        with torch.no_grad():
            self.gt_train = _rollout(self.bb, self.x_train, ts, "euler", self.c_train)
            self.gt_eval = _rollout(self.bb, self.x_eval, ts, "euler", self.c_eval)
        self.gt_fit = self.gt_train[: len(self.x_fit)]

    def evaluate(self, nfe, solver, strategy, split, disc_fn) -> Tuple[Dict, np.ndarray]:
        xT, gt, c = (self.x_fit, self.gt_fit, self.c_fit) if split == "train" else (self.x_eval, self.gt_eval, self.c_eval)
        with torch.no_grad():
            disc = disc_fn(xT, c)
            x = _rollout(self.bb, xT, disc, solver, c)
        err = per_sample_se(x, gt)
        row = {"nfe": nfe, "solver": solver, "strategy": strategy, "split": split, "conditional": self.cfg.conditional,
               "mse": float(err.mean()), "n": int(xT.shape[0])}
        row.update(self.metrics(x))
        ts = disc.timesteps.double()
        row["timesteps_mean"] = [float(v) for v in (ts.mean(0) if ts.dim() == 2 else ts)]
        if ts.dim() == 2:
            row["timesteps_std"] = [float(v) for v in ts.std(0)]
        return row, err.numpy()

    def run_nfe(self, nfe, bar=None):
        cfg = self.cfg
        g = torch.Generator().manual_seed(cfg.seed * 1000 + nfe)
        self.results = [r for r in self.results if r["nfe"] != nfe]
        rows, errs, timing = [], {}, {}
        p0, p1 = self._param(nfe, False), self._param(nfe, True)
        xt, gt, ct = self.x_train, self.gt_train, self.c_train

        def tick(name):
            if bar is not None:
                bar.set_postfix_str(f"NFE {nfe}: {name}")
                bar.update(1)

        def ev(solver, strategy, fn, splits=("train", "heldout")):
            for sp in splits:
                row, e = self.evaluate(nfe, solver, strategy, sp, fn)
                rows.append(row)
                if sp == "train" and solver == "euler":
                    errs[strategy] = e

        shared = lambda o, p: (lambda x, c: _shared(p, o))
        for solver in ("euler", "ipndm") if cfg.ipndm else ("euler",):
            t = time.time()
            uni = uniform_t(nfe, self.process.t0, self.process.T).to(DT)
            ev(solver, "uniform", lambda x, c: Discretization(uni))
            tick(f"{solver} uniform")
            t = time.time()
            o_g = train_global(self.bb, p0, xt, gt, ct, solver, cfg.global_iters, cfg.global_batch, cfg.global_lr, g)
            timing[f"{solver}_global"] = time.time() - t
            ev(solver, "global", shared(o_g, p0))
            tick(f"{solver} global")
            t = time.time()
            pred = Predictor(p0, (2,), self.bb.cond_spec, hidden=cfg.indis_hidden)
            with torch.no_grad():
                pred.head.bias.copy_(o_g.flatten())
            with torch.random.fork_rng():
                torch.manual_seed(cfg.seed * 1000 + nfe + 17)
                for m in list(pred.modules()):
                    if isinstance(m, torch.nn.Linear) and m is not pred.head:
                        m.reset_parameters()
            pred = train_indis(self.bb, pred, xt, gt, ct, solver, cfg.indis_iters, cfg.indis_batch, cfg.indis_lr, g)
            timing[f"{solver}_indis"] = time.time() - t
            ev(solver, "indis", lambda x, c: pred(x, c))
            tick(f"{solver} indis")
            if solver != "euler":
                continue
            t = time.time()
            o_gf = train_global(self.bb, p1, xt, gt, ct, solver, cfg.global_full_iters, cfg.global_batch, cfg.global_lr, g, init=o_g)
            timing["global_full"] = time.time() - t
            ev(solver, "global_full", shared(o_gf, p1))
            tick("global_full")
            t = time.time()
            o_or = train_oracle(self.bb, p0, self.x_fit, self.gt_fit, self.c_fit, solver, cfg.oracle_iters, cfg.oracle_lr, o_g)
            timing["oracle"] = time.time() - t
            ev(solver, "oracle", lambda x, c: p0(o_or), splits=("train",))
            tick("oracle")
            t = time.time()
            init_full = o_or.clone()
            init_full[:, 1:] = o_gf[1:]  # the oracle's timesteps with GOD's shifts and scales
            o_orf = train_oracle(self.bb, p1, self.x_fit, self.gt_fit, self.c_fit, solver, cfg.oracle_full_iters, cfg.oracle_lr, init_full)
            timing["oracle_full"] = time.time() - t
            ev(solver, "oracle_full", lambda x, c: p1(o_orf), splits=("train",))
            tick("oracle_full")
            t = time.time()
            pred_f = Predictor(p1, (2,), self.bb.cond_spec, hidden=cfg.indis_hidden)
            pred_f.load_state_dict(pred.state_dict())
            pred_f = train_indis(self.bb, pred_f, xt, gt, ct, solver, cfg.indis_full_iters, cfg.indis_batch, cfg.indis_lr, g)
            timing["indis_full"] = time.time() - t
            ev(solver, "indis_full", lambda x, c: pred_f(x, c))
            tick("indis_full")
        self.results += rows
        self.extra.setdefault("train_seconds", {})[str(nfe)] = timing
        np.savez_compressed(self.out / f"errors_nfe{nfe}.npz", x_T=self.x_fit.numpy(), **{k: v for k, v in errs.items()})
        self.save()

    def run(self):
        from tqdm import tqdm

        t0 = time.time()
        todo = [n for n in self.cfg.nfes if not self.done(n)]
        skipped = [n for n in self.cfg.nfes if n not in todo]
        if skipped:
            self.log(f"resume: NFE {skipped} already in {self.results_path}, skipped")
        per = 7 + (3 if self.cfg.ipndm else 0)
        with tqdm(total=1 + per * len(todo), desc="toy study", disable=not self.progress, mininterval=1.0) as bar:
            if todo:
                bar.set_postfix_str("ground truth (100-step Euler)")
                self.ground_truth()
            bar.update(1)
            for n in todo:
                self.run_nfe(n, bar)
        self.extra["wall_seconds_last_run"] = time.time() - t0
        self.save()
        make_figures(self.results_path)
        return json.loads(self.results_path.read_text())


# ------------------------------------------------------------------------------------------------
STYLE = {"uniform": ("tab:gray", "(a) uniform"), "global": ("tab:blue", "(b) global"),
         "global_full": ("tab:cyan", "(b+) global full (GOD)"), "oracle": ("tab:green", "(c) oracle"),
         "oracle_full": ("tab:olive", "(c+) oracle full"), "indis": ("tab:red", "(d) INDIS"),
         "indis_full": ("tab:purple", "(d+) INDIS full")}


def make_figures(results_path) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    results_path = Path(results_path)
    doc = json.loads(results_path.read_text())
    out = results_path.parent
    tag = f"{doc['backbone']}{'_cond' if doc.get('conditional') else ''}"
    files = []
    nfes = sorted({r["nfe"] for r in doc["results"]})
    if not nfes:
        return files
    n0 = nfes[0]
    f = out / f"errors_nfe{n0}.npz"
    if f.is_file():
        z = np.load(f)
        names = [s for s in ("uniform", "global", "oracle", "indis", "global_full", "oracle_full", "indis_full") if s in z]
        allv = np.concatenate([z[s] for s in names])
        norm = LogNorm(vmin=max(np.percentile(allv, 1), 1e-8), vmax=np.percentile(allv, 99))
        cols = 4
        rows = math.ceil(len(names) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
        for ax, s in zip(axes.flat, names):
            sc = ax.scatter(z["x_T"][:, 0], z["x_T"][:, 1], c=np.clip(z[s], norm.vmin, None), s=6, cmap="viridis", norm=norm)
            ax.set_title(f"{STYLE[s][1]}\nMSE {z[s].mean():.4g}")
            ax.set_aspect("equal")
        for ax in list(axes.flat)[len(names):]:
            ax.axis("off")
        fig.colorbar(sc, ax=axes.ravel().tolist(), label="endpoint squared error vs 100-step Euler")
        fig.suptitle(f"Fig. 2 analogue: priors x_T coloured by endpoint error, Euler NFE={n0}, {tag} backbone")
        p = out / f"fig2_{tag}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        files.append(p)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    floors = doc.get("metric_floors", {}).get("heldout", {})
    for ax, m in zip(axes, ("mse", "kl", "w2")):
        for s in ("uniform", "global", "global_full", "indis", "indis_full"):
            for solver, ls in (("euler", "-"), ("ipndm", "--")):
                rs = sorted([r for r in doc["results"] if r["strategy"] == s and r["solver"] == solver and r["split"] == "heldout"], key=lambda r: r["nfe"])
                if rs:
                    ax.plot([r["nfe"] for r in rs], [max(r[m], 1e-12) for r in rs], ls, marker="o", ms=3,
                            color=STYLE[s][0], label=f"{STYLE[s][1]} {solver}")
        if m != "mse" and f"{m}_floor" in floors:
            ax.axhline(floors[f"{m}_floor"], color="k", lw=0.8, ls=":", label="estimator floor (true samples)")
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_title({"mse": "endpoint MSE", "kl": "KL(data || gen), 32x32 hist", "w2": "W2 (exact, 1000 vs 1000)"}[m])
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Fig. 3 analogue: held-out priors, {tag} backbone")
    fig.tight_layout()
    p = out / f"fig3_{tag}.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    files.append(p)
    return files


def summary_table(doc: Dict, split="train", solver="euler") -> str:
    strategies = ["uniform", "global", "global_full", "oracle", "oracle_full", "indis", "indis_full"]
    lines = ["| NFE | " + " | ".join(strategies) + " |", "|---" * (len(strategies) + 1) + "|"]
    for n in sorted({r["nfe"] for r in doc["results"]}):
        cells = []
        for s in strategies:
            r = [r for r in doc["results"] if r["nfe"] == n and r["strategy"] == s and r["split"] == split and r["solver"] == solver]
            cells.append(f"{r[0]['mse']:.4g}" if r else "")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Checks behind the analysis in docs/toy_study.md
def grid_oracle(bb, x_T, x_gt, cond=None, grid: int = 48, solver: str = "euler"):
    """Exhaustive per-prior optimum of a 3-step schedule (timesteps only): every pair t1 > t2 of interior
    times on a grid uniform in t (grid points strictly inside (t0, T)) is tried for every prior, and each
    prior keeps its best pair. Returns (per-sample best squared error [B], best pair [B, 2], per-pair mean [P])
    -- the per-pair mean's minimum is the best *global* 3-step schedule on the same grid."""
    p = bb.process
    t = torch.linspace(p.T, p.t0, grid + 2, dtype=torch.float64)[1:-1]
    pairs = torch.tensor([(float(t[i]), float(t[j])) for i in range(grid) for j in range(i + 1, grid)])
    B, P = x_T.shape[0], pairs.shape[0]
    ts = torch.cat([torch.full((P, 1), p.T), pairs, torch.full((P, 1), p.t0)], 1).to(DT)
    errs = torch.empty(P, B, dtype=torch.float64)
    step = max(1, 65536 // B)
    with torch.no_grad():
        for lo in range(0, P, step):
            tt = ts[lo : lo + step]
            k = tt.shape[0]
            xs = x_T.repeat(k, 1)
            c = None if cond is None else cond.repeat(k)
            x = sample(bb, xs, tt.repeat_interleave(B, 0), solver=solver, cond=c)
            errs[lo : lo + k] = ((x.double() - x_gt.double().repeat(k, 1)) ** 2).mean(1).view(k, B)
    best, idx = errs.min(0)
    return best, pairs[idx], errs.mean(1)


def relative_gain(doc: Dict, a: str, b: str, metric: str, nfes=None, split="heldout", solver="euler") -> Optional[float]:
    """Mean over NFEs of (metric(b) - metric(a)) / metric(b): the relative reduction of strategy a against b."""
    out = []
    for n in sorted({r["nfe"] for r in doc["results"]}):
        if nfes is not None and n not in nfes:
            continue
        ra = [r for r in doc["results"] if (r["nfe"], r["strategy"], r["split"], r["solver"]) == (n, a, split, solver)]
        rb = [r for r in doc["results"] if (r["nfe"], r["strategy"], r["split"], r["solver"]) == (n, b, split, solver)]
        if ra and rb:
            out.append((rb[0][metric] - ra[0][metric]) / rb[0][metric])
    return float(np.mean(out)) if out else None


def oracle_checks(backbone: str = "exact", n: int = 128, nfe: int = 3, seed: int = 0, cache_dir=None,
                  adam_iters=(40, 300), lrs=(0.05, 0.2), grid: int = 48) -> Dict:
    """How strong is the per-instance oracle? On n priors at NFE 3 (Euler, timesteps only): the Adam global
    schedule, the Adam per-prior oracle at several iteration counts and learning rates, and the exhaustive
    grid optimum per prior (and the best global pair on the grid)."""
    cfg = StudyConfig(backbone=backbone, learned_train=None)
    bb, _, _ = build_backbone(cfg, cache_dir=cache_dir, progress=False)
    g = torch.Generator().manual_seed(seed + 99)
    xT = (torch.randn(4096, 2, generator=g, dtype=torch.float64) * bb.process.prior_std()).to(DT)
    ts = uniform_t(100, bb.process.t0, bb.process.T).to(DT)
    with torch.no_grad():
        gt = _rollout(bb, xT, ts, "euler", None)
    param = DiscretizationParam(bb.process, nfe, warp="t", b_dtau=0.0, b_gamma=0.0)
    out: Dict = {"backbone": backbone, "n": n, "nfe": nfe, "train_priors_for_global": 4096}
    o_g = train_global(bb, param, xT, gt, None, "euler", 300, 256, 0.05, g)
    x_fit, gt_fit = xT[:n], gt[:n]
    with torch.no_grad():
        out["global_adam300"] = float(_loss(bb, x_fit, gt_fit, _shared(param, o_g), "euler", None).mean())
        out["global_timesteps"] = [float(v) for v in param(o_g).timesteps]
        uni = uniform_t(nfe, bb.process.t0, bb.process.T).to(DT)
        out["uniform"] = float(_loss(bb, x_fit, gt_fit, uni, "euler", None).mean())
    for it in adam_iters:
        for lr in lrs:
            o = train_oracle(bb, param, x_fit, gt_fit, None, "euler", it, lr, o_g)
            with torch.no_grad():
                out[f"oracle_adam_it{it}_lr{lr}"] = float(_loss(bb, x_fit, gt_fit, param(o), "euler", None).mean())
    if nfe == 3:
        best, pair, per_pair = grid_oracle(bb, x_fit, gt_fit, grid=grid)
        out["oracle_grid"] = float(best.mean())
        out["global_grid"] = float(per_pair.min())
        out["grid_points"] = grid
        # the oracle restricted to the better of (its grid optimum, the Adam global schedule) per prior
        with torch.no_grad():
            e_g = _loss(bb, x_fit, gt_fit, _shared(param, o_g), "euler", None).double()
        out["oracle_grid_or_global"] = float(torch.minimum(best, e_g).mean())
        out["oracle_grid_pair_std"] = [float(v) for v in pair.std(0)]
    return out


def markdown_report(results_path) -> str:
    """Tables for docs/toy_study.md from one results.json."""
    doc = json.loads(Path(results_path).read_text())
    rs = doc["results"]
    nfes = sorted({r["nfe"] for r in rs})

    def get(n, s, sp, solver="euler"):
        r = [r for r in rs if (r["nfe"], r["strategy"], r["split"], r["solver"]) == (n, s, sp, solver)]
        return r[0] if r else None

    lines = [f"Endpoint MSE, Euler, fit priors (n = {doc['num_fit']}; (c) is trained on them):", "",
             "| NFE | (a) uniform | (b) global | (c) oracle | (c) vs (b) | (d) INDIS | (b+) GOD full | (c+) oracle full | (d+) INDIS full |",
             "|---|---|---|---|---|---|---|---|---|"]
    for n in nfes:
        g = lambda s: get(n, s, "train")
        cells = [g(s)["mse"] if g(s) else float("nan") for s in ("uniform", "global", "oracle", "indis", "global_full", "oracle_full", "indis_full")]
        rel = (cells[2] - cells[1]) / cells[1] * 100
        lines.append(f"| {n} | {cells[0]:.4g} | {cells[1]:.4g} | {cells[2]:.4g} | {rel:+.1f}% | {cells[3]:.4g} | {cells[4]:.4g} | {cells[5]:.4g} | {cells[6]:.4g} |")
    lines += ["", f"Held-out priors (n = {doc['num_eval']}), Euler and iPNDM: MSE / KL / W2 "
              f"(estimator floors for a perfect sampler: KL {doc['metric_floors']['heldout']['kl_floor']:.3f}, "
              f"W2 {doc['metric_floors']['heldout']['w2_floor']:.3f}):", "",
              "| NFE | solver | (a) uniform | (b) global | (d) INDIS | (b+) GOD full | (d+) INDIS full |", "|---|---|---|---|---|---|---|"]
    for n in nfes:
        for solver in ("euler", "ipndm"):
            cells = []
            for s in ("uniform", "global", "indis", "global_full", "indis_full"):
                r = get(n, s, "heldout", solver)
                cells.append(f"{r['mse']:.4g} / {r['kl']:.3f} / {r['w2']:.3f}" if r else "")
            if any(cells):
                lines.append(f"| {n} | {solver} | " + " | ".join(cells) + " |")
    lines += ["", "Relative reductions (mean over NFEs of per-NFE reductions, held-out, Euler):", "",
              "| comparison | NFEs | MSE | KL | W2 |", "|---|---|---|---|---|"]
    low = [n for n in nfes if n <= 6]
    for a, b in (("indis", "global"), ("indis_full", "global_full"), ("indis_full", "global")):
        ranges = [(f"{nfes[0]}-{nfes[-1]}", None)] + ([("3-6", low)] if low and low != nfes else [])
        for label, ns in ranges:
            vals = [relative_gain(doc, a, b, m, ns) for m in ("mse", "kl", "w2")]
            if all(v is not None for v in vals):
                lines.append(f"| {a} vs {b} | {label} | " + " | ".join(f"{-100 * v:+.2f}%" for v in vals) + " |")
    tr = [relative_gain(doc, "oracle", "global", "mse", None, "train"), relative_gain(doc, "oracle_full", "global_full", "mse", None, "train")]
    lines += ["", f"Oracle vs global, MSE on the fit priors, mean over NFEs: timesteps only {-100 * tr[0]:+.1f}%, "
              f"full set {-100 * tr[1]:+.1f}%."]
    return "\n".join(lines)
