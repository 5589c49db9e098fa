"""Evaluation of few-step discretizations against a teacher, and the figures/benchmarks around it.

`evaluate_methods`: for each (method, NFE), the student endpoint of held-out seeds (a teacher dataset made with
seeds the training never saw) compared with the teacher's:
  mse       mean squared error per sample, averaged
  lpips     LPIPS (if trunk weights are available)
  fd        Frechet distance between features of the student samples and of a reference set (by default the
            teacher's own endpoints of the same seeds: the distributional gap to the teacher), computed with a
            feature extractor: for the bundled digits backbone the documented extractor of indis.metrics.fid; for
            natural images (RGB, or grayscale repeated to RGB) FID with pytorch-fid's Inception-v3
            (indis.metrics.inception.inception_feature_fn, weights from a local file).
Results as JSON and as a Markdown table (`markdown_table`).

`plot_timesteps`: the paper's Fig. 7, predicted timesteps across samples. `predictor_overhead`: parameter
count and forward time of a predictor as a share of one backbone call.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .io import atomic_write_json, atomic_write_text
from .metrics.distances import mse
from .metrics.fid import frechet_distance
from .sampling.fixed import heuristic
from .sampling.guidance import GuidedBackbone
from .sampling.solve import solve

Tensor = torch.Tensor


def frechet_tools():
    """The Frechet distance of indis.metrics.fid (one implementation for the whole package)."""
    return frechet_distance


@torch.no_grad()
def student_samples(model, backbone, teacher, positions=None, solver="ipndm", order=None, batch: int = 256,
                    state_dtype=torch.float32) -> Tensor:
    pos = torch.arange(len(teacher)) if positions is None else torch.as_tensor(positions)
    outs = []
    for lo in range(0, len(pos), batch):
        x_T, cond, _ = teacher.batch(pos[lo : lo + batch], dtype=state_dtype)
        outs.append(solve(model, backbone, x_T, cond, solver, order, state_dtype).float())
    return torch.cat(outs)


def evaluate_methods(backbone, teacher, methods: Dict[str, Dict[int, object]], solver: str = "ipndm",
                     lpips=None, features: Optional[Callable[[Tensor], Tensor]] = None, reference: Optional[Tensor] = None,
                     batch: int = 256, progress: bool = False, data_reference: Optional[Tensor] = None,
                     reference_cache: Optional[Dict] = None) -> List[Dict]:
    """methods: {name: {nfe: model}} where model maps (x_T, cond) to a Discretization (a trained predictor, a
    GlobalDiscretization, LD3Discretization or a heuristic FixedDiscretization). Returns one row per (name, nfe).
    features: a feature function (row["fd"]: the Fréchet distance of the student samples' features to the
    reference's), or {column: feature function} for several (e.g. {"fd": digits, "fid": Inception}).
    data_reference: with features, a second reference set (e.g. held-out real data): row[column + "_data"]
    ("fd_data") is the Fréchet distance of the same student samples to it.
    reference_cache: a dict kept by a caller that evaluates one row per call against the same references and
    features (indis.bench.quality): the reference features are computed on the first call and reused."""
    net = GuidedBackbone(backbone, teacher.manifest["teacher"].get("cfg_scale", 1.0))
    fd = frechet_tools()
    feats = {} if features is None else dict(features) if isinstance(features, dict) else {"fd": features}
    ref = teacher.x0 if reference is None else reference
    cache = {} if reference_cache is None else reference_cache
    for c, f in feats.items():
        if (c, "ref") not in cache:
            cache[c, "ref"] = _batched(f, ref, batch)
        if data_reference is not None and (c, "data") not in cache:
            cache[c, "data"] = _batched(f, data_reference, batch)
    ref_feat = {c: cache[c, "ref"] for c in feats}
    data_feat = {} if data_reference is None else {c: cache[c, "data"] for c in feats}
    rows = []
    items = [(n, k, m) for n, d in methods.items() for k, m in sorted(d.items())]
    it = items
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(items, desc="eval", unit="run")
    for name, nfe, model in it:
        t0 = time.time()
        x0 = student_samples(model, net, teacher, solver=solver, batch=batch)
        row = {"method": name, "nfe": int(nfe), "n": len(x0), "mse": float(mse(x0, teacher.x0).mean())}
        # the solver the samples were drawn with: a PeerSchedule's own (and its per-step orders and AFS)
        row.update(model.sampling_info() if hasattr(model, "sampling_info") else {"solver": solver})
        if lpips is not None:
            with torch.no_grad():
                row["lpips"] = float(torch.cat([lpips(x0[i : i + batch], teacher.x0[i : i + batch]) for i in range(0, len(x0), batch)]).mean())
        for c, f in feats.items():
            x_feat = _batched(f, x0, batch)
            row[c] = float(fd(x_feat, ref_feat[c]))
            if c in data_feat:
                row[f"{c}_data"] = float(fd(x_feat, data_feat[c]))
        row["seconds"] = time.time() - t0
        rows.append(row)
    return rows


@torch.no_grad()
def _batched(fn, x: Tensor, batch: int) -> Tensor:
    return torch.cat([fn(x[i : i + batch]) for i in range(0, len(x), batch)])


def best_heuristics(backbone, teacher, nfes: Sequence[int], names=("uniform", "logsnr", "polynomial"), solver="ipndm", key="mse",
                    batch: int = 256) -> Dict[int, Dict]:
    """The best heuristic schedule per NFE by `key` on the given teacher set: {nfe: {"name", "model", "scores"}}."""
    rows = evaluate_methods(backbone, teacher, {n: {k: heuristic(backbone, n, k) for k in nfes} for n in names}, solver, batch=batch)
    out = {}
    for k in nfes:
        cand = [r for r in rows if r["nfe"] == k]
        b = min(cand, key=lambda r: r[key])
        out[k] = {"name": b["method"], "model": heuristic(backbone, b["method"], k), "scores": {r["method"]: r[key] for r in cand}}
    return out


def markdown_table(rows: List[Dict], metric: str = "mse", methods: Optional[Sequence[str]] = None, fmt: str = "{:.4g}") -> str:
    """Methods as rows, NFEs as columns, one metric per table."""
    nfes = sorted({r["nfe"] for r in rows})
    names = list(methods) if methods else list(dict.fromkeys(r["method"] for r in rows))
    lines = [f"| method ({metric}) | " + " | ".join(f"NFE {k}" for k in nfes) + " |", "|---|" + "---|" * len(nfes)]
    for n in names:
        cells = []
        for k in nfes:
            r = [x for x in rows if x["method"] == n and x["nfe"] == k and metric in x]
            cells.append(fmt.format(r[0][metric]) if r else "-")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


QUALITY_ORDER = ("best heuristic", "gits", "dmn", "sdm", "amed", "god", "ld3", "indis", "indis+sdm", "indis+sdm+afs")
QUALITY_LABELS = {"mse": "MSE", "fd": "FD to teacher", "fd_data": "FD to data", "fid": "FID to teacher",
                  "fid_data": "FID to data", "lpips": "LPIPS", "kl": "KL", "w2": "W2"}


def _pm(row: Dict, metric: str, fmt: str) -> str:
    if row.get(metric) is None:
        return "-"
    std = row.get(f"{metric}_std")
    if std is None or row.get("n_seeds", 1) < 2:
        return fmt.format(row[metric])
    return f"{fmt.format(row[metric])} ± {fmt.format(std)}"


def quality_table(rows: List[Dict], metrics: Sequence[str] = ("mse", "fd", "fd_data", "fid", "fid_data", "lpips", "kl", "w2"),
                  methods: Optional[Sequence[str]] = None, fmt: str = "{:.4g}") -> str:
    """One Markdown table: rows method x NFE, columns each metric as mean ± spread (`<metric>_std`, the standard
    deviation over training seeds; a plain value for one seed), the number of seeds, the training or search
    seconds (mean per seed) and the solver the row was sampled with. Metrics absent from every row are left out."""
    metrics = [m for m in metrics if any(r.get(m) is not None for r in rows)]
    present = list(dict.fromkeys(r["method"] for r in rows))
    names = list(methods) if methods else [m for m in QUALITY_ORDER if m in present] + [m for m in present if m not in QUALITY_ORDER]
    lines = ["| method | NFE | " + " | ".join(QUALITY_LABELS.get(m, m) for m in metrics) + " | seeds | train/search s | solver |",
             "|---|---|" + "---|" * (len(metrics) + 3)]
    for n in names:
        for r in sorted((r for r in rows if r["method"] == n), key=lambda r: r["nfe"]):
            sec = r.get("train_seconds")
            solver = str(r.get("solver", "")) + (" +AFS" if r.get("afs") else "")
            lines.append(f"| {n} | {r['nfe']} | " + " | ".join(_pm(r, m, fmt) for m in metrics)
                         + f" | {r.get('n_seeds', 1)} | {'-' if sec is None else f'{sec:.0f}'} | {solver} |")
    return "\n".join(lines)


def write_results(path_stem, rows: List[Dict], meta: Optional[Dict] = None, metrics=("mse", "lpips", "fd")) -> None:
    from pathlib import Path

    stem = Path(path_stem)
    atomic_write_json(stem.with_suffix(".json"), {"rows": rows, "meta": meta or {}})
    parts = [markdown_table(rows, m) for m in metrics if any(m in r for r in rows)]
    atomic_write_text(stem.with_suffix(".md"), "\n\n".join(parts) + "\n")


@torch.no_grad()
def plot_timesteps(model, x_T: Tensor, cond, path, reference: Optional[Tensor] = None, title: str = "") -> None:
    """The paper's Fig. 7: per-sample timesteps (log scale) against the step index, and their spread per step.
    reference: an optional [N+1] schedule drawn dashed (e.g. the heuristic the predictor started from)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = model(x_T, cond)
    ts = d.timesteps.double().cpu()
    calls = d.call_times().double().cpu()
    n = ts.shape[1] - 1
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    i = torch.arange(n + 1)
    for row in ts:
        ax[0].plot(i, row, color="tab:blue", alpha=min(1.0, 8.0 / len(ts)), lw=0.8)
    if reference is not None:
        ax[0].plot(i, reference.double().cpu(), "k--", lw=1.5, label="initial heuristic")
        ax[0].legend()
    ax[0].set_yscale("log")
    ax[0].set_xlabel("step i")
    ax[0].set_ylabel("tau_i")
    ax[0].set_title(title or f"predicted timesteps of {len(ts)} samples")
    inner = ts[:, 1:-1]
    if inner.shape[1]:
        rel = inner / inner.median(dim=0).values
        ax[1].boxplot([rel[:, j].numpy() for j in range(rel.shape[1])], positions=list(range(1, n)))
        ax[1].set_xticks(list(range(1, n)))
        ax[1].set_xlabel("interior step i")
        ax[1].set_ylabel("tau_i / median_i across samples")
        ax[1].set_title("spread across samples")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def predictor_overhead(model, backbone, batch: int = 64, reps: int = 10, cond=None) -> Dict:
    """Parameters of the predictor and its forward time as a share of one backbone call (same batch)."""
    x = torch.randn(batch, *backbone.data_shape) * backbone.process.prior_std()
    t = torch.full((batch,), float(backbone.process.T))

    def med(fn):
        fn()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return sorted(ts)[len(ts) // 2]

    with torch.no_grad():
        tp = med(lambda: model(x, cond))
        tb = med(lambda: backbone(x, t, cond))
    return {"params": sum(p.numel() for p in model.parameters()), "batch": batch, "predictor_s": tp, "backbone_call_s": tb,
            "share_of_one_call": tp / tb}
