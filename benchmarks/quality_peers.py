"""INDIS beside the strongest peers (GITS, DMN, SDM, AMED-Plugin, AFS, the best heuristic over 3 schedules x 3
solvers, GOD, LD3, INDIS from SDM) on one backbone, with training seeds and spreads: one
`indis.bench.quality.run_quality` call (the same as `indis bench --quality`); every (method, solver, NFE, seed)
run is cached in WORK and skipped when finished, so an interrupted job resumes, and parts can run in parallel
processes (`--methods/--nfe/--seeds`) before one `--cached-only` call writes the table of everything finished.

  OMP_NUM_THREADS=1 nohup python benchmarks/quality_peers.py --work W --out O > log &                  # everything
  OMP_NUM_THREADS=1 python benchmarks/quality_peers.py --work W --out O --methods god --nfe 3 --seeds 1 # one part
  python benchmarks/quality_peers.py --work W --out O --cached-only --learned-solvers ipndm,dpmpp_2m,unipc   # the table
  OMP_NUM_THREADS=1 python benchmarks/quality_peers.py --backbone bundled-flow --steps 120 --batch 8 --work W --out O

Writes OUT/quality_peers_<backbone>.{json,md}, _vs_nfe.png (quality against NFE, bars = per-seed min-max) and
_timesteps_nfe3.png (INDIS's per-sample timesteps); BENCHMARKS.md "Peers" holds the numbers of the runs on the
bundled digits network and the bundled flow model. A flow model that knows its image tokens (bundled-flow) also
gets RDS among the heuristics and as a row of its own (indis bench's quality_heuristics), and its default guidance.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from indis.backbones.spec import resolve_backbone  # noqa: E402
from indis.bench.cli import quality_heuristics  # noqa: E402
from indis.bench.quality import ALL_METHODS, plot_quality, run_quality  # noqa: E402


def _ints(s):
    return [int(x) for x in s.split(",") if x]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="bundled")
    ap.add_argument("--work", required=True, help="work folder (teacher sets, one folder per run)")
    ap.add_argument("--out", required=True, help="results folder")
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-eval", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--pilots", type=int, default=64)
    ap.add_argument("--n-select", type=int, default=100, help="training tuples the best heuristic is chosen on")
    ap.add_argument("--methods", default=",".join(ALL_METHODS), help="comma-separated (default: all)")
    ap.add_argument("--nfe", type=_ints, default=[3, 5, 7], help="NFEs, e.g. 3,5,7")
    ap.add_argument("--free-nfes", type=_ints, default=[10], help="NFEs of the best heuristic and the training-free peers only")
    ap.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="training seeds of the learned methods")
    ap.add_argument("--learned-solvers", default="ipndm", help="solvers GOD/LD3/INDIS are trained through (best on validation)")
    ap.add_argument("--cached-only", action="store_true", help="train nothing: the table of what is finished in WORK")
    ap.add_argument("--inception-weights", default=None, help="pytorch-fid's Inception-v3 weights file: adds FID columns")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stem", default=None, help="results stem (default OUT/quality_peers_<backbone>)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    stem = a.stem or os.path.join(a.out, f"quality_peers_{a.backbone}")
    bb = resolve_backbone(a.backbone)
    out = run_quality(a.backbone, a.work, a.nfe, methods=tuple(a.methods.split(",")), n_train=a.n_train, n_eval=a.n_eval,
                      steps=a.steps, batch=a.batch, lr=a.lr, results_stem=stem, progress=False, pilots=a.pilots,
                      train_seeds=a.seeds, free_nfes=a.free_nfes, n_select=a.n_select, val_fraction=0.1,
                      learned_solvers=tuple(a.learned_solvers.split(",")), cached_only=a.cached_only,
                      plot_dir=os.path.dirname(stem) or ".", backbone=bb, inception_weights=a.inception_weights,
                      log=lambda s: print(s, flush=True),
                      **quality_heuristics(bb))
    plot_quality({a.backbone: out["rows"]}, stem + "_vs_nfe.png")
    print(open(stem + ".md").read(), flush=True)


if __name__ == "__main__":
    main()
