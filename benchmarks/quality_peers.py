"""INDIS beside the strongest peers (GITS, DMN, SDM, AMED-Plugin, AFS, best heuristic over 3 schedules x 3 solvers,
GOD, LD3) on one backbone, with training seeds and spreads: `indis.bench.quality.run_quality` in stages of growing
scope, each writing the results, so an interrupted job still reports every finished stage; runs already finished in
WORK are reused (a restarted job only does the new work).

  OMP_NUM_THREADS=1 nohup python benchmarks/quality_peers.py --work /work/q14run/work --out /work/q14run/results > log &
  python benchmarks/quality_peers.py --work ... --out ... --cached-only     # the table of what is finished, no training
  python benchmarks/quality_peers.py --work ... --out ... --methods sdm,indis --nfe 3 5 --seeds '{"indis": [0, 1]}'
                                                                            # one call of its own scope (e.g. in parallel)

Writes OUT/quality_peers_<backbone>.{json,md} (and _vs_nfe.png) after every stage; BENCHMARKS.md "Peers" holds the
numbers of the run on the bundled digits network.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from indis.bench.quality import plot_quality, run_quality  # noqa: E402

PEERS = ("dmn", "gits", "sdm")
# (label, nfes of the learned methods, free NFEs of the heuristic and the training-free peers, {method: seeds})
STAGES = [
    ("peers at NFE 3/5/7, INDIS x3 seeds at NFE 3/5", (3, 5), (7,), {"indis": (0, 1, 2)}),
    ("heuristic and peers at NFE 10", (3, 5), (7, 10), {"indis": (0, 1, 2)}),
    ("INDIS NFE 7 seed 0", (3, 5, 7), (10,), {"indis": (0,)}),
    ("GOD seed 0 at NFE 3/5/7", (3, 5, 7), (10,), {"indis": (0,), "god": (0,)}),
    ("INDIS NFE 7 seeds 1, 2; GOD seeds 1, 2", (3, 5, 7), (10,), {"indis": (0, 1, 2), "god": (0, 1, 2)}),
    ("LD3, AMED, INDIS+SDM seed 0", (3, 5, 7), (10,), {"indis": (0, 1, 2), "god": (0, 1, 2), "ld3": (0,), "amed": (0,),
                                                       "indis+sdm": (0,)}),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="bundled")
    ap.add_argument("--work", required=True, help="work folder (teacher sets, one folder per run)")
    ap.add_argument("--out", required=True, help="results folder")
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-eval", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--pilots", type=int, default=64)
    ap.add_argument("--n-select", type=int, default=100, help="training tuples the best heuristic is chosen on")
    ap.add_argument("--stages", type=int, nargs="+", default=list(range(len(STAGES))))
    ap.add_argument("--cached-only", action="store_true", help="train nothing: the last stage's table of what is finished")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default=None, help="one call instead of the stages: these methods (comma-separated)")
    ap.add_argument("--nfe", type=int, nargs="+", default=[3, 5, 7], help="with --methods: NFEs")
    ap.add_argument("--free-nfes", type=int, nargs="*", default=[], help="with --methods: free NFEs")
    ap.add_argument("--seeds", default='{"*": [0]}', help='with --methods: training seeds, JSON {"method": [seeds], "*": [...]}')
    ap.add_argument("--stem", default=None, help="results stem (default OUT/quality_peers_<backbone>)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    stem = a.stem or os.path.join(a.out, f"quality_peers_{a.backbone}")
    stages = [STAGES[-1]] if a.cached_only else [STAGES[i] for i in a.stages]
    if a.methods:
        seeds = json.loads(a.seeds)
        stages = [("one call", tuple(a.nfe), tuple(a.free_nfes), {m: seeds.get(m, seeds.get("*", [0])) for m in a.methods.split(",")})]
    t0 = time.time()
    for label, nfes, free, seeds in stages:
        print(f"=== stage: {label} ({time.time() - t0:.0f} s)", flush=True)
        methods = tuple(seeds) if a.methods else PEERS + tuple(seeds)
        out = run_quality(a.backbone, a.work, nfes, methods=methods, n_train=a.n_train, n_eval=a.n_eval,
                          steps=a.steps, batch=a.batch, results_stem=stem, progress=False, pilots=a.pilots,
                          train_seeds=dict(seeds, **{"*": (0,)}), free_nfes=free, n_select=a.n_select, val_fraction=0.1,
                          cached_only=a.cached_only, plot_dir=os.path.dirname(stem) or ".", log=lambda s: print(s, flush=True))
        plot_quality({a.backbone: out["rows"]}, stem + "_vs_nfe.png")
        print(open(stem + ".md").read(), flush=True)
    print(f"total {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
