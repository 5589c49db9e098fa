"""indis.pipelines: IndisPipeline (per-sample schedules for a whole batch in one call) and IndisScheduler (a user's
own loop), on tiny random diffusers models built here (test_diffusers' builders); nothing is downloaded.

Tolerances: the batched call and indis.sample per sample differ only by float32 rounding (batched network calls,
the native loop's fused update): max |difference| <= 1e-4 * max(1, max |x0|) on latents / pixel outputs."""
import json

import pytest
import torch

from helpers import SD_SCHED, tiny_flux, tiny_sd3, tiny_unet, tiny_unet_cond, tiny_vae

pytest.importorskip("diffusers")


def random_predictor(bb, nfe=4, seed=0, b_dtau=0.05, b_gamma=0.05):
    """An untrained predictor whose head has random weights, so that every sample gets its own schedule, shifts and
    scales (a zero head gives one schedule for all)."""
    from indis.discretization import DiscretizationParam
    from indis.predictor import Predictor

    torch.manual_seed(seed)
    p = Predictor(DiscretizationParam(bb.process, nfe, b_dtau=b_dtau, b_gamma=b_gamma), bb.data_shape, bb.cond_spec,
                  hidden=16, conv_width=8)
    torch.nn.init.normal_(p.head.weight, std=0.5)
    return p.eval()


def close(a, b, tol=1e-4):
    err = (a.double() - b.double()).abs().max().item()
    assert err <= tol * max(1.0, b.abs().max().item()), err
    return err


def per_sample(bb, pred, x_T, cond, solver, scale=1.0, null=None):
    """indis.sample one sample at a time (batch 1), with the same guidance: the reference of the batched call."""
    from indis import sample
    from indis.sampling.guidance import GuidedBackbone

    out = []
    with torch.no_grad():
        for i in range(x_T.shape[0]):
            c = None if cond is None else cond[i: i + 1]
            net = GuidedBackbone(bb, scale, null_cond=None if null is None else null[i: i + 1])
            out.append(sample(net, x_T[i: i + 1], pred(x_T[i: i + 1], c), solver=solver, cond=c, state_dtype=torch.float32))
    return torch.cat(out)


def class_unet_pipe(diffusers):
    unet = tiny_unet(diffusers, channels=3, num_class_embeds=3)
    return diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(prediction_type="v_prediction", **SD_SCHED))


@pytest.mark.parametrize("backend", ["auto", "python"])
@pytest.mark.parametrize("solver", ["ipndm", "dpmpp_2m"])
def test_class_unet_batched_call_equals_indis_sample(diffusers, backend, solver):
    """Class-conditional UNet2DModel (pixel space, v_prediction, scaled_linear): seeds -> per-seed x_T and labels as
    `indis sample`; each sample's own schedule; guidance 2 in one doubled batch; one call equals indis.sample per
    sample; output types pil / np / pt / latent."""
    from indis.backbones.diffusers import DiffusersAdapter
    from indis.pipelines import IndisPipeline
    from indis.sampling.seeds import draw

    pipe = class_unet_pipe(diffusers)
    bb = DiffusersAdapter.from_pretrained(pipe)
    pred = random_predictor(bb)
    ip = IndisPipeline.from_pipe(pipe, predictor=pred, solver=solver, backend=backend)
    seeds = [0, 1, 2, 3, 7]
    out = ip(seeds=seeds, guidance_scale=2.0, output_type="latent")
    ts = out.discretization.timesteps
    assert ts.shape == (5, 5) and (ts[:, 1:-1].std(0) > 1e-3).all()  # the samples' schedules differ
    x_T, labels = draw(seeds, bb.data_shape, bb.process.prior_std(), bb.cond_spec)
    want = per_sample(bb, pred, x_T, labels, solver, 2.0)
    close(out.images, want)
    if backend == "auto":
        from indis.native import native_available

        assert out.timings.path == ("native" if native_available() else "python")
    # generators seeded with the seeds give the same noise and labels
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    assert torch.equal(ip(generator=gens, guidance_scale=2.0, output_type="latent").images, out.images)
    # explicit labels
    lab = torch.tensor([2, 2, 0, 1, 0])
    close(ip(seeds=seeds, class_labels=lab, output_type="latent").images, per_sample(bb, pred, x_T, lab, solver))
    # output types: pixel space, [-1, 1] -> [0, 1]
    pt = ip(seeds=seeds, guidance_scale=2.0, output_type="pt").images
    assert pt.shape == (5, 3, 8, 8) and pt.min() >= 0 and pt.max() <= 1
    close(pt, (want / 2 + 0.5).clamp(0, 1))
    assert ip(seeds=seeds[:2], output_type="np").images.shape == (2, 8, 8, 3)
    pil = ip(seeds=seeds[:2], output_type="pil").images
    assert len(pil) == 2 and pil[0].size == (8, 8) and pil[0].mode == "RGB"


def sd3_pipe(diffusers):
    pytest.importorskip("transformers")
    return diffusers.StableDiffusion3Pipeline(transformer=tiny_sd3(diffusers, seed=4), vae=tiny_vae(diffusers, shift_factor=0.1, scaling_factor=1.5),
                                              scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
                                              text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                              text_encoder_3=None, tokenizer_3=None)


def test_sd3_prompt_embeds_guidance_and_vae(diffusers, tmp_path):
    """SD3 pipeline (flow, shift 3) without text encoders: prompt_embeds + pooled, two images per prompt, guidance
    with negative embeddings as the unconditional half; latents equal indis.sample per sample; pixels are the VAE
    decode; a pipeline folder and a predictor.safetensors path give the same images."""
    from indis.backbones.diffusers import DiffusersAdapter, pack_text_cond
    from indis.pipelines import IndisPipeline
    from indis.predictor import save_predictor
    from indis.sampling.seeds import prior_noise

    pipe = sd3_pipe(diffusers)
    pred = random_predictor(DiffusersAdapter.from_pretrained(pipe, text_seq_len=5), seed=1)
    ip = IndisPipeline.from_pipe(pipe, predictor=pred, text_seq_len=5, solver="ipndm")
    bb = ip.backbone
    g = torch.Generator().manual_seed(0)
    pe, pp = torch.randn(2, 5, 16, generator=g), torch.randn(2, 8, generator=g)
    npe, npp = torch.randn(2, 5, 16, generator=g), torch.randn(2, 8, generator=g)
    seeds = [3, 4, 5, 6]
    kw = dict(prompt_embeds=pe, pooled_prompt_embeds=pp, negative_prompt_embeds=npe, negative_pooled_prompt_embeds=npp,
              num_images_per_prompt=2, seeds=seeds, guidance_scale=1.5)
    out = ip(output_type="latent", **kw)
    x_T = prior_noise(seeds, bb.data_shape, bb.process.prior_std())
    cond = pack_text_cond(pe, pp).repeat_interleave(2, 0)
    null = pack_text_cond(npe, npp).repeat_interleave(2, 0)
    want = per_sample(bb, pred, x_T, cond, "ipndm", 1.5, null)
    close(out.images, want)
    assert not torch.allclose(out.images, per_sample(bb, pred, x_T, cond, "ipndm", 1.5), atol=1e-3)  # negatives used
    pt = ip(output_type="pt", **kw).images
    assert pt.shape == (4, 3, 16, 16)
    close(pt, (bb.decode(want) / 2 + 0.5).clamp(0, 1))
    # from files: the pipeline folder and the predictor file
    pipe.save_pretrained(str(tmp_path / "sd3"))
    save_predictor(tmp_path / "p.safetensors", pred, {"backbone_id": bb.backbone_id, "solver": "ipndm"})
    ip2 = IndisPipeline.from_pipe(str(tmp_path / "sd3"), predictor=str(tmp_path / "p.safetensors"), text_seq_len=5)
    assert ip2.solver == "ipndm" and ip2.backbone.backbone_id == bb.backbone_id
    close(ip2(output_type="latent", **kw).images, out.images, 1e-6)
    with pytest.raises(ValueError, match="text encoders.*prompt_embeds"):
        ip2(prompt=["a cat"], seeds=[0])
    with pytest.raises(ValueError, match=r"prompt_embeds must have shape \[B, 5, 16\]"):
        ip(prompt_embeds=torch.randn(1, 7, 16), pooled_prompt_embeds=pp[:1], seeds=[0])
    with pytest.raises(ValueError, match="batch sizes disagree"):
        ip(prompt_embeds=pe, pooled_prompt_embeds=pp, seeds=[0, 1, 2])


def test_sdxl_unet_batched_call(diffusers):
    """SDXL UNet2DConditionModel (added text_embeds / time_ids), wrapped adapter given directly; guidance 3 against
    the all-zero null condition (INDIS's training convention)."""
    from indis.backbones.diffusers import DiffusersAdapter, pack_text_cond
    from indis.pipelines import IndisPipeline
    from indis.sampling.seeds import prior_noise

    bb = DiffusersAdapter.from_pretrained(tiny_unet_cond(diffusers, sdxl=True),
                                          scheduler=diffusers.EulerDiscreteScheduler(**SD_SCHED), text_seq_len=5)
    pred = random_predictor(bb, nfe=3, seed=2)
    ip = IndisPipeline.from_pipe(bb, predictor=pred, solver="dpmpp_2m")
    pe, pp = torch.randn(3, 5, 16), torch.randn(3, 8)
    out = ip(prompt_embeds=pe, pooled_prompt_embeds=pp, seeds=[0, 1, 2], guidance_scale=3.0, output_type="latent")
    x_T = prior_noise([0, 1, 2], bb.data_shape, bb.process.prior_std())
    close(out.images, per_sample(bb, pred, x_T, pack_text_cond(pe, pp), "dpmpp_2m", 3.0))
    with pytest.raises(ValueError, match="no VAE"):
        ip(prompt_embeds=pe, pooled_prompt_embeds=pp, seeds=[0, 1, 2], output_type="pt")
    # the network in float64: the same images up to float32 rounding
    ip.to("cpu", torch.float64)
    assert next(bb.model.parameters()).dtype == torch.float64 and ip.device.type == "cpu"
    close(ip(prompt_embeds=pe, pooled_prompt_embeds=pp, seeds=[0, 1, 2], guidance_scale=3.0, output_type="latent").images,
          out.images, 1e-3)


def test_trained_predictor_from_the_cli_matches_indis_sample(diffusers, tmp_path):
    """wrap -> teacher -> train (few steps, cfg 1.5) with the CLI on a class-conditional pipeline folder ->
    IndisPipeline.from_pipe(folder, predictor file): the guidance scale and solver come from the predictor's
    metadata; the schedules equal `indis sample`'s timesteps.json and the latents indis.sample per sample."""
    from indis.backbones.diffusers import DiffusersAdapter
    from indis.cli import main
    from indis.pipelines import IndisPipeline
    from indis.sampling.load import load_predictor
    from indis.sampling.seeds import draw

    class_unet_pipe(diffusers).save_pretrained(str(tmp_path / "pipe"))
    d, spec = str(tmp_path), f"diffusers:{tmp_path / 'pipe'}"
    common = ["--backbone", spec, "--no-progress", "--threads", "1"]
    assert main(["teacher", *common, "--out", f"{d}/t", "--count", "12", "--steps", "6", "--cfg-scale", "1.5"]) == 0
    assert main(["train", *common, "--teacher", f"{d}/t", "--out", f"{d}/r", "--nfe", "3", "--steps", "2",
                 "--batch-size", "6", "--hidden", "16", "--conv-width", "8", "--cfg-scale", "1.5"]) == 0
    assert main(["sample", *common, "--predictor", f"{d}/r/predictor.safetensors", "--seeds", "0-3",
                 "--cfg-scale", "1.5", "--out", f"{d}/s.png"]) == 0
    ip = IndisPipeline.from_pipe(str(tmp_path / "pipe"), predictor=f"{d}/r/predictor.safetensors")
    assert ip.guidance_scale == 1.5 and ip.solver == "ipndm"
    out = ip(seeds=[0, 1, 2, 3], output_type="latent")
    ref = json.loads((tmp_path / "s.timesteps.json").read_text())
    assert torch.allclose(out.discretization.timesteps.double(), torch.tensor(ref["timesteps"], dtype=torch.float64), atol=1e-6)
    bb = DiffusersAdapter.from_pretrained(str(tmp_path / "pipe"))
    pred, _ = load_predictor(f"{d}/r/predictor.safetensors", bb.backbone_id)
    x_T, labels = draw([0, 1, 2, 3], bb.data_shape, bb.process.prior_std(), bb.cond_spec)
    close(out.images, per_sample(bb, pred, x_T, labels, "ipndm", 1.5))


# ------------------------------------------------------------------------------------------------
# IndisScheduler: a user's own loop
# ------------------------------------------------------------------------------------------------
def ddpm_unet_and_adapter(diffusers):
    from indis.backbones.diffusers import DiffusersAdapter

    unet = tiny_unet(diffusers, seed=5)
    return unet, DiffusersAdapter.from_pretrained(unet, scheduler=diffusers.EulerDiscreteScheduler(**SD_SCHED))


@pytest.mark.parametrize("solver", ["euler", "ipndm", "dpmpp_2m"])
@pytest.mark.parametrize("family", ["ddpm_unet", "sd3"])
def test_scheduler_loop_equals_indis_sample(diffusers, family, solver):
    """A manual diffusers-style loop (model called at scheduler.timesteps, scheduler.step) over per-sample
    discretizations (timesteps, dtau, gamma from a predictor) equals indis.sample per sample."""
    from indis import sample
    from indis.backbones.diffusers import DiffusersAdapter, pack_text_cond
    from indis.pipelines import IndisScheduler
    from indis.sampling.seeds import prior_noise

    if family == "ddpm_unet":
        model, bb = ddpm_unet_and_adapter(diffusers)
        cond, call = None, lambda x, t: model(x, t).sample
    else:
        model = tiny_sd3(diffusers, seed=6)
        bb = DiffusersAdapter.from_pretrained(model, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
                                              text_seq_len=5)
        ehs, pooled = torch.randn(3, 5, 16), torch.randn(3, 8)
        cond = pack_text_cond(ehs, pooled)
        call = lambda x, t: model(hidden_states=x, timestep=t, encoder_hidden_states=ehs, pooled_projections=pooled).sample
    pred = random_predictor(bb, nfe=4, seed=3)
    x_T = prior_noise([0, 1, 2], bb.data_shape, bb.process.prior_std())
    sched = IndisScheduler.from_backbone(bb, solver=solver)
    with torch.no_grad():
        disc = pred(x_T, cond)
        sched.set_timesteps(discretization=disc)
        assert sched.timesteps.shape == (4, 3)
        x = x_T * sched.init_noise_sigma / bb.process.prior_std()
        for t in sched.timesteps:
            x = sched.step(call(sched.scale_model_input(x, t), t), t, x).prev_sample
        want = torch.cat([sample(bb, x_T[i: i + 1], disc.timesteps[i], dtau=disc.dtau[i], gamma=disc.gamma[i],
                                 solver=solver, cond=None if cond is None else cond[i: i + 1]) for i in range(3)])
    close(x, want, 2e-5)


def test_scheduler_sigmas_config_and_limits(diffusers, tmp_path):
    """sigmas (diffusers' noise levels, VP: sigma / alpha) per sample equal the same process times; a shared schedule
    serves any batch; the config round-trips; misuse is refused with what to do."""
    from indis import sample
    from indis.pipelines import IndisScheduler

    unet, bb = ddpm_unet_and_adapter(diffusers)
    p = bb.process
    ts = torch.tensor([[p.T, 0.6, 0.2, p.t0], [p.T, 0.5, 0.1, p.t0]], dtype=torch.float64)
    x_T = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    sched = IndisScheduler.from_backbone(bb, solver="ipndm")

    def loop(s, x):
        with torch.no_grad():
            for t in s.timesteps:
                x = s.step(unet(x, t.expand(x.shape[0]) if t.dim() == 0 else t).sample, t, x).prev_sample
        return x

    sched.set_timesteps(sigmas=p.ve_sigma(ts))
    x = loop(sched, x_T)
    with torch.no_grad():
        close(x, sample(bb, x_T, ts, solver="ipndm"), 2e-5)
    sched.set_timesteps(timesteps=ts[0])  # shared: [N] timesteps
    assert sched.timesteps.shape == (3,)
    with torch.no_grad():
        close(loop(sched, x_T), sample(bb, x_T, ts[0], solver="ipndm"), 2e-5)
    sched.save_config(str(tmp_path))
    again = IndisScheduler.from_pretrained(str(tmp_path))
    assert again.config.solver == "ipndm" and again.discrete is not None and again.process.config() == p.config()
    sched.set_timesteps(num_inference_steps=5)
    assert len(sched) == 5
    # limits
    sched.set_timesteps(sigmas=p.ve_sigma(ts))
    with pytest.raises(ValueError, match="batch must match"):
        sched.step(torch.zeros(4, 2, 8, 8), sched.timesteps[0].repeat(2), torch.zeros(4, 2, 8, 8))
    with pytest.raises(ValueError, match="expects timestep"):
        sched.step(torch.zeros(2, 2, 8, 8), sched.timesteps[1], torch.zeros(2, 2, 8, 8))
    with pytest.raises(ValueError, match="sigma 0"):
        sched.set_timesteps(sigmas=[14.6, 1.0, 0.0])
    with pytest.raises(ValueError, match="exactly one"):
        sched.set_timesteps(num_inference_steps=4, sigmas=[14.6, 1.0, 0.1])
    with pytest.raises(ValueError, match="UniPC"):
        IndisScheduler.from_backbone(bb, solver="unipc")


def tiny_clip(tmp_path, hidden=16, projection=False, seed=0):
    """A tiny CLIP text encoder and a character-level CLIP tokenizer written here (vocab.json, merges.txt)."""
    transformers = pytest.importorskip("transformers")
    vocab = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}
    vocab.update({c + "</w>": len(vocab) + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tok = transformers.CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=77)
    n = len(vocab)
    cfg = transformers.CLIPTextConfig(vocab_size=n, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=77, projection_dim=hidden // 2,
                                      bos_token_id=n - 2, eos_token_id=n - 1, pad_token_id=n - 1)
    torch.manual_seed(seed)
    cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    return cls(cfg).eval(), tok


@pytest.mark.parametrize("family", ["sd", "sd3"])
def test_prompts_through_the_pipelines_text_encoders(diffusers, family, tmp_path):
    """prompt= / negative_prompt= are encoded with the pipeline's own text encoders (pipe.encode_prompt): the images
    equal those of the same embeddings given as prompt_embeds (SD 1.x: CLIP tokens; SD3: two CLIPs, no T5)."""
    from indis.backbones.diffusers import DiffusersAdapter
    from indis.pipelines import IndisPipeline

    if family == "sd":
        te, tok = tiny_clip(tmp_path)
        pipe = diffusers.StableDiffusionPipeline(vae=tiny_vae(diffusers), text_encoder=te, tokenizer=tok,
                                                 unet=tiny_unet_cond(diffusers), safety_checker=None,
                                                 scheduler=diffusers.EulerDiscreteScheduler(steps_offset=1, **SD_SCHED),
                                                 feature_extractor=None, requires_safety_checker=False)
        kw = {}
    else:
        (te, tok), (te2, _) = tiny_clip(tmp_path, 8, True, 1), tiny_clip(tmp_path, 8, True, 2)
        pipe = diffusers.StableDiffusion3Pipeline(transformer=tiny_sd3(diffusers), vae=tiny_vae(diffusers),
                                                  scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
                                                  text_encoder=te, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok,
                                                  text_encoder_3=None, tokenizer_3=None)
        kw = dict(text_seq_len=77 + 4)  # 77 CLIP tokens + 4 (zero) T5 tokens
    pred = random_predictor(DiffusersAdapter.from_pretrained(pipe, **kw), nfe=3, seed=4)
    ip = IndisPipeline.from_pipe(pipe, predictor=pred, **kw)
    prompts, neg = ["a red fox", "a lighthouse"], ["blur", "noise"]
    out = ip(prompt=prompts, negative_prompt=neg, seeds=[0, 1], guidance_scale=2.0, output_type="latent")
    if family == "sd":
        pe, npe = pipe.encode_prompt(prompts, "cpu", 1, True, neg)
        emb = dict(prompt_embeds=pe, negative_prompt_embeds=npe)
    else:
        pe, npe, pp, npp = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None, negative_prompt=neg,
                                              max_sequence_length=4)
        emb = dict(prompt_embeds=pe, negative_prompt_embeds=npe, pooled_prompt_embeds=pp, negative_pooled_prompt_embeds=npp)
    same = ip(seeds=[0, 1], guidance_scale=2.0, output_type="latent", **emb)
    assert torch.equal(out.images, same.images)
    assert out.images.shape == (2, 4, 8, 8) and ip(prompt="a fox", seeds=[5], output_type="pt").images.shape == (1, 3, 16, 16)


def test_predictor_takes_pooled_text(diffusers, tmp_path):
    """phi takes the paper's pooled text condition (mean of the T5 tokens, after SD3's 77 CLIP tokens, concatenated
    with the CLIP pooled vector), not the whole sequence: its input layer has dim + pooled_dim inputs; conditions
    with the same pooled embedding give the same schedule; the layout survives save / load and ONNX export; the
    pipeline runs it."""
    pytest.importorskip("onnxruntime")
    from indis.backbones.diffusers import DiffusersAdapter, pack_text_cond
    from indis.export.onnx_export import PredictorForExport, compare_with_torch, export_bytes, predictor_spec
    from indis.pipelines import IndisPipeline
    from indis.predictor import pool_text, save_predictor
    from indis.sampling.load import load_predictor
    from indis.training.train import TrainConfig, build_model

    bb = DiffusersAdapter.from_pretrained(tiny_sd3(diffusers), scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
                                          text_seq_len=77 + 4)
    assert bb.text_pooling() == {"seq_len": 81, "dim": 16, "pooled_dim": 8, "token_start": 77}
    model = build_model(TrainConfig(nfe=3, hidden=16, conv_width=8), bb)
    assert model.cond_proj.in_features == 16 + 8 and bb.cond_spec.dim == 81 * 16 + 8
    torch.nn.init.normal_(model.head.weight, std=0.5)
    torch.nn.init.normal_(model.cond_proj.weight, std=0.5)
    g = torch.Generator().manual_seed(0)
    ehs, pooled = torch.randn(2, 81, 16, generator=g), torch.randn(2, 8, generator=g)
    x_T = torch.randn(2, 4, 8, 8, generator=g)
    other = ehs.clone()
    other[:, :77] = torch.randn(2, 77, 16, generator=g)  # other CLIP tokens
    other[:, 77:] += torch.tensor([1.0, -1.0, 2.0, -2.0]).view(1, 4, 1)  # other T5 tokens, the same mean
    with torch.no_grad():
        o = model.raw(x_T, pack_text_cond(ehs, pooled))
        assert torch.allclose(o, model.raw(x_T, pack_text_cond(other, pooled)), atol=1e-5)
        assert not torch.allclose(o, model.raw(x_T, pack_text_cond(ehs, pooled.flip(0))), atol=1e-3)
        feat = model.cond_proj(pool_text(ehs[:, 77:], pooled))
        assert torch.allclose(o, model.head(model.trunk(model.encoder(x_T / model.prior_std) + feat)).view(2, 3, 3), atol=1e-6)
    save_predictor(tmp_path / "p.safetensors", model, {"backbone_id": bb.backbone_id, "solver": "ipndm"})
    again, _ = load_predictor(tmp_path / "p.safetensors", bb.backbone_id)
    assert again.config()["text_pool"]["token_start"] == 77
    with torch.no_grad():
        assert torch.equal(again.raw(x_T, pack_text_cond(ehs, pooled)), o)
    module, spec = PredictorForExport(again.eval()), predictor_spec(again)
    errs = compare_with_torch(module, spec, export_bytes(module, spec))
    assert max(errs.values()) < 1e-4, errs
    ip = IndisPipeline.from_pipe(bb, predictor=str(tmp_path / "p.safetensors"))
    out = ip(prompt_embeds=ehs, pooled_prompt_embeds=pooled, seeds=[0, 1], guidance_scale=2.0, output_type="latent")
    from indis.sampling.seeds import prior_noise

    close(out.images, per_sample(bb, again, prior_noise([0, 1], bb.data_shape, bb.process.prior_std()), pack_text_cond(ehs, pooled), "ipndm", 2.0))
    with pytest.raises(ValueError, match="does not fit"):
        type(model)(model.param, bb.data_shape, bb.cond_spec, text_pool={**bb.text_pooling(), "dim": 8})


# ------------------------------------------------------------------------------------------------
# the whole chain per family: pipeline folder -> teacher -> train -> batched call -> export -> export folder
# ------------------------------------------------------------------------------------------------
def family_pipe(diffusers, family):
    """A tiny random pipeline of the family, saved without text encoders (conditions come from a prompt table)."""
    pytest.importorskip("transformers")

    none = dict(text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    if family == "ddpm":  # class-conditional UNet2DModel, pixel space, epsilon, DDPM's linear betas
        return diffusers.DDPMPipeline(unet=tiny_unet(diffusers, channels=3, num_class_embeds=3, seed=1),
                                      scheduler=diffusers.DDPMScheduler())
    if family == "sd":  # SD 2.x-v: UNet2DConditionModel with encoder_hidden_states only, v_prediction
        return diffusers.StableDiffusionPipeline(vae=tiny_vae(diffusers), unet=tiny_unet_cond(diffusers, seed=1),
                                                 scheduler=diffusers.EulerDiscreteScheduler(prediction_type="v_prediction", steps_offset=1, **SD_SCHED),
                                                 text_encoder=None, tokenizer=None, safety_checker=None,
                                                 feature_extractor=None, requires_safety_checker=False)
    if family == "sd3":
        return sd3_pipe(diffusers)
    if family == "sdxl":
        return diffusers.StableDiffusionXLPipeline(vae=tiny_vae(diffusers), unet=tiny_unet_cond(diffusers, sdxl=True),
                                                   scheduler=diffusers.EulerDiscreteScheduler(**SD_SCHED), **none)
    return diffusers.FluxPipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True),
                                  vae=tiny_vae(diffusers), transformer=tiny_flux(diffusers), **none)


# FLUX's folder has no latent size (the pipeline takes height / width per call) and a 512-token default: the CLI
# names it through a module:function backbone that passes data_shape / text_seq_len, as a user would
FLUX_FACTORY = """from indis.backbones.diffusers import DiffusersAdapter


def backbone():
    return DiffusersAdapter.from_pretrained({path!r}, data_shape=(4, 8, 8), text_seq_len=6).eval()
"""


@pytest.mark.parametrize("family", ["ddpm", "sd", "sd3", "sdxl", "flux"])
def test_family_chain_folder_teacher_train_pipeline_export(diffusers, family, tmp_path, capsys, monkeypatch):
    """Done-when of issue 12, per family (class-conditional DDPM UNet2DModel, SD 2.x-v UNet2DConditionModel, SD3
    transformer, SDXL UNet with added conditions, FLUX transformer): a tiny pipeline folder -> `indis teacher` with
    a prompt table (class labels for the DDPM UNet) -> `indis train` -> IndisPipeline's batched call (prompt
    embeddings = the table rows each seed drew; the DDPM UNet: the labels each seed drew) equals indis.sample per
    sample (tolerance: `close`) -> `indis export` (`--prompt-table` for the text families) -> samples from the export folder (ONNX Runtime; native loop over the torch
    network) equal indis.sample (same tolerance; measured: at most about 1e-6 relative to max |x0|). FLUX exports
    with its batch-free rotary embedding (DiffusersAdapter.export_context) and the aten::rms_norm symbolic."""
    pytest.importorskip("onnxruntime")
    from indis.backbones.diffusers import DiffusersAdapter
    from indis.cli import main
    from indis.sampling.sampler import Sampler
    from indis.io import save_tensors
    from indis.native import native_available
    from indis.pipelines import IndisPipeline
    from indis.sampling.load import load_predictor
    from indis.sampling.seeds import draw, unit_noise_and_index
    from indis.training.teacher import load_teacher

    folder = tmp_path / family
    family_pipe(diffusers, family).save_pretrained(str(folder))
    extra = {}
    if family == "flux":
        (tmp_path / "fluxbb.py").write_text(FLUX_FACTORY.format(path=str(folder)))
        monkeypatch.chdir(tmp_path)
        spec, extra = "fluxbb:backbone", dict(data_shape=(4, 8, 8), text_seq_len=6)
    else:
        spec = f"diffusers:{folder}"
    bb = DiffusersAdapter.from_pretrained(str(folder), **extra).eval()
    d = str(tmp_path)
    text = bb.cond_spec.kind == "text"
    assert bb.cond_spec.kind == ("class" if family == "ddpm" else "text")
    table, with_table = None, []
    if text:
        g = torch.Generator().manual_seed(0)
        table = torch.randn(3, bb.cond_spec.dim, generator=g)  # 3 packed prompt conditions [L * D + pooled]
        save_tensors(tmp_path / "table.safetensors", {"table": table})
        with_table = ["--prompt-table", f"{d}/table.safetensors"]
    common = ["--backbone", spec, "--no-progress", "--threads", "1"]
    assert main(["teacher", *common, "--out", f"{d}/t", "--count", "6", "--steps", "4", "--cfg-scale", "1.5",
                 *with_table]) == 0
    ds = load_teacher(f"{d}/t", bb.backbone_id)
    want_idx = unit_noise_and_index(list(range(6)), bb.data_shape, 3)[1]
    if text:
        assert torch.equal(ds.prompt_index, want_idx) and torch.equal(ds.cond, table[want_idx])
    else:
        assert torch.equal(ds.cond.long(), want_idx)  # the class labels the seeds drew
    assert main(["train", *common, "--teacher", f"{d}/t", "--out", f"{d}/r", "--nfe", "3", "--steps", "2",
                 "--batch-size", "3", "--hidden", "16", "--conv-width", "8", "--cfg-scale", "1.5"]) == 0
    pred, _ = load_predictor(f"{d}/r/predictor.safetensors", bb.backbone_id)

    # the batched call: prompt embeddings are the table rows the seeds draw, as in `indis sample`
    seeds = [0, 1, 2, 3]
    x_T, cond = draw(seeds, bb.data_shape, bb.process.prior_std(), bb.cond_spec, table)
    ip = IndisPipeline.from_pipe(str(folder), predictor=f"{d}/r/predictor.safetensors", **extra)
    assert ip.guidance_scale == 1.5
    if not text:
        kw = {}  # the pipeline draws each seed's label as indis.sampling.seeds
    else:
        n_seq = bb.text_seq_len * bb.text_dim
        kw = dict(prompt_embeds=cond[:, :n_seq].reshape(len(seeds), bb.text_seq_len, bb.text_dim))
        if cond.shape[1] > n_seq:
            kw["pooled_prompt_embeds"] = cond[:, n_seq:]
    out = ip(seeds=seeds, output_type="latent", **kw)
    want = per_sample(bb, pred, x_T, cond, "ipndm", 1.5)
    close(out.images, want)

    export = ["export", "--backbone", spec, "--predictor", f"{d}/r/predictor.safetensors", "--out", f"{d}/e",
              *with_table, "--threads", "1"]
    assert main(export) == 0
    # the export was made at guidance 1 (the training scale is a sampling option): compare unguided
    want1 = per_sample(bb, pred, x_T, cond, "ipndm")
    backends = ("ort", "native") if native_available() else ("ort",)
    for backend in backends:
        r = Sampler.from_engines(f"{d}/e", backend, prompt_table=table, backbone=bb if backend == "native" else None,
                                 threads=1).sample_seeds(seeds)
        assert torch.equal(r.x_T, x_T) and torch.equal(r.cond, cond)
        close(r.x0, want1)
    capsys.readouterr()


LTX_FACTORY = """import diffusers
import torch

from indis.backbones.diffusers import DiffusersAdapter
from helpers import LTX_SCHED, tiny_ltx


def backbone():
    return DiffusersAdapter.from_pretrained(tiny_ltx(diffusers), data_shape=(4, 3, 4, 4), text_seq_len=5,
                                            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(**LTX_SCHED)).eval()
"""


def test_video_chain_teacher_train_pipeline_sample(diffusers, tmp_path, capsys, monkeypatch):
    """LTX-Video's transformer (5-D latents [B, C, F, H, W]) through `indis teacher` (prompt table) -> `indis train`
    (phi's encoder folds the frames into channels) -> IndisPipeline's batched call equals indis.sample per sample
    -> `indis export --prompt-table` -> samples from the export folder (ONNX Runtime; native loop over the torch
    network) equal indis.sample per sample (tolerance: `close`)."""
    from pathlib import Path

    from indis.cli import main
    from indis.backbones.spec import resolve_backbone
    from indis.io import save_tensors
    from indis.pipelines import IndisPipeline
    from indis.sampling.load import load_predictor
    from indis.sampling.seeds import draw
    from indis.training.teacher import load_teacher

    (tmp_path / "ltxbb.py").write_text(LTX_FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # the factory builds its model with test_diffusers
    bb = resolve_backbone("ltxbb:backbone")
    assert bb.kind == "video" and bb.data_shape == (4, 3, 4, 4)
    table = torch.randn(3, bb.cond_spec.dim, generator=torch.Generator().manual_seed(0))
    save_tensors(tmp_path / "table.safetensors", {"table": table})
    d = str(tmp_path)
    common = ["--backbone", "ltxbb:backbone", "--no-progress", "--threads", "1"]
    assert main(["teacher", *common, "--out", f"{d}/t", "--count", "6", "--steps", "4",
                 "--prompt-table", f"{d}/table.safetensors"]) == 0
    ds = load_teacher(f"{d}/t", bb.backbone_id)
    assert ds.x0.shape == (6, 4, 3, 4, 4) and ds.prompt_index is not None
    assert main(["train", *common, "--teacher", f"{d}/t", "--out", f"{d}/r", "--nfe", "3", "--steps", "2",
                 "--batch-size", "3", "--hidden", "16", "--conv-width", "8"]) == 0
    pred, _ = load_predictor(f"{d}/r/predictor.safetensors", bb.backbone_id)
    seeds = [0, 1, 2]
    x_T, cond = draw(seeds, bb.data_shape, bb.process.prior_std(), bb.cond_spec, table)
    ip = IndisPipeline.from_pipe(bb, predictor=pred, solver="ipndm")
    out = ip(prompt_embeds=cond.reshape(3, bb.text_seq_len, bb.text_dim), seeds=seeds, output_type="latent")
    assert out.images.shape == (3, 4, 3, 4, 4)
    want = per_sample(bb, pred, x_T, cond, "ipndm")
    close(out.images, want)

    # export (the rotary embedding is a constant of the latent shape while tracing; see export_context) -> samples
    # from the export folder on ONNX Runtime and the native loop equal indis.sample per sample
    pytest.importorskip("onnxruntime")
    from indis.sampling.sampler import Sampler
    from indis.native import native_available

    assert main(["export", "--backbone", "ltxbb:backbone", "--predictor", f"{d}/r/predictor.safetensors", "--out",
                 f"{d}/e", "--prompt-table", f"{d}/table.safetensors", "--threads", "1"]) == 0
    assert "forward" not in vars(bb.model.rope)  # the export context is left
    for backend in ("ort", "native") if native_available() else ("ort",):
        r = Sampler.from_engines(f"{d}/e", backend, prompt_table=table, backbone=bb if backend == "native" else None,
                                 threads=1).sample_seeds(seeds)
        assert torch.equal(r.x_T, x_T) and torch.equal(r.cond, cond)
        close(r.x0, want)
    capsys.readouterr()
