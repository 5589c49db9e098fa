"""The one sampler facade (indis.sampling.sampler.Sampler): the same samples as the loops it replaced (the Python
solvers, the native loop, ONNX Runtime engines) for the same seeds, its Timings record, the seed loop, peers'
sampling choices, and `indis sample`'s --outdir / --class words and the `karras` schedule name."""
import json
import os

import pytest
import torch

from indis.backbones.demo import ImageGMM
from indis.baselines.common import peer_schedule
from indis.cli import main
from indis.engines.loader import load_engines
from indis.export.pipeline import export_folder
from indis.io import png_bytes
from indis.native import FastSampler, native_available
from indis.processes import get_process
from indis.sampling.fixed import heuristic
from indis.sampling.sampler import Sampler, Timings
from indis.sampling.seeds import draw, parse_seeds, seed_batches
from indis.sampling.solve import solve
from indis.schedules import get_schedule, polynomial
from indis.solvers import sample
from helpers import random_head_predictor

SEEDS = [0, 1, 2, 3, 4, 5, 6]
QUIET = dict(log=lambda *a: None)
COND_MODULE = "indis_test_sampler_condbb"  # a --backbone module:function written into the test's folder




@pytest.fixture(scope="module")
def cond_bb():
    return ImageGMM(channels=1, res=8, components=4, conditional=True).eval()


def _before(bb, model, seeds, batch, solver="ipndm", net=None):
    """The seed loop `indis sample` ran before the facade: draw per batch, the predictor, indis.solvers.sample."""
    xs = []
    with torch.no_grad():
        for sb in seed_batches(seeds, batch):
            x_T, c = draw(sb, bb.data_shape, bb.process.prior_std(), bb.cond_spec)
            xs.append(sample(net or bb, x_T, model(x_T, c), solver=solver, cond=c, state_dtype=torch.float32))
    return torch.cat(xs)


def test_torch_loop_gives_the_samples_of_the_python_solvers(cond_bb):
    model = random_head_predictor(cond_bb)
    s = Sampler(cond_bb, model, loop="python")
    r = s.sample_seeds(parse_seeds("0-6"), batch_size=3)
    assert torch.equal(r.x0, _before(cond_bb, model, SEEDS, 3))  # bit for bit
    x_T, c = draw(SEEDS, cond_bb.data_shape, cond_bb.process.prior_std(), cond_bb.cond_spec)
    assert r.seeds == SEEDS and torch.equal(r.x_T, x_T) and torch.equal(r.cond, c)
    with torch.no_grad():
        want = torch.cat([model(x_T[i:i + 3], c[i:i + 3]).timesteps for i in (0, 3, 6)])
    assert r.discretization.timesteps.dtype == torch.float64 and torch.equal(r.discretization.timesteps, want.double())
    t = r.timings
    assert (t.path, t.runtime, t.nfe, t.batch, t.fallback_reason) == ("python", "torch", 4, 7, None)
    assert t.update_ms is None and t.backbone_ms > 0 and t.loop_ms >= t.backbone_ms


def test_native_loop_gives_the_samples_of_the_native_sampler(cond_bb):
    if not native_available():
        pytest.skip("indis._C is not built")
    model = random_head_predictor(cond_bb)
    x_T, c = draw(SEEDS, cond_bb.data_shape, cond_bb.process.prior_std(), cond_bb.cond_spec)
    x0, t = Sampler(cond_bb, model, loop="native")(x_T, c)
    with torch.no_grad():
        disc = model(x_T, c)
        want, _ = FastSampler(cond_bb, solver="ipndm", backend="native", state_dtype=torch.float32)(x_T, c, disc=disc)
        ref = sample(cond_bb, x_T, disc, solver="ipndm", cond=c, state_dtype=torch.float32)
    assert torch.equal(x0, want)
    assert (x0 - ref).abs().max() <= 1e-5 * ref.abs().max()
    assert t.path == "native" and t.fallback_reason is None and t.ring is not None
    assert t.backbone_ms > 0 and t.update_ms >= 0 and t.predictor_ms > 0


def test_auto_loop_says_why_it_falls_back(cond_bb):
    x_T, c = draw([0, 1], cond_bb.data_shape, cond_bb.process.prior_std(), cond_bb.cond_spec)
    s = Sampler(cond_bb, random_head_predictor(cond_bb), solver="unipc", loop="auto")  # UniPC is Python-only
    _, t = s(x_T, c)
    assert t.path == "python" and t.fallback_reason and s.path_for(x_T) == ("python", t.fallback_reason)
    if native_available():
        assert "unipc" in t.fallback_reason
        with pytest.raises(ValueError, match="unipc"):
            Sampler(cond_bb, random_head_predictor(cond_bb), solver="unipc", loop="native")


def test_ort_engines_give_the_samples_of_the_engine_loop(cond_bb, tmp_path):
    model = random_head_predictor(cond_bb)
    export_folder(model, cond_bb, tmp_path / "e", profile={"min": 1, "opt": 4, "max": 8}, **QUIET)
    s = Sampler.from_engines(tmp_path / "e", "ort", threads=1)
    r = s.sample_seeds(SEEDS)  # batches of the profile's optimum (4)
    # before: EngineSampler ran the engine predictor and indis.solvers.sample on the engine backbone, per batch,
    # with the condition one-hot encoded once
    pred, eb, man = load_engines(tmp_path / "e", "ort", threads=1)
    xs = []
    with torch.no_grad():
        for sb in seed_batches(SEEDS, 4):
            x_T, c = draw(sb, cond_bb.data_shape, cond_bb.process.prior_std(), cond_bb.cond_spec)
            oh = cond_bb.cond_spec.check(c, len(sb))
            xs.append(sample(eb, x_T, pred(x_T, oh), solver=man["solver"], cond=oh, state_dtype=torch.float32))
    assert torch.equal(r.x0, torch.cat(xs))
    assert (r.x0 - _before(cond_bb, model, SEEDS, 4)).abs().max() <= 2e-3  # and the torch samples, to fp32 ONNX
    assert (r.timings.runtime, r.timings.path, r.timings.batch) == ("ort", "python", 7)
    assert s.provider == "CPUExecutionProvider" and s.manifest["nfe"] == 4


def test_timings_record(cond_bb):
    x_T, c = draw([0, 1, 2], cond_bb.data_shape, cond_bb.process.prior_std(), cond_bb.cond_spec)
    s = Sampler(cond_bb, random_head_predictor(cond_bb), loop="python")
    _, t = s(x_T, c)
    assert isinstance(t, Timings)
    d = t.as_dict()
    json.dumps(d)
    for k in ("predictor_ms", "backbone_ms", "update_ms", "loop_ms", "total_ms", "nfe", "batch", "path", "runtime",
              "fallback_reason", "ring"):
        assert k in d
    assert 0 < t.predictor_ms and 0 < t.loop_ms and t.predictor_ms + t.loop_ms <= t.total_ms
    both = Timings.total([t, t])
    assert both.batch == 6 and both.total_ms == pytest.approx(2 * t.total_ms) and both.backbone_ms == pytest.approx(2 * t.backbone_ms)
    # a discretization given by the caller: no predictor time; none at all: a clear error
    with torch.no_grad():
        disc = s.predictor(x_T, c)
    _, t2 = Sampler(cond_bb, loop="python")(x_T, c, disc=disc)
    assert t2.predictor_ms == 0.0 and t2.nfe == 4
    with pytest.raises(ValueError, match="no discretization"):
        Sampler(cond_bb, loop="python")(x_T, c)


def test_a_peer_is_sampled_with_its_own_choices():
    """A peer's per-step orders and analytical first step (indis.baselines) are honoured, as solve() does."""
    bb = ImageGMM(channels=1, res=8, components=4).eval()
    m = peer_schedule(bb, get_schedule("logsnr", bb.process, 4), solver="ipndm", orders=[1, 2, 2, 1], afs=True)
    x_T, _ = draw(SEEDS, bb.data_shape, bb.process.prior_std())
    x0, t = Sampler(bb, m, loop="auto")(x_T)
    with torch.no_grad():
        want = solve(m, bb, x_T, None)
        plain = sample(bb, x_T, m(x_T), solver="ipndm", state_dtype=torch.float32)
    assert torch.equal(x0, want) and not torch.equal(x0, plain)
    assert t.path == "python" and "per-step orders" in t.fallback_reason
    with pytest.raises(ValueError, match="per-step orders"):
        Sampler(bb, m, loop="native")


def test_karras_is_polynomial_rho_7():
    for proc in ("edm", "flow", "vp_linear"):
        p = get_process(proc)
        assert torch.equal(get_schedule("karras", p, 5), polynomial(p, 5, p.t0, p.T, rho=7.0))
    bb = ImageGMM(channels=1, res=8, components=4)
    assert torch.equal(heuristic(bb, "karras", 6).timesteps, heuristic(bb, "polynomial", 6).timesteps)
    with pytest.raises(ValueError, match="rho"):
        get_schedule("karras", "edm", 5, rho=3.0)
    with pytest.raises(ValueError, match="karras"):  # the error lists it among the names
        get_schedule("no-such", "edm", 5)


def _png_pixels(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.mode, torch.from_numpy(__import__("numpy").asarray(im).copy())


def test_cli_outdir_writes_one_png_per_seed(tmp_path, capsys):
    out, outdir = tmp_path / "grid.png", tmp_path / "seeds"
    assert main(["sample", "--backbone", "gmm-image", "--seeds", "3-5,10", "--nfe", "3", "--schedule", "karras",
                 "--batch-size", "2", "--out", str(out), "--outdir", str(outdir), "--no-progress"]) == 0
    assert sorted(os.listdir(outdir)) == ["000003.png", "000004.png", "000005.png", "000010.png"]
    assert out.exists() and json.loads(out.with_suffix(".timesteps.json").read_text())["schedule"] == "karras"
    bb = ImageGMM()
    x0 = Sampler(bb, schedule="polynomial", nfe=3, loop="python").sample_seeds([3, 4, 5, 10], batch_size=2).x0
    for i, seed in enumerate([3, 4, 5, 10]):
        mode, px = _png_pixels(outdir / f"{seed:06d}.png")
        want = (x0[i] * 127.5 + 128).clip(0, 255).to(torch.uint8).permute(1, 2, 0)  # EDM's generate.py quantisation
        assert mode == "RGB" and torch.equal(px, want)
    assert (outdir / "000003.png").read_bytes() == png_bytes(x0[0])
    capsys.readouterr()


def test_cli_class_is_refused_on_an_unconditional_backbone(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["sample", "--backbone", "gmm-image", "--seeds", "0-3", "--nfe", "2", "--class", "1", "--out", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--class 1 needs a class-conditional backbone; this one is unconditional" in err
    assert not out.exists()


def test_cli_class_on_a_conditional_backbone(tmp_path, monkeypatch, capsys):
    (tmp_path / f"{COND_MODULE}.py").write_text(
        "from indis.backbones.demo import ImageGMM\n\n\n"
        "def backbone():\n    return ImageGMM(channels=1, res=8, components=4, conditional=True)\n")
    monkeypatch.chdir(tmp_path)
    spec = f"{COND_MODULE}:backbone"
    base = ["sample", "--backbone", spec, "--seeds", "0-5", "--nfe", "3", "--no-progress"]
    assert main(base + ["--class", "1", "--out", "one.png", "--outdir", "one"]) == 0
    assert main(base + ["--out", "own.png", "--outdir", "own"]) == 0
    bb = ImageGMM(channels=1, res=8, components=4, conditional=True)
    s = Sampler(bb, schedule="polynomial", nfe=3, loop="python")
    r1, r0 = s.sample_seeds(range(6), class_label=1), s.sample_seeds(range(6))
    assert torch.equal(r1.cond, torch.ones(6, dtype=torch.int64)) and torch.equal(r1.x_T, r0.x_T)
    assert not torch.equal(r1.cond, r0.cond)  # by default each seed has its own class
    for k in range(6):
        name = f"{k:06d}.png"
        assert _png_pixels(f"one/{name}")[0] == "L"
        assert (tmp_path / "one" / name).read_bytes() == png_bytes(r1.x0[k])
        assert (tmp_path / "own" / name).read_bytes() == png_bytes(r0.x0[k])
    capsys.readouterr()
    assert main(base + ["--class", "2", "--out", "bad.png"]) == 2
    assert "--class must be an integer class in [0, 2), got 2" in capsys.readouterr().err


TEXT_MODULE = "indis_test_sampler_textbb"
TEXT_SOURCE = '''import torch
from indis.backbones.base import Backbone, CondSpec


class TextToy(Backbone):
    """A tiny text-conditional image backbone: velocity = tanh(w x + mean of the condition)."""

    def __init__(self):
        super().__init__("flow", "velocity", (1, 4, 4), CondSpec("text", 6))
        self.w = torch.nn.Parameter(torch.tensor([0.5]))

    def predict(self, x, t, cond):
        return torch.tanh(self.w * x + cond.mean(1).view(-1, 1, 1, 1))


def backbone():
    return TextToy()
'''


def test_cli_prompt_table_gives_each_seed_a_row(tmp_path, monkeypatch, capsys):
    from indis.io import save_tensors

    (tmp_path / f"{TEXT_MODULE}.py").write_text(TEXT_SOURCE)
    monkeypatch.chdir(tmp_path)
    table = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    save_tensors(tmp_path / "table.safetensors", {"table": table})
    base = ["sample", "--backbone", f"{TEXT_MODULE}:backbone", "--seeds", "0-4", "--nfe", "3", "--no-progress"]
    assert main(base + ["--prompt-table", "table.safetensors", "--out", "g.png", "--outdir", "png"]) == 0
    import importlib

    bb = importlib.import_module(TEXT_MODULE).backbone()
    r = Sampler(bb, schedule="polynomial", nfe=3, loop="python", prompt_table=table).sample_seeds(range(5))
    assert torch.equal(r.cond, draw(range(5), bb.data_shape, 1.0, bb.cond_spec, table)[1])
    for k in range(5):
        assert (tmp_path / "png" / f"{k:06d}.png").read_bytes() == png_bytes(r.x0[k])
    capsys.readouterr()
    assert main(base + ["--out", "h.png"]) == 2
    assert "--prompt-table" in capsys.readouterr().err
    assert main(base + ["--prompt-table", "table.safetensors", "--class", "0", "--out", "h.png"]) == 2
    assert "this one is text-conditional" in capsys.readouterr().err


def test_contradicting_options_are_refused(cond_bb):
    p = random_head_predictor(cond_bb, nfe=3)
    assert Sampler(cond_bb, p, nfe=3).fast.solver.name == "ipndm"
    for kw, msg in (({"nfe": 4}, "nfe 4 conflicts with the predictor, which makes 3 steps"),
                    ({"schedule": "karras"}, "applies to sampling without a predictor")):
        with pytest.raises(ValueError, match=msg):
            Sampler(cond_bb, p, **kw)
    with pytest.raises(ValueError, match="needs nfe"):
        Sampler(cond_bb, schedule="karras")
    with pytest.raises(ValueError, match="loop must be one of"):
        Sampler(cond_bb, p, loop="fast")
    with pytest.raises(ValueError, match=r"integer class in \[0, 2\)"):
        next(Sampler(cond_bb, p).iter_seeds([0], class_label=-1))
