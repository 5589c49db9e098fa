"""`indis quickstart`: the whole product on the bundled digits backbone, on a CPU, in a few minutes.

Stages (one progress bar over them, with inner bars for the long ones):
  1. teacher   a small teacher set: 30-step iPNDM on the bundled backbone (train seeds 0.., held-out seeds 1,000,000..)
  2. train     INDIS (per-sample predictor) and GOD (one global discretization) at NFE 5, both from the best
               heuristic of {uniform, logSNR, polynomial} on the training set
  3. evaluate  endpoint MSE to the teacher and Fréchet distance (digits-cnn-v1 features) on held-out seeds
  4. export    predictor and backbone to ONNX (indis.export), checked against PyTorch
  5. sample    the fast sampler (native loop when indis._C is built, ONNX Runtime engines otherwise) on held-out
               seeds, compared with the PyTorch solver
  6. latency   median latency per NFE (3, 5, 7) and backend against the backbone-only limit
  7. grid      a PNG comparing heuristic, GOD, INDIS and the teacher at the same seeds
Writes OUT/quickstart.json, OUT/quality.md, OUT/bench.{json,md}, OUT/latency_vs_nfe.png and OUT/grid.png.

`--backbone bundled-flow` (the class-conditional latent flow model): teacher, training, evaluation and the grid use
classifier-free guidance (`--cfg-scale`, default the backbone's default_guidance 1.5), Fréchet distances and the grid
are computed on VAE-decoded samples; export, fast sampler and latency run the conditional model without guidance
(export folders carry no guidance scale) and the latency table times the VAE decode apart.
"""
from __future__ import annotations

import os
import time
from typing import Dict

import torch

from .backbones.spec import BACKBONE_HELP, resolve_backbone
from .bench.latency import BACKENDS, default_predictor, run_latency, write_report
from .bench.quality import quality_features
from .evaluate import best_heuristics, evaluate_methods, markdown_table, student_samples
from .export.pipeline import export_folder
from .io import atomic_write_json, atomic_write_text
from .native import native_available
from .options import HelpFormatter, Switch
from .sampling.guidance import GuidedBackbone
from .sampling.load import load_predictor
from .sampling.sampler import Sampler
from .solvers import sample
from .training.teacher import TeacherConfig, generate_teacher, load_teacher
from .training.train import TrainConfig, train


def add_subparsers(subparsers) -> None:
    p = subparsers.add_parser("quickstart", help="teacher, INDIS + GOD training, ONNX export, fast sampling, report",
                              description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--out", default="runs/quickstart", help="output folder")
    p.add_argument("--backbone", default="bundled", help=BACKBONE_HELP)
    p.add_argument("--nfe", type=int, default=5, help="NFE of the trained INDIS and GOD")
    p.add_argument("--n-train", type=int, default=400, help="training teacher samples")
    p.add_argument("--n-eval", type=int, default=200, help="held-out teacher samples")
    p.add_argument("--steps", type=int, default=150, help="training steps per method")
    p.add_argument("--latency-batch", type=int, default=8, help="batch size of the latency table")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--cfg-scale", type=float, default=None,
                   help="classifier-free guidance of the teacher and the students (conditional backbones; default: the "
                        "backbone's default_guidance, 1.5 for bundled-flow, else 1)")
    p.add_argument("--no-progress", action=Switch, default=False, help="no progress bars")
    p.set_defaults(func=run_quickstart)


def _grid(rows: Dict[str, torch.Tensor], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    n = rows[names[0]].shape[0]
    fig, axes = plt.subplots(len(names), n, figsize=(0.9 * n + 1.6, 0.95 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        for j in range(n):
            ax = axes[i][j]
            img = rows[name][j].float().clamp(-1, 1)
            img = img[0] if img.shape[0] == 1 else img.permute(1, 2, 0) * 0.5 + 0.5
            ax.imshow(img.numpy(), cmap="gray" if img.dim() == 2 else None, vmin=-1 if img.dim() == 2 else 0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle("same seeds, same backbone: heuristic / GOD / INDIS at the trained NFE, and the 30-step teacher", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_quickstart(args) -> int:
    from tqdm.auto import tqdm

    if args.nfe < 1 or args.n_train < 20 or args.n_eval < 8 or args.steps < 1 or args.latency_batch < 1:
        raise ValueError("need --nfe >= 1, --n-train >= 20, --n-eval >= 8, --steps >= 1 and --latency-batch >= 1")
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    out, work = args.out, os.path.join(args.out, "work")
    os.makedirs(work, exist_ok=True)
    quiet = args.no_progress
    stages = ["teacher", "train INDIS", "train GOD", "evaluate", "export", "fast sampler", "latency", "grid"]
    bar = tqdm(total=len(stages), desc="quickstart", unit="stage", disable=quiet, position=0)
    log = (lambda msg: None) if quiet else tqdm.write
    timings: Dict[str, float] = {}
    report: Dict = {"backbone": args.backbone, "nfe": args.nfe}

    def stage(name):
        bar.set_postfix_str(name)
        timings[name] = time.time()

    def done(name):
        timings[name] = time.time() - timings[name]
        bar.update(1)

    t_all = time.time()
    bb = resolve_backbone(args.backbone)
    report["backbone_id"] = bb.backbone_id
    k = args.nfe
    w = float(args.cfg_scale if args.cfg_scale is not None else getattr(bb, "default_guidance", 1.0))
    report["cfg_scale"] = w

    stage("teacher")
    generate_teacher(bb, f"{work}/teacher_train", TeacherConfig(count=args.n_train, shard_size=200, cfg_scale=w), progress=not quiet)
    generate_teacher(bb, f"{work}/teacher_eval", TeacherConfig(count=args.n_eval, first_seed=1_000_000, shard_size=200, cfg_scale=w),
                     progress=not quiet)
    tr, ev = load_teacher(f"{work}/teacher_train", bb), load_teacher(f"{work}/teacher_eval", bb)
    best = best_heuristics(bb, tr, [k])[k]
    done("teacher")

    models = {f"heuristic ({best['name']})": best["model"]}
    for method, label in (("indis", "INDIS"), ("god", "GOD")):
        stage(f"train {label}")
        cfg = TrainConfig(method=method, nfe=k, steps=args.steps, batch_size=16, lr=5e-3, init_schedule=best["name"],
                          val_every=25, ckpt_every=50, hidden=64, conv_width=16, val_fraction=0.2, seed=0, cfg_scale=w)
        train(bb, tr, cfg, f"{work}/{method}_nfe{k}", resume=True, progress=not quiet)
        models[label], _ = load_predictor(f"{work}/{method}_nfe{k}/predictor.safetensors", bb.backbone_id)
        models[label].eval()
        done(f"train {label}")

    stage("evaluate")
    feats = quality_features(bb)  # a latent backbone's samples are decoded first
    rows = evaluate_methods(bb, ev, {name: {k: m} for name, m in models.items()}, features=feats)
    quality_md = markdown_table(rows, "mse") + ("\n" + markdown_table(rows, "fd") if feats is not None else "")
    report["quality"] = rows
    done("evaluate")

    stage("export")
    report["export"] = _export(models["INDIS"], bb, os.path.join(out, "engines"), args.backbone, log)
    done("export")

    stage("fast sampler")
    report["fast_sampler"] = _fast_sample(models["INDIS"], bb, ev, os.path.join(out, "engines"), log)
    done("fast sampler")

    stage("latency")
    # NFE k runs the trained INDIS predictor; the other NFEs an untrained predictor of the same architecture
    # (latency does not depend on its weights), exported the same way so every backend runs the same networks
    lat_nfes = sorted({3, k, 7})
    phis = {n: (models["INDIS"] if n == k else default_predictor(bb, n).eval()) for n in lat_nfes}
    edirs = {k: report["export"]["dir"]}
    for n in lat_nfes:
        if n != k:
            edirs[n] = os.path.join(out, f"engines_latency_nfe{n}")
            export_folder(phis[n], bb, edirs[n], backbone_spec_str=args.backbone, overwrite=True, log=log)
    bench = run_latency(bb, lat_nfes, [args.latency_batch], [b for b in BACKENDS if b != "trt"], engines_dir=edirs,
                        predictor_factory=lambda n: phis[n], reps=20, warmup=2, progress=False)
    paths = write_report(bench, out)
    done("latency")

    stage("grid")
    net = GuidedBackbone(bb, w)
    pos = torch.arange(min(10, len(ev)))
    grid_rows = {name: student_samples(m, net, ev, positions=pos) for name, m in models.items()}
    grid_rows["teacher (30 steps)"] = ev.x0[pos]
    if hasattr(bb, "decode"):  # latents -> pixels with the backbone's VAE
        grid_rows = {name: bb.decode(x) for name, x in grid_rows.items()}
    _grid(grid_rows, os.path.join(out, "grid.png"))
    done("grid")
    bar.close()

    report["timings_s"] = timings
    report["total_s"] = time.time() - t_all
    atomic_write_json(os.path.join(out, "quickstart.json"), report)
    atomic_write_text(os.path.join(out, "quality.md"), quality_md)
    print(f"\nQuality at NFE {k} on {len(ev)} held-out seeds (endpoint MSE to the 30-step teacher"
          + (", Fréchet distance of digits-cnn-v1 features to the teacher's samples" if feats is not None else "") + "):\n")
    print(quality_md)
    print(f"Latency per NFE (batch {args.latency_batch}; ratio = latency / N backbone calls of that backend's runtime):\n")
    print(open(paths["md"]).read())
    for name, fs in report["fast_sampler"]["backends"].items():
        print(f"Fast sampler, {name} backend ({fs['path']}): {report['fast_sampler']['n']} held-out seeds in {fs['total_ms']:.1f} ms, "
              f"max |x0 - PyTorch solver| = {fs['max_abs_diff_vs_torch']:.2e}")
    print(f"\nwrote {out}/grid.png, {out}/quality.md, {paths['md']}, {paths['png']}, {out}/quickstart.json "
          f"in {report['total_s']:.0f} s")
    return 0


def _export(predictor, backbone, out_dir, spec: str, log) -> Dict:
    """ONNX export of predictor and backbone into an engines folder, verified against PyTorch (fp32, 1e-4)."""
    man = export_folder(predictor, backbone, out_dir, backbone_spec_str=spec, overwrite=True, log=log)
    worst = {net: max(v["ort_cpu_max_abs_error"].values()) for net, v in man.get("numerics", {}).items()}
    return {"dir": out_dir, "files": sorted(man["artifacts"]), "ort_max_abs_error_vs_torch": worst}


def _fast_sample(predictor, backbone, teacher, engines_dir, log) -> Dict:
    """Sample held-out seeds with the fast sampler on every backend that runs here, against the PyTorch solver."""
    pos = torch.arange(min(64, len(teacher)))
    x_T, cond, _ = teacher.batch(pos)
    with torch.no_grad():
        ref = sample(backbone, x_T, predictor(x_T, cond), solver="ipndm", cond=cond, state_dtype=torch.float32)
    out: Dict = {"n": len(pos), "backends": {}}
    for backend in (["native"] if native_available() else []) + ["ort"]:
        sampler = Sampler.from_engines(engines_dir, backend=backend, backbone=backbone, log=log)
        x0, timings = sampler(x_T, cond)
        out["backends"][backend] = {"path": timings.path, "max_abs_diff_vs_torch": float((x0 - ref).abs().max()),
                                    "total_ms": timings.total_ms}
    first = next(iter(out["backends"]))
    out["path"], out["max_abs_diff_vs_torch"] = first, out["backends"][first]["max_abs_diff_vs_torch"]
    return out
