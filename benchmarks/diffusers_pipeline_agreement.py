"""Agreement of indis.pipelines with indis.sample, on tiny random diffusers models (no download, CPU, ~1 min).

For each family, a predictor with random head weights (every sample its own timesteps, shifts and scales), 8 seeds,
classifier-free guidance 2 (conditional models): the largest |difference| between
  * IndisPipeline's one batched call (native loop when indis._C is built, and the Python solvers) and indis.sample
    run per sample (batch 1) on the same seeds' x_T, and
  * a diffusers-style loop with IndisScheduler (direct model calls at scheduler.timesteps, no guidance) and
    indis.sample per sample,
relative to the size of the result (in brackets), and the wall time of the batched call against the per-sample loop.
Writes a Markdown table (docs/diffusers.md).

    python benchmarks/diffusers_pipeline_agreement.py [--out benchmarks/results/diffusers_pipeline_agreement.md]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
warnings.filterwarnings("ignore")

from test_diffusers import SD_SCHED, tiny_flux, tiny_sd3, tiny_unet, tiny_unet_cond  # noqa: E402
from test_pipelines import per_sample, random_predictor  # noqa: E402

from indis import sample  # noqa: E402
from indis.backbones.base import CondSpec  # noqa: E402
from indis.backbones.diffusers import DiffusersAdapter, pack_text_cond, require_diffusers  # noqa: E402
from indis.io import atomic_write_text  # noqa: E402
from indis.native import native_available  # noqa: E402
from indis.pipelines import IndisPipeline, IndisScheduler  # noqa: E402
from indis.sampling.seeds import draw  # noqa: E402

SEEDS = list(range(8))


def cases(d):
    """(name, adapter, pipeline call kwargs, condition per seed or None, direct model call (x, t, cond) or None)."""
    g = torch.Generator().manual_seed(0)
    b = len(SEEDS)
    ehs, pooled = torch.randn(b, 5, 16, generator=g), torch.randn(b, 8, generator=g)
    out = []
    unet = tiny_unet(d, channels=3, num_class_embeds=3)
    bb = DiffusersAdapter.from_pretrained(unet, scheduler=d.DDIMScheduler(prediction_type="v_prediction", **SD_SCHED))
    out.append(("UNet2DModel, class labels, v_prediction", bb, {}, None,
                lambda x, t, c, m=unet: m(x, t, class_labels=c.argmax(1)).sample))
    unet = tiny_unet_cond(d, sdxl=True)
    bb = DiffusersAdapter.from_pretrained(unet, scheduler=d.EulerDiscreteScheduler(**SD_SCHED), text_seq_len=5)
    ids = torch.tensor([64.0, 64, 0, 0, 64, 64]).expand(b, -1)
    out.append(("UNet2DConditionModel (SDXL)", bb, dict(prompt_embeds=ehs, pooled_prompt_embeds=pooled),
                pack_text_cond(ehs, pooled),
                lambda x, t, c, m=unet: m(x, t, encoder_hidden_states=ehs,
                                          added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample))
    model = tiny_sd3(d)
    bb = DiffusersAdapter.from_pretrained(model, scheduler=d.FlowMatchEulerDiscreteScheduler(shift=3.0), text_seq_len=5)
    out.append(("SD3Transformer2DModel, shift 3", bb, dict(prompt_embeds=ehs, pooled_prompt_embeds=pooled),
                pack_text_cond(ehs, pooled),
                lambda x, t, c, m=model: m(hidden_states=x, timestep=t, encoder_hidden_states=ehs,
                                           pooled_projections=pooled).sample))
    model = tiny_flux(d)
    bb = DiffusersAdapter.from_pretrained(model, scheduler=d.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True),
                                          data_shape=(4, 8, 8), text_seq_len=5)
    out.append(("FluxTransformer2DModel, dynamic shift", bb, dict(prompt_embeds=ehs, pooled_prompt_embeds=pooled),
                pack_text_cond(ehs, pooled), None))
    return out


def rel(a, b):
    return f"{(a.double() - b.double()).abs().max().item():.1e} ({b.abs().max().item():.2g})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "diffusers_pipeline_agreement.md"))
    args = ap.parse_args(argv)
    d = require_diffusers()
    torch.set_num_threads(1)
    rows = []
    for name, bb, kw, text_cond, direct in cases(d):
        pred = random_predictor(bb, nfe=5)
        x_T, labels = draw(SEEDS, bb.data_shape, bb.process.prior_std(), bb.cond_spec if text_cond is None else CondSpec())
        cond = labels if text_cond is None else text_cond
        scale = 2.0 if cond is not None else 1.0
        t0 = time.perf_counter()
        want = per_sample(bb, pred, x_T, cond, "ipndm", scale)
        t_ref = time.perf_counter() - t0
        res = {}
        for backend in (("auto", "python") if native_available() else ("python",)):
            ip = IndisPipeline.from_pipe(bb, predictor=pred, solver="ipndm", backend=backend)
            ip(seeds=SEEDS, guidance_scale=scale, output_type="latent", **kw)  # warm-up
            t0 = time.perf_counter()
            out = ip(seeds=SEEDS, guidance_scale=scale, output_type="latent", **kw)
            res[out.timings.path] = (rel(out.images, want), time.perf_counter() - t0)
        sched_err = "-"
        if direct is not None:
            c1 = bb.cond_spec.check(cond, len(SEEDS))
            sch = IndisScheduler.from_backbone(bb, solver="ipndm")
            with torch.no_grad():
                disc = pred(x_T, c1)
                sch.set_timesteps(discretization=disc)
                x = x_T
                for t in sch.timesteps:
                    x = sch.step(direct(sch.scale_model_input(x, t), t, c1), t, x).prev_sample
                ref = torch.cat([sample(bb, x_T[i: i + 1], disc.timesteps[i], dtau=disc.dtau[i], gamma=disc.gamma[i],
                                        solver="ipndm", cond=None if c1 is None else c1[i: i + 1]) for i in range(len(SEEDS))])
            sched_err = rel(x, ref)
        nat = res.get("native", ("-", None))
        py = res["python"]
        speed = " / ".join(f"{v[1] * 1e3:.0f}" for v in (nat, py) if v[1] is not None)
        rows.append(f"| {name} | {scale:g} | {nat[0]} | {py[0]} | {sched_err} | {speed} / {t_ref * 1e3:.0f} |")
        print(rows[-1], flush=True)
    import diffusers

    head = (f"diffusers {diffusers.__version__}, torch {torch.__version__}, tiny random models, CPU, 1 thread; "
            f"{len(SEEDS)} seeds, NFE 5, iPNDM, a predictor with random head weights (per-sample timesteps, dtau, gamma); "
            "max |difference| of the latents (max |x0| in brackets)\n\n"
            "| model | guidance | batched call, native loop vs indis.sample per sample | batched call, Python solvers vs "
            "indis.sample per sample | IndisScheduler loop vs indis.sample per sample | ms: batched native / batched "
            "Python / per-sample loop |\n|---|---|---|---|---|---|\n")
    atomic_write_text(args.out, head + "\n".join(rows) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
