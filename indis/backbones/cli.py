"""CLI subcommands of the backbones: `convert-edm`, `train-backbone` and `train-flow-backbone`.

indis/cli.py registers them with `add_subparsers(subparsers)`; this module also runs standalone:
`python -m indis.backbones.cli convert-edm ...`.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..io import claim_folder
from ..options import HelpFormatter, Switch, add_options, given_options
from .bundled import TrainConfig, evaluate_bundled, train_bundled
from .bundled_flow import FlowTrainConfig, bundled_flow_paths, evaluate_bundled_flow, train_bundled_flow
from .convert import convert_edm

# the training settings each command takes from the command line (the rest keep their config defaults)
TRAIN_OPTIONS = ("steps", "batch_size", "lr", "model_channels", "resolution", "seed", "threads")
FLOW_TRAIN_OPTIONS = ("steps", "vae_steps", "batch_size", "seed", "threads")


def add_subparsers(subparsers) -> None:
    p = subparsers.add_parser(
        "convert-edm",
        help="convert an EDM checkpoint (.pkl snapshot or state-dict .pt) to safetensors + JSON",
        description="Convert an EDM checkpoint into DIR/model.safetensors + DIR/config.json. Pickles execute code "
                    "when loaded and are read only with --trust-pickle.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("ckpt", help="EDM network-snapshot-*.pkl, a state-dict .pt/.pth, or .safetensors")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--trust-pickle", action=Switch, default=False,
                   help="allow reading a pickle (it can run arbitrary code: only for files from a trusted source)")
    p.add_argument("--preset", default=None,
                   help="architecture of a plain state dict: cifar10_uncond, cifar10_cond, ffhq64, afhq64, imagenet64")
    p.add_argument("--net-kwargs", default=None, help="architecture of a plain state dict as a JSON object of EDMPrecond kwargs")
    p.set_defaults(func=run_convert_edm)

    t = subparsers.add_parser(
        "train-backbone",
        help="train the bundled digits backbone (small EDM SongUNet on sklearn's digits)",
        description="Train the bundled neural backbone with EDM's loss; resumable; writes the EMA weights as "
                    "safetensors + JSON and the loss curve.",
        formatter_class=HelpFormatter,
    )
    t.add_argument("--out", required=True, help="directory for the training state (train_state.pt)")
    t.add_argument("--export", default=None, help="directory for the exported checkpoint (default: --out)")
    add_options(t, TrainConfig, unset=True, only=TRAIN_OPTIONS, flags={"model_channels": "--channels"})
    t.add_argument("--no-resume", action=Switch, default=False, help="start afresh even if a training state exists")
    t.add_argument("--no-progress", action=Switch, default=False, help="no progress bars")
    t.add_argument("--evaluate", action=Switch, default=False,
                   help="after training, write the sample grid and the Fréchet distances (quality JSON)")
    t.set_defaults(func=run_train_backbone)

    f = subparsers.add_parser(
        "train-flow-backbone",
        help="train the bundled latent flow model (AutoencoderKL + class-conditional DiT, flow matching, diffusers folder)",
        description="Train the second bundled model: a VAE on sklearn's digits, then a class-conditional flow-matching "
                    "DiT on its latents; resumable; writes a diffusers pipeline folder and the loss curves.",
        formatter_class=HelpFormatter,
    )
    f.add_argument("--out", required=True, help="directory for the training states")
    f.add_argument("--export", default=None, help="directory for the pipeline folder and curves (default: the package's assets)")
    add_options(f, FlowTrainConfig, unset=True, only=FLOW_TRAIN_OPTIONS)
    f.add_argument("--no-resume", action=Switch, default=False, help="start afresh even if training states exist")
    f.add_argument("--no-progress", action=Switch, default=False, help="no progress bars")
    f.add_argument("--evaluate", action=Switch, default=False,
                   help="after training, write the sample grid and the Fréchet distances (quality JSON)")
    f.add_argument("--eval-samples", type=int, default=1000, help="with --evaluate: samples of the Fréchet distances")
    f.set_defaults(func=run_train_flow_backbone)


def run_convert_edm(args) -> int:
    claim_folder(args.out, "backbone folder", "convert-edm")  # not into a teacher, training run or export folder

    net_kwargs = json.loads(args.net_kwargs) if args.net_kwargs else None
    cfg = convert_edm(args.ckpt, args.out, trust_pickle=args.trust_pickle, preset=args.preset, net_kwargs=net_kwargs)
    print(f"wrote {args.out}: backbone id {cfg['backbone_id']}, model_type {cfg['net_kwargs']['model_type']}")
    return 0


def run_train_backbone(args) -> int:

    for folder in {args.out, args.export or args.out}:  # not into a teacher, training run or export folder
        claim_folder(folder, "backbone folder", "train-backbone")
    cfg = TrainConfig(**given_options(TrainConfig, args))
    bb = train_bundled(args.out, cfg, resume=not args.no_resume, progress=not args.no_progress, export_dir=args.export)
    print(f"trained backbone id {bb.refresh_id()}")
    if args.evaluate:
        q = evaluate_bundled(bb, args.export or args.out)
        print(json.dumps(q, indent=2))
    return 0


def run_train_flow_backbone(args) -> int:
    cfg = FlowTrainConfig(**given_options(FlowTrainConfig, args))
    bb = train_bundled_flow(args.out, cfg, resume=not args.no_resume, progress=not args.no_progress, export_dir=args.export)
    print(f"trained backbone id {bb.refresh_id()}; pipeline folder {bundled_flow_paths(args.export)['pipeline']}")
    if args.evaluate:
        q = evaluate_bundled_flow(bundled_flow_paths(args.export)["pipeline"], args.export, n=args.eval_samples)
        print(json.dumps(q, indent=2))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="indis-backbones", formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add_subparsers(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
