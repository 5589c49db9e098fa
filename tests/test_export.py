"""ONNX export of predictors and backbones (checker, shape inference, opset, TensorRT op set, ORT numerics with a
dynamic batch), the manifest and its verification, and the TensorRT cache-key logic without TensorRT."""
import json
import os
import sys

import onnx
import pytest
import torch

from indis.backbones.base import CondSpec
from indis.backbones.gmm import GMMBackbone
from indis.discretization import DiscretizationParam
from indis.export import manifest as mf
from indis.export.onnx_export import (BackboneForExport, PredictorForExport, backbone_spec, check_onnx, compare_with_torch,
                                      export_bytes, load_onnx_checked, predictor_spec)
from indis.export.trt_ops import TRT_SUPPORTED_OPS, check_trt_graph
from indis.predictor import GlobalDiscretization, Predictor
from indis.backbones.demo import ImageGMM
from helpers import small_edm

ATOL = 1e-4  # fp32 ORT vs PyTorch, absolute, on random inputs


def _randomize_head(model, std=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def _check_export(module, spec, batches=(1, 5)):
    data = export_bytes(module, spec, batch=2)
    info = check_onnx(data, spec)
    assert info["opset"] >= 17
    assert set(info["ops"]) <= TRT_SUPPORTED_OPS
    assert info["inputs"][0]["shape"][0] == "B"
    errs = compare_with_torch(module, spec, data, batches=batches)
    assert set(errs) == set(batches)
    assert max(errs.values()) < ATOL, errs
    return data, errs


@pytest.mark.parametrize("process,warp,shape,cond", [
    ("edm", "sigma_rho", (3, 16, 16), CondSpec()),
    ("vp_linear", "logsnr", (6,), CondSpec("class", 4)),
    ("vp_cosine", "logsnr", (1, 8, 8), CondSpec("class", 3)),
    ("flow", "t", (5,), CondSpec()),
])
def test_predictor_onnx(process, warp, shape, cond):
    model = _randomize_head(Predictor(DiscretizationParam(process, 4, warp=warp), shape, cond, hidden=32, conv_width=8))
    spec = predictor_spec(model)
    assert spec.output_names == ["tau", "dtau", "gamma"]
    data, _ = _check_export(PredictorForExport(model), spec)
    m = onnx.load_from_string(data)
    outs = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in m.graph.output}
    assert outs == {"tau": ["B", 5], "dtau": ["B", 4], "gamma": ["B", 4]}


def test_global_discretization_onnx():
    model = GlobalDiscretization(DiscretizationParam("edm", 3), data_shape=(4,))
    _check_export(PredictorForExport(model), predictor_spec(model))


def test_gmm_backbones_onnx():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(6, 5, generator=g, dtype=torch.float64)
    gmm = GMMBackbone(means, torch.rand(6, 5, generator=g, dtype=torch.float64) * 0.2 + 0.05, process="vp_linear",
                      prediction_type="eps", labels=torch.arange(6) % 3, conditional=True)
    _check_export(BackboneForExport(gmm), backbone_spec(gmm))
    img = ImageGMM(channels=1, res=8, components=4)
    _check_export(BackboneForExport(img), backbone_spec(img), batches=(1, 7))


@pytest.mark.parametrize("model_type,label_dim", [("SongUNet", 0), ("DhariwalUNet", 10)])
def test_edm_architectures_onnx(model_type, label_dim):
    bb = small_edm(model_type, label_dim)
    spec = backbone_spec(bb)
    x, t, *c = spec.sample_inputs(3)
    with torch.no_grad():
        out = bb(x, t, *c)
        skip = 0.25 / (t.view(-1, 1, 1, 1) ** 2 + 0.25) * x
    assert (out - skip).abs().max() > 0.1  # the network part is not negligible
    _check_export(BackboneForExport(bb), spec)


def test_bundled_backbone_onnx():
    from indis.backbones.bundled import bundled_paths

    if not os.path.isfile(bundled_paths()["weights"]):
        pytest.skip("the bundled checkpoint is not in indis/assets yet")
    from indis.backbones.bundled import load_bundled

    bb = load_bundled().eval()
    _check_export(BackboneForExport(bb), backbone_spec(bb), batches=(1, 3))


def test_trt_op_check_flags_problems():
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 1, 1, 1])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 1, 1, 1])
    nodes = [helper.make_node("Det", ["x"], ["y"]), helper.make_node("Conv", ["z", "w"], ["zo"])]
    zo = helper.make_tensor_value_info("zo", TensorProto.FLOAT, None)
    m = helper.make_model(helper.make_graph(nodes, "g", [x, w, z], [y, zo]), opset_imports=[helper.make_opsetid("", 13)])
    rep = check_trt_graph(m)
    text = "\n".join(rep["errors"])
    assert "opset 13" in text and "Det" in text and "initializer" in text
    with pytest.raises(ValueError, match="TensorRT-friendly"):
        check_onnx(helper.make_model(helper.make_graph(nodes[:1], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)]))


# ------------------------------------------------------------------------------------------------
# manifest and verification
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def export_dir(tmp_path):
    from indis.export.pipeline import export_folder

    bb = ImageGMM(channels=1, res=8, components=3)
    model = _randomize_head(Predictor(DiscretizationParam(bb.process, 3), bb.data_shape, bb.cond_spec, hidden=16, conv_width=8))
    man = export_folder(model, bb, tmp_path / "e", backbone_spec_str="gmm-image", profile={"min": 1, "opt": 2, "max": 8},
                        log=lambda *a: None)
    return tmp_path / "e", man, bb


def test_manifest_contents(export_dir):
    folder, man, bb = export_dir
    on_disk = json.loads((folder / mf.MANIFEST_NAME).read_text())
    assert on_disk == json.loads(json.dumps(man, default=str))
    for k in ("backbone_id", "predictor_id", "nfe", "solver", "profile", "precision", "tensorrt_version",
              "gpu_compute_capability", "indis_version"):
        assert k in man
    assert man["backbone_id"] == bb.backbone_id and man["nfe"] == 3 and man["tensorrt_version"] is None
    for name in ("predictor.onnx", "backbone.onnx", "predictor.safetensors"):
        assert man["artifacts"][name]["sha256"] == mf.sha256_file(folder / name)
    assert man["artifacts"]["backbone.onnx"]["profile_shapes"]["x"] == [[1, 1, 8, 8], [2, 1, 8, 8], [8, 1, 8, 8]]
    for net in ("predictor", "backbone"):
        assert max(man["numerics"][net]["ort_cpu_max_abs_error"].values()) < ATOL
    mf.verify_artifacts(folder)


def test_tampered_onnx_is_refused(export_dir):
    folder, _, _ = export_dir
    p = folder / "backbone.onnx"
    data = bytearray(p.read_bytes())
    data[-5] ^= 0xFF  # same size, different bytes
    p.write_bytes(bytes(data))
    with pytest.raises(mf.ArtifactError, match="sha256.*does not match"):
        mf.verify_artifacts(folder)
    from indis.engines.loader import load_engines

    with pytest.raises(mf.ArtifactError, match="backbone.onnx"):
        load_engines(folder, "ort")


def test_truncated_and_corrupt_files(export_dir, tmp_path):
    folder, man, _ = export_dir
    p = folder / "predictor.onnx"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(mf.ArtifactError, match="truncated"):
        mf.verify_file(folder, "predictor.onnx", man["artifacts"]["predictor.onnx"])
    with pytest.raises(mf.ArtifactError, match="corrupt or truncated"):
        load_onnx_checked(p)
    (folder / mf.MANIFEST_NAME).write_text('{"format": "indis-engines", "artif')
    with pytest.raises(mf.ArtifactError, match="not valid JSON"):
        mf.load_manifest(folder)
    (folder / mf.MANIFEST_NAME).unlink()
    with pytest.raises(mf.ArtifactError, match="no manifest.json"):
        mf.load_manifest(folder)
    with pytest.raises(FileNotFoundError):
        mf.load_manifest(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------
# TensorRT without TensorRT
# ------------------------------------------------------------------------------------------------
def test_missing_tensorrt_message(monkeypatch, tmp_path):
    from indis.export import tensorrt as trt_mod
    from indis.export.pipeline import export_folder

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, installed or not
    with pytest.raises(ImportError) as e:
        trt_mod.require_tensorrt()
    msg = str(e.value)
    assert "pip install indis[tensorrt]" in msg and "NVIDIA GPU" in msg and "driver" in msg
    bb = ImageGMM(channels=1, res=8, components=2)
    model = Predictor(DiscretizationParam(bb.process, 2), bb.data_shape, hidden=8, conv_width=4)
    with pytest.raises(ImportError, match=r"indis\[tensorrt\]"):
        export_folder(model, bb, tmp_path / "t", tensorrt=True, precision="fp16", log=lambda *a: None)
    assert not (tmp_path / "t").exists()  # refused before anything was written
    with pytest.raises(ValueError, match="--tensorrt"):
        export_folder(model, bb, tmp_path / "t", precision="fp16", log=lambda *a: None)


FAKE_ENV = {"tensorrt_version": "10.7.0", "compute_capability": "9.0", "gpu_name": "NVIDIA H100"}


def test_engine_cache_key():
    prof = {"x": [[1, 3, 8, 8], [4, 3, 8, 8], [16, 3, 8, 8]]}
    f0 = mf.engine_key_fields("a" * 64, "backbone", "fp16", prof, FAKE_ENV, {"workspace_gib": None})
    k0 = mf.engine_cache_key(f0)
    assert k0 == mf.engine_cache_key(mf.engine_key_fields("a" * 64, "backbone", "fp16", prof, dict(FAKE_ENV), {"workspace_gib": None}))
    variants = [
        mf.engine_key_fields("b" * 64, "backbone", "fp16", prof, FAKE_ENV),
        mf.engine_key_fields("a" * 64, "backbone", "fp32", prof, FAKE_ENV),
        mf.engine_key_fields("a" * 64, "backbone", "fp16", {"x": [[1, 3, 8, 8], [8, 3, 8, 8], [16, 3, 8, 8]]}, FAKE_ENV),
        mf.engine_key_fields("a" * 64, "backbone", "fp16", prof, {**FAKE_ENV, "tensorrt_version": "10.8.0"}, {"workspace_gib": None}),
        mf.engine_key_fields("a" * 64, "backbone", "fp16", prof, {**FAKE_ENV, "compute_capability": "8.9"}),
        mf.engine_key_fields("a" * 64, "predictor", "fp16", prof, FAKE_ENV),
    ]
    keys = {mf.engine_cache_key(v) for v in variants}
    assert len(keys) == len(variants) and k0 not in keys
    entry = {"cache_key": k0, "key_fields": f0}
    assert mf.stale_reasons(entry, f0) == []
    reasons = mf.stale_reasons(entry, variants[3])
    assert len(reasons) == 1 and "TensorRT version" in reasons[0] and "10.8.0" in reasons[0]
    with pytest.raises(ValueError, match="compute_capability"):
        mf.engine_key_fields("a" * 64, "backbone", "fp16", prof, {"tensorrt_version": "10"})


def test_trt_engine_cache_resolution(export_dir, monkeypatch):
    """Fresh engine used after verification; stale engine refused without a builder and rebuilt with one."""
    from indis.export import pipeline, tensorrt as trt_mod

    folder, man, _ = export_dir
    built = []

    def fake_build(onnx_path, plan_path, profile_shapes, precision="fp32", timing_cache=None, **kw):
        data = f"engine of {os.path.basename(str(onnx_path))} {precision} {len(built)}".encode()
        from indis.io import atomic_write_bytes

        atomic_write_bytes(plan_path, data)
        built.append(plan_path)
        return {"seconds": 0.0, "bytes": len(data)}

    monkeypatch.setattr(trt_mod, "build_engine", fake_build)
    name = pipeline.build_trt_engine(folder, man, "backbone", "fp16", FAKE_ENV, log=lambda *a: None)
    mf.write_manifest(folder, man)
    entry = man["artifacts"][name]
    assert name.startswith("trt/backbone-") and entry["cache_key"].startswith(name[len("trt/backbone-"):-len(".plan")])
    assert entry["key_fields"]["onnx_sha256"] == man["artifacts"]["backbone.onnx"]["sha256"]
    path = pipeline.resolve_trt_engine(folder, man, "backbone", "fp16", FAKE_ENV, rebuild=False)
    assert path == folder / name and len(built) == 1  # fresh: reused, not rebuilt
    # a tampered engine is never trusted
    (folder / name).write_bytes(b"x" * entry["bytes"])
    with pytest.raises(mf.ArtifactError, match="sha256"):
        pipeline.resolve_trt_engine(folder, man, "backbone", "fp16", FAKE_ENV, rebuild=False)
    # another TensorRT version: refused without building, rebuilt with it
    new_env = {**FAKE_ENV, "tensorrt_version": "10.9.0"}
    with pytest.raises(mf.ArtifactError, match="TensorRT version differs"):
        pipeline.resolve_trt_engine(folder, man, "backbone", "fp16", new_env, rebuild=False)
    path2 = pipeline.resolve_trt_engine(folder, man, "backbone", "fp16", new_env, rebuild=True, log=lambda *a: None)
    assert path2 != folder / name and not (folder / name).exists() and len(built) == 2
    on_disk = mf.load_manifest(folder)
    assert on_disk["tensorrt_version"] == "10.9.0" and mf.find_engine_entry(on_disk, "backbone")[0] == str(path2.relative_to(folder))
    mf.verify_artifacts(folder)


def test_export_leaves_callers_modules_in_their_mode(tmp_path):
    """Regression: the exporter restores its wrappers' (training) mode recursively, which used to switch the
    caller's backbone to training mode (dropout on) after `export_folder`."""
    from indis.export.pipeline import export_folder

    bb = small_edm("SongUNet", 0).eval()
    for m in bb.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.5  # make a mode change visible in the output
    model = _randomize_head(Predictor(DiscretizationParam(bb.process, 2), bb.data_shape, bb.cond_spec, hidden=16, conv_width=8))
    model.train()
    x, t = torch.randn(2, *bb.data_shape) * 5, torch.full((2,), 5.0)
    with torch.no_grad():
        before = bb(x, t)
    export_folder(model, bb, tmp_path / "e", backbone_spec_str="test", log=lambda *a: None)
    assert not bb.training and not any(m.training for m in bb.modules())
    assert model.training
    with torch.no_grad():
        assert torch.equal(bb(x, t), before)
