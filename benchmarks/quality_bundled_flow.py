"""Quality per NFE on the bundled latent flow model (`--backbone bundled-flow`, issue 13), through the same pipeline
as the digits (indis.bench.quality.run_quality):

  OMP_NUM_THREADS=1 python benchmarks/quality_bundled_flow.py --work /tmp/indis_flow_q

* teacher: 30-step iPNDM with classifier-free guidance `--cfg-scale` (default 1.5, the backbone's default_guidance:
  the class accuracy of 50-step samples rises from 95.0% unguided to 99.5% at 1.5 while their FD to held-out digits
  grows from 57 to 86, indis/assets/bundled_flow_quality.json); every student uses the same guidance;
* heuristics uniform / logSNR / polynomial and RDS (FLUX's resolution-dependent shift for the DiT's 16 image tokens,
  indis.schedules.rds_schedule); the best heuristic (over those x `--heuristic-solvers`) is a row, RDS is a row of
  its own, and GOD / LD3 / INDIS start from the best heuristic under iPNDM; god+rds and indis+rds are GOD and
  INDIS started from RDS instead (the paper's FLUX setting: RDS is the schedule they improve on);
* INDIS with the class-conditioned phi (the backbone's CondSpec("class", 10)); the paper's Fig. 5 ablations
  (indis-no_instance / -no_shift / -no_scale / -no_cond) at `--ablation-nfe`, against INDIS's own runs there;
* Fréchet distances with the digits features (indis.metrics.fid) of the VAE-DECODED samples, to the teacher's
  decoded samples of the same seeds (fd) and to the held-out real digits (fd_data);
* every trained method once per training seed (`--seeds`); rows give mean and std over the seeds.

Every run and evaluation row is cached in WORK (run_quality), so an interrupted job resumes where it stopped.
Writes benchmarks/results/bundled_flow_quality.{json,md}, bundled_flow_quality_timesteps_nfe3.png (Fig. 7-style
per-sample timesteps of INDIS) and bundled_flow_ablations_nfe5.{json,md}.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from indis.bench.quality import ABLATIONS, run_quality  # noqa: E402

HEURISTICS = ("uniform", "logsnr", "polynomial", "rds")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/indis_flow_q")
    ap.add_argument("--n-train", type=int, default=250)
    ap.add_argument("--n-eval", type=int, default=200)
    ap.add_argument("--nfe", type=int, nargs="+", default=[3, 5, 7])
    ap.add_argument("--ablation-nfe", type=int, nargs="*", default=[5])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--cfg-scale", type=float, default=1.5)
    ap.add_argument("--methods", nargs="+", default=["god", "ld3", "indis", "god+rds", "indis+rds"])
    ap.add_argument("--heuristic-solvers", nargs="+", default=["ipndm"],
                    help="solvers of the best-heuristic search (run_quality's default is ipndm dpmpp_2m unipc)")
    ap.add_argument("--peer-afs", default="off", help="AFS in the best-heuristic search: off, on, both")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--cached-only", action="store_true", help="tables of what an interrupted job finished")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    common = dict(n_train=a.n_train, n_eval=a.n_eval, steps=a.steps, batch=a.batch, lr=a.lr, progress=False,
                  cfg_scale=a.cfg_scale, heuristics=HEURISTICS, heuristic_rows=("rds",),
                  heuristic_solvers=tuple(a.heuristic_solvers), peer_afs=a.peer_afs, train_seeds=a.seeds,
                  cached_only=a.cached_only)
    stem = os.path.join(a.out, "bundled_flow_quality")
    run_quality("bundled-flow", a.work, a.nfe, a.methods, results_stem=stem, plot_dir=a.out, **common)
    print(open(stem + ".md").read(), flush=True)
    if a.ablation_nfe:
        abl = os.path.join(a.out, "bundled_flow_ablations_nfe" + "_".join(map(str, a.ablation_nfe)))
        run_quality("bundled-flow", a.work, a.ablation_nfe, ["indis"] + sorted(ABLATIONS), results_stem=abl, **common)
        print(open(abl + ".md").read(), flush=True)


if __name__ == "__main__":
    main()
