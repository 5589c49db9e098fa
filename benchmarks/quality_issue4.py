"""Quality per NFE (issue 4): best heuristic / GOD / LD3 / INDIS against a 30-step iPNDM teacher.

  python benchmarks/quality_issue4.py --backbone ideal   --work /tmp/indis_q4
  python benchmarks/quality_issue4.py --backbone bundled --work /tmp/indis_q4

Per backbone: a training teacher set (seeds 0..n_train-1) and a held-out evaluation teacher set (seeds from
1,000,000), both 30-step iPNDM with the polynomial (rho = 7) schedule. Per NFE, the best heuristic of
{uniform, logsnr, polynomial} is chosen on the training teacher set by endpoint MSE; GOD, LD3 and INDIS start
from it and are trained with the same loop, loss, steps and batch. Evaluation on the held-out seeds: endpoint MSE
to the teacher, and Frechet distances (digits-cnn-v1 features, indis.metrics.fid) of the student samples to
(a) the teacher's samples of the same seeds and (b) the held-out real digits. Writes
benchmarks/results/issue4_<backbone>.{json,md} and a Fig. 7-style plot of INDIS's timesteps.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from indis.evaluate import best_heuristics, evaluate_methods, markdown_table, plot_timesteps, predictor_overhead, write_results  # noqa: E402
from indis.training.cli import load_backbone_spec  # noqa: E402
from indis.training.teacher import TeacherConfig, generate_teacher, load_teacher  # noqa: E402
from indis.training.train import TrainConfig, heuristic, split_indices, train  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", required=True)
    ap.add_argument("--work", default="/tmp/indis_q4")
    ap.add_argument("--n-train", type=int, default=600)
    ap.add_argument("--n-eval", type=int, default=500)
    ap.add_argument("--nfe", type=int, nargs="+", default=[3, 5, 7])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", nargs="+", default=["god", "ld3", "indis"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    bb = load_backbone_spec(a.backbone)
    work = os.path.join(a.work, a.backbone)
    t0 = time.time()
    generate_teacher(bb, f"{work}/teacher_train", TeacherConfig(count=a.n_train, shard_size=200), progress=False)
    generate_teacher(bb, f"{work}/teacher_eval", TeacherConfig(count=a.n_eval, first_seed=1_000_000, shard_size=250), progress=False)
    t_teacher = time.time() - t0
    tr, ev = load_teacher(f"{work}/teacher_train", bb), load_teacher(f"{work}/teacher_eval", bb)
    best = best_heuristics(bb, tr, a.nfe)
    methods = {h: {k: heuristic(bb, h, k) for k in a.nfe} for h in ("uniform", "logsnr", "polynomial")}
    methods["best heuristic"] = {k: best[k]["model"] for k in a.nfe}
    train_info = {}
    for m in a.methods:
        methods[m] = {}
        for k in a.nfe:
            cfg = TrainConfig(method=m, nfe=k, steps=a.steps, batch_size=a.batch, lr=a.lr, init_schedule=best[k]["name"],
                              val_every=25, ckpt_every=100, hidden=64, conv_width=16, val_fraction=0.2, seed=0)
            t1 = time.time()
            meta = train(bb, tr, cfg, f"{work}/{m}_nfe{k}", progress=False)
            from indis.predictor import load_predictor

            model, _ = load_predictor(f"{work}/{m}_nfe{k}/predictor.safetensors", bb.backbone_id)
            methods[m][k] = model.eval()
            train_info[f"{m}_nfe{k}"] = {"seconds": time.time() - t1, "initial_val": meta["metrics"]["initial_val"],
                                         "best_val": meta["metrics"]["best_val"], "best_step": meta["metrics"]["best_step"], "params": meta["params"]}
            print(m, k, train_info[f"{m}_nfe{k}"], flush=True)
    feats = None
    ref_data = None
    try:
        from indis.data.digits import load_digits_split
        from indis.metrics.fid import digits_features, frechet_distance

        if tuple(bb.data_shape) == (1, 16, 16):
            feats = digits_features
            ref_data = load_digits_split("heldout")[0]
    except ImportError:
        pass
    rows = evaluate_methods(bb, ev, methods, features=feats)
    if feats is not None:
        rf = feats(ref_data)
        # Frechet distance to the held-out real digits
        from indis.evaluate import student_samples
        from indis.training.teacher import GuidedBackbone

        net = GuidedBackbone(bb)
        for r in rows:
            x0 = student_samples(methods[r["method"]][r["nfe"]], net, ev)
            r["fd_data"] = float(frechet_distance(feats(x0), rf))
        teacher_fd_data = float(frechet_distance(feats(ev.x0), rf))
    else:
        teacher_fd_data = None
    if "indis" in methods:
        k = a.nfe[0]
        pos = torch.arange(min(64, len(ev)))
        x_T, cond, _ = ev.batch(pos)
        os.makedirs("benchmarks/results", exist_ok=True)
        plot_timesteps(methods["indis"][k], x_T, cond, f"benchmarks/results/issue4_{a.backbone}_timesteps_nfe{k}.png",
                       reference=methods["best heuristic"][k].timesteps, title=f"INDIS NFE {k} on {a.backbone}: 64 held-out seeds")
        over = predictor_overhead(methods["indis"][a.nfe[1] if len(a.nfe) > 1 else k], bb, batch=64)
    else:
        over = None
    meta = {"backbone": a.backbone, "backbone_id": bb.backbone_id, "n_train_teacher": a.n_train, "n_eval_teacher": a.n_eval,
            "teacher": "ipndm 30 steps, polynomial rho=7, float64 state", "train": {"steps": a.steps, "batch": a.batch, "lr": a.lr, "loss": "mse"},
            "best_heuristic": {k: {"name": best[k]["name"], "train_mse": best[k]["scores"]} for k in a.nfe},
            "teacher_seconds": t_teacher, "training": train_info, "teacher_fd_to_heldout_data": teacher_fd_data, "overhead": over,
            "threads": a.threads}
    write_results(f"benchmarks/results/issue4_{a.backbone}", rows, meta, metrics=("mse", "fd", "fd_data"))
    print(open(f"benchmarks/results/issue4_{a.backbone}.md").read())
    print(json.dumps({k: v for k, v in meta.items() if k != "training"}, indent=1))


if __name__ == "__main__":
    main()
