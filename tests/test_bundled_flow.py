"""The second bundled model: class-conditional latent flow matching (AutoencoderKL + DiT) in diffusers format."""
import json
import os

import pytest
import torch

from indis.backbones.bundled_flow import (
    NULL_CLASS,
    BundledFlowBackbone,
    FlowTrainConfig,
    bundled_flow_paths,
    load_bundled_flow,
    sample_latents,
    train_bundled_flow,
)
from indis.solvers import sample
from indis.training.teacher import GuidedBackbone, TeacherConfig, generate_teacher, load_teacher

PIPE = bundled_flow_paths()["pipeline"]


@pytest.fixture(scope="module")
def bb(diffusers):
    torch.set_num_threads(1)
    return load_bundled_flow()


def test_diffusers_loads_the_bundled_folder(diffusers):
    pipe = diffusers.DiffusionPipeline.from_pretrained(PIPE, local_files_only=True)
    assert type(pipe).__name__ == "DiTPipeline"
    assert type(pipe.transformer).__name__ == "DiTTransformer2DModel"
    assert type(pipe.vae).__name__ == "AutoencoderKL"
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert pipe.labels == {str(i): i for i in range(10)}
    assert pipe.transformer.config.num_embeds_ada_norm == 10 and pipe.transformer.config.in_channels == 4
    # the recorded scaling factor is the one measured in training (1 / std of the training latents)
    info = json.load(open(bundled_flow_paths()["training"]))
    assert pipe.vae.config.scaling_factor == pytest.approx(info["vae"]["scaling_factor"])
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(PIPE) for f in fs)
    assert size < 20 * 2**20


def test_wrapper_velocity_equals_direct_diffusers_call(bb):
    assert bb.process.name == "flow" and bb.prediction_type == "velocity"
    assert bb.data_shape == (4, 8, 8) and bb.cond_spec.kind == "class" and bb.cond_spec.dim == 10
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0.9, 0.5, 0.1])
    y = torch.tensor([0, 3, 9])
    with torch.no_grad():
        ref = bb.transformer(x, timestep=t * 1000, class_labels=y).sample
        ref_null = bb.transformer(x, timestep=t * 1000, class_labels=torch.full_like(y, NULL_CLASS)).sample
        assert torch.allclose(bb(x, t, y), ref, atol=1e-6)
        assert torch.allclose(bb(x, t, torch.nn.functional.one_hot(y, 10).float()), ref, atol=1e-6)
        # the null condition of GuidedBackbone (all-zero one-hot) is the DiT's null class
        assert torch.allclose(bb(x, t, torch.zeros(3, 10)), ref_null, atol=1e-6)
        assert not torch.allclose(ref, ref_null, atol=1e-3)
    with pytest.raises(ValueError, match="class labels"):
        bb(x, t, torch.tensor([0, 3, 10]))


def test_guided_grid_is_finite_and_decodes(bb):
    guided = GuidedBackbone(bb, 3.0)
    x_T = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * bb.process.prior_std()
    y = torch.tensor([1, 4, 7, 8])
    with torch.no_grad():
        t = torch.full((4,), 0.5)
        u, c = bb(x_T, t, torch.zeros(4, 10)), bb(x_T, t, y)
        assert torch.allclose(guided(x_T, t, y), u + 3.0 * (c - u), atol=1e-5)
        z = sample(guided, x_T, bb.default_timesteps(8), solver="euler", cond=y, state_dtype=torch.float32)
        px = bb.decode(z)
    assert torch.isfinite(z).all() and px.shape == (4, 1, 16, 16) and torch.isfinite(px).all()
    assert px.min() >= -1 and px.max() <= 1 and px.std() > 0.1
    # the diffusers scheduler path agrees in shape and is finite
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(PIPE, subfolder="scheduler", local_files_only=True)
    z2 = sample_latents(bb.transformer, sched, y, steps=8, guidance=3.0, generator=torch.Generator().manual_seed(1))
    assert z2.shape == (4, 4, 8, 8) and torch.isfinite(z2).all()


def test_guided_teacher_and_backbone_spec(bb, tmp_path):
    from indis.backbones.spec import resolve_backbone

    assert resolve_backbone("bundled-flow").backbone_id == bb.backbone_id
    cfg = TeacherConfig(count=4, shard_size=4, solver="euler", steps=4, schedule="uniform", cfg_scale=2.0,
                        state_dtype="float32", batch_size=4)
    m = generate_teacher(bb, tmp_path / "t", cfg, progress=False)
    assert m["complete"] and m["cond_spec"] == {"kind": "class", "dim": 10}
    ds = load_teacher(tmp_path / "t", bb)
    x_T, cond, x0 = ds.batch(torch.arange(4))
    assert x0.shape == (4, 4, 8, 8) and torch.isfinite(x0).all() and cond.shape[0] == 4
    # the teacher is guided sampling of the bundled model from the recorded seeds and classes
    with torch.no_grad():
        ref = sample(GuidedBackbone(bb, 2.0), x_T, torch.tensor(m["timesteps"]), solver="euler", cond=cond,
                     state_dtype=torch.float32)
    assert torch.allclose(ref, x0, atol=1e-4)
    assert bb.decode(x0).shape == (4, 1, 16, 16)


def test_training_smoke_and_resume_is_exact(diffusers, tmp_path):
    small = dict(vae_channels=[8, 16], vae_steps=2, vae_batch_size=8, dit_layers=1, dit_heads=1, dit_head_dim=32,
                 batch_size=8, ckpt_every=1, warmup_steps=1)
    full = train_bundled_flow(str(tmp_path / "a"), FlowTrainConfig(steps=3, **small), progress=False,
                              export_dir=str(tmp_path / "ea"))
    train_bundled_flow(str(tmp_path / "b"), FlowTrainConfig(steps=1, **small), progress=False, export_dir=str(tmp_path / "eb"))
    resumed = train_bundled_flow(str(tmp_path / "b"), FlowTrainConfig(steps=3, **small), progress=False,
                                 export_dir=str(tmp_path / "eb"))
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    # the exported folder is a diffusers pipeline that the INDIS loader reads back
    again = BundledFlowBackbone.from_pretrained_dir(bundled_flow_paths(str(tmp_path / "eb"))["pipeline"])
    assert again.backbone_id == resumed.refresh_id()
    with pytest.raises(ValueError, match="different training config"):
        train_bundled_flow(str(tmp_path / "b"), FlowTrainConfig(steps=3, lr=1e-2, **small), progress=False,
                           export_dir=str(tmp_path / "eb"))


def test_diffusers_pipeline_samples_a_guided_grid(diffusers, bb):
    """DiffusionPipeline.from_pretrained(folder) loads the bundled model (as a DiTPipeline, whose own __call__ cannot
    run a FlowMatchEulerDiscreteScheduler); IndisPipeline.from_pipe(pipe, ...) samples a guided class grid from the
    pipeline object, and the images are the asked-for digits under the digits-cnn-v1 classifier."""
    from indis.backbones.diffusers import DiffusersAdapter
    from indis.metrics.fid import load_digits_features
    from indis.pipelines import IndisPipeline
    from indis.sampling.fixed import heuristic

    pipe = diffusers.DiffusionPipeline.from_pretrained(PIPE, local_files_only=True)
    adapter = DiffusersAdapter.from_pretrained(pipe)
    assert adapter.kind == "dit" and adapter.cond_spec.kind == "class" and adapter.cond_spec.dim == 10
    assert adapter.data_shape == bb.data_shape and adapter.prediction_type == "velocity" and adapter.process.name == "flow"
    # the adapter calls the DiT as the INDIS backbone does (same velocity, null class for the all-zero condition)
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.9, 0.5, 0.1])
    for cond in (torch.tensor([0, 3, 9]), torch.zeros(3, 10)):
        with torch.no_grad():
            assert torch.allclose(adapter(x, t, cond), bb(x, t, cond), atol=1e-5)
    ip = IndisPipeline.from_pipe(pipe, heuristic(adapter, "rds", 10), solver="euler", guidance_scale=2.0)
    labels = list(range(10)) * 2
    out = ip(class_labels=labels, seeds=list(range(20)), output_type="pt")
    img = out.images
    assert img.shape == (20, 1, 16, 16) and torch.isfinite(img).all() and img.min() >= 0 and img.max() <= 1
    assert out.discretization.timesteps.shape == (20, 11)
    with torch.no_grad():
        pred = load_digits_features()(img * 2 - 1).argmax(1)
    acc = float((pred == torch.tensor(labels)).float().mean())
    assert acc >= 0.8, f"class accuracy of the guided grid {acc}"
    # guidance is what makes them the asked-for digits: the unguided null class gives other digits
    null = ip(class_labels=labels, seeds=list(range(20)), guidance_scale=0.0, output_type="pt").images
    assert not torch.allclose(null, img, atol=1e-2)


def test_quality_pipeline_on_the_guided_latent_model(bb, tmp_path):
    """run_quality on bundled-flow: guided teacher and students, RDS as a heuristic and a row of its own, a Fig. 5
    ablation, and Fréchet distances on VAE-decoded samples (the held-out real digits are used as they are)."""
    from indis.bench.quality import quality_features, run_quality
    from indis.data.digits import load_digits_split
    from indis.metrics.fid import digits_features

    feats = quality_features(bb)
    z = torch.randn(5, 4, 8, 8)
    real = load_digits_split("heldout")[0][:5]
    assert torch.allclose(feats(z), digits_features(bb.decode(z))) and torch.allclose(feats(real), digits_features(real))
    out = run_quality("bundled-flow", str(tmp_path), nfes=[2], methods=["indis-no_cond"], n_train=20, n_eval=12, steps=1,
                      batch=4, heuristics=("uniform", "rds"), heuristic_rows=("rds",), heuristic_solvers=("ipndm",),
                      peer_afs="off", cfg_scale=1.5, train_seeds=[0], progress=False, log=lambda *a: None, backbone=bb)
    rows = {r["method"]: r for r in out["rows"]}
    assert set(rows) == {"best heuristic", "rds", "indis-no_cond"}
    for r in rows.values():
        assert r["fd"] >= 0 and r["fd_data"] > 0 and r["mse"] > 0
    assert out["meta"]["cfg_scale"] == 1.5 and out["meta"]["best_heuristic"][2]["name"] in ("uniform", "rds:16")
    man = json.load(open(tmp_path / "bundled-flow" / "teacher_eval" / "manifest.json"))
    assert man["teacher"]["cfg_scale"] == 1.5
    run = json.load(open(tmp_path / "bundled-flow" / "indis-no_cond_nfe2_seed0" / "run.json"))
    cfg = run.get("config") or run.get("train_config") or run
    assert json.dumps(cfg).count('"no_cond": true') == 1 and json.dumps(cfg).count('"cfg_scale": 1.5') == 1
    with pytest.raises(ValueError, match="heuristic_rows"):
        run_quality("bundled-flow", str(tmp_path), nfes=[2], methods=[], heuristics=("uniform",), heuristic_rows=("rds",),
                    n_train=20, n_eval=12, progress=False, backbone=bb)
