"""Ablations of the paper's Fig. 5 on one backbone and NFE: INDIS, without instance conditioning (phi sees no x_T:
with an unconditional backbone that is one learned global set, i.e. GOD), without shifts, without scales.

  python benchmarks/ablations_fig5.py --backbone bundled --nfe 5 --work /tmp/indis_quality

Reuses the teacher sets of benchmarks/quality_vs_nfe.py in WORK/<backbone>/ (run that first) and its training
settings; evaluation on the held-out seeds: endpoint MSE and digits-cnn-v1 Fréchet distance to the teacher.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from indis.engines.spec import resolve_backbone  # noqa: E402
from indis.evaluate import best_heuristics, evaluate_methods, markdown_table  # noqa: E402
from indis.sampling.load import load_predictor  # noqa: E402
from indis.training.teacher import load_teacher  # noqa: E402
from indis.training.train import TrainConfig, train  # noqa: E402

VARIANTS = {"INDIS": {}, "w/o shift": {"no_shift": True}, "w/o scale": {"no_scale": True},
            "w/o shift and scale": {"no_shift": True, "no_scale": True}, "w/o instance (GOD)": {"method": "god"}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="bundled")
    ap.add_argument("--nfe", type=int, default=5)
    ap.add_argument("--work", default="/tmp/indis_quality")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    bb = resolve_backbone(a.backbone)
    work = os.path.join(a.work, a.backbone)
    tr, ev = load_teacher(f"{work}/teacher_train", bb), load_teacher(f"{work}/teacher_eval", bb)
    best = best_heuristics(bb, tr, [a.nfe])[a.nfe]
    models = {f"best heuristic ({best['name']})": best["model"]}
    for name, over in VARIANTS.items():
        cfg = dict(method="indis", nfe=a.nfe, steps=a.steps, batch_size=16, lr=5e-3, init_schedule=best["name"],
                   val_every=25, ckpt_every=100, hidden=64, conv_width=16, val_fraction=0.2, seed=0)
        cfg.update(over)
        out = os.path.join(work, "ablation_" + name.replace(" ", "_").replace("/", "").replace("(", "").replace(")", ""))
        train(bb, tr, TrainConfig(**cfg), out, resume=True, progress=False)
        models[name], _ = load_predictor(f"{out}/predictor.safetensors", bb.backbone_id)
        models[name].eval()
    feats = None
    if tuple(bb.data_shape) == (1, 16, 16):
        from indis.metrics.fid import digits_features

        feats = digits_features
    rows = evaluate_methods(bb, ev, {k: {a.nfe: m} for k, m in models.items()}, features=feats)
    print(markdown_table(rows, "mse"))
    if feats is not None:
        print(markdown_table(rows, "fd"))


if __name__ == "__main__":
    main()
