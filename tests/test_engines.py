"""Runtimes over an export folder: torch and ONNX Runtime give the same samples for the same seeds (and native when
indis.native is built), the real ORT provider, batch invariance, the CLI (`indis export`, `indis sample --engines`),
the per-sample sigma export and its diffusers worked example (docs/export.md)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from indis.export.pipeline import export_folder
from indis.solvers import sample
from indis.backbones.demo import ImageGMM
from indis.sampling.sampler import Sampler
from indis.sampling.seeds import draw
from helpers import random_head_predictor
from helpers import small_edm

SEEDS = list(range(7))
QUIET = dict(log=lambda *a: None)

# Stated tolerance for "the same samples" across backends (fp32 everywhere, NFE 4):
#   |x_backend - x_torch| <= SAMPLE_ATOL, and the backend's error against a float64-state PyTorch reference is
#   at most K times PyTorch fp32's own error (plus a floor), as in flash-attention's tests.
SAMPLE_ATOL = 2e-3
K, FLOOR = 4.0, 2e-5




@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    out = {}
    gmm = ImageGMM(channels=1, res=8, components=4, conditional=True)
    out["gmm"] = (root / "gmm", gmm, random_head_predictor(gmm, 4, "logsnr"))
    edm = small_edm(img_channels=1)
    out["edm"] = (root / "edm", edm, random_head_predictor(edm, 4, "sigma_rho", seed=1))
    for folder, bb, model in out.values():
        export_folder(model, bb, folder, profile={"min": 1, "opt": 4, "max": 8}, **QUIET)
    return out


@pytest.mark.parametrize("which", ["gmm", "edm"])
def test_backends_give_the_same_samples(folders, which):
    folder, bb, model = folders[which]
    res = {}
    for be in ("torch", "ort"):
        fs = Sampler.from_engines(folder, be, backbone=bb)
        r = fs.sample_seeds(SEEDS[:5], batch_size=5)
        x_T, cond = r.x_T, r.cond
        res[be] = (r.x0, r.discretization)
    assert fs.provider == "CPUExecutionProvider"
    # float64-state PyTorch reference on the same discretization
    with torch.no_grad():
        d = model(x_T, cond)
        x64 = sample(bb, x_T.double(), d.to(torch.float64), solver="ipndm", cond=cond, state_dtype=torch.float64).float()
    (xt, pt), (xo, po) = res["torch"], res["ort"]
    assert (pt.timesteps - po.timesteps).abs().max() < 1e-4
    diff = (xo - xt).abs().max().item()
    err_torch = (xt - x64).abs().max().item()
    err_ort = (xo - x64).abs().max().item()
    assert diff <= SAMPLE_ATOL, (diff, err_torch, err_ort)
    assert err_ort <= K * err_torch + FLOOR, (diff, err_torch, err_ort)


def test_native_backend(folders):
    pytest.importorskip("indis.native")
    folder, bb, _ = folders["edm"]
    xt = Sampler.from_engines(folder, "torch", backbone=bb).sample_seeds(SEEDS[:5], batch_size=5).x0
    xn = Sampler.from_engines(folder, "native", backbone=bb).sample_seeds(SEEDS[:5], batch_size=5).x0
    assert (xn - xt).abs().max() <= SAMPLE_ATOL
    # the native loop drives any engine backbone: here the ONNX Runtime one
    fs = Sampler.from_engines(folder, "native", native_runtime="ort")
    xo = fs.sample_seeds(SEEDS[:5], batch_size=5).x0
    assert fs.backend == "native" and fs.provider == "CPUExecutionProvider"
    assert (xo - xt).abs().max() <= SAMPLE_ATOL


def test_batch_invariance_and_provider(folders):
    import onnxruntime as ort

    from indis.engines.loader import load_engines

    folder, bb, _ = folders["gmm"]
    fs = Sampler.from_engines(folder, "ort")
    a = fs.sample_seeds(SEEDS, batch_size=3).x0
    b = fs.sample_seeds(SEEDS[2:5], batch_size=1).x0
    assert (a[2:5] - b).abs().max() < 1e-5
    pred, eb, man = load_engines(folder, "ort", threads=1)
    sess = eb.runner.session
    assert eb.provider == sess.get_providers()[0] == "CPUExecutionProvider"
    assert eb.backbone_id == bb.backbone_id and pred.predictor_id == man["predictor_id"]
    # the engine backbone is a backbone: labels are checked and one-hot encoded like the torch model's
    x_T, cond = draw([0, 1], bb.data_shape, 1.0, bb.cond_spec)
    t = torch.tensor([1.0, 2.0])
    assert (eb(x_T, t, cond) - bb(x_T, t, cond)).abs().max() < 1e-4
    with pytest.raises(ValueError, match="class labels"):
        eb(x_T, t, torch.tensor([0, 99]))
    if not torch.cuda.is_available():
        assert "CUDAExecutionProvider" in ort.get_available_providers() or True  # listed or not, it is not used
        with pytest.raises(ImportError, match="CUDA"):
            load_engines(folder, "ort", device="cuda")


def test_torch_backend_checks_backbone_id(folders):
    from indis.engines.loader import load_engines
    from indis.export.manifest import ArtifactError

    folder, _, _ = folders["gmm"]
    with pytest.raises(ArtifactError, match="backbone id"):
        load_engines(folder, "torch", backbone=ImageGMM(channels=1, res=8, components=4, conditional=True, seed=5))


def test_cli_export_and_sample(tmp_path, capsys):
    from indis.cli import main

    out = tmp_path / "engines" / "gmm"
    assert main(["export", "--backbone", "gmm-image", "--nfe", "3", "--out", str(out), "--batch", "1,4,8",
                 "--sigmas-seeds", "0-3", "--threads", "1"]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["nfe"] == 3 and man["solver"] == "ipndm" and man["backbone"]["spec"] == "gmm-image"
    assert {"predictor.onnx", "backbone.onnx", "predictor.safetensors", "sigmas.json"} <= set(man["artifacts"])
    stamps = {}
    for be in ("torch", "ort"):
        png = tmp_path / f"s_{be}.png"
        assert main(["sample", "--engines", str(out), "--backend", be, "--seeds", "0-5", "--out", str(png), "--no-progress"]) == 0
        stamps[be] = json.loads(png.with_suffix(".timesteps.json").read_text())
    # the plain PyTorch path of `indis sample` (heuristic schedule) gives the same timesteps
    png = tmp_path / "s_plain.png"
    assert main(["sample", "--backbone", "gmm-image", "--nfe", "3", "--seeds", "0-5", "--out", str(png), "--no-progress"]) == 0
    plain = json.loads(png.with_suffix(".timesteps.json").read_text())
    for be in ("torch", "ort"):
        assert torch.allclose(torch.tensor(stamps[be]["timesteps"]), torch.tensor(plain["timesteps"]), atol=1e-5, rtol=1e-5)
    capsys.readouterr()
    assert main(["sample", "--engines", str(out), "--backend", "trt", "--seeds", "0", "--out", str(tmp_path / "t.png")]) == 2
    assert "indis[tensorrt]" in capsys.readouterr().err


def test_sigmas_json(folders, tmp_path):
    from indis.export.sigmas import export_sigmas, sigmas_for_seed

    _, bb, model = folders["edm"]
    doc = export_sigmas(model, bb, [0, 1, 2], tmp_path / "sigmas.json")
    assert json.loads((tmp_path / "sigmas.json").read_text())["format"] == "indis-sigmas"
    rows = doc["samples"]
    assert [r["seed"] for r in rows] == [0, 1, 2] and doc["nfe"] == 4
    for r in rows:
        # EDM: the list for EulerDiscreteScheduler, which takes all N+1 values and ends at t0
        d = r["diffusers"]
        assert len(r["sigmas"]) == 5 and d["scheduler"] == "EulerDiscreteScheduler" and d["sigmas"] == r["sigmas"]
        assert d["steps"] == 4 and d["terminal"] == r["sigmas"][-1]
        assert r["sigmas"] == pytest.approx(r["timesteps"])  # EDM: sigma = t
        assert r["sigmas"][0] == pytest.approx(80.0) and r["sigmas"][-1] == pytest.approx(0.002)
    assert max(abs(a - b) for a, b in zip(rows[0]["sigmas"], rows[1]["sigmas"])) > 1e-3  # per sample
    assert sigmas_for_seed(doc, 1) == rows[1]["sigmas"]
    vp = ImageGMM(channels=1, res=8, components=2, process="vp_linear")
    doc = export_sigmas(random_head_predictor(vp, 3, "logsnr"), vp, [4], tmp_path / "vp.json")
    r = doc["samples"][0]
    assert r["sigmas"] == pytest.approx(vp.process.ve_sigma(torch.tensor(r["timesteps"], dtype=torch.float64)).tolist())


def test_diffusers_worked_example():
    """docs/export.md: per-sample INDIS sigmas in a diffusers FlowMatchEulerDiscreteScheduler, one sample at a time."""
    from indis.backbones.diffusers import require_diffusers

    try:  # also hides a torchvision build that does not match torch (it breaks diffusers' model imports)
        diffusers = require_diffusers()
    except ImportError as e:
        pytest.skip(str(e))
    from indis.backbones.diffusers import DiffusersAdapter
    from indis.export.sigmas import schedules_for_seeds

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                                 norm_num_groups=4).eval()
    bb = DiffusersAdapter(unet, (1, 8, 8), process="flow", prediction_type="velocity", timestep_scale=1000.0)
    model = random_head_predictor(bb, 4, "t", b_dtau=0.0, b_gamma=0.0)  # plain sigma lists carry no shift/scale
    seeds = [0, 1, 2]
    doc = schedules_for_seeds(model, bb, seeds)
    x_T, _ = draw(seeds, bb.data_shape, bb.process.prior_std())
    for i, row in enumerate(doc["samples"]):
        assert row["diffusers"]["scheduler"] == "FlowMatchEulerDiscreteScheduler" and row["diffusers"]["config"]["shift"] == 1.0
        sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0)
        sched.set_timesteps(sigmas=row["diffusers"]["sigmas"])  # N values; the scheduler appends 0
        assert len(sched.timesteps) == 4
        x = x_T[i: i + 1]
        with torch.no_grad():
            for t in sched.timesteps:
                v = unet(x, t.expand(1)).sample
                x = sched.step(v, t, x).prev_sample
            ts = torch.tensor(row["timesteps"], dtype=torch.float32)
            x_indis, traj = sample(bb, x_T[i: i + 1], ts, solver="euler", state_dtype=torch.float32, return_trajectory=True)
        # diffusers steps from tau_{N-1} to 0, INDIS to t0: the same last velocity, a different step length
        x_prev, t_prev, t0 = traj[-2], row["timesteps"][-2], row["timesteps"][-1]
        expected = x_prev + (0.0 - t_prev) / (t0 - t_prev) * (x_indis - x_prev)
        assert (x - expected).abs().max() < 1e-4


def test_user_module_backbone_spec_found_in_the_current_folder(tmp_path):
    """`indis ... --backbone mymod:make` finds mymod.py in the folder the user runs from (without PYTHONPATH=.),
    as `python -m` would; before, the console script's own folder was searched and the import failed."""
    script = shutil.which("indis", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the indis console script is not installed beside this interpreter")
    (tmp_path / "mymod_indis_test.py").write_text(
        "import torch\nfrom indis.backbones import gaussian_backbone\n\n"
        "def make():\n    return gaussian_backbone(torch.zeros(2), 0.5, process='edm')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([script, "teacher", "--backbone", "mymod_indis_test:make", "--out", "t", "--count", "4",
                        "--steps", "3", "--no-progress"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "4 samples" in r.stdout
