"""EDM networks, presets, precision, checkpoint conversion (pickle / state dict / safetensors)."""
import json
import os
import pickle
import sys
import types

import pytest
import torch

from indis.backbones import check_backbone_id
from indis.backbones.convert import (
    ArchitectureMismatchError,
    convert_edm,
    load_backbone,
    load_edm_checkpoint,
    read_edm_pickle,
    save_backbone,
)
from indis.backbones.edm import PRESETS, PUBLISHED_PARAM_COUNTS, EDMBackbone
from indis.backbones.edm_nets import EDMPrecond, SongUNet, count_parameters

SMALL_SONG = dict(img_resolution=8, img_channels=3, model_type="SongUNet", model_channels=16, channel_mult=[1, 2],
                  num_blocks=1, attn_resolutions=[4], dropout=0.0)
SMALL_ADM = dict(img_resolution=8, img_channels=3, model_type="DhariwalUNet", model_channels=16, channel_mult=[1, 2],
                 num_blocks=1, attn_resolutions=[4], dropout=0.0)


def _randomize(net, seed=0):
    """Zero-initialised output layers make an untrained net trivial; give every weight random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net


def _small(kw=SMALL_SONG, label_dim=0, seed=0):
    torch.manual_seed(seed)
    return EDMBackbone(_randomize(EDMPrecond(label_dim=label_dim, **kw), seed)).eval()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parameter_counts_equal_published(name):
    bb = EDMBackbone.from_preset(name, device="meta")
    assert bb.num_parameters() == PUBLISHED_PARAM_COUNTS[name]
    assert bb.data_shape == ((3, 32, 32) if name.startswith("cifar") else (3, 64, 64))
    assert bb.cond_spec.kind == ("class" if name in ("cifar10_cond", "imagenet64") else "none")


@pytest.mark.slow  # counts: test_preset_parameter_counts_equal_published; forward: test_protocol_and_shapes
def test_preset_random_init_and_forward():
    bb = EDMBackbone.from_preset("cifar10_uncond", seed=0).eval()
    assert count_parameters(bb.net) == 55_733_891
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = bb(x, torch.tensor([1.0]))
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("kw", [SMALL_SONG, SMALL_ADM], ids=["song", "adm"])
def test_protocol_and_shapes(kw):
    bb = _small(kw)
    assert bb.process.name == "edm" and bb.prediction_type == "x0"
    assert bb.data_shape == (3, 8, 8) and bb.cond_spec.kind == "none"
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        d = bb(x, torch.tensor([0.01, 0.5, 2.0, 80.0]))
    assert d.shape == x.shape and d.dtype == x.dtype and torch.isfinite(d).all()
    # backbone id is stable and follows the weights
    i0 = bb.backbone_id
    assert _small(kw).backbone_id == i0
    with torch.no_grad():
        next(bb.net.parameters()).add_(1e-3)
    assert bb.refresh_id() != i0
    with pytest.raises(ValueError, match="shape"):
        bb(torch.randn(2, 3, 4, 4), torch.ones(2))


def test_class_conditional():
    bb = _small(SMALL_SONG, label_dim=5)
    assert bb.cond_spec.kind == "class" and bb.cond_spec.dim == 5
    x, t = torch.randn(3, 3, 8, 8), torch.ones(3)
    with torch.no_grad():
        a = bb(x, t, torch.tensor([0, 1, 4]))
        b = bb(x, t, torch.nn.functional.one_hot(torch.tensor([0, 1, 4]), 5).float())
        c = bb(x, t, torch.tensor([2, 2, 2]))
    assert torch.allclose(a, b)
    assert not torch.allclose(a, c)
    with pytest.raises(ValueError, match="condition"):
        bb(x, t)
    with pytest.raises(ValueError, match="class labels"):
        bb(x, t, torch.tensor([0, 1, 5]))


def test_preconditioning_formula():
    net = _randomize(EDMPrecond(**SMALL_SONG)).eval()
    x, s = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 7.0])
    sd = 0.5
    with torch.no_grad():
        F_x = net.model(x / (s**2 + sd**2).sqrt().view(-1, 1, 1, 1), s.log() / 4, None)
        want = (sd**2 / (s**2 + sd**2)).view(-1, 1, 1, 1) * x + (s * sd / (s**2 + sd**2).sqrt()).view(-1, 1, 1, 1) * F_x
        got = net(x, s)
    assert torch.allclose(got, want, atol=1e-5)


def test_ncsnpp_variant_runs():
    net = SongUNet(img_resolution=8, in_channels=3, out_channels=3, model_channels=16, channel_mult=[1, 2],
                   num_blocks=1, attn_resolutions=[4], embedding_type="fourier", channel_mult_noise=2,
                   encoder_type="residual", decoder_type="skip", resample_filter=[1, 3, 3, 1], dropout=0.0)
    assert "map_noise.freqs" in net.state_dict()
    out = net(torch.randn(2, 3, 8, 8), torch.randn(2), None)
    assert out.shape == (2, 3, 8, 8)
    with pytest.raises(ValueError, match="embedding_type"):
        SongUNet(img_resolution=8, in_channels=3, out_channels=3, embedding_type="learned")


def test_low_precision_keeps_fp32_boundary():
    bb = _small(SMALL_SONG)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 3.0])
    with torch.no_grad():
        ref = bb(x, t)
        bb.set_compute_dtype("bfloat16")
        low = bb(x, t)
    assert low.dtype == torch.float32
    assert (low - ref).abs().max() < 0.1 * ref.abs().max()
    assert bb.net.model.map_layer0.weight.dtype == torch.float32
    bid = bb.backbone_id
    bb.set_compute_dtype("float32")
    assert bb.refresh_id() == bid  # precision is not part of the id
    with pytest.raises(ValueError, match="compute_dtype"):
        bb.set_compute_dtype("int8")


# ------------------------------------------------------------------------------------------------
# conversion
# ------------------------------------------------------------------------------------------------
def _outputs(bb, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, *bb.data_shape, generator=g)
    t = torch.tensor([0.02, 1.0, 60.0])
    cond = torch.tensor([0, 1, 2]) if bb.cond_spec.kind == "class" else None
    with torch.no_grad():
        return bb(x, t, cond)


def test_own_pickle_needs_trust_flag_and_round_trips(tmp_path):
    bb = _small(SMALL_ADM, label_dim=3)
    path = tmp_path / "network-snapshot.pkl"
    with open(path, "wb") as f:
        pickle.dump({"ema": bb.net, "loss_fn": None, "augment_pipe": None, "dataset_kwargs": {}}, f)
    with pytest.raises(ValueError, match="trust_pickle"):
        read_edm_pickle(str(path))
    with pytest.raises(ValueError, match="trust_pickle"):
        convert_edm(str(path), str(tmp_path / "out"))
    cfg = convert_edm(str(path), str(tmp_path / "out"), trust_pickle=True)
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]
    re = load_backbone(str(tmp_path / "out"))
    assert re.backbone_id == cfg["backbone_id"] == bb.refresh_id()
    assert torch.equal(_outputs(re), _outputs(bb))


def _edm_format_pickle(net, path):
    """Write a pickle exactly as EDM's torch_utils.persistence does: every network module is reduced to
    torch_utils.persistence._reconstruct_persistent_obj(meta) with the class source embedded. The embedded source
    raises if executed, and the torch_utils module is removed before loading, so loading must not need it."""
    pkg, mod = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # pragma: no cover - never called by indis
        raise AssertionError("EDM's reconstruct hook must not be used")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
    pkg.persistence = mod
    src = "raise RuntimeError('embedded EDM source must never be executed')\n"

    class EDMPickler(pickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, torch.nn.Module) and type(obj).__module__ == "indis.backbones.edm_nets":
                state = dict(obj.__dict__)
                if isinstance(obj, EDMPrecond):
                    kw = obj.init_kwargs()
                    kw.pop("compute_dtype")
                    state["_init_kwargs"], state["_init_args"] = kw, ()
                meta = dict(type="class", version=6, module_src=src, class_name=type(obj).__name__, state=state)
                return (_reconstruct_persistent_obj, (meta,))
            return NotImplemented

    sys.modules["torch_utils"], sys.modules["torch_utils.persistence"] = pkg, mod
    try:
        with open(path, "wb") as f:
            EDMPickler(f, protocol=4).dump({"ema": net, "loss_fn": None, "augment_pipe": None,
                                            "dataset_kwargs": {"resolution": 8}})
    finally:
        del sys.modules["torch_utils"], sys.modules["torch_utils.persistence"]


@pytest.mark.parametrize("kw", [SMALL_SONG, SMALL_ADM], ids=["song", "adm"])
def test_edm_persistence_pickle_converts_without_executing_source(tmp_path, kw):
    bb = _small(kw)
    path = tmp_path / "edm.pkl"
    _edm_format_pickle(bb.net, path)
    assert b"torch_utils.persistence" in path.read_bytes()
    with pytest.raises(ValueError, match="trust"):
        load_edm_checkpoint(str(path))
    cfg = convert_edm(str(path), str(tmp_path / "out"), trust_pickle=True)
    assert cfg["net_kwargs"]["model_type"] == kw["model_type"]
    re = load_backbone(str(tmp_path / "out"))
    assert torch.equal(_outputs(re), _outputs(bb))
    assert re.backbone_id == bb.refresh_id()


def test_state_dict_pt_round_trip_and_prefix(tmp_path):
    bb = _small(SMALL_SONG)
    torch.save(bb.net.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ValueError, match="preset"):
        load_edm_checkpoint(str(tmp_path / "sd.pt"))
    re = load_edm_checkpoint(str(tmp_path / "sd.pt"), net_kwargs=SMALL_SONG)
    assert torch.equal(_outputs(re), _outputs(bb))
    # a backbone's own state dict ('net.' prefix) under a key
    torch.save({"ema": bb.state_dict()}, tmp_path / "sd2.pt")
    re2 = load_edm_checkpoint(str(tmp_path / "sd2.pt"), net_kwargs=SMALL_SONG)
    assert re2.refresh_id() == bb.refresh_id()


def test_wrong_architecture_names_keys(tmp_path):
    other = EDMPrecond(**dict(SMALL_SONG, num_blocks=2))
    torch.save(other.state_dict(), tmp_path / "wrong.pt")
    with pytest.raises(ArchitectureMismatchError) as e:
        load_edm_checkpoint(str(tmp_path / "wrong.pt"), net_kwargs=SMALL_SONG)
    msg = str(e.value)
    assert "unexpected key" in msg and "model.dec.4x4_block2.affine.bias" in msg
    wider = EDMPrecond(**dict(SMALL_SONG, model_channels=32))
    torch.save(wider.state_dict(), tmp_path / "wider.pt")
    with pytest.raises(ValueError, match=r"shape mismatch.*model\.") as e:
        load_edm_checkpoint(str(tmp_path / "wider.pt"), net_kwargs=SMALL_SONG)
    # a preset with a small file: missing keys are named
    with pytest.raises(ArchitectureMismatchError, match="missing key"):
        load_edm_checkpoint(str(tmp_path / "wrong.pt"), preset="cifar10_uncond")


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_edm_checkpoint(str(tmp_path / "nope.pkl"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="extension"):
        load_edm_checkpoint(str(tmp_path / "x.txt"))
    with pytest.raises(ValueError, match="unknown EDM preset"):
        EDMBackbone.from_preset("cifar100")
    torch.save({"a": 1}, tmp_path / "notsd.pt")
    with pytest.raises(ValueError, match="state dict"):
        load_edm_checkpoint(str(tmp_path / "notsd.pt"), preset="cifar10_uncond")


def test_load_backbone_detects_tampered_weights(tmp_path):
    from safetensors.torch import load_file, save_file

    bb = _small(SMALL_SONG)
    save_backbone(bb, str(tmp_path / "m"))
    w = tmp_path / "m" / "model.safetensors"
    sd = load_file(str(w))
    sd["model.map_layer0.bias"] = sd["model.map_layer0.bias"] + 1
    save_file(sd, str(w))
    with pytest.raises(ValueError, match="backbone id"):
        load_backbone(str(tmp_path / "m"))
    assert load_backbone(str(tmp_path / "m"), check_id=False).backbone_id != bb.backbone_id
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    with pytest.raises(ValueError, match="backbone id"):
        check_backbone_id(cfg["backbone_id"], load_backbone(str(tmp_path / "m"), check_id=False), "a teacher dataset")


def test_cli_convert(tmp_path, capsys):
    from indis.backbones.cli import main

    bb = _small(SMALL_SONG)
    p = tmp_path / "snap.pkl"
    with open(p, "wb") as f:
        pickle.dump({"ema": bb.net}, f)
    with pytest.raises(ValueError, match="--trust-pickle"):
        main(["convert-edm", str(p), "--out", str(tmp_path / "o")])
    assert main(["convert-edm", str(p), "--out", str(tmp_path / "o"), "--trust-pickle"]) == 0
    assert bb.refresh_id() in capsys.readouterr().out
    torch.save(bb.net.state_dict(), tmp_path / "sd.pt")
    assert main(["convert-edm", str(tmp_path / "sd.pt"), "--out", str(tmp_path / "o2"),
                 "--net-kwargs", json.dumps(SMALL_SONG)]) == 0
    assert load_backbone(str(tmp_path / "o2")).backbone_id == bb.backbone_id
