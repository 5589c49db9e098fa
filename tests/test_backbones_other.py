"""Ideal denoiser, digits data, Fréchet distance, flow-matching backbones, diffusers adapter, bundled backbone."""
import math
import os
import sys

import pytest
import torch

from indis.backbones import GMMBackbone
from indis.backbones.ideal import IdealDenoiser
from indis.solvers import sample


# ------------------------------------------------------------------------------------------------
# ideal denoiser
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("process", ["edm", "flow", "vp_linear"])
def test_ideal_eps_is_minus_sigma_score(process, gen):
    data = torch.randn(37, 2, 3, 3, generator=gen, dtype=torch.float64)
    bb = IdealDenoiser(data, process=process, prediction_type="eps", chunk=10)
    ts = {"edm": [0.3, 1.0, 5.0], "flow": [0.2, 0.5, 0.9], "vp_linear": [0.2, 0.5, 0.9]}[process]
    t = torch.tensor(ts, dtype=torch.float64)
    x = torch.randn(3, 2, 3, 3, generator=gen, dtype=torch.float64) * 2
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(bb.log_prob(x, t).sum(), x)
    sigma = bb.process.sigma(t).view(-1, 1, 1, 1)
    eps = bb(x.detach(), t)
    assert torch.allclose(eps, -sigma * grad, atol=1e-8, rtol=1e-6)


def test_ideal_matches_zero_variance_gmm_and_chunking(gen):
    data = torch.randn(50, 6, generator=gen, dtype=torch.float64)
    gmm = GMMBackbone(data, torch.zeros(50, dtype=torch.float64), process="edm")
    x = torch.randn(8, 6, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0, 80.0], dtype=torch.float64)
    ref = gmm(x, t)
    for chunk in (1, 7, 1000):
        ideal = IdealDenoiser(data, chunk=chunk)
        assert torch.allclose(ideal(x, t), ref, atol=1e-10)
        assert torch.allclose(ideal.log_prob(x, t), gmm.log_prob(x, t), atol=1e-8)


def test_ideal_limits_conditional_and_memorisation(gen):
    data = torch.randn(20, 4, generator=gen, dtype=torch.float64)
    labels = torch.arange(20) % 3
    bb = IdealDenoiser(data, labels=labels, conditional=True)
    assert bb.cond_spec.kind == "class" and bb.cond_spec.dim == 3
    x = data[:3] + 1e-4
    out = bb(x, torch.full((3,), 1e-3, dtype=torch.float64), labels[:3])
    assert torch.allclose(out, data[:3], atol=1e-6)  # tiny noise: the nearest point
    big = bb(torch.zeros(2, 4, dtype=torch.float64), torch.full((2,), 1e4, dtype=torch.float64), torch.tensor([0, 1]))
    assert torch.allclose(big[0], data[labels == 0].mean(0), atol=1e-6)  # huge noise: the class mean
    # its PF-ODE reproduces training points
    unc = IdealDenoiser(data)
    x_T = torch.randn(6, 4, generator=gen, dtype=torch.float64) * 80
    ts = torch.cat([torch.logspace(math.log10(80), math.log10(0.002), 60, dtype=torch.float64)])
    x0 = sample(unc, x_T, ts, solver="ipndm")
    err = (x0 - data[unc.nearest(x0)]).norm(dim=1)
    assert (err < 0.05).all()
    with pytest.raises(ValueError, match="labels"):
        IdealDenoiser(data, conditional=True)
    with pytest.raises(ValueError, match="NaN"):
        IdealDenoiser(torch.full((3, 2), float("nan")))
    with pytest.raises(ValueError, match="shape"):
        IdealDenoiser(torch.zeros(5))


def test_ideal_on_digits_high_dimensional():
    from indis.data import load_digits_split

    x, y = load_digits_split("train", 16)
    bb = IdealDenoiser(x, chunk=512)
    assert bb.data_shape == (1, 16, 16) and bb.config()["num_points"] == 1500
    out = bb(x[:4] + 0.01 * torch.randn(4, 1, 16, 16), torch.full((4,), 0.01))
    assert out.dtype == torch.float32 and torch.allclose(out, x[:4], atol=1e-4)


# ------------------------------------------------------------------------------------------------
# data and metrics
# ------------------------------------------------------------------------------------------------
def test_digits_split():
    from indis.data import load_digits_split, load_digits_tensor

    x, y = load_digits_split("train", 16)
    xh, yh = load_digits_split("heldout", 16)
    assert x.shape == (1500, 1, 16, 16) and xh.shape == (297, 1, 16, 16)
    assert x.min() >= -1 and x.max() <= 1 and x.dtype == torch.float32
    allx, ally = load_digits_tensor(8)
    assert allx.shape == (1797, 1, 8, 8) and set(ally.tolist()) == set(range(10))
    x8, y8 = load_digits_split("train", 8)
    xh8, yh8 = load_digits_split("heldout", 8)
    # together exactly the full set (as a multiset), deterministic
    both = torch.cat([x8, xh8]).flatten(1)
    key = lambda z: sorted(map(tuple, z.tolist()))
    assert key(both) == key(allx.flatten(1))
    assert torch.equal(torch.bincount(y8, minlength=10) + torch.bincount(yh8, minlength=10), torch.bincount(ally))
    assert torch.equal(load_digits_split("heldout", 16)[0], xh)
    with pytest.raises(ValueError, match="resolution"):
        load_digits_split("train", 12)
    with pytest.raises(ValueError, match="split"):
        load_digits_split("test", 16)


def test_frechet_distance_known_values(gen):
    from indis.metrics.fid import frechet_distance

    a = torch.randn(4000, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(4000, 3, generator=gen, dtype=torch.float64) * 2 + torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    # |m|^2 + sum (1 + 4 - 2*2) = 1 + 3
    assert abs(frechet_distance(a, b) - 4.0) < 0.3
    assert frechet_distance(a, a) < 1e-6
    with pytest.raises(ValueError, match="equal D"):
        frechet_distance(a, b[:, :2])


def test_digits_feature_extractor_separates():
    from indis.data import load_digits_split
    from indis.metrics.fid import digits_features, digits_fid

    xh, _ = load_digits_split("heldout", 16)
    x, _ = load_digits_split("train", 16)
    f = digits_features(xh)
    assert f.shape == (297, 64) and torch.isfinite(f).all()
    real = digits_fid(x, xh)
    noise = digits_fid(torch.rand(297, 1, 16, 16) * 2 - 1, xh)
    assert real < noise / 10
    with pytest.raises(ValueError, match="16, 16"):
        digits_features(torch.zeros(3, 1, 8, 8))


# ------------------------------------------------------------------------------------------------
# flow matching
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow  # a flow MLP is also trained and checked by test_toy::test_learned_backbone_is_a_flow_velocity_backbone
def test_flow_mlp_backbone_trains_and_samples():
    from indis.backbones.flow import FlowMLPBackbone, flow_matching_loss

    torch.manual_seed(0)
    bb = FlowMLPBackbone(2, hidden=64, depth=2, shift=3.0)
    assert bb.process.name == "flow" and bb.prediction_type == "velocity" and bb.data_shape == (2,)
    mean = torch.tensor([2.0, -1.0])
    opt = torch.optim.Adam(bb.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(150):
        x0 = mean + 0.3 * torch.randn(128, 2, generator=g)
        loss = flow_matching_loss(bb, x0, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) < 0.7 * sum(losses[:20])
    ts = bb.default_timesteps(20)
    assert ts[0] == pytest.approx(0.988) and ts[-1] == pytest.approx(0.002) and (ts.diff() < 0).all()
    with torch.no_grad():
        x = sample(bb, torch.randn(512, 2, generator=g) * bb.process.prior_std(), ts, solver="euler")
    assert (x.mean(0) - mean).abs().max() < 0.3
    i0 = bb.backbone_id
    assert FlowMLPBackbone(2, hidden=64, depth=2, shift=1.0).backbone_id != i0


def test_diffusers_missing_gives_install_hint(monkeypatch):
    from indis.backbones import diffusers as adapter

    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r"pip install indis\[diffusers\]"):
        adapter.require_diffusers()
    with pytest.raises(ImportError, match=r"indis\[diffusers\]"):
        adapter.DiffusersAdapter(torch.nn.Linear(2, 2), (2,))


def test_diffusers_unet_adapter(tmp_path, diffusers):
    from indis.backbones.diffusers import DiffusersAdapter

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=2, out_channels=2, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    # a continuous-time model called at t * 1000 (DDPM-style discrete models: tests/test_diffusers.py)
    bb = DiffusersAdapter(unet, (2, 8, 8), process="vp_linear", prediction_type="eps", timestep_scale=1000.0)
    assert bb.kind == "unet" and bb.cond_spec.kind == "none"
    x = torch.randn(3, 2, 8, 8)
    with torch.no_grad():
        out = bb(x, torch.tensor([0.1, 0.5, 0.9]))
        want = unet(x, torch.tensor([100.0, 500.0, 900.0])).sample
    assert torch.allclose(out, want, atol=1e-5)
    unet.save_pretrained(str(tmp_path / "unet"))
    re = DiffusersAdapter.from_pretrained(str(tmp_path / "unet"), data_shape=(2, 8, 8), process="vp_linear",
                                          prediction_type="eps", timestep_scale=1000.0)
    assert re.backbone_id == bb.backbone_id
    with pytest.raises(FileNotFoundError, match="never downloads"):
        DiffusersAdapter.from_pretrained("stabilityai/sd3", data_shape=(2, 8, 8))


def test_diffusers_sd3_transformer_adapter(diffusers):
    from indis.backbones.diffusers import DiffusersAdapter, pack_text_cond

    torch.manual_seed(0)
    model = diffusers.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1,
                                            attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                            caption_projection_dim=16, pooled_projection_dim=8, out_channels=4,
                                            pos_embed_max_size=8)
    bb = DiffusersAdapter(model, (4, 8, 8), text_seq_len=5, text_dim=16, pooled_dim=8, shift=3.0)
    assert bb.process.name == "flow" and bb.prediction_type == "velocity"
    assert bb.cond_spec.kind == "text" and bb.cond_spec.dim == 5 * 16 + 8
    ehs, pooled = torch.randn(2, 5, 16), torch.randn(2, 8)
    cond = pack_text_cond(ehs, pooled)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        out = bb(x, torch.tensor([0.3, 0.8]), cond)
        want = model(hidden_states=x, timestep=torch.tensor([300.0, 800.0]), encoder_hidden_states=ehs,
                     pooled_projections=pooled).sample
        assert torch.allclose(out, want, atol=1e-5)
        x0 = sample(bb, torch.randn(2, 4, 8, 8), bb.default_timesteps(4), solver="euler", cond=cond)
    assert x0.shape == (2, 4, 8, 8) and torch.isfinite(x0).all()
    with pytest.raises(ValueError, match="text condition"):
        bb(x, torch.tensor([0.3, 0.8]))
    with pytest.raises(ValueError, match="text_seq_len"):
        DiffusersAdapter(model, (4, 8, 8))


# ------------------------------------------------------------------------------------------------
# bundled backbone
# ------------------------------------------------------------------------------------------------
def test_train_bundled_smoke_and_resume_is_exact(tmp_path):
    from indis.backbones.bundled import TrainConfig, train_bundled

    cfg = dict(resolution=8, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[],
               batch_size=8, warmup_steps=2, ckpt_every=2, threads=1)
    a = train_bundled(str(tmp_path / "a"), TrainConfig(steps=4, **cfg), progress=False)
    train_bundled(str(tmp_path / "b"), TrainConfig(steps=2, **cfg), progress=False)
    b = train_bundled(str(tmp_path / "b"), TrainConfig(steps=4, **cfg), progress=False)  # resumes at step 2
    assert a.refresh_id() == b.refresh_id()
    for name in ("bundled_digits.safetensors", "bundled_digits.json", "bundled_digits_loss.png", "train_state.pt"):
        assert (tmp_path / "a" / name).is_file()
    with pytest.raises(ValueError, match="different training config"):
        train_bundled(str(tmp_path / "a"), TrainConfig(steps=4, **dict(cfg, batch_size=4)), progress=False)
    from indis.backbones.bundled import load_bundled

    re = load_bundled(assets_dir=str(tmp_path / "a"))
    assert re.backbone_id == a.backbone_id and re.data_shape == (1, 8, 8)


def test_bundled_backbone_loads_and_samples():
    from indis.backbones.bundled import bundled_paths, load_bundled, sample_backbone

    if not os.path.isfile(bundled_paths()["weights"]):
        pytest.skip("bundled checkpoint not built yet")
    bb = load_bundled()
    assert bb.process.name == "edm" and bb.prediction_type == "x0"
    assert bb.data_shape == (1, 16, 16) and bb.cond_spec.kind == "none"
    assert os.path.getsize(bundled_paths()["weights"]) <= 10 * 1024 * 1024
    x = sample_backbone(bb, 8, steps=5)
    assert x.shape == (8, 1, 16, 16) and torch.isfinite(x).all()


def test_stable_hash_takes_0_dim_tensors_and_keeps_the_byte_order():
    """Backbone ids hash the raw bytes of every tensor: a 0-dim parameter (a learned scalar) failed with "self.dim()
    cannot be 0 to view Float as Byte"; the bytes of other tensors, and so the recorded ids, are unchanged."""
    import hashlib
    import json

    from indis.backbones.base import stable_hash

    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    h = hashlib.sha256(json.dumps({"a": 1}, sort_keys=True, default=str).encode())
    h.update(b"w")
    h.update(str(w.dtype).encode())
    h.update(str(tuple(w.shape)).encode())
    h.update(w.numpy().tobytes())
    assert stable_hash({"a": 1}, {"w": w}) == h.hexdigest()[:16]
    s1, s2 = stable_hash({}, {"s": torch.tensor(1.5)}), stable_hash({}, {"s": torch.tensor(2.5)})
    assert s1 != s2 and s1 == stable_hash({}, {"s": torch.tensor(1.5)})
