"""diffusers models in INDIS (indis.backbones.diffusers): imports, timesteps, prediction types, loading, families.
Every model is a tiny randomly initialised one built here; nothing is downloaded."""
import importlib.util
import math
import subprocess
import sys

import pytest
import torch

from helpers import LTX_SCHED, SD_SCHED, tiny_flux, tiny_ltx, tiny_sd3, tiny_unet, tiny_unet_cond, tiny_vae

HAS_DIFFUSERS = importlib.util.find_spec("diffusers") is not None


@pytest.mark.skipif(not HAS_DIFFUSERS, reason="diffusers is not installed (pip install indis[diffusers])")
def test_diffusers_models_import_without_indis():
    """In the README's venv the diffusers model classes import in a fresh interpreter, without indis hiding a broken
    torchvision first (the install does not bring torchvision: lpips is installed with --no-deps)."""
    code = ("import sys; from diffusers import UNet2DModel, UNet2DConditionModel, SD3Transformer2DModel, "
            "FluxTransformer2DModel; assert 'indis' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


# the beta schedules of DDPM (linear), Stable Diffusion 1.x/2.x (scaled_linear), improved DDPM (cosine), and
# zero-terminal-SNR rescaling
DDPM_SCHEDULES = {
    "linear": {},
    "scaled_linear": dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
    "zero_snr": dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", rescale_betas_zero_snr=True),
}


@pytest.mark.parametrize("name", sorted(DDPM_SCHEDULES))
def test_ddpm_unet_is_called_at_diffusers_timesteps(diffusers, name):
    """For the same noise levels, the adapter calls a DDPM-style UNet at the timesteps diffusers' own scheduler uses
    (EulerDiscreteScheduler: log-sigma interpolation over the discrete alphas_cumprod), and returns its output."""
    from indis.backbones.diffusers import DiffusersAdapter

    unet = tiny_unet(diffusers)
    sched = diffusers.EulerDiscreteScheduler(**DDPM_SCHEDULES[name])
    bb = DiffusersAdapter(unet, (2, 8, 8), scheduler=sched)
    p = bb.process
    assert p.name == "vp_linear" and bb.prediction_type == "eps" and bb.model_prediction_type == "epsilon"
    # the fitted process spans the discrete noise levels: sigma_max at T, sigma_min at t0
    s_disc = ((1 - sched.alphas_cumprod) / sched.alphas_cumprod) ** 0.5
    assert float(p.ve_sigma(torch.tensor(p.T, dtype=torch.float64))) == pytest.approx(float(s_disc[-1]), rel=1e-5)
    assert float(p.ve_sigma(torch.tensor(p.t0, dtype=torch.float64))) == pytest.approx(float(s_disc[0]), rel=1e-5)
    ts = torch.cat([torch.linspace(p.T, p.t0, 9, dtype=torch.float64), torch.tensor([0.37, 0.0101])]).sort(descending=True).values
    sched.set_timesteps(sigmas=p.ve_sigma(ts).tolist())  # N+1 sigmas -> timesteps of the first N
    want_t = sched.timesteps.double()
    got_t = bb.model_timesteps(ts[:-1])
    assert (got_t - want_t).abs().max() < 2e-3, (got_t, want_t)
    x = torch.randn(len(ts) - 1, 2, 8, 8)
    with torch.no_grad():
        out = bb(x, ts[:-1].float())
        want = unet(x, sched.timesteps).sample
    assert (out - want).abs().max() < 1e-4


def test_issue_example_timesteps(diffusers):
    """The issue's example: on INDIS's uniform VP-linear times 1, 0.7502, 0.5005, 0.2507 (called at t*1000 before),
    diffusers calls a DDPM UNet at 995.6, 747.5, 498.9, 249.9; so does the adapter now (default DDPM schedule)."""
    from indis.backbones.diffusers import DiffusersAdapter

    bb = DiffusersAdapter(tiny_unet(diffusers), (2, 8, 8), process="vp_linear", prediction_type="epsilon")
    ts = torch.linspace(1.0, 1e-3, 5, dtype=torch.float64)
    t = ts[:-1]
    sched = diffusers.EulerDiscreteScheduler()
    sched.set_timesteps(sigmas=bb.process.ve_sigma(ts).tolist())
    assert sched.timesteps.tolist() == pytest.approx([995.6, 747.5, 498.9, 249.9], abs=0.06)
    assert (bb.model_timesteps(t) - sched.timesteps.double()).abs().max() < 2e-3


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction", "sample"])
def test_euler_loop_equals_diffusers_euler_scheduler(diffusers, ptype):
    """The whole Euler loop: INDIS's solver through the adapter equals diffusers' EulerDiscreteScheduler driving the
    same UNet at the same N+1 sigmas, for each of diffusers' VP prediction types (v_prediction: v = alpha eps -
    sigma x0). INDIS works on x = alpha y, diffusers on y = x / alpha."""
    from indis import sample
    from indis.backbones.diffusers import DiffusersAdapter

    unet = tiny_unet(diffusers, seed=1)
    cfg = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type=ptype)
    sched = diffusers.EulerDiscreteScheduler(**cfg)
    bb = DiffusersAdapter(unet, (2, 8, 8), scheduler=sched.config)
    assert bb.model_prediction_type == ptype and bb.prediction_type == {"v_prediction": "eps", "sample": "x0"}.get(ptype, "eps")
    p = bb.process
    ts = torch.tensor([p.T, 0.8, 0.55, 0.3, 0.12, p.t0], dtype=torch.float64)
    sig = p.ve_sigma(ts)
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64) * sig[0]  # diffusers' VE-scaled prior
    sched.set_timesteps(sigmas=sig.tolist())
    assert len(sched.timesteps) == 5
    with torch.no_grad():
        yd = y.float()
        for t in sched.timesteps:
            out = unet(sched.scale_model_input(yd, t), t).sample
            yd = sched.step(out, t, yd).prev_sample
        x_indis = sample(bb, y * p.alpha(ts[0]), ts, solver="euler", state_dtype=torch.float64)
    x_diff = yd.double() * p.alpha(ts[-1])
    err = (x_indis - x_diff).abs().max().item()
    assert err < 2e-4 * max(1.0, x_diff.abs().max().item()), err


def test_v_prediction_round_trip(diffusers):
    """diffusers' v = alpha eps - sigma x0: the adapter's eps and the x0 INDIS derives from it give back the
    network's v and diffusers' own pred_original_sample."""
    from indis.backbones.diffusers import DiffusersAdapter

    unet = tiny_unet(diffusers, seed=2)
    sched = diffusers.EulerDiscreteScheduler(prediction_type="v_prediction")
    bb = DiffusersAdapter(unet, (2, 8, 8), scheduler=sched)
    p = bb.process
    ts = torch.tensor([0.9, 0.4, 0.05], dtype=torch.float64)
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    a, s = p.alpha(ts).view(-1, 1, 1, 1), p.sigma(ts).view(-1, 1, 1, 1)
    with torch.no_grad():
        eps = bb(x, ts)
        v = unet(x.float(), bb.model_timesteps(ts).float()).sample.double()
    x0 = p.to_x0(eps, x, ts, "eps")
    assert (a * eps - s * x0 - v).abs().max() < 1e-5
    assert (a * v + s * x - eps).abs().max() < 1e-5
    sched.set_timesteps(sigmas=(p.ve_sigma(ts)).tolist())
    for i, t in enumerate(sched.timesteps):
        y = (x[i: i + 1] / a[i]).float()
        sched._step_index = i  # one step from sigma_i: its pred_original_sample is diffusers' x0 from v
        with torch.no_grad():
            x0_d = sched.step(v[i: i + 1].float(), t, y).pred_original_sample
        assert (x0_d.double() - x0[i: i + 1]).abs().max() < 1e-4


def test_prediction_type_names(diffusers):
    from indis.backbones.diffusers import DiffusersAdapter

    unet = tiny_unet(diffusers)
    for name, internal in [("epsilon", "eps"), ("sample", "x0"), ("v_prediction", "eps"), ("eps", "eps"), ("x0", "x0")]:
        assert DiffusersAdapter(unet, (2, 8, 8), process="vp_linear", prediction_type=name).prediction_type == internal
    flow = DiffusersAdapter(unet, (2, 8, 8), process="flow", prediction_type="flow_prediction")
    assert flow.prediction_type == "velocity" and flow.timestep_scale == 1000.0 and flow.discrete is None
    with pytest.raises(ValueError, match="variance-preserving"):
        DiffusersAdapter(unet, (2, 8, 8), process="flow", prediction_type="v_prediction")
    with pytest.raises(ValueError, match="unknown prediction type 'v'.*epsilon"):
        DiffusersAdapter(unet, (2, 8, 8), process="vp_linear", prediction_type="v")
    with pytest.raises(ValueError, match="discrete timesteps"):
        DiffusersAdapter(unet, (2, 8, 8), scheduler=diffusers.DDPMScheduler(), timestep_scale=1000.0)
    # the scheduler's own class gives alphas_cumprod (DDIM, PNDM read the same config keys)
    for cls in (diffusers.DDIMScheduler, diffusers.PNDMScheduler, diffusers.DDPMScheduler):
        s = cls(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
        bb = DiffusersAdapter(unet, (2, 8, 8), scheduler=s)
        assert torch.allclose(bb.discrete.log_sigmas.exp().float(), ((1 - s.alphas_cumprod) / s.alphas_cumprod) ** 0.5)


def test_discrete_timestep_map_exports_to_onnx(diffusers):
    """The sigma -> discrete timestep map and the v_prediction conversion trace into ONNX and agree with torch."""
    pytest.importorskip("onnxruntime")
    from indis.backbones.diffusers import DiffusersAdapter
    from indis.export.onnx_export import BackboneForExport, backbone_spec, compare_with_torch, export_bytes

    sched = diffusers.EulerDiscreteScheduler(prediction_type="v_prediction")
    bb = DiffusersAdapter(tiny_unet(diffusers), (2, 8, 8), scheduler=sched).eval()
    module, spec = BackboneForExport(bb), backbone_spec(bb)
    errs = compare_with_torch(module, spec, export_bytes(module, spec))
    assert max(errs.values()) < 1e-4, errs


# ------------------------------------------------------------------------------------------------
# loading: from_pretrained (pipeline object, pipeline folder, save_pretrained folder) and --backbone diffusers:PATH
# ------------------------------------------------------------------------------------------------
def test_load_save_pretrained_model_folder(diffusers, tmp_path):
    """A save_pretrained UNet folder: data shape from its config, diffusers' default DDPM schedule, same id and
    outputs as the adapter over the model in memory; --backbone diffusers:PATH gives the same backbone."""
    from indis.backbones.diffusers import DiffusersAdapter
    from indis.backbones.spec import resolve_backbone

    unet = tiny_unet(diffusers)
    unet.save_pretrained(str(tmp_path / "unet"))
    bb = DiffusersAdapter.from_pretrained(str(tmp_path / "unet"))
    assert bb.data_shape == (2, 8, 8) and bb.kind == "unet" and bb.vae is None
    assert bb.discrete is not None and bb.model_prediction_type == "epsilon" and bb.process.name == "vp_linear"
    ref = DiffusersAdapter.from_pretrained(unet)
    assert bb.backbone_id == ref.backbone_id
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([0.9, 0.2])
    with torch.no_grad():
        assert torch.equal(bb(x, t), ref(x, t))
    cli = resolve_backbone(f"diffusers:{tmp_path / 'unet'}")
    assert cli.backbone_id == bb.backbone_id and not cli.training
    with pytest.raises(FileNotFoundError, match="looks like a diffusers folder.*--backbone diffusers:"):
        resolve_backbone(str(tmp_path / "unet"))  # was: "missing backbone file unet/model.safetensors"
    # a scheduler_config.json beside the model's config is used
    diffusers.DDIMScheduler(prediction_type="v_prediction").save_pretrained(str(tmp_path / "unet"))
    assert DiffusersAdapter.from_pretrained(str(tmp_path / "unet")).model_prediction_type == "v_prediction"


def test_class_conditional_unet(diffusers):
    """A UNet2DModel with a class embedding table: n_classes from its config, labels passed as class_labels."""
    from indis.backbones.diffusers import DiffusersAdapter

    unet = tiny_unet(diffusers, num_class_embeds=3)
    bb = DiffusersAdapter.from_pretrained(unet)
    assert bb.cond_spec.kind == "class" and bb.cond_spec.dim == 3
    x, t, labels = torch.randn(3, 2, 8, 8), torch.tensor([0.9, 0.5, 0.1]), torch.tensor([2, 0, 1])
    with torch.no_grad():
        assert (bb(x, t, labels) - unet(x, bb.model_timesteps(t), class_labels=labels).sample).abs().max() < 1e-5


def test_load_ddpm_pipeline_folder_and_object(diffusers, tmp_path):
    """A pipeline folder (model_index.json, unet/, scheduler/): the scheduler config gives the discrete schedule and
    the prediction type; the pipeline object gives the same backbone."""
    from indis.backbones.diffusers import DiffusersAdapter
    from indis.backbones.spec import resolve_backbone

    sched = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                    prediction_type="v_prediction")
    pipe = diffusers.DDPMPipeline(unet=tiny_unet(diffusers), scheduler=sched)
    pipe.save_pretrained(str(tmp_path / "pipe"))
    assert (tmp_path / "pipe" / "model_index.json").is_file()
    bb = DiffusersAdapter.from_pretrained(str(tmp_path / "pipe"))
    assert bb.model_prediction_type == "v_prediction" and bb.prediction_type == "eps"
    assert bb.discrete.config["beta_schedule"] == "scaled_linear"
    assert bb.discrete.sigma_max == pytest.approx(float(((1 - sched.alphas_cumprod[-1]) / sched.alphas_cumprod[-1]) ** 0.5), rel=1e-6)
    assert DiffusersAdapter.from_pretrained(pipe).backbone_id == bb.backbone_id
    assert resolve_backbone(f"diffusers:{tmp_path / 'pipe'}").backbone_id == bb.backbone_id
    # what changes the model's maths changes the id
    other = DiffusersAdapter.from_pretrained(pipe, scheduler=diffusers.DDIMScheduler(prediction_type="v_prediction"))
    assert other.backbone_id != bb.backbone_id


def test_load_sd3_pipeline_folder(diffusers, tmp_path):
    """An SD3 pipeline folder without text encoders: the transformer, the flow scheduler's shift and timestep scale,
    the condition layout from the config, and the VAE for decoding (not part of the backbone id)."""
    pytest.importorskip("transformers")
    from indis.backbones.diffusers import DiffusersAdapter, pack_text_cond

    model, vae = tiny_sd3(diffusers), tiny_vae(diffusers, shift_factor=0.1, scaling_factor=1.5)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = diffusers.StableDiffusion3Pipeline(transformer=model, scheduler=sched, vae=vae, text_encoder=None,
                                              tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                              text_encoder_3=None, tokenizer_3=None)
    pipe.save_pretrained(str(tmp_path / "sd3"))
    bb = DiffusersAdapter.from_pretrained(str(tmp_path / "sd3"), text_seq_len=5)
    assert bb.kind == "transformer" and bb.process.name == "flow" and bb.prediction_type == "velocity"
    assert bb.model_prediction_type == "flow_prediction" and bb.shift == 3.0 and bb.timestep_scale == 1000.0
    assert bb.data_shape == (4, 8, 8) and bb.cond_spec.dim == 5 * 16 + 8
    assert bb.vae is not None and "vae" not in dict(bb.named_children())
    assert bb.backbone_id == DiffusersAdapter.from_pretrained(str(tmp_path / "sd3"), text_seq_len=5, load_vae=False).backbone_id
    ehs, pooled = torch.randn(2, 5, 16), torch.randn(2, 8)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        out = bb(x, torch.tensor([0.3, 0.8]), pack_text_cond(ehs, pooled))
        want = model(hidden_states=x, timestep=torch.tensor([300.0, 800.0]), encoder_hidden_states=ehs,
                     pooled_projections=pooled).sample
        assert (out - want).abs().max() < 1e-5
        img = bb.decode(x)
        assert img.shape == (2, 3, 16, 16)
        assert torch.allclose(img, vae.decode(x / 1.5 + 0.1).sample, atol=1e-5)


def test_dynamic_shifting_follows_the_pipeline(diffusers):
    """A FLUX-style scheduler (use_dynamic_shifting): the shift is exp(mu) with the pipelines' mu for the latent's
    number of image tokens, the same map sigma -> s sigma / (1 + (s - 1) sigma) that the scheduler applies."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    from indis.backbones.diffusers import DiffusersAdapter, flow_shift

    cfg = dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(**cfg)
    for tokens in (64, 1024, 4096):
        mu = calculate_shift(tokens, 256, 4096, 0.5, 1.15)
        assert flow_shift(dict(sched.config), tokens) == pytest.approx(math.exp(mu), rel=1e-12)
    bb = DiffusersAdapter(tiny_sd3(diffusers), (4, 64, 64), text_seq_len=5, text_dim=16, pooled_dim=8, scheduler=sched)
    mu = calculate_shift(32 * 32, 256, 4096, 0.5, 1.15)  # SD3-style patch 2: (64 / 2)^2 tokens
    assert bb.shift == pytest.approx(math.exp(mu))
    base = torch.linspace(0.988, 0.002, 6, dtype=torch.float64)
    sched.set_timesteps(sigmas=base[:-1].tolist(), mu=mu)
    s = bb.shift
    assert torch.allclose(sched.sigmas[:-1].double(), s * base[:-1] / (1 + (s - 1) * base[:-1]), atol=1e-6)


def test_loading_errors(diffusers, tmp_path):
    from indis.backbones.diffusers import DiffusersAdapter
    from indis.backbones.spec import resolve_backbone

    with pytest.raises(FileNotFoundError, match="never downloads"):
        DiffusersAdapter.from_pretrained("stabilityai/stable-diffusion-3-medium-diffusers")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        resolve_backbone("diffusers:no/such/folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        DiffusersAdapter.from_pretrained(str(tmp_path / "empty"))
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text('{"_class_name": "X", "vae": ["diffusers", "AutoencoderKL"]}')
    with pytest.raises(ValueError, match="no denoiser"):
        DiffusersAdapter.from_pretrained(str(tmp_path / "pipe"))
    with pytest.raises(ValueError, match="no `transformer` or `unet`"):
        DiffusersAdapter.from_pretrained(object())


# ------------------------------------------------------------------------------------------------
# families: the adapter's forward against a direct diffusers call, each with a tiny random configuration
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction"])
def test_sd_unet2dcondition(diffusers, ptype):
    """SD 1.x (epsilon) / 2.x-v (v_prediction): the UNet gets encoder_hidden_states at diffusers' timesteps."""
    from indis.backbones.diffusers import DiffusersAdapter, pack_text_cond

    unet = tiny_unet_cond(diffusers)
    sched = diffusers.EulerDiscreteScheduler(prediction_type=ptype, **SD_SCHED)
    bb = DiffusersAdapter.from_pretrained(unet, scheduler=sched, text_seq_len=5)
    assert bb.kind == "unet_text" and bb.data_shape == (4, 8, 8) and bb.cond_spec.dim == 5 * 16
    p = bb.process
    ts = torch.tensor([p.T, 0.6, 0.2, p.t0], dtype=torch.float64)
    sched.set_timesteps(sigmas=p.ve_sigma(ts).tolist())
    x, ehs = torch.randn(3, 4, 8, 8, dtype=torch.float64), torch.randn(3, 5, 16)
    with torch.no_grad():
        out = bb(x, ts[:-1], pack_text_cond(ehs))
        raw = unet(x.float(), sched.timesteps, encoder_hidden_states=ehs).sample.double()
    if ptype == "v_prediction":
        raw = p.alpha(ts[:-1]).view(-1, 1, 1, 1) * raw + p.sigma(ts[:-1]).view(-1, 1, 1, 1) * x
    assert (out - raw).abs().max() < 1e-4
    with pytest.raises(ValueError, match="pooled_dim must be 0"):
        DiffusersAdapter(unet, (4, 8, 8), text_seq_len=5, text_dim=16, pooled_dim=8)
    with pytest.raises(ValueError, match="takes no text condition"):
        DiffusersAdapter(tiny_unet(diffusers), (2, 8, 8), text_seq_len=5, text_dim=16)


def test_sdxl_added_conditions(diffusers, tmp_path):
    """SDXL: text_embeds (the pooled vector, part of the condition) and time_ids (from the latent size and the VAE's
    scale factor, part of the adapter's config) go in as added_cond_kwargs."""
    from indis.backbones.diffusers import DiffusersAdapter, pack_text_cond

    unet, vae = tiny_unet_cond(diffusers, sdxl=True), tiny_vae(diffusers)
    pipe = diffusers.StableDiffusionXLPipeline(vae=vae, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                               tokenizer_2=None, unet=unet,
                                               scheduler=diffusers.EulerDiscreteScheduler(**SD_SCHED))
    bb = DiffusersAdapter.from_pretrained(pipe, text_seq_len=5)
    assert bb.kind == "unet_text" and bb.pooled_dim == 8 and bb.time_ids == (16.0, 16.0, 0.0, 0.0, 16.0, 16.0)
    ehs, pooled = torch.randn(2, 5, 16), torch.randn(2, 8)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([0.9, 0.3])
    ids = torch.tensor([[16.0, 16, 0, 0, 16, 16]]).expand(2, -1)
    with torch.no_grad():
        out = bb(x, t, pack_text_cond(ehs, pooled))
        want = unet(x, bb.model_timesteps(t), encoder_hidden_states=ehs,
                    added_cond_kwargs={"text_embeds": pooled, "time_ids": ids}).sample
        assert (out - want).abs().max() < 1e-5
        other = DiffusersAdapter.from_pretrained(pipe, text_seq_len=5, time_ids=(32, 32, 0, 0, 32, 32))
        assert (other(x, t, pack_text_cond(ehs, pooled)) - out).abs().max() > 1e-6
    assert other.backbone_id != bb.backbone_id
    with pytest.raises(ValueError, match="pooled"):
        DiffusersAdapter(unet, (4, 8, 8), text_seq_len=5, text_dim=16)


@pytest.mark.parametrize("guidance_embeds", [True, False])
def test_flux_transformer(diffusers, guidance_embeds):
    """FLUX: latents packed 2x2 into tokens with img_ids / txt_ids as FluxPipeline does, timestep = sigma, the
    guidance embedding; the adapter's [B, C, H, W] output equals the pipeline's unpacked transformer output.
    (Before: "mat1 and mat2 shapes cannot be multiplied".)"""
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    from indis.backbones.diffusers import DiffusersAdapter, pack_text_cond

    model = tiny_flux(diffusers, guidance_embeds)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=256,
                                                      max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)
    kw = dict(guidance=2.5) if guidance_embeds else {}
    bb = DiffusersAdapter.from_pretrained(model, scheduler=sched, data_shape=(4, 8, 6), text_seq_len=5, **kw)
    assert bb.kind == "flux" and bb.timestep_scale == 1.0 and bb.prediction_type == "velocity"
    assert bb.guidance == (2.5 if guidance_embeds else None) and bb.shift > 0
    b, (c, h, w) = 3, bb.data_shape
    x, ehs, pooled = torch.randn(b, c, h, w), torch.randn(b, 5, 16), torch.randn(b, 8)
    t = torch.tensor([0.95, 0.5, 0.1])
    with torch.no_grad():
        out = bb(x, t, pack_text_cond(ehs, pooled))
        packed = FluxPipeline._pack_latents(x, b, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype)
        extra = dict(guidance=torch.full((b,), 2.5)) if guidance_embeds else {}
        raw = model(hidden_states=packed, timestep=t, encoder_hidden_states=ehs, pooled_projections=pooled,
                    img_ids=img_ids, txt_ids=torch.zeros(5, 3), **extra).sample
        want = FluxPipeline._unpack_latents(raw, h * 8, w * 8, 8)
    assert out.shape == (b, c, h, w) and (out - want).abs().max() < 1e-5
    with pytest.raises(ValueError, match="even H and W"):
        DiffusersAdapter(model, (4, 7, 8), text_seq_len=5, text_dim=16, pooled_dim=8)
    if not guidance_embeds:
        with pytest.raises(ValueError, match="no guidance embedding"):
            DiffusersAdapter(model, (4, 8, 8), text_seq_len=5, text_dim=16, pooled_dim=8, guidance=3.0)


def test_flux_euler_loop_equals_diffusers_scheduler(diffusers):
    """The whole loop on FLUX: INDIS's Euler through the adapter equals FlowMatchEulerDiscreteScheduler stepping the
    packed latents with the same sigmas (N+1 values; the scheduler's own shift left at 1)."""
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    from indis import sample
    from indis.backbones.diffusers import DiffusersAdapter, pack_text_cond

    model = tiny_flux(diffusers, seed=1)
    bb = DiffusersAdapter.from_pretrained(model, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
                                          data_shape=(4, 8, 8), text_seq_len=5)
    b, (c, h, w) = 2, bb.data_shape
    cond = pack_text_cond(torch.randn(b, 5, 16), torch.randn(b, 8))
    ts = torch.tensor([0.988, 0.7, 0.45, 0.2, 0.002], dtype=torch.float64)
    x_T = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(0))
    sched = diffusers.FlowMatchEulerDiscreteScheduler()
    sched.set_timesteps(sigmas=ts[:-1].tolist())  # the flow scheduler takes N sigmas and appends 0 ...
    sched.sigmas[-1] = float(ts[-1])  # ... INDIS stops at t0
    ehs, pooled = bb._text(cond, torch.float32)
    img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x_T.device, x_T.dtype)
    lat = FluxPipeline._pack_latents(x_T, b, c, h, w)
    with torch.no_grad():
        for t in sched.timesteps:
            v = model(hidden_states=lat, timestep=t.expand(b) / 1000, encoder_hidden_states=ehs, pooled_projections=pooled,
                      img_ids=img_ids, txt_ids=torch.zeros(5, 3), guidance=torch.full((b,), 3.5)).sample
            lat = sched.step(v, t, lat).prev_sample
        x_indis = sample(bb, x_T, ts.float(), solver="euler", cond=cond, state_dtype=torch.float32)
    x_diff = FluxPipeline._unpack_latents(lat, h * 8, w * 8, 8)
    assert (x_indis - x_diff).abs().max() < 1e-4


def test_sd_and_flux_pipeline_folders(diffusers, tmp_path):
    """Pipeline folders saved without text encoders load by path: the denoiser, its kind and condition layout,
    the scheduler (SD: discrete scaled_linear; FLUX: dynamic shift for the latent size) and the VAE."""
    pytest.importorskip("transformers")
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    from indis.backbones.diffusers import DiffusersAdapter

    sd = diffusers.StableDiffusionPipeline(vae=tiny_vae(diffusers), text_encoder=None, tokenizer=None,
                                           unet=tiny_unet_cond(diffusers), scheduler=diffusers.PNDMScheduler(steps_offset=1, **SD_SCHED),
                                           safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sd.save_pretrained(str(tmp_path / "sd"))
    bb = DiffusersAdapter.from_pretrained(str(tmp_path / "sd"))
    assert bb.kind == "unet_text" and bb.text_seq_len == 77 and bb.text_dim == 16 and bb.pooled_dim == 0
    assert bb.discrete.config["beta_schedule"] == "scaled_linear" and bb.vae is not None
    flux = diffusers.FluxPipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True),
                                  vae=tiny_vae(diffusers, latent_channels=4), text_encoder=None, tokenizer=None,
                                  text_encoder_2=None, tokenizer_2=None, transformer=tiny_flux(diffusers))
    flux.save_pretrained(str(tmp_path / "flux"))
    bb = DiffusersAdapter.from_pretrained(str(tmp_path / "flux"), text_seq_len=5)
    assert bb.kind == "flux" and bb.data_shape == (4, 128, 128) and bb.guidance == 3.5 and bb.timestep_scale == 1.0
    assert bb.shift == pytest.approx(math.exp(calculate_shift(64 * 64, 256, 4096, 0.5, 1.15)))
    small = DiffusersAdapter.from_pretrained(str(tmp_path / "flux"), text_seq_len=5, data_shape=(4, 16, 16))
    assert small.shift == pytest.approx(math.exp(calculate_shift(8 * 8, 256, 4096, 0.5, 1.15)))


# ------------------------------------------------------------------------------------------------
# sigma lists for diffusers' schedulers (indis.export.sigmas): configured exactly or refused, never re-shifted
# ------------------------------------------------------------------------------------------------
ISSUE_FLOW_SIGMAS = [0.988, 0.9475, 0.7209, 0.1513, 0.002]  # the issue's INDIS schedule (N = 4) and t0


def test_sd3_shifted_scheduler_is_configured_not_reshifted(diffusers):
    """SD3's default scheduler (shift 3.0) turned [0.988, 0.9475, 0.7209, 0.1513] into [0.996, 0.9818, 0.8857,
    0.3484]; the list from scheduler_sigmas is the pre-image under its shift, so it steps through INDIS's values."""
    from indis.export.sigmas import scheduler_sigmas, set_indis_sigmas

    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(sigmas=ISSUE_FLOW_SIGMAS[:-1])  # the old way: silently re-shifted
    assert sched.sigmas[:4].tolist() == pytest.approx([0.996, 0.9818, 0.8857, 0.3484], abs=1e-3)
    sched.set_timesteps(sigmas=scheduler_sigmas(sched, ISSUE_FLOW_SIGMAS))
    assert sched.sigmas.tolist() == pytest.approx(ISSUE_FLOW_SIGMAS[:-1] + [0.0], abs=1e-6)
    assert len(sched.timesteps) == 4
    set_indis_sigmas(sched, ISSUE_FLOW_SIGMAS)
    assert sched.sigmas.tolist() == pytest.approx(ISSUE_FLOW_SIGMAS, abs=1e-6)  # ends at t0 as INDIS


def test_flux_dynamic_shifting_scheduler(diffusers):
    """A FLUX-style scheduler (use_dynamic_shifting) failed with "`mu` must be passed": set_indis_sigmas gives it the
    identity mu; for a pipeline (which computes mu from the image size) scheduler_sigmas pre-images under that mu."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    from indis.export.sigmas import scheduler_sigmas, set_indis_sigmas

    sched = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=256,
                                                      max_image_seq_len=4096, base_shift=0.5, max_shift=1.15)
    set_indis_sigmas(sched, ISSUE_FLOW_SIGMAS)
    assert sched.sigmas.tolist() == pytest.approx(ISSUE_FLOW_SIGMAS, abs=1e-6)
    with pytest.raises(ValueError, match="image_seq_len"):
        scheduler_sigmas(sched, ISSUE_FLOW_SIGMAS)
    tokens = 32 * 32
    pre = scheduler_sigmas(sched, ISSUE_FLOW_SIGMAS, image_seq_len=tokens)
    sched.set_timesteps(sigmas=pre, mu=calculate_shift(tokens, 256, 4096, 0.5, 1.15))  # what FluxPipeline does
    assert sched.sigmas[:-1].tolist() == pytest.approx(ISSUE_FLOW_SIGMAS[:-1], abs=1e-6)


def test_euler_and_edm_euler_lengths(diffusers):
    """EulerDiscreteScheduler takes N+1 sigmas and runs N steps (an N-value list ran N-1); EDMEulerScheduler reads
    ramp positions (INDIS's [80, 10, 1, 0.1] read as a ramp gave -2.6e14), so it gets the ramp that gives them."""
    from indis.export.sigmas import scheduler_sigmas, set_indis_sigmas

    edm = [80.0, 10.0, 1.0, 0.1, 0.002]
    euler = diffusers.EulerDiscreteScheduler()
    euler.set_timesteps(sigmas=scheduler_sigmas(euler, edm))
    assert len(euler.timesteps) == 4 and euler.sigmas.tolist() == pytest.approx(edm, rel=1e-6)
    ed = diffusers.EDMEulerScheduler()
    ramp = scheduler_sigmas(ed, edm)
    assert len(ramp) == 4 and ramp[0] == pytest.approx(0.0, abs=1e-12)
    set_indis_sigmas(ed, edm)
    assert len(ed.timesteps) == 4 and ed.sigmas.tolist() == pytest.approx(edm, rel=1e-5)
    with pytest.raises(ValueError, match="sigma_schedule='karras'"):
        scheduler_sigmas(diffusers.EDMEulerScheduler(sigma_schedule="exponential"), edm)


def test_unsupported_schedulers_are_refused(diffusers):
    from indis.export.sigmas import scheduler_sigmas, set_indis_sigmas

    with pytest.raises(ValueError, match="DPMSolverMultistepScheduler: INDIS can fill the sigmas of"):
        scheduler_sigmas(diffusers.DPMSolverMultistepScheduler(), [80.0, 1.0, 0.002])
    with pytest.raises(ValueError, match="use_karras_sigmas=True re-derives"):
        set_indis_sigmas(diffusers.FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True), ISSUE_FLOW_SIGMAS)
    with pytest.raises(ValueError, match="shift_terminal"):
        scheduler_sigmas(diffusers.FlowMatchEulerDiscreteScheduler(shift_terminal=0.1), ISSUE_FLOW_SIGMAS)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        scheduler_sigmas(diffusers.FlowMatchEulerDiscreteScheduler(), [80.0, 1.0, 0.002])
    with pytest.raises(ValueError, match="strictly decreasing"):
        scheduler_sigmas(diffusers.EulerDiscreteScheduler(), [1.0, 2.0, 0.5])


def test_sd3_per_sample_loop_in_the_shifted_scheduler_equals_indis(diffusers):
    """End to end on SD3 with its own shift-3 scheduler: per-seed INDIS sigmas, set_indis_sigmas, diffusers' loop
    equals INDIS's Euler sampler through the adapter."""
    from indis import sample
    from indis.backbones.diffusers import DiffusersAdapter, pack_text_cond
    from indis.export.sigmas import set_indis_sigmas

    model = tiny_sd3(diffusers, seed=4)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    bb = DiffusersAdapter.from_pretrained(model, scheduler=sched, text_seq_len=5)
    ehs, pooled = torch.randn(1, 5, 16), torch.randn(1, 8)
    g = torch.Generator().manual_seed(5)
    for ts in ([0.988, 0.9475, 0.7209, 0.1513, 0.002], [0.97, 0.8, 0.5, 0.3, 0.1, 0.002]):
        x_T = torch.randn(1, 4, 8, 8, generator=g)
        set_indis_sigmas(sched, ts)
        x = x_T
        with torch.no_grad():
            for t in sched.timesteps:
                v = model(hidden_states=x, timestep=t.expand(1), encoder_hidden_states=ehs, pooled_projections=pooled).sample
                x = sched.step(v, t, x).prev_sample
            want = sample(bb, x_T, torch.tensor(ts), solver="euler", cond=pack_text_cond(ehs, pooled))
        assert (x - want).abs().max() < 1e-4


@pytest.mark.parametrize("family", ["sdxl", "sd3", "sd35", "flux", "ltx"])
def test_text_families_export_to_onnx(diffusers, family):
    """SDXL (added conditions), SD3, SD3.5-style (qk_norm="rms_norm": aten::rms_norm, which opset 17 lacks, has a
    symbolic), FLUX (rms_norm, and diffusers' rotary embedding, which the tracer records with the export's batch
    size, replaced while tracing by an equal batch-free one) and LTX-Video (its rotary embedding, whose
    repeat_interleave(dim=-1) corrupts the graph's shared -1 constant in the exporter, replaced while tracing by its
    bit-equal values for the latent shape) adapters trace into ONNX with a dynamic batch and agree with torch at
    batch sizes other than the traced one."""
    pytest.importorskip("onnxruntime")
    from indis.backbones.diffusers import DiffusersAdapter
    from indis.export.onnx_export import BackboneForExport, backbone_spec, compare_with_torch, export_bytes

    if family == "sdxl":
        bb = DiffusersAdapter.from_pretrained(tiny_unet_cond(diffusers, sdxl=True),
                                              scheduler=diffusers.EulerDiscreteScheduler(**SD_SCHED), text_seq_len=5)
    elif family == "flux":
        import diffusers.models.transformers.transformer_flux as flux_module
        from diffusers.models.embeddings import apply_rotary_emb

        from indis.backbones.diffusers import rotary_emb_traceable

        g = torch.Generator().manual_seed(0)
        x, cos, sin = torch.randn(3, 22, 2, 8, generator=g), torch.randn(22, 8, generator=g), torch.randn(22, 8, generator=g)
        for dim in (1, 2):
            xx = x if dim == 1 else x.transpose(1, 2)
            assert torch.equal(rotary_emb_traceable(xx, (cos, sin), sequence_dim=dim),
                               apply_rotary_emb(xx, (cos, sin), sequence_dim=dim))
        bb = DiffusersAdapter.from_pretrained(tiny_flux(diffusers), data_shape=(4, 8, 8), text_seq_len=6,
                                              scheduler=diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True))
    elif family == "ltx":
        bb = DiffusersAdapter.from_pretrained(tiny_ltx(diffusers), data_shape=(4, 3, 4, 6), text_seq_len=5,
                                              scheduler=diffusers.FlowMatchEulerDiscreteScheduler(**LTX_SCHED))
        x = torch.randn(3, 1, 1)
        with bb.export_context():  # the rotary embedding inside the context: the same values, bit for bit
            inside = bb.model.rope(x, 3, 4, 6, bb.rope_interpolation_scale)
        outside = bb.model.rope(x, 3, 4, 6, bb.rope_interpolation_scale)
        assert "forward" not in vars(bb.model.rope)
        assert all(torch.equal(a, b) for a, b in zip(inside, outside)) and inside[0].shape[0] == 3
    else:
        bb = DiffusersAdapter.from_pretrained(tiny_sd3(diffusers, qk_norm="rms_norm" if family == "sd35" else None),
                                              scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), text_seq_len=5)
    module, spec = BackboneForExport(bb.eval()), backbone_spec(bb)
    errs = compare_with_torch(module, spec, export_bytes(module, spec))
    assert max(errs.values()) < 1e-4, errs
    if family == "flux":  # the export context is left
        assert flux_module.apply_rotary_emb is apply_rotary_emb


def test_cli_pipeline_folder_end_to_end(diffusers, tmp_path, capsys):
    """--backbone diffusers:PATH through the whole workflow on a DDPM pipeline folder (v_prediction, scaled_linear):
    teacher -> train -> export (with per-seed sigmas for EulerDiscreteScheduler) -> sample from the export folder."""
    pytest.importorskip("onnxruntime")
    import json

    from indis.cli import main

    sched = diffusers.DDIMScheduler(prediction_type="v_prediction", **SD_SCHED)
    diffusers.DDPMPipeline(unet=tiny_unet(diffusers, channels=1), scheduler=sched).save_pretrained(str(tmp_path / "pipe"))
    d, spec = str(tmp_path), f"diffusers:{tmp_path / 'pipe'}"
    common = ["--backbone", spec, "--no-progress", "--threads", "1"]
    assert main(["teacher", *common, "--out", f"{d}/t", "--count", "16", "--steps", "8"]) == 0
    assert main(["train", *common, "--teacher", f"{d}/t", "--out", f"{d}/r", "--nfe", "3", "--steps", "3",
                 "--batch-size", "8", "--hidden", "16", "--conv-width", "8"]) == 0
    assert main(["export", "--backbone", spec, "--predictor", f"{d}/r/predictor.safetensors", "--out", f"{d}/e",
                 "--sigmas-seeds", "0-2"]) == 0
    doc = json.loads((tmp_path / "e" / "sigmas.json").read_text())
    assert doc["version"] == 2 and doc["process"]["name"] == "vp_linear"
    for row in doc["samples"]:
        assert row["diffusers"]["scheduler"] == "EulerDiscreteScheduler" and len(row["diffusers"]["sigmas"]) == 4
    from indis.native import native_available

    for backend in ("ort", "native") if native_available() else ("ort",):
        # the manifest names only registry backbones: the native backend runs the torch network given here
        backbone = ["--backbone", spec] if backend == "native" else []
        assert main(["sample", "--engines", f"{d}/e", "--backend", backend, *backbone, "--seeds", "0-3",
                     "--out", f"{d}/s_{backend}.png"]) == 0
        assert (tmp_path / f"s_{backend}.png").is_file()
    capsys.readouterr()


def test_export_sigmas_of_a_text_model_with_a_prompt_table(diffusers, tmp_path, capsys):
    """`indis export --sigmas-seeds` on a text model: without --prompt-table it stops before writing anything, with a
    message naming --prompt-table (it used to fail after the ONNX files, leaving a folder without a manifest); with
    one, every sigmas.json row names the prompt its seed drew (the same stream as indis.sampling.seeds) and the
    table's id is recorded."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("transformers")
    import json

    from indis.backbones.diffusers import DiffusersAdapter
    from indis.cli import main
    from indis.export.sigmas import prompt_table_sha256
    from indis.io import save_tensors
    from indis.predictor import save_predictor
    from indis.sampling.seeds import unit_noise_and_index
    from indis.training.train import TrainConfig, build_model

    pipe = diffusers.StableDiffusion3Pipeline(transformer=tiny_sd3(diffusers), vae=tiny_vae(diffusers),
                                              scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
                                              text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                              text_encoder_3=None, tokenizer_3=None)
    pipe.save_pretrained(str(tmp_path / "sd3"))
    spec = f"diffusers:{tmp_path / 'sd3'}"
    bb = DiffusersAdapter.from_pretrained(str(tmp_path / "sd3"))
    save_predictor(tmp_path / "p.safetensors", build_model(TrainConfig(nfe=3, hidden=16, conv_width=8), bb),
                   {"backbone_id": bb.backbone_id, "solver": "ipndm"})  # untrained; phi pools the text condition
    args = ["export", "--backbone", spec, "--predictor", str(tmp_path / "p.safetensors"), "--sigmas-seeds", "0-5",
            "--threads", "1"]
    assert main([*args, "--out", str(tmp_path / "e0")]) != 0
    assert "--prompt-table" in capsys.readouterr().err
    assert not any((tmp_path / "e0").glob("*")) if (tmp_path / "e0").exists() else True
    table = torch.randn(3, bb.cond_spec.dim, generator=torch.Generator().manual_seed(0))
    save_tensors(tmp_path / "table.safetensors", {"table": table})
    assert main([*args, "--out", str(tmp_path / "e"), "--prompt-table", str(tmp_path / "table.safetensors")]) == 0
    doc = json.loads((tmp_path / "e" / "sigmas.json").read_text())
    want = unit_noise_and_index(list(range(6)), bb.data_shape, 3)[1].tolist()
    assert [r["prompt_index"] for r in doc["samples"]] == want and len(set(want)) > 1
    assert doc["prompt_table"] == {"count": 3, "sha256": prompt_table_sha256(table)}
    capsys.readouterr()


# ------------------------------------------------------------------------------------------------
# video: LTX-Video's transformer on 5-D latents [B, C, F, H, W]
# ------------------------------------------------------------------------------------------------
def test_ltx_video_transformer_equals_a_direct_diffusers_call(diffusers):
    """LTXVideoTransformer3DModel: the adapter packs [B, C, F, H, W] latents to tokens, calls the transformer at
    timestep 1000 sigma with LTXPipeline's rope interpolation scale and an all-ones text mask, and unpacks, exactly
    as LTXPipeline (_pack_latents / _unpack_latents); dynamic shifting is keyed on F * H * W tokens."""
    from diffusers import LTXPipeline
    from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

    from indis.backbones.diffusers import DiffusersAdapter, pack_text_cond

    model = tiny_ltx(diffusers)
    bb = DiffusersAdapter.from_pretrained(model, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(**LTX_SCHED),
                                          data_shape=(4, 3, 6, 6), text_seq_len=5)
    assert bb.kind == "video" and bb.cond_spec.dim == 5 * 16 and bb.process.name == "flow"
    assert bb.shift == pytest.approx(math.exp(calculate_shift(3 * 6 * 6, 1024, 4096, 0.95, 2.05)))
    g = torch.Generator().manual_seed(0)
    x, ehs, t = torch.randn(2, 4, 3, 6, 6, generator=g), torch.randn(2, 5, 16, generator=g), torch.tensor([0.7, 0.2])
    with torch.no_grad():
        v = model(hidden_states=LTXPipeline._pack_latents(x, 1, 1), encoder_hidden_states=ehs, timestep=1000 * t,
                  encoder_attention_mask=torch.ones(2, 5), num_frames=3, height=6, width=6,
                  rope_interpolation_scale=(8 / 25, 32, 32), return_dict=False)[0]
        want = LTXPipeline._unpack_latents(v, 3, 6, 6, 1, 1)
        assert torch.equal(bb.predict(x, t, pack_text_cond(ehs)), want)
        assert bb(x, t, pack_text_cond(ehs)).shape == (2, 4, 3, 6, 6)
    with pytest.raises(ValueError, match=r"\[C, F, H, W\]"):
        DiffusersAdapter.from_pretrained(model, data_shape=(4, 6, 6), text_seq_len=5)
    with pytest.raises(ValueError, match=r"data_shape=\(C, F, H, W\)"):
        DiffusersAdapter.from_pretrained(model, text_seq_len=5)


def test_predictor_takes_video_priors_and_keeps_images_unchanged():
    """phi's encoder takes [B, C, F, H, W] (frames folded into channels); for [C, H, W] it is the same module with
    the same parameters and outputs as before (the 5-D branch is not entered)."""
    from indis.backbones.base import CondSpec
    from indis.discretization import DiscretizationParam
    from indis.predictor import Predictor
    from indis.processes import get_process

    param = DiscretizationParam(get_process("flow"), 3)
    torch.manual_seed(0)
    video = Predictor(param, (4, 3, 8, 8), CondSpec("text", 6), hidden=16, conv_width=8)
    assert video.encoder.convs[0].in_channels == 12
    x = torch.randn(2, 4, 3, 8, 8)
    d = video(x, torch.randn(2, 6))
    assert d.timesteps.shape == (2, 4)
    feat = video.encoder(x)
    assert torch.equal(feat, video.encoder(x.flatten(1, 2)))
    torch.manual_seed(0)
    img = Predictor(param, (4, 8, 8), CondSpec("text", 6), hidden=16, conv_width=8)
    assert [k for k in img.state_dict()] == [k for k in video.state_dict()]
    with pytest.raises(ValueError, match="square frames"):
        Predictor(param, (4, 3, 8, 6), hidden=16)
