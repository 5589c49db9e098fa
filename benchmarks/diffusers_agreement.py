"""Agreement of INDIS's diffusers adapter with diffusers itself, on tiny random models (no download, CPU, ~1 min).

For each family: the largest |difference| between the adapter's output and a direct diffusers call at the
timesteps diffusers' own scheduler uses for the same noise levels, and between a 5-step Euler run of INDIS through
the adapter and diffusers' scheduler loop on the same noise levels (configured with indis.export.sigmas
set_indis_sigmas, so that a shifted scheduler is not re-shifting). Writes a Markdown table (docs/diffusers.md).

    python benchmarks/diffusers_agreement.py [--out benchmarks/results/diffusers_agreement.md]
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
warnings.filterwarnings("ignore")

from test_diffusers import SD_SCHED, tiny_flux, tiny_sd3, tiny_unet, tiny_unet_cond  # noqa: E402

from indis import sample  # noqa: E402
from indis.backbones.diffusers import DiffusersAdapter, pack_text_cond, require_diffusers  # noqa: E402
from indis.export.sigmas import set_indis_sigmas, tool_sigmas  # noqa: E402
from indis.io import atomic_write_text  # noqa: E402


def flux_call(model, bb, x, t_model, cond):
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    b, (c, h, w) = x.shape[0], bb.data_shape
    ehs, pooled = bb._text(cond, torch.float32)
    out = model(hidden_states=FluxPipeline._pack_latents(x, b, c, h, w), timestep=t_model, encoder_hidden_states=ehs,
                pooled_projections=pooled, img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype),
                txt_ids=torch.zeros(bb.text_seq_len, 3), guidance=torch.full((b,), bb.guidance)).sample
    return FluxPipeline._unpack_latents(out, h * 8, w * 8, 8)


def cases(d):
    """(name, adapter, scheduler, direct call (x, scheduler timestep, cond) -> raw output, cond or None)."""
    torch.manual_seed(0)
    text = pack_text_cond(torch.randn(4, 5, 16))
    text_pooled = pack_text_cond(torch.randn(4, 5, 16), torch.randn(4, 8))
    out = []
    for ptype in ("epsilon", "v_prediction", "sample"):
        unet = tiny_unet(d)
        s = d.EulerDiscreteScheduler(prediction_type=ptype)
        out.append((f"UNet2DModel, DDPM linear, {ptype}", DiffusersAdapter.from_pretrained(unet, scheduler=s), s,
                    lambda x, t, c, m=unet: m(x, t).sample, None))
    for ptype in ("epsilon", "v_prediction"):
        unet = tiny_unet_cond(d)
        s = d.EulerDiscreteScheduler(prediction_type=ptype, **SD_SCHED)
        out.append((f"UNet2DConditionModel (SD 1.x/2.x), {ptype}",
                    DiffusersAdapter.from_pretrained(unet, scheduler=s, text_seq_len=5), s,
                    lambda x, t, c, m=unet: m(x, t, encoder_hidden_states=c.reshape(-1, 5, 16)).sample, text))
    unet = tiny_unet_cond(d, sdxl=True)
    s = d.EulerDiscreteScheduler(**SD_SCHED)
    bb = DiffusersAdapter.from_pretrained(unet, scheduler=s, text_seq_len=5, time_ids=(64, 64, 0, 0, 64, 64))
    ids = torch.tensor([[64.0, 64, 0, 0, 64, 64]])
    out.append(("UNet2DConditionModel (SDXL added conditions)", bb, s,
                lambda x, t, c, m=unet: m(x, t, encoder_hidden_states=c[:, :80].reshape(-1, 5, 16),
                                          added_cond_kwargs={"text_embeds": c[:, 80:], "time_ids": ids.expand(len(x), -1)}).sample,
                text_pooled))
    model = tiny_sd3(d)
    s = d.FlowMatchEulerDiscreteScheduler(shift=3.0)
    out.append(("SD3Transformer2DModel, shift 3", DiffusersAdapter.from_pretrained(model, scheduler=s, text_seq_len=5), s,
                lambda x, t, c, m=model: m(hidden_states=x, timestep=t, encoder_hidden_states=c[:, :80].reshape(-1, 5, 16),
                                           pooled_projections=c[:, 80:]).sample, text_pooled))
    model = tiny_flux(d)
    s = d.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    bb = DiffusersAdapter.from_pretrained(model, scheduler=s, data_shape=(4, 8, 8), text_seq_len=5)
    out.append(("FluxTransformer2DModel, dynamic shift, guidance", bb, s,
                lambda x, t, c, m=model, bb=bb: flux_call(m, bb, x, t / 1000, c), text_pooled))
    return out


def scheduler_prediction_to_eps(bb, raw, x, t):
    """The adapter returns its INDIS prediction type; turn the raw diffusers output into the same quantity."""
    if bb.model_prediction_type == "v_prediction":
        a, s = bb.process.alpha(t).view(-1, 1, 1, 1), bb.process.sigma(t).view(-1, 1, 1, 1)
        return a * raw + s * x
    return raw


@torch.no_grad()
def measure(d):
    rows = []
    for name, bb, sched, direct, cond in cases(d):
        p = bb.process
        T, t0 = p.T, p.t0
        ts = torch.tensor([T, *(t0 + f * (T - t0) for f in (0.75, 0.5, 0.3, 0.1)), t0], dtype=torch.float64)
        sig = tool_sigmas(p, ts)
        set_indis_sigmas(sched, sig.tolist())
        x = torch.randn(len(ts) - 1, *bb.data_shape, generator=torch.Generator().manual_seed(1))
        c4 = None if cond is None else cond[:1].expand(len(ts) - 1, -1)
        tsched = sched.timesteps
        t_err = float("nan") if bb.discrete is None else (bb.model_timesteps(ts[:-1]) - tsched.double()).abs().max().item()
        raw = direct(x, tsched.float(), c4).double()
        mine = bb(x.double(), ts[:-1], c4).double()
        o_err = (mine - scheduler_prediction_to_eps(bb, raw, x.double(), ts[:-1])).abs().max().item()
        # the whole Euler loop, one sample: diffusers' scheduler vs INDIS
        c1 = None if cond is None else cond[:1]
        x_T = torch.randn(1, *bb.data_shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * p.prior_std()
        flow = p.name == "flow"  # diffusers' state: x for flow matching, x / alpha (VE-scaled) for VP
        y = (x_T if flow else x_T / p.alpha(ts[0])).float()
        for t in sched.timesteps:
            inp = y if flow else sched.scale_model_input(y, t)
            y = sched.step(direct(inp, t.expand(1), c1), t, y).prev_sample
        x_d = y.double() if flow else y.double() * p.alpha(ts[-1])
        x_i = sample(bb, x_T, ts, solver="euler", cond=c1, state_dtype=torch.float64)
        l_err = (x_i - x_d).abs().max().item()
        rows.append((name, type(sched).__name__, bb.process.name, t_err, o_err, l_err, x_d.abs().max().item()))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/diffusers_agreement.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    d = require_diffusers()
    rows = measure(d)
    lines = [f"diffusers {d.__version__}, torch {torch.__version__}, tiny random models, CPU, float32 networks; "
             "max |difference| over 5 noise levels (one sample each) (output) and one 5-step Euler run (loop)", "",
             "| model | scheduler | INDIS process | timestep vs scheduler | output vs direct call | Euler loop vs scheduler loop (max abs x0) |",
             "|---|---|---|---|---|---|"]
    for name, sched, proc, t_err, o_err, l_err, scale in rows:
        t_s = "-" if t_err != t_err else f"{t_err:.1e}"
        lines.append(f"| {name} | {sched} | {proc} | {t_s} | {o_err:.1e} | {l_err:.1e} ({scale:.2g}) |")
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
