"""`indis export`: a predictor (or a heuristic schedule) and its backbone written to an export folder (ONNX, and
TensorRT engines where installed) with its manifest (indis.export.pipeline.export_folder)."""
from __future__ import annotations

import argparse

import torch

from ..backbones.spec import BACKBONE_HELP, resolve_backbone
from ..io import EXPORT, claim_folder, load_prompt_table
from ..options import HelpFormatter, Switch
from ..sampling.fixed import heuristic
from ..sampling.load import load_predictor
from ..sampling.seeds import parse_seeds
from ..schedules import SCHEDULE_NAMES
from ..solvers import SOLVERS
from .onnx_export import check_profile
from .pipeline import export_folder
from .tensorrt import PRECISIONS


MAX_SIGMAS_SEEDS = 100_000  # sigmas.json holds one row per seed


def _profile(text: str):
    parts = [int(p) for p in text.replace(":", ",").split(",") if p.strip()]
    if len(parts) == 1:
        parts = [1, parts[0], parts[0]]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"--batch expects MIN,OPT,MAX (or one MAX), got {text!r}")
    prof = dict(zip(("min", "opt", "max"), parts))
    try:
        check_profile(prof)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return prof


def run_export(args) -> int:
    claim_folder(args.out, EXPORT, "export")  # before any work
    seeds = None
    if args.sigmas_seeds:
        seeds = list(parse_seeds(args.sigmas_seeds).check_count(MAX_SIGMAS_SEEDS, "sigmas.json"))
    if args.predictor and args.nfe:
        raise ValueError("--nfe applies to a heuristic schedule (--schedule); a --predictor brings its own NFE")
    if args.threads:
        torch.set_num_threads(args.threads)
    bb = resolve_backbone(args.backbone)
    table = None
    if args.prompt_table:
        table = load_prompt_table(args.prompt_table).float()
    meta = {}
    if args.predictor:
        model, meta = load_predictor(args.predictor, bb.backbone_id)
    else:
        if not args.nfe:
            raise ValueError("give --predictor CKPT, or --schedule NAME --nfe N for a heuristic schedule")
        model = heuristic(bb, args.schedule, args.nfe)
    solver = args.solver or meta.get("solver") or "ipndm"
    order = args.order if args.order is not None else (meta.get("train_config") or {}).get("order")
    export_folder(model, bb, args.out, backbone_spec_str=args.backbone,
                  predictor_source=args.predictor or f"heuristic:{args.schedule}:{args.nfe}", solver=solver, order=order,
                  profile=args.batch, tensorrt=args.tensorrt, precision=args.precision, atol=args.atol,
                  verify=not args.no_verify, sigmas_seeds=seeds, overwrite=args.overwrite, prompt_table=table)
    print(f"wrote {args.out}/manifest.json")
    return 0


def add_subparsers(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a predictor and its backbone to ONNX (and TensorRT engines) in an engines folder",
        description="Export the predictor (x_T, cond -> tau, dtau, gamma) and the backbone (x, t, cond -> prediction) "
                    "as ONNX (opset 17, dynamic batch, checked, compared with PyTorch), optionally build TensorRT "
                    "engines, and write a manifest with the hashes of every file. Sample with "
                    "`indis sample --engines DIR --backend torch|ort|trt|native`.",
        formatter_class=HelpFormatter)
    p.add_argument("--backbone", required=True, help=BACKBONE_HELP + " (recorded in the manifest; only the registry names are ever loaded from it)")
    p.add_argument("--predictor", default=None, help="predictor.safetensors from `indis train` (else --schedule/--nfe)")
    p.add_argument("--schedule", default="polynomial", choices=SCHEDULE_NAMES,
                   help="heuristic schedule when no --predictor is given")
    p.add_argument("--nfe", type=int, default=None, help="steps of the heuristic schedule")
    p.add_argument("--solver", default=None, choices=tuple(SOLVERS),
                   help="solver recorded for sampling (default: the predictor's, else ipndm)")
    p.add_argument("--order", type=int, default=None, help="solver order recorded for sampling (default: the predictor's, else the solver's)")
    p.add_argument("--out", required=True, help="export folder, e.g. runs/engines/NAME")
    p.add_argument("--batch", type=_profile, default="1,8,64", help="batch profile MIN,OPT,MAX (TensorRT optimisation profile)")
    p.add_argument("--tensorrt", action=Switch, default=False, help="also build TensorRT engines (needs pip install indis[tensorrt] and an NVIDIA GPU)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="TensorRT engine precision")
    p.add_argument("--atol", type=float, default=1e-4, help="max |ONNX Runtime - PyTorch| (fp32) accepted at export")
    p.add_argument("--no-verify", action=Switch, default=False, help="skip the ONNX Runtime vs PyTorch comparison")
    p.add_argument("--sigmas-seeds", default=None, help="also write sigmas.json (per-sample sigma lists) for these seeds, e.g. 0-15")
    p.add_argument("--prompt-table", default=None,
                   help="text models: safetensors with 'table' [M, dim] of prompt conditions (e.g. the teacher set's "
                        "prompt_table.safetensors); sigmas.json rows then name each seed's prompt_index")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: as torch sets them)")
    p.add_argument("--overwrite", action=Switch, default=False,
                   help="replace an export folder made for another backbone, predictor, solver or NFE")
    p.set_defaults(func=run_export)
