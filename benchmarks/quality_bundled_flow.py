"""Quality per NFE on the bundled latent flow model (`--backbone bundled-flow`, issue 13), through the same pipeline
as the digits (indis.bench.quality.run_quality):

  OMP_NUM_THREADS=1 python benchmarks/quality_bundled_flow.py --work /tmp/indis_flow_q

* teacher: 30-step iPNDM with classifier-free guidance `--cfg-scale` (default 1.5: the model's class accuracy
  rises from 95.0% unguided to 99.5% at 1.5, while the FD to held-out digits of 50-step samples grows from 57 to 86,
  indis/assets/bundled_flow_quality.json); every student uses the same guidance;
* heuristics uniform / logSNR / polynomial and RDS (FLUX's resolution-dependent shift for the DiT's 16 image tokens,
  indis.schedules.rds_schedule); the best heuristic (over those x solvers) is a row, and GOD / LD3 / INDIS start
  from the best under iPNDM;
* INDIS with the class-conditioned phi (the backbone's CondSpec("class", 10)); the paper's Fig. 5 ablations
  (indis-no_instance / -no_shift / -no_scale / -no_cond) at `--ablation-nfe`;
* Fréchet distances with the digits features (indis.metrics.fid) of the VAE-DECODED samples, to the teacher's
  decoded samples of the same seeds (fd) and to the held-out real digits (fd_data);
* each trained method once per training seed (`--seeds`); the tables give mean and spread (sample std) over seeds.

Writes benchmarks/results/bundled_flow_quality.{json,md} and bundled_flow_quality_timesteps_nfe3.png (Fig. 7-style
per-sample timesteps of INDIS).
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from indis.bench.quality import ABLATIONS, run_quality  # noqa: E402
from indis.io import atomic_write_json, atomic_write_text  # noqa: E402

HEURISTICS = ("uniform", "logsnr", "polynomial", "rds")
METRICS = ("mse", "fd", "fd_data")


def aggregate(rows_by_seed):
    """{seed: rows} -> one row per (method, nfe) with mean and sample std over the seeds that have it."""
    out = {}
    for seed, rows in rows_by_seed.items():
        for r in rows:
            key = (r["method"], r["nfe"])
            d = out.setdefault(key, {"method": r["method"], "nfe": r["nfe"], "seeds": [], **{m: [] for m in METRICS}})
            d["seeds"].append(seed)
            for m in METRICS:
                if m in r:
                    d[m].append(r[m])
    agg = []
    for d in out.values():
        row = {"method": d["method"], "nfe": d["nfe"], "seeds": d["seeds"]}
        for m in METRICS:
            v = d[m]
            if v:
                row[m] = statistics.fmean(v)
                row[m + "_std"] = statistics.stdev(v) if len(v) > 1 else 0.0
                row[m + "_all"] = v
        agg.append(row)
    return agg


def table(agg, metric, methods):
    nfes = sorted({r["nfe"] for r in agg})
    lines = [f"| method ({metric}, mean ± std over seeds) | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
             "|---|" + "---|" * len(nfes)]
    for m in methods:
        cells = []
        for k in nfes:
            r = [x for x in agg if x["method"] == m and x["nfe"] == k and metric in x]
            if not r:
                cells.append("-")
            elif len(r[0]["seeds"]) > 1 and r[0][metric + "_std"] > 0:
                cells.append(f"{r[0][metric]:.4g} ± {r[0][metric + '_std']:.2g}")
            else:
                cells.append(f"{r[0][metric]:.4g}")
        if any(c != "-" for c in cells):
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/indis_flow_q")
    ap.add_argument("--n-train", type=int, default=400)
    ap.add_argument("--n-eval", type=int, default=300)
    ap.add_argument("--nfe", type=int, nargs="+", default=[3, 5, 7])
    ap.add_argument("--ablation-nfe", type=int, nargs="*", default=[5])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--cfg-scale", type=float, default=1.5)
    ap.add_argument("--methods", nargs="+", default=["god", "ld3", "indis"])
    ap.add_argument("--heuristic-solvers", nargs="+", default=["ipndm"],
                    help="solvers of the best-heuristic search (run_quality's default is ipndm dpmpp_2m unipc)")
    ap.add_argument("--peer-afs", default="off", help="AFS in the best-heuristic search: off, on, both")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stem", default="benchmarks/results/bundled_flow_quality")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    common = dict(n_train=a.n_train, n_eval=a.n_eval, steps=a.steps, batch=a.batch, lr=a.lr, progress=False,
                  cfg_scale=a.cfg_scale, heuristics=HEURISTICS, heuristic_solvers=tuple(a.heuristic_solvers),
                  peer_afs=a.peer_afs)
    rows_by_seed, metas, t0 = {}, {}, time.time()
    for seed in a.seeds:
        plot_dir = os.path.join(a.work, "plots") if seed == a.seeds[0] else None
        out = run_quality("bundled-flow", a.work, a.nfe, a.methods, seed=seed, plot_dir=plot_dir, **common)
        if plot_dir is not None:  # run_quality names it after the backbone; keep it beside the tables
            shutil.move(os.path.join(plot_dir, f"quality_bundled-flow_timesteps_nfe{a.nfe[0]}.png"),
                       f"{a.stem}_timesteps_nfe{a.nfe[0]}.png")
        rows = out["rows"]
        if a.ablation_nfe:
            abl = run_quality("bundled-flow", a.work, a.ablation_nfe, sorted(ABLATIONS), seed=seed, **common)
            rows = rows + [r for r in abl["rows"] if r["method"] in ABLATIONS]
        rows_by_seed[seed] = rows
        metas[seed] = {k: v for k, v in out["meta"].items()}
        print(f"seed {seed} done at {time.time() - t0:.0f} s", flush=True)
        agg = aggregate(rows_by_seed)
        methods = list(dict.fromkeys(r["method"] for r in agg))
        md = "\n\n".join(table(agg, m, methods) for m in METRICS)
        atomic_write_json(a.stem + ".json", {"aggregate": agg, "rows_by_seed": rows_by_seed, "meta_by_seed": metas,
                                             "args": vars(a), "seconds": time.time() - t0})
        atomic_write_text(a.stem + ".md", md + "\n")
    print(md)


if __name__ == "__main__":
    main()
