"""`indis toy`: the synthetic study of paper section 4.1 (Figs. 2-3).

    python -m indis.toy.cli --out runs/toy --backbone exact --nfe 3,4,5 [--quick] [--conditional]
"""
from __future__ import annotations

import argparse
import sys
import time

from ..options import HelpFormatter, Switch
from .study import BACKBONES, Study, StudyConfig, quick_config, summary_table
from .tree import tree_summary


def _nfes(s: str):
    try:
        v = tuple(int(x) for x in s.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--nfe must be a comma-separated list of integers, got {s!r}")
    if not v or any(n < 1 for n in v):
        raise argparse.ArgumentTypeError(f"--nfe needs positive integers, got {s!r}")
    return v


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (results.json, figures, caches)")
    p.add_argument("--nfe", type=_nfes, default=None, help="comma-separated NFEs (default 3..10; --quick: 3)")
    p.add_argument("--backbone", choices=BACKBONES, default="exact",
                   help="the tree's exact denoiser, or an MLP trained on it")
    p.add_argument("--conditional", action=Switch, default=False, help="class-conditional variant (exact backbone; phi gets the label)")
    p.add_argument("--quick", action=Switch, default=False, help="small sizes and iteration counts (under a minute)")
    p.add_argument("--no-ipndm", action=Switch, default=False, help="skip the iPNDM variants")
    p.add_argument("--num-train", type=int, default=None, help="training priors (default 20000; --quick: 800)")
    p.add_argument("--num-eval", type=int, default=None, help="held-out priors (default 1000; --quick: 256)")
    p.add_argument("--seed", type=int, default=0, help="priors, initialisation and data order")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--cache-dir", default=None, help="where the learned backbone is cached (default OUT/cache)")
    p.add_argument("--no-progress", action=Switch, default=False, help="no progress bars")
    p.set_defaults(func=run_toy)


def add_subparsers(subparsers) -> None:
    p = subparsers.add_parser("toy", help="synthetic 2D tree study (paper section 4.1)", description=__doc__,
                              formatter_class=HelpFormatter)
    _configure(p)


def run_toy(args) -> int:
    import torch

    torch.set_num_threads(max(1, args.threads))
    over = {"backbone": args.backbone, "conditional": args.conditional, "seed": args.seed, "ipndm": not args.no_ipndm}
    if args.nfe:
        over["nfes"] = args.nfe
    if args.num_train:
        over["num_train"] = args.num_train
    if args.num_eval:
        over["num_eval"] = args.num_eval
    cfg = quick_config(**over) if args.quick else StudyConfig(**over)
    s = tree_summary()
    print(f"tree: {s['components']} components ({s['components_per_class']} per class A/B), "
          f"mean ({s['mean'][0]:+.4f}, {s['mean'][1]:+.4f}), variance ({s['variance'][0]:.4f}, {s['variance'][1]:.4f})")
    t = time.time()
    study = Study(cfg, args.out, progress=not args.no_progress, cache_dir=args.cache_dir)
    if cfg.backbone == "learned":
        i = study.backbone_info
        print(f"learned backbone: loss {i.get('loss_first', float('nan')):.4f} -> {i.get('loss_final', float('nan')):.4f}; "
              f"100-step check KL {i.get('check_kl', float('nan')):.4f} (floor {i.get('check_kl_floor', float('nan')):.4f}), "
              f"W2 {i.get('check_w2', float('nan')):.4f} (floor {i.get('check_w2_floor', float('nan')):.4f}); {i.get('cache_path')}")
    doc = study.run()
    print(summary_table(doc, "train"))
    print(f"wrote {study.results_path} in {time.time() - t:.1f} s")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="indis toy", description=__doc__, formatter_class=HelpFormatter)
    _configure(p)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
