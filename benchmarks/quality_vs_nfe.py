"""Quality per NFE: best heuristic / GOD / LD3 / INDIS against a 30-step iPNDM teacher.

  python benchmarks/quality_vs_nfe.py --backbone ideal   --work /tmp/indis_quality
  python benchmarks/quality_vs_nfe.py --backbone bundled --work /tmp/indis_quality --train-seeds 0 1 2

The pipeline is indis.bench.quality.run_quality (also behind `indis bench --quality`). Writes
benchmarks/results/quality_vs_nfe_<backbone>.{json,md} (mean ± std over the training seeds) and a Fig. 7-style plot
of INDIS's timesteps. The peers (GITS, DMN, SDM, AMED) beside INDIS: benchmarks/quality_peers.py.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from indis.bench.quality import run_quality  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--work", default="/tmp/indis_quality")
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--n-eval", type=int, default=500)
    ap.add_argument("--nfe", type=int, nargs="+", default=[3, 5, 7])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", nargs="+", default=["god", "ld3", "indis"])
    ap.add_argument("--train-seeds", type=int, nargs="+", default=[0])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    stem = f"benchmarks/results/quality_vs_nfe_{a.backbone}"
    out = run_quality(a.backbone, a.work, a.nfe, a.methods, a.n_train, a.n_eval, a.steps, a.batch, a.lr,
                      results_stem=stem, plot_dir="benchmarks/results", progress=False, train_seeds=a.train_seeds)
    print(open(stem + ".md").read())
    print(json.dumps({k: v for k, v in out["meta"].items() if k != "training"}, indent=1, default=str))


if __name__ == "__main__":
    main()
