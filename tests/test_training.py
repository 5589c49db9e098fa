import json
from dataclasses import asdict

import pytest
import torch

from helpers import trunk_file
from indis.io import load_tensors
from indis.predictor import GlobalDiscretization, Predictor
from indis.sampling.load import load_predictor
from indis.backbones.demo import ImageGMM
from indis.baselines.ld3 import LD3Discretization, ball_proposal, ball_radius
from indis.training.teacher import TeacherConfig, generate_teacher, load_teacher
from indis.training.train import TrainConfig, build_model, config_differences, cosine_lr, same_config, train


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("teach")
    bb = ImageGMM(channels=3, res=8, components=6)
    generate_teacher(bb, d / "t", TeacherConfig(count=96, shard_size=48, steps=12), progress=False)
    return bb, load_teacher(d / "t", bb)


def _cfg(**kw):
    base = dict(nfe=3, steps=12, batch_size=8, val_every=4, ckpt_every=4, lr=5e-3, hidden=32, conv_width=8, val_fraction=0.25)
    base.update(kw)
    return TrainConfig(**base)


def _weights(path):
    return load_tensors(path)[0]


def test_indis_improves_and_saves_metadata(tmp_path, setup):
    bb, ds = setup
    meta = train(bb, ds, _cfg(steps=30, val_every=10), tmp_path, progress=False)
    m = meta["metrics"]
    assert m["best_val"] < m["initial_val"]
    model, saved = load_predictor(tmp_path / "predictor.safetensors", bb.backbone_id)
    assert isinstance(model, Predictor)
    for k in ("nfe", "solver", "process", "warp", "bounds", "backbone_id", "config", "metrics", "train_config"):
        assert k in saved
    assert saved["nfe"] == 3 and saved["solver"] == "ipndm" and saved["bounds"] == {"b_dtau": 0.05, "b_gamma": 0.05}
    with pytest.raises(ValueError, match="backbone id"):
        load_predictor(tmp_path / "predictor.safetensors", "0000")


def test_deterministic_and_resume_equals_uninterrupted(tmp_path, setup):
    bb, ds = setup
    for method in ("indis", "ld3"):
        cfg = _cfg(method=method)
        train(bb, ds, cfg, tmp_path / f"{method}a", progress=False)
        train(bb, ds, cfg, tmp_path / f"{method}b", progress=False)
        a = _weights(tmp_path / f"{method}a" / "checkpoint.safetensors")
        b = _weights(tmp_path / f"{method}b" / "checkpoint.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        # killed after step 6 (last checkpoint at step 4): steps 5-6 are lost and redone
        r = train(bb, ds, cfg, tmp_path / f"{method}c", progress=False, stop_after=6)
        assert r == {"stopped_at": 6}
        assert load_tensors(tmp_path / f"{method}c" / "checkpoint.safetensors")[1]["step"] == 4
        train(bb, ds, cfg, tmp_path / f"{method}c", resume=True, progress=False)
        c = _weights(tmp_path / f"{method}c" / "checkpoint.safetensors")
        assert all(torch.equal(a[k], c[k]) for k in a), method
        if method == "ld3":
            assert "ld3_z" in a
    with pytest.raises(ValueError, match="other settings.*lr"):
        train(bb, ds, _cfg(lr=1e-2), tmp_path / "indisc", resume=True, progress=False)


def test_methods_and_ablations_build_what_they_say():
    bb = ImageGMM(channels=3, res=8, components=2)
    assert isinstance(build_model(TrainConfig(method="god", nfe=3), bb), GlobalDiscretization)
    assert isinstance(build_model(TrainConfig(method="ld3", nfe=3), bb), LD3Discretization)
    assert isinstance(build_model(TrainConfig(no_instance=True, nfe=3), bb), GlobalDiscretization)  # unconditional
    m = build_model(TrainConfig(no_shift=True, no_scale=True, nfe=3), bb)
    torch.nn.init.normal_(m.head.weight)
    d = m(torch.randn(2, 3, 8, 8) * 80)
    assert torch.all(d.dtau == 0) and torch.all(d.gamma == 1)
    cb = ImageGMM(channels=1, res=8, components=4, conditional=True)
    m = build_model(TrainConfig(no_instance=True, nfe=3), cb)
    assert isinstance(m, Predictor) and not m.use_instance and m.use_cond
    m = build_model(TrainConfig(no_cond=True, nfe=3), cb)
    assert m.use_instance and not m.use_cond
    with pytest.raises(ValueError, match="unknown method"):
        build_model(TrainConfig(method="bogus"), bb)
    with pytest.raises(ValueError, match="training-free peer"):  # searched by train(), not built (indis.baselines)
        build_model(TrainConfig(method="dmn"), bb)


def test_ld3_parameterisation_and_ball():
    from indis.discretization import DiscretizationParam
    from indis.schedules import get_schedule

    param = DiscretizationParam("edm", 4)
    init = get_schedule("polynomial", "edm", 4)
    m = LD3Discretization(param, init)
    with torch.no_grad():
        m.shift.fill_(10.0)
    d = m.global_discretization()
    assert torch.allclose(d.timesteps.double(), init, rtol=1e-3)
    assert d.dtau[0] == 0 and (d.dtau[1:] != 0).all() and torch.all(d.gamma == 1)
    w = param.warp(d.timesteps.double())
    shift_w = param.warp(d.call_times().double()) - w[:-1]
    assert (shift_w.abs()[1:] <= 0.5 * (w[:-1] - w[1:]).abs().min() + 1e-5).all()
    r = ball_radius((3, 8, 8), 4)
    assert r == pytest.approx(0.001 * 192 / 16)
    z0 = torch.randn(5, 3, 8, 8)
    z = z0
    for _ in range(5):
        z = ball_proposal(z, z0, torch.randn_like(z), r)
    assert ((z - z0).flatten(1).norm(dim=1) <= r * (1 + 1e-5)).all()
    assert cosine_lr(0, 10, 1.0, 0.0) == 1.0 and cosine_lr(10, 10, 1.0, 0.1) == pytest.approx(0.1)


def test_checkpointing_precision_guidance_and_lpips(tmp_path, setup, monkeypatch):
    bb, ds = setup
    # gradient checkpointing gives the same result
    train(bb, ds, _cfg(steps=3, val_every=100), tmp_path / "a", progress=False)
    train(bb, ds, _cfg(steps=3, val_every=100, grad_checkpoint=True), tmp_path / "b", progress=False)
    a, b = _weights(tmp_path / "a" / "checkpoint.safetensors"), _weights(tmp_path / "b" / "checkpoint.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a if k.startswith("model."))
    # reduced-precision backbone runs and trains
    meta = train(bb, ds, _cfg(steps=2, val_every=100, backbone_dtype="bfloat16"), tmp_path / "c", progress=False)
    assert meta["train_config"]["backbone_dtype"] == "bfloat16"
    # LPIPS distance from a trunk file in the hub cache

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    trunk_file(tmp_path / "th" / "hub" / "checkpoints", "alex")
    meta = train(bb, ds, _cfg(steps=2, val_every=100, loss="lpips", lpips_net="alex", batch_size=4, eval_batch_size=32), tmp_path / "d", progress=False)
    assert meta["metrics"]["best_val"] >= 0


def test_conditional_backbone_with_guidance(tmp_path):
    cb = ImageGMM(channels=1, res=8, components=4, conditional=True)
    generate_teacher(cb, tmp_path / "t", TeacherConfig(count=32, steps=8), progress=False)
    ds = load_teacher(tmp_path / "t", cb)
    meta = train(cb, ds, _cfg(steps=4), tmp_path / "r", progress=False)
    assert meta["metrics"]["history"][0]["distance"] > 0
    # a teacher of another backbone is refused
    with pytest.raises(ValueError, match="backbone id"):
        train(ImageGMM(channels=1, res=8, components=4, conditional=True, seed=3), ds, _cfg(), tmp_path / "x", progress=False)


def test_a_run_recorded_before_a_setting_existed_is_a_run_with_its_default():
    cfg = json.loads(json.dumps(asdict(TrainConfig(method="god", nfe=3, seed=2))))
    old = {k: v for k, v in cfg.items() if k != "init_from"}  # a run recorded before init_from existed
    assert same_config(old, cfg) and same_config(cfg, cfg)
    assert not same_config(old, asdict(TrainConfig(method="god", nfe=3, seed=2, init_from="runs/god3/predictor.safetensors")))
    assert not same_config(dict(old, seed=1), cfg) and not same_config(None, cfg) and not same_config("x", cfg)
    assert config_differences(dict(old, seed=1), cfg) == ["seed"]  # the missing init_from is not a difference
