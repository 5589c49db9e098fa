"""`indis toy`: the synthetic study of paper section 4.1 (Figs. 2-3).

    python -m indis.toy.cli --out runs/toy --backbone exact --nfe 3,4,5 [--quick] [--conditional]

--predictor-share measures instead the learned phi's share of the full-set oracle's gain over GOD
(indis.toy.recipe) on the fit and held-out priors, per NFE (default 3,5,7), for --share-seeds training seeds;
--sweep adds the one-factor-at-a-time recipe sweep (recipe.SWEEP, or the factors named).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict

from ..options import HelpFormatter, Switch
from .recipe import COMBINED, SWEEP, Recipe, ShareConfig, ShareRunner, quick_share_config, share_table, sweep_table
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
    p.add_argument("--predictor-share", action=Switch, default=False,
                   help="measure phi's share of the oracle's gain over GOD (fit and held-out priors) instead of the study")
    p.add_argument("--share-seeds", type=int, default=3, help="phi training seeds for --predictor-share (default 3)")
    p.add_argument("--sweep", default=None, metavar="FACTORS",
                   help="with --predictor-share: the recipe sweep, 'all' or comma-separated factors of recipe.SWEEP "
                        f"({', '.join(sorted({f for f, _, _ in SWEEP + COMBINED}))})")
    p.set_defaults(func=run_toy)


def add_subparsers(subparsers) -> None:
    p = subparsers.add_parser("toy", help="synthetic 2D tree study (paper section 4.1)", description=__doc__,
                              formatter_class=HelpFormatter)
    _configure(p)


def run_toy(args) -> int:
    import torch

    torch.set_num_threads(max(1, args.threads))
    if args.predictor_share:
        return run_share(args)
    if args.sweep:
        raise SystemExit("indis toy: --sweep needs --predictor-share")
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


def run_share(args) -> int:
    if args.conditional:
        raise SystemExit("indis toy: --predictor-share runs on the unconditional tree (drop --conditional)")
    if args.share_seeds < 1:
        raise SystemExit(f"indis toy: --share-seeds must be >= 1, got {args.share_seeds}")
    over = {"backbone": args.backbone, "seeds": tuple(range(args.share_seeds))}
    if args.nfe:
        over["nfes"] = args.nfe
    if args.num_eval:
        over["num_heldout"] = args.num_eval
    cfg = quick_share_config(**over) if args.quick else ShareConfig(**over)
    base = Recipe(iters=20, full_iters=20, batch=32, num_train=cfg.max_train) if args.quick else Recipe()
    entries = [("baseline", "study recipe", {})]
    if args.sweep:
        names = {f for f, _, _ in SWEEP + COMBINED}
        want = names if args.sweep == "all" else {f.strip() for f in args.sweep.split(",") if f.strip()}
        unknown = want - names
        if unknown:
            raise SystemExit(f"indis toy: unknown --sweep factors {sorted(unknown)}; known: {sorted(names)}")
        entries = [e for e in SWEEP[:1] + COMBINED + SWEEP[1:] if e[0] in want or e[0] == "baseline"]
        if args.quick:  # the data factor cannot exceed the quick set's training priors
            entries = [(f, s, {k: (min(v, cfg.max_train) if k == "num_train" else v) for k, v in c.items()}) for f, s, c in entries]
    t = time.time()
    runner = ShareRunner(cfg, args.out, cache_dir=args.cache_dir, log=(lambda *a: None) if args.no_progress else print)
    runner.sweep(entries, base)
    print(share_table(runner.doc, asdict(base)))
    if args.sweep:
        for n in cfg.nfes:
            print(f"\nNFE {n}, one factor at a time (share: mean ± std over seeds):")
            print(sweep_table(runner.doc, [n]))
    print(f"wrote {runner.path} in {time.time() - t:.1f} s")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="indis toy", description=__doc__, formatter_class=HelpFormatter)
    _configure(p)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
