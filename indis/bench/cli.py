"""`indis bench`: latency per NFE and backend (default), or quality per NFE and method (`--quality`).

    indis bench --out runs/bench                          # bundled backbone, NFE 3,5,7,10, batch 1,16,64
    indis bench --backbone edm:cifar10_uncond --device cuda --batch 1,64 --out runs/bench_gpu
    indis bench --quality --out runs/quality              # every method x 3 training seeds on tree (exact), ideal denoiser,
                                                          # bundled and bundled-flow (hours on a CPU; resumable)
    indis bench --quality --quality-backbones bundled --methods god,indis --train-seeds 0 --n-train 600 --n-eval 300 --out q
"""
from __future__ import annotations

import argparse
import os

from ..backbones.spec import BACKBONE_HELP, resolve_backbone
from ..baselines.search import HEURISTIC_NAMES
from ..evaluate import quality_table
from ..export.pipeline import export_folder
from ..io import atomic_write_json, atomic_write_text
from ..options import HelpFormatter, Switch
from ..toy.study import Study, quick_config
from .latency import BACKENDS, default_predictor, run_latency, write_report
from .quality import ALL_METHODS, plot_quality, run_quality


def _ints(s: str):
    try:
        v = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {s!r}")
    if not v or min(v) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {s!r}")
    return v


def _seeds(s: str):
    try:
        v = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {s!r}")
    if not v or min(v) < 0 or len(set(v)) != len(v):
        raise argparse.ArgumentTypeError(f"expected distinct non-negative integers, got {s!r}")
    return v


def _names(s: str):
    return [x.strip() for x in s.split(",") if x.strip()]


def add_subparsers(subparsers) -> None:
    p = subparsers.add_parser("bench", help="latency per NFE and backend; --quality: quality per NFE and method",
                              description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--out", required=True, help="output folder: bench.json, bench.md, latency_vs_nfe.png (or quality.*)")
    p.add_argument("--backbone", default="bundled", help=BACKBONE_HELP)
    p.add_argument("--nfe", type=_ints, default=None, help="NFEs (default 3,5,7,10; --quality: 3,5,7)")
    p.add_argument("--batch", type=_ints, default=[1, 16, 64], help="batch sizes")
    p.add_argument("--backends", type=_names, default=list(BACKENDS),
                   help=f"subset of {','.join(BACKENDS)}; unavailable ones are reported as skipped")
    p.add_argument("--engines", default=None,
                   help="folder from `indis export` for the ort/trt rows (one NFE); default: export an untrained predictor "
                        "of the standard architecture and the backbone per NFE into OUT/engines_nfe<N>")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--reps", type=int, default=20, help="timed runs per measurement (>= 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    p.add_argument("--quality", action=Switch, default=False, help="quality per NFE and method instead of latency")
    p.add_argument("--quality-backbones", type=_names, default=["tree", "ideal", "bundled", "bundled-flow"],
                   help="with --quality: tree (the 2D study, exact model), ideal, bundled, bundled-flow (guided latent "
                        "flow matching; gets an RDS row), or other backbone specs")
    p.add_argument("--n-train", type=int, default=2000, help="with --quality: training teacher samples")
    p.add_argument("--n-eval", type=int, default=1000, help="with --quality: held-out teacher samples")
    p.add_argument("--steps", type=int, default=200, help="with --quality: training steps per method and NFE")
    p.add_argument("--methods", type=_names, default=list(ALL_METHODS),
                   help="with --quality: trained (god, ld3, indis, amed, indis+sdm, indis+sdm+afs) and training-free peers "
                        "(gits, dmn, sdm; indis.baselines); the best heuristic is always a row")
    p.add_argument("--learned-solvers", type=_names, default=["ipndm"],
                   help="with --quality: solvers GOD/LD3/INDIS are trained through (best on validation), e.g. ipndm,dpmpp_2m,unipc")
    p.add_argument("--train-seeds", type=_seeds, default=[0, 1, 2],
                   help="with --quality: training seeds of the learned methods (e.g. 0,1,2); rows give mean ± std over them")
    p.add_argument("--free-nfes", type=_ints, default=[],
                   help="with --quality: extra NFEs for the best heuristic and the training-free peers only (e.g. 10)")
    p.add_argument("--pilots", type=int, default=128, help="with --quality: pilot samples of the training-free peers")
    p.add_argument("--n-select", type=int, default=None,
                   help="with --quality: training tuples the best heuristic is chosen on (default all)")
    p.add_argument("--inception-weights", default=None,
                   help="with --quality: pytorch-fid's pt_inception-2015-12-05-6726825d.pth (file or folder; never "
                        "downloaded): adds FID columns (to the teacher's samples; digits backbones: also to held-out data)")
    p.add_argument("--no-progress", action=Switch, default=False, help="no progress bars")
    p.set_defaults(func=run_bench)


def run_bench(args) -> int:
    import torch

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.quality:
        return _run_quality(args)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
    bb = resolve_backbone(args.backbone)
    nfes = args.nfe or [3, 5, 7, 10]
    engines, factory = args.engines, None
    if engines is None and {"ort", "trt"} & set(args.backends):
        phis = {n: default_predictor(bb, n).eval() for n in nfes}
        engines = {n: os.path.join(args.out, f"engines_nfe{n}") for n in nfes}
        for n in nfes:
            export_folder(phis[n], bb, engines[n], backbone_spec_str=args.backbone, tensorrt="trt" in args.backends
                          and args.device.startswith("cuda"), overwrite=True, log=lambda *a: None)
        factory = phis.__getitem__
    report = run_latency(bb, nfes, args.batch, args.backends, device=args.device, predictor_factory=factory,
                         engines_dir=engines, warmup=args.warmup, reps=args.reps, progress=not args.no_progress)
    report["backbone_spec"] = args.backbone
    paths = write_report(report, args.out)
    print(open(paths["md"]).read())
    print("wrote " + ", ".join(paths.values()))
    return 0


def _run_quality(args) -> int:
    nfes = args.nfe or [3, 5, 7]
    os.makedirs(args.out, exist_ok=True)
    by_backbone, sections = {}, []
    for spec in args.quality_backbones:
        if spec == "tree":
            rows = _tree_rows(args, nfes)
            by_backbone["tree (exact)"] = rows
        else:
            bb = resolve_backbone(spec)
            extra = quality_heuristics(bb)
            out = run_quality(spec, os.path.join(args.out, "work"), nfes, methods=args.methods, learned_solvers=args.learned_solvers,
                              n_train=args.n_train, n_eval=args.n_eval, steps=args.steps, train_seeds=args.train_seeds,
                              free_nfes=args.free_nfes, pilots=args.pilots, n_select=args.n_select,
                              results_stem=os.path.join(args.out, f"quality_{_stem(spec)}"), plot_dir=args.out,
                              progress=not args.no_progress, backbone=bb, inception_weights=args.inception_weights, **extra)
            rows = out["rows"]
            by_backbone[spec] = rows
        sections.append(f"### {spec}\n\n" + quality_table(rows) + "\n")
    atomic_write_json(os.path.join(args.out, "quality.json"), by_backbone)
    atomic_write_text(os.path.join(args.out, "quality.md"), "\n".join(sections))
    plot_quality(by_backbone, os.path.join(args.out, "quality_vs_nfe.png"))
    print("\n".join(sections))
    return 0


def quality_heuristics(bb) -> dict:
    """run_quality's heuristic options for a backbone: a flow model that knows its image token count (the bundled
    flow model, a diffusers DiT/SD3/FLUX transformer) also gets RDS, FLUX's resolution-dependent shift, as a
    candidate of the best heuristic and as a row of its own (the baseline of the paper's FLUX table)."""
    if getattr(bb, "image_seq_len", None) is None:
        return {}
    return {"heuristics": tuple(HEURISTIC_NAMES) + ("rds",), "heuristic_rows": ("rds",)}


def _tree_rows(args, nfes):
    """The 2D tree study (exact model) mapped onto the quality table: uniform ~ best heuristic, global_full ~ GOD,
    indis_full ~ INDIS (held-out priors); LD3 has no 2D counterpart there."""
    cfg = quick_config(nfes=tuple(nfes), ipndm=False)
    doc = Study(cfg, os.path.join(args.out, "tree"), progress=not args.no_progress).run()
    names = {"uniform": "best heuristic", "global_full": "god", "indis_full": "indis"}
    rows = []
    for r in doc["results"]:
        if r.get("solver") == "euler" and not r.get("conditional") and r["strategy"] in names and r.get("split", "heldout") == "heldout":
            rows.append({"method": names[r["strategy"]], "nfe": r["nfe"], "mse": r["mse"], "kl": r.get("kl"), "w2": r.get("w2")})
    return rows


def _stem(spec: str) -> str:
    return spec.replace(":", "_").replace("/", "_")
