"""PRELIMINARY peer comparison (issue 14, first part): GITS / DMN / SDM / best heuristic (3 schedules x 3 solvers) /
GOD on one backbone, against the 30-step iPNDM teacher, small sets (one training seed; not the issue's statistics).

  OMP_NUM_THREADS=1 python benchmarks/peers_prelim.py --backbone bundled --work /tmp/indis_peers --n-train 200 --n-eval 200 --nfe 3 5

The pipeline is indis.bench.quality.run_quality (also `indis bench --quality --methods gits,dmn,sdm,god`). Writes
benchmarks/results/peers_prelim_<backbone>.{json,md}: endpoint MSE and Frechet distances (digits features) per method
and NFE, and for each peer the solver/AFS/per-step orders it was selected with.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from indis.bench.quality import run_quality  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="bundled")
    ap.add_argument("--work", default="/tmp/indis_peers")
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--n-eval", type=int, default=200)
    ap.add_argument("--nfe", type=int, nargs="+", default=[3, 5])
    ap.add_argument("--steps", type=int, default=150, help="GOD training steps")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--pilots", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", nargs="+", default=["gits", "dmn", "sdm", "god"])
    ap.add_argument("--stem", default=None, help="results stem (default benchmarks/results/peers_prelim_<backbone>)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    stem = a.stem or f"benchmarks/results/peers_prelim_{a.backbone}"
    t0 = time.time()
    out = run_quality(a.backbone, a.work, a.nfe, a.methods, a.n_train, a.n_eval, a.steps, a.batch, a.lr,
                      results_stem=stem, progress=False, pilots=a.pilots)
    print(open(stem + ".md").read())
    for r in out["rows"]:
        print(f"{r['method']:>15} NFE {r['nfe']}: solver {r.get('solver')} afs {r.get('afs', False)} orders {r.get('orders')} "
              f"mse {r['mse']:.4g} fd {r.get('fd', float('nan')):.4g} fd_data {r.get('fd_data', float('nan')):.4g}")
    print(json.dumps({k: v for k, v in out["meta"].items() if k not in ("training",)}, indent=1, default=str))
    print(json.dumps(out["meta"]["training"], indent=1, default=str))
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
