"""`indis teacher | train | eval | sample`: teacher datasets, training, evaluation and sampling from the shell.

Backbones are named by a spec (indis.backbones.spec.resolve_backbone):
  bundled            the bundled digits EDM network (indis.backbones.bundled.load_bundled)
  ideal              the ideal empirical denoiser of the digits training set (indis.backbones.ideal)
  gmm-image          a small exact Gaussian mixture over 3x8x8 images (indis.backbones.demo.ImageGMM)
  edm:PRESET[:SEED], a convert-edm folder, module:function
Every command checks its options and its output path before any work: each writes its own kind of folder
(indis.io.claim_folder) and refuses the others'.
Distributed runs: launch with torchrun; the process group is initialised from its environment (gloo on CPU,
NCCL when CUDA is available).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch

from ..backbones.spec import BACKBONE_HELP, resolve_backbone
from ..engines.cli import add_sample_options, engine_sampler
from ..evaluate import evaluate_methods, plot_timesteps, write_results
from ..export.manifest import load_manifest
from ..io import (TEACHER, atomic_write_bytes, atomic_write_json, check_writable_dir, check_writable_file, claim_folder,
                  load_metadata, load_prompt_table, png_bytes)
from ..metrics import fid
from ..metrics.distances import LPIPS, TRUNK_FILES
from ..metrics.inception import inception_feature_fn
from ..options import HelpFormatter, Switch, add_options, given_options
from ..sampling.fixed import heuristic
from ..sampling.load import load_predictor
from ..sampling.sampler import Sampler
from ..sampling.seeds import parse_seeds
from ..schedules import SCHEDULE_NAMES
from ..solvers import SOLVERS
from .teacher import TeacherConfig, generate_teacher, load_teacher
from .train import TrainConfig, check_run_folder, train


def load_backbone_spec(spec: str):
    """The backbone named by a --backbone spec (see indis.backbones.spec.resolve_backbone)."""
    return resolve_backbone(spec)


def maybe_init_distributed() -> bool:
    """Initialise torch.distributed from torchrun's environment; True if this process is part of a group."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not torch.distributed.is_available():
        return False
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


MAX_GRID_SAMPLES = 16384  # `indis sample` writes one grid image (and one JSON) holding every sample


def run_teacher(args) -> int:
    claim_folder(args.out, TEACHER, "teacher")  # before any work
    torch.set_num_threads(args.threads) if args.threads else None
    dist = maybe_init_distributed()
    bb = load_backbone_spec(args.backbone)
    table = None
    if args.prompt_table:
        table = load_prompt_table(args.prompt_table)
    cfg = TeacherConfig(**given_options(TeacherConfig, args))
    m = generate_teacher(bb, args.out, cfg, table, progress=not args.no_progress, log=print)
    if not dist or torch.distributed.get_rank() == 0:
        print(f"teacher dataset {args.out}: {m['count']} samples in {len(m['shards'])} shards, backbone {m['backbone_id']}")
    return 0


def _read_config(path) -> dict:
    """A --config JSON file of training options, or a ValueError that names the file and what is wrong."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        raise IsADirectoryError(f"--config {path} is a folder, not a JSON file") from None
    try:
        base = json.loads(text)
    except ValueError as e:
        raise ValueError(f"--config {path} is not valid JSON: {e}") from None
    if not isinstance(base, dict):
        raise ValueError(f"--config {path} must hold a JSON object of option: value, got {type(base).__name__}")
    return base


def train_config(args) -> TrainConfig:
    """The TrainConfig of `indis train`: TrainConfig's defaults, then the --config file, then the options given."""
    base = _read_config(args.config) if args.config else {}
    base.update(given_options(TrainConfig, args))  # the command line overrides the --config file
    try:
        cfg = TrainConfig.from_dict(base)
    except ValueError as e:
        raise ValueError(f"{e}" + (f" (--config {args.config} or the command line)" if args.config else "")) from None
    cfg.validate()
    return cfg


def run_train(args) -> int:
    cfg = train_config(args)
    check_run_folder(args.out, args.resume, args.overwrite)  # before any work
    torch.set_num_threads(args.threads) if args.threads else None
    maybe_init_distributed()
    bb = load_backbone_spec(args.backbone)
    ds = load_teacher(args.teacher, bb)
    meta = train(bb, ds, cfg, args.out, resume=args.resume, progress=not args.no_progress, log=print,
                 overwrite=args.overwrite)
    if "metrics" in meta:
        m = meta["metrics"]
        print(f"{cfg.method} NFE {cfg.nfe}: validation {cfg.loss} {m['initial_val']:.5g} (initial) -> {m['best_val']:.5g} (step {m['best_step']}); "
              f"saved {Path(args.out) / 'predictor.safetensors'}")
    return 0


FEATURES = ("none", "digits", "inception")  # feature extractors of `indis eval --features`


def _features(kind: str, inception_weights: Optional[str] = None):
    if kind == "none":
        return None
    if kind == "digits":
        return fid.digits_features  # documented in indis.metrics.fid ("digits-cnn-v1")
    if kind == "inception":  # pytorch-fid's FID Inception (indis.metrics.inception); images in [-1, 1], 3 or 1 channels
        return inception_feature_fn(inception_weights)
    raise ValueError(f"unknown feature extractor {kind!r}; expected one of {FEATURES}")


def run_eval(args) -> int:

    stem = Path(args.out)
    for path in (stem.with_suffix(".json"), stem.with_suffix(".md")):  # before any work
        check_writable_file(path)
    if any(k < 1 for k in args.nfe):
        raise ValueError(f"--nfe must be positive integers, got {args.nfe}")
    torch.set_num_threads(args.threads) if args.threads else None
    bb = load_backbone_spec(args.backbone)
    ds = load_teacher(args.teacher, bb)
    methods = {h: {k: heuristic(bb, h, k) for k in args.nfe} for h in args.heuristics}
    for spec in args.predictor or []:
        name, path = spec.split("=", 1) if "=" in spec else (Path(spec).parent.name, spec)
        model, meta = load_predictor(path, bb.backbone_id)
        methods.setdefault(name, {})[int(meta.get("nfe", model.param.nfe))] = model.eval()
    lp = None
    if args.lpips_weights or args.lpips:
        try:
            lp = LPIPS(args.lpips_net, args.lpips_weights)
        except FileNotFoundError as e:
            print(f"LPIPS skipped: {e}")
    rows = evaluate_methods(bb, ds, methods, args.solver, lpips=lp, features=_features(args.features, args.inception_weights), progress=not args.no_progress)
    write_results(args.out, rows, {"backbone_id": bb.backbone_id, "teacher": str(args.teacher), "features": args.features})
    print(Path(args.out).with_suffix(".md").read_text())
    return 0


def _check_sample_options(args):
    """Options of `indis sample` that contradict each other or the predictor, and the output paths: all
    checked before any work. Returns the parsed seeds."""
    seeds = parse_seeds(args.seeds).check_count(MAX_GRID_SAMPLES, "the grid of `indis sample`")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    if args.nfe is not None and args.nfe < 1:
        raise ValueError(f"--nfe must be positive, got {args.nfe}")
    out = Path(args.out)
    for path in [out, out.with_suffix(".timesteps.json")] + ([out.with_suffix(".timesteps.png")] if args.plot else []):
        check_writable_file(path)
    if args.outdir:
        check_writable_dir(args.outdir, "--outdir")
    if args.engines:
        if args.predictor:
            raise ValueError("--engines brings its own predictor; give --engines DIR or --predictor FILE, not both")
        if args.schedule is not None:
            raise ValueError("--schedule applies to sampling without a predictor; the export folder of --engines has its own")
        if args.nfe is not None:
            nfe = load_manifest(args.engines)["nfe"]
            if args.nfe != nfe:
                raise ValueError(f"--nfe {args.nfe} conflicts with the export folder {args.engines}, whose predictor "
                                 f"takes {nfe} steps; leave --nfe out")
    elif args.predictor:
        if args.schedule is not None:
            raise ValueError("--schedule applies to sampling without a predictor; the predictor makes its own schedule")
        if args.nfe is not None:
            nfe = load_metadata(args.predictor).get("nfe")
            if nfe is not None and args.nfe != int(nfe):
                raise ValueError(f"--nfe {args.nfe} conflicts with the predictor {args.predictor}, which was trained "
                                 f"for {nfe} steps; leave --nfe out")
    elif not args.backbone:
        raise ValueError("give --backbone (or --engines DIR)")
    return seeds


def _sampler(args, table) -> Sampler:
    """The Sampler of `indis sample`: an export folder on its backend (--engines), or the torch backbone with a
    predictor or a heuristic schedule on the Python solver loop."""
    if args.engines:  # an export folder on one backend (indis.engines)
        return engine_sampler(args, table)
    bb = load_backbone_spec(args.backbone)
    if args.predictor:
        return Sampler(bb, args.predictor, solver=args.solver, loop="python", cfg_scale=args.cfg_scale, prompt_table=table)
    return Sampler(bb, schedule=args.schedule or "polynomial", nfe=args.nfe or 5, solver=args.solver, loop="python",
                   cfg_scale=args.cfg_scale, prompt_table=table)


def run_sample(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = _check_sample_options(args)
    table = load_prompt_table(args.prompt_table).float() if args.prompt_table else None
    sampler = _sampler(args, table)
    sampler.check_class_label(args.class_label, "--class")  # before any work
    if len(sampler.data_shape) != 3:
        raise ValueError(f"sample writes images; this backbone's samples have shape {sampler.data_shape}")
    if args.outdir and sampler.data_shape[0] not in (1, 3):
        raise ValueError(f"--outdir writes one grayscale or RGB PNG per seed; this backbone's samples have "
                         f"{sampler.data_shape[0]} channels (shape {sampler.data_shape})")
    outdir = Path(args.outdir) if args.outdir else None

    def write_pngs(batch) -> None:  # one PNG per seed as it is sampled, named as NVlabs/edm's generate.py names them
        for seed, img in zip(batch.seeds, batch.result.x0):
            atomic_write_bytes(outdir / f"{seed:06d}.png", png_bytes(img))

    res = sampler.sample_seeds(seeds, args.batch_size, class_label=args.class_label, progress=not args.no_progress,
                               on_batch=write_pngs if outdir is not None else None)
    if args.engines:
        print(f"sampled {len(res.x0)} seeds from {args.engines} on backend {args.backend} ({sampler.provider})")
    x, x_T, cond, disc = res.x0.float(), res.x_T, res.cond, res.discretization
    b, c, h, w = x.shape
    cols = args.cols or int(max(1, round(b**0.5)))
    rows = -(-b // cols)
    grid = torch.ones(c, rows * (h + 1) + 1, cols * (w + 1) + 1)
    img = ((x.clamp(-1, 1) + 1) / 2)
    for i in range(b):
        r, q = divmod(i, cols)
        grid[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = img[i]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    arr = grid.permute(1, 2, 0).numpy()
    plt.imsave(out, arr[..., 0] if c == 1 else arr, cmap="gray" if c == 1 else None, vmin=0, vmax=1)
    cat = lambda k: getattr(disc, k).double().tolist()
    atomic_write_json(out.with_suffix(".timesteps.json"), {"seeds": list(seeds), "timesteps": cat("timesteps"), "dtau": cat("dtau"), "gamma": cat("gamma"),
                                                           "predictor": args.engines or args.predictor,
                                                           "schedule": None if (args.predictor or args.engines) else (args.schedule or "polynomial")})
    if args.plot:
        plot_timesteps(sampler.predictor, x_T, cond, out.with_suffix(".timesteps.png"))
    print(f"wrote {out} and {out.with_suffix('.timesteps.json')}" + (f", {len(x)} PNGs in {outdir}" if outdir else ""))
    return 0


def add_subparsers(subparsers) -> None:
    fmt = HelpFormatter

    def common(p, backbone_required=True):
        p.add_argument("--backbone", required=backbone_required,
                       help=BACKBONE_HELP
                            + ("" if backbone_required else " (with --engines: the backbone of the torch and native "
                               "backends when the export's manifest names no registry backbone)"))
        p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: as torch sets them)")
        p.add_argument("--no-progress", action=Switch, default=False, help="no progress bars")

    p = subparsers.add_parser("teacher", help="generate a sharded teacher dataset (resumable; torchrun for several processes)", formatter_class=fmt)
    common(p)
    p.add_argument("--out", required=True, help="dataset folder")
    add_options(p, TeacherConfig)
    p.add_argument("--prompt-table", default=None, help="safetensors with 'table' [M, dim] of pooled prompt embeddings (text models)")
    p.set_defaults(func=run_teacher)

    p = subparsers.add_parser("train", help="train INDIS / GOD / LD3 (and ablations) on a teacher dataset", formatter_class=fmt)
    common(p)
    p.add_argument("--teacher", required=True, help="teacher dataset from `indis teacher`")
    p.add_argument("--out", required=True, help="training run folder (predictor.safetensors, checkpoint, run.json)")
    p.add_argument("--config", default=None, help="JSON file of training options (command-line options override it)")
    p.add_argument("--resume", action=Switch, default=False,
                   help="continue from out/checkpoint.safetensors (the backbone, teacher and options must be the run's)")
    p.add_argument("--overwrite", action=Switch, default=False, help="delete an earlier run in --out and start again")
    add_options(p, TrainConfig, unset=True)  # None when not given: --config or TrainConfig's default applies
    p.set_defaults(func=run_train)

    p = subparsers.add_parser("eval", help="endpoint distance to the teacher and Frechet distance per NFE and method", formatter_class=fmt)
    common(p)
    p.add_argument("--teacher", required=True, help="held-out teacher dataset (seeds not used in training)")
    p.add_argument("--nfe", type=int, nargs="+", default=[3, 5, 7], help="NFEs of the heuristic schedules")
    p.add_argument("--heuristics", nargs="*", default=["uniform", "logsnr", "polynomial"], choices=SCHEDULE_NAMES,
                   help="heuristic schedules evaluated beside the predictors")
    p.add_argument("--predictor", action="append", help="NAME=path/predictor.safetensors (repeatable; NFE from its metadata)")
    p.add_argument("--solver", default="ipndm", choices=tuple(SOLVERS), help="solver of every method")
    p.add_argument("--lpips", action=Switch, default=False, help="also LPIPS (trunk weights from the torch hub cache)")
    p.add_argument("--lpips-weights", default=None, help="LPIPS trunk weight file or folder (implies --lpips)")
    p.add_argument("--lpips-net", default="vgg", choices=tuple(TRUNK_FILES), help="LPIPS trunk")
    p.add_argument("--features", default="none", choices=FEATURES,
                   help="feature extractor of the Frechet distance: digits (the bundled 16x16 digits) or inception "
                        "(FID: pytorch-fid's Inception-v3 pool3, for RGB images; grayscale repeated to 3 channels)")
    p.add_argument("--inception-weights", default=None,
                   help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (file or folder); default: the torch hub cache "
                        "$TORCH_HOME/hub/checkpoints. Never downloaded")
    p.add_argument("--out", required=True, help="output stem: writes STEM.json and STEM.md")
    p.set_defaults(func=run_eval)

    p = subparsers.add_parser("sample", help="sample a PNG grid with a predictor or a heuristic; timesteps saved beside it", formatter_class=fmt)
    common(p, backbone_required=False)
    add_sample_options(p)  # --engines DIR --backend torch|ort|trt|native --device
    p.add_argument("--predictor", default=None, help="predictor.safetensors from `indis train` (else a heuristic schedule)")
    p.add_argument("--schedule", default=None, choices=SCHEDULE_NAMES,
                   help="heuristic schedule without a predictor (default polynomial)")
    p.add_argument("--nfe", type=int, default=None, help="steps of the heuristic schedule (default 5); with a predictor "
                   "or --engines it must match theirs")
    p.add_argument("--solver", default=None, choices=tuple(SOLVERS),
                   help="default: the predictor's or export folder's solver, else ipndm")
    p.add_argument("--seeds", default="0-63", help=f"e.g. 0-63 or 1,5,9 (at most {MAX_GRID_SAMPLES} seeds: one grid)")
    p.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (conditional backbones)")
    p.add_argument("--batch-size", type=int, default=64, help="seeds sampled at once (does not change the samples)")
    p.add_argument("--cols", type=int, default=0, help="grid columns (0: a square grid)")
    p.add_argument("--plot", action=Switch, default=False, help="also plot the timesteps across samples (Fig. 7)")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--outdir", default=None, help="also write one PNG per seed here, named SEED.png with six digits "
                   "(000042.png), as EDM's generate.py")
    p.add_argument("--class", dest="class_label", type=int, default=None,
                   help="class label of every sample (class-conditional backbones; default: a random class per seed)")
    p.add_argument("--prompt-table", default=None,
                   help="text-conditional backbones: safetensors with 'table' [M, dim] of pooled prompt embeddings (a row per seed)")
    p.set_defaults(func=run_sample)
