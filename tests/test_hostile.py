"""Hostile files and careless commands (issue 15): one test per finding, numbered as in the issue.

Each test failed on the code before the fix (see the finding in its docstring) and passes now. Cases that
crashed or exhausted memory before the fix run in a subprocess under a memory limit, so that the old
behaviour shows as a failed test and never takes the test run (or the machine) down with it.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from indis import _native
from indis.cli import main as indis_main
from indis.export import manifest as mf
from indis.io import atomic_write_json, load_tensors, save_tensors, sha256_file

HAVE_NATIVE = _native.native_available()
needs_native = pytest.mark.skipif(not HAVE_NATIVE, reason="indis._C not built")
ROOT = Path(__file__).resolve().parents[1]


def run_isolated(code: str, mem_gb: int = 16, timeout: int = 240) -> subprocess.CompletedProcess:
    """Run `code` in a fresh Python under an address-space limit (allocations beyond it fail at once)."""
    prelude = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({mem_gb} << 30, {mem_gb} << 30))\n"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=str(ROOT), env=env)


def cli(capsys, *argv) -> tuple:
    """(exit code, stderr) of `indis ARGV` run in this process."""
    rc = indis_main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def assert_one_line_error(rc, err, *words):
    assert rc == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])


# ------------------------------------------------------------------------------------------------
# shared folders (small: the gmm-image backbone, NFE 5 heuristic export, two 16-sample teacher sets)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bb():
    from indis.backbones.spec import resolve_backbone

    return resolve_backbone("gmm-image")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, bb):
    from indis.export.pipeline import export_folder
    from indis.sampling.fixed import heuristic

    folder = tmp_path_factory.mktemp("hostile") / "engines"
    export_folder(heuristic(bb, "polynomial", 5), bb, folder, backbone_spec_str="gmm-image",
                  profile={"min": 1, "opt": 4, "max": 8}, log=lambda *a: None)
    return folder


@pytest.fixture
def export_copy(export_dir, tmp_path):
    dst = tmp_path / "engines"
    shutil.copytree(export_dir, dst)
    return dst


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, bb):
    from indis.training.teacher import TeacherConfig, generate_teacher

    root = tmp_path_factory.mktemp("teachers")
    for name, first in (("a", 0), ("b", 1000)):
        generate_teacher(bb, root / name, TeacherConfig(count=16, shard_size=4, steps=4, first_seed=first), progress=False)
    return root / "a", root / "b"


TRAIN_OPTS = ["--steps", "2", "--batch-size", "4", "--val-every", "1", "--ckpt-every", "1", "--hidden", "8",
              "--conv-width", "4", "--val-fraction", "0.25", "--nfe", "3", "--no-progress"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, teachers):
    out = tmp_path_factory.mktemp("runs") / "run"
    assert indis_main(["train", "--backbone", "gmm-image", "--teacher", str(teachers[0]), "--out", str(out)] + TRAIN_OPTS) == 0
    return out


def _edit_manifest(folder, fn):
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    fn(m)
    path.write_text(json.dumps(m))


# ------------------------------------------------------------------------------------------------
# 1. An export folder must not run code; artifact names are plain names inside the folder
# ------------------------------------------------------------------------------------------------
def test_1_manifest_backbone_spec_never_runs_code(export_copy, tmp_path, monkeypatch, capsys, bb):
    """Before: engines/loader.py imported and called the manifest's `module:function` (os:abort killed `indis
    sample`). Now only registry names are read from a manifest; anything else is refused with a message that
    says to pass --backbone, and the code never runs."""
    from indis.engines.loader import load_engines

    pkg = tmp_path / "evilpkg"
    pkg.mkdir()
    flag = tmp_path / "code_ran"
    (pkg / "evil_backbone.py").write_text(
        "from pathlib import Path\n"
        "def make():\n"
        f"    Path({str(flag)!r}).write_text('ran')\n"
        "    from indis.backbones.spec import resolve_backbone\n"
        "    return resolve_backbone('gmm-image')\n")
    monkeypatch.syspath_prepend(str(pkg))
    _edit_manifest(export_copy, lambda m: m["backbone"].__setitem__("spec", "evil_backbone:make"))
    with pytest.raises(mf.ArtifactError, match="--backbone"):
        load_engines(export_copy, "torch")
    rc, err = cli(capsys, "sample", "--engines", export_copy, "--backend", "torch", "--seeds", "0-1", "--out", tmp_path / "g.png",
                  "--no-progress")
    assert_one_line_error(rc, err, "--backbone")
    assert not flag.exists(), "the manifest's module:function was imported and called"
    # a folder path from the manifest is refused too; the same backbone named on the command line works
    _edit_manifest(export_copy, lambda m: m["backbone"].__setitem__("spec", str(tmp_path)))
    with pytest.raises(mf.ArtifactError, match="registry name"):
        load_engines(export_copy, "torch")
    pred, net, _ = load_engines(export_copy, "torch", backbone=bb)
    assert net.backbone_id == bb.backbone_id
    assert cli(capsys, "sample", "--engines", export_copy, "--backend", "torch", "--backbone", "gmm-image", "--seeds", "0-1",
               "--out", tmp_path / "g.png", "--no-progress")[0] == 0
    assert not flag.exists()


@pytest.mark.parametrize("name", ["../outside.bin", "/etc/hostname", "trt/../../outside.bin", "sub\\..\\x", "a/b/c.onnx", ""])
def test_1_artifact_names_stay_inside_the_folder(export_copy, name):
    """Before: export/manifest.py accepted artifact names with '..' or absolute paths and verified (read) files
    outside the folder."""
    outside = export_copy.parent / "outside.bin"
    outside.write_bytes(b"not part of the export")
    _edit_manifest(export_copy, lambda m: m["artifacts"].__setitem__(name, mf.file_entry(outside, "onnx")))
    with pytest.raises(mf.ArtifactError, match="plain file names"):
        mf.verify_artifacts(export_copy)


def test_1_artifact_through_a_link_is_refused(export_copy):
    """A plain name that is a symbolic link out of the folder is refused as well."""
    outside = export_copy.parent / "outside.bin"
    outside.write_bytes(b"x")
    (export_copy / "link.bin").symlink_to(outside)
    with pytest.raises(mf.ArtifactError, match="outside the export folder"):
        mf.verify_file(export_copy, "link.bin", mf.file_entry(outside, "onnx"))


# ------------------------------------------------------------------------------------------------
# 2. The native loop must not write through a stale pointer when the backbone replaces x's storage
# ------------------------------------------------------------------------------------------------
@needs_native
def test_2_native_loop_refuses_a_backbone_that_replaces_the_state_storage():
    """Before: csrc/sampler_loop.cpp recorded x's data pointer once; a backbone calling x.set_(...) made the loop
    write through a stale pointer (SIGSEGV, heap corruption or silent zeros). Now each case is a ValueError."""
    r = run_isolated("""
        import torch
        from indis import native
        ts = torch.tensor([80., 10., 1., 0.1, 0.002], dtype=torch.float64)
        x_T = torch.randn(4, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 80

        class Base(torch.nn.Module):
            process, prediction_type = "edm", "eps"
            def __init__(self):
                super().__init__(); self.prev = None; self.calls = 0
            def forward(self, x, t, cond=None):
                self.calls += 1
                out = x / (1 + t.view(-1, 1) ** 2).sqrt()
                self.hostile(x)
                self.prev = out
                return out

        class SetState(Base):          # the Python solver returns a finite sample with this one
            def hostile(self, x): x.set_(torch.zeros_like(x))
        class FreeState(Base):
            def hostile(self, x): x.untyped_storage().resize_(0)
        class Reshape(Base):
            def hostile(self, x): x.resize_(2, 2)
        class SetHistory(Base):        # replaces the storage of an output the loop keeps as history
            def hostile(self, x):
                if self.calls == 3: self.prev.set_(torch.zeros(1, dtype=x.dtype))

        for cls in (SetState, FreeState, Reshape, SetHistory):
            try:
                x = native.sample(cls(), x_T, ts, solver="ipndm")
                print(cls.__name__, "RESULT", float(x.abs().max()))
            except ValueError as e:
                print(cls.__name__, "REFUSED", str(e)[:60])
    """)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    for name in ("SetState", "FreeState", "Reshape", "SetHistory"):
        assert f"{name} REFUSED" in r.stdout, r.stdout


# ------------------------------------------------------------------------------------------------
# 3. A backbone that returns one output buffer every call
# ------------------------------------------------------------------------------------------------
class _Fresh(torch.nn.Module):
    process, prediction_type = "edm", "eps"

    def forward(self, x, t, cond=None):
        return torch.tanh(x / (1 + t.view(-1, 1) ** 2).sqrt()) * 1.5


class _Reusing(_Fresh):
    def __init__(self):
        super().__init__()
        self.buf = None

    def forward(self, x, t, cond=None):
        if self.buf is None:
            self.buf = torch.empty_like(x)
        return self.buf.copy_(super().forward(x, t))


@pytest.mark.parametrize("solver", ["euler", "ipndm", "dpmpp_2m", "unipc"])
def test_3_reused_output_buffer_python_path(solver):
    """Before: indis.solvers.sample kept the backbone's buffer in its history: error 0.3 against the reference."""
    from indis.solvers import sample

    ts = torch.tensor([80.0, 10.0, 1.0, 0.1, 0.002], dtype=torch.float64)
    x_T = torch.randn(4, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 80
    ref = sample(_Fresh(), x_T, ts, solver=solver)
    got = sample(_Reusing(), x_T, ts, solver=solver)
    assert (got - ref).abs().max() < 1e-12


@needs_native
@pytest.mark.parametrize("solver", ["euler", "ipndm", "dpmpp_2m"])
def test_3_reused_output_buffer_native_path(solver):
    """Before: the native loop's reference ring kept the reused buffer: silently wrong samples unless
    reuses_output=True. Now the reuse is detected and the sample recomputed with the copying ring."""
    from indis import native
    from indis.solvers import sample

    ts = torch.tensor([80.0, 10.0, 1.0, 0.1, 0.002], dtype=torch.float64)
    x_T = torch.randn(4, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 80
    ref = sample(_Fresh(), x_T, ts, solver=solver)
    got, info = native.sample(_Reusing(), x_T, ts, solver=solver, return_info=True)
    assert (got - ref).abs().max() < 1e-10
    # iPNDM keeps outputs in its history (reference ring): the reuse is found there; Euler keeps one output only
    # (nothing to overwrite) and DPM-Solver++ copies into its ring anyway
    assert info["reuse_detected"] == (solver == "ipndm") and info["ring"] == ("references" if solver == "euler" else "buffer")
    fs = native.FastSampler(_Reusing(), solver=solver, backend="native")
    x0, _ = fs(x_T, disc=ts)
    assert (x0 - ref).abs().max() < 1e-10
    # a well-behaved backbone keeps the cheap reference ring
    _, info = native.sample(_Fresh(), x_T, ts, solver=solver, return_info=True)
    assert not info["reuse_detected"]


# ------------------------------------------------------------------------------------------------
# 4. Negative-bit / conjugate views are read with their sign, or refused where written
# ------------------------------------------------------------------------------------------------
@needs_native
def test_4_sign_views_are_read_with_their_sign():
    """Before: a coefficient like torch.randn(4, dtype=complex64).conj().imag was read without its sign
    (out = -u x silently), in fused_update, fused_update_x0, step_coeffs and sample_loop (now: the custom operators
    and the sampler loop, which reads the tables of indis.solvers.step_tables)."""
    from indis import native

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, generator=g)
    h = [torch.randn(4, 6, generator=g) for _ in range(2)]
    u = torch.randn(4, dtype=torch.complex64, generator=g).conj().imag
    w = torch.randn(4, 2, dtype=torch.complex64, generator=g).conj().imag
    assert u.is_neg() and w.is_neg()
    ref = u.resolve_neg().view(-1, 1) * x + w.resolve_neg()[:, :1] * h[0] + w.resolve_neg()[:, 1:] * h[1]
    out = torch.empty_like(x)
    native.fused_update(out, x, h, u, w)
    torch.testing.assert_close(out, ref)
    neg_x = torch._neg_view(-x)  # reads as x
    native.fused_update(out, neg_x, [torch._neg_view(-h[0]), h[1]], u, w)
    torch.testing.assert_close(out, ref)
    # x0 variant: pred, p, q as sign views
    p, q = torch._neg_view(-torch.ones(4)), torch._neg_view(torch.full((4,), 0.5))
    slot = torch.empty_like(x)
    native.fused_update_x0(out, x, torch._neg_view(-h[0]), slot, [h[1]], p, q, u, w)
    torch.testing.assert_close(slot, x - 0.5 * h[0])
    torch.testing.assert_close(out, u.resolve_neg().view(-1, 1) * x + w.resolve_neg()[:, :1] * slot + w.resolve_neg()[:, 1:] * h[1])
    # written tensors cannot be sign views: refused, nothing written
    target = torch.zeros(4, 6)
    with pytest.raises(ValueError, match="negative-bit"):
        native.fused_update(torch._neg_view(target), x, h, u, w)
    assert (target == 0).all()
    with pytest.raises(ValueError, match="negative-bit"):
        native.fused_update_x0(out, x, h[0], torch._neg_view(slot), [h[1]], p, q, u, w)
    # the step tables the native loop reads, its schedule and its prior
    from indis.solvers import step_tables

    C = _native.load()
    ts = torch.tensor([80.0, 10.0, 1.0, 0.1, 0.002], dtype=torch.float64)
    x_T = torch.randn(3, 6, dtype=torch.float64, generator=g) * 80
    tables = step_tables("ipndm", "edm", ts, batch=3)._asdict()
    fn = lambda x, t: _Fresh()(x, t)
    ref = C.sample_loop(fn, x_T, **tables)["x"]
    for name in ("u", "w", "p", "q", "t_call"):
        signed = {**tables, name: torch._neg_view(-tables[name])}
        torch.testing.assert_close(C.sample_loop(fn, x_T, **signed)["x"], ref, rtol=0, atol=0)
    torch.testing.assert_close(native.sample(_Fresh(), torch._neg_view(-x_T), torch._neg_view(-ts)),
                               native.sample(_Fresh(), x_T, ts))


# ------------------------------------------------------------------------------------------------
# 5. A predictor config is checked against the file's weights before anything is allocated
# ------------------------------------------------------------------------------------------------
def test_5_huge_predictor_config_is_refused_before_allocation(tmp_path):
    """Before: a predictor file whose config said hidden=200000 made load_predictor allocate 160 GB before the
    weights were compared (here: under a 16 GB address-space limit, an allocation error)."""
    from indis.discretization import DiscretizationParam
    from indis.predictor import Predictor

    m = Predictor(DiscretizationParam("edm", 3), (5,), hidden=8)
    path = tmp_path / "p.safetensors"
    save_tensors(path, m.state_dict(), {"config": dict(m.config(), hidden=200000), "nfe": 3})
    r = run_isolated(f"""
        from indis.sampling.load import load_predictor
        try:
            load_predictor({str(path)!r})
            print("LOADED")
        except ValueError as e:
            print("REFUSED", e)
    """, mem_gb=16)
    assert r.returncode == 0 and "REFUSED" in r.stdout and "the file holds" in r.stdout, (r.stdout, r.stderr[-1500:])
    # a mistyped config value is a clear error too
    save_tensors(path, m.state_dict(), {"config": dict(m.config(), hidden="wide"), "nfe": 3})
    from indis.sampling.load import load_predictor

    with pytest.raises(ValueError, match="config is invalid"):
        load_predictor(path)


# ------------------------------------------------------------------------------------------------
# 6. No command overwrites a folder of another kind, nor an earlier run without being told
# ------------------------------------------------------------------------------------------------
def test_6_export_refuses_a_teacher_folder(teachers, tmp_path, capsys):
    """Before: `indis export --out <a teacher folder>` overwrote the teacher's manifest.json."""
    teacher = tmp_path / "teacher"
    shutil.copytree(teachers[0], teacher)
    before = sha256_file(teacher / "manifest.json")
    rc, err = cli(capsys, "export", "--backbone", "gmm-image", "--nfe", "3", "--out", teacher, "--no-verify")
    assert_one_line_error(rc, err, "teacher dataset")
    assert sha256_file(teacher / "manifest.json") == before and not (teacher / "backbone.onnx").exists()


def test_6_train_refuses_an_export_folder(export_copy, teachers, capsys):
    """Before: `indis train --out <an export folder>` overwrote its predictor.safetensors."""
    before = sha256_file(export_copy / "predictor.safetensors")
    rc, err = cli(capsys, "train", "--backbone", "gmm-image", "--teacher", teachers[0], "--out", export_copy, *TRAIN_OPTS)
    assert_one_line_error(rc, err, "export folder")
    assert sha256_file(export_copy / "predictor.safetensors") == before and not (export_copy / "checkpoint.safetensors").exists()


def test_6_train_refuses_an_earlier_run_without_resume_or_overwrite(trained_run, teachers, tmp_path, capsys):
    """Before: `indis train --out <a folder with a checkpoint>` without --resume silently replaced the checkpoint."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = sha256_file(run / "checkpoint.safetensors")
    rc, err = cli(capsys, "train", "--backbone", "gmm-image", "--teacher", teachers[0], "--out", run, *TRAIN_OPTS, "--lr", "0.01")
    assert_one_line_error(rc, err, "--resume", "--overwrite")
    assert sha256_file(run / "checkpoint.safetensors") == before
    # teacher into a training run, export into a training run: refused as well
    rc, err = cli(capsys, "teacher", "--backbone", "gmm-image", "--out", run, "--count", "4", "--steps", "3", "--no-progress")
    assert_one_line_error(rc, err, "training run")
    rc, err = cli(capsys, "export", "--backbone", "gmm-image", "--nfe", "3", "--out", run, "--no-verify")
    assert_one_line_error(rc, err, "training run")
    # told to: --overwrite starts again
    assert cli(capsys, "train", "--backbone", "gmm-image", "--teacher", teachers[0], "--out", run, *TRAIN_OPTS, "--lr", "0.01",
               "--overwrite")[0] == 0
    assert load_tensors(run / "checkpoint.safetensors")[1]["config"]["lr"] == 0.01


def test_6_export_refuses_another_export_without_overwrite(export_copy, capsys):
    """An export folder of another predictor (here NFE 3 instead of 5) is replaced only with --overwrite."""
    before = sha256_file(export_copy / "manifest.json")
    rc, err = cli(capsys, "export", "--backbone", "gmm-image", "--nfe", "3", "--out", export_copy, "--no-verify")
    assert_one_line_error(rc, err, "--overwrite")
    assert sha256_file(export_copy / "manifest.json") == before
    assert cli(capsys, "export", "--backbone", "gmm-image", "--nfe", "3", "--out", export_copy, "--no-verify", "--overwrite")[0] == 0
    assert mf.load_manifest(export_copy)["nfe"] == 3


# ------------------------------------------------------------------------------------------------
# 7. --resume checks teacher, backbone and config
# ------------------------------------------------------------------------------------------------
def test_7_resume_with_another_teacher_is_refused(trained_run, teachers, tmp_path, capsys):
    """Before: `indis train --resume` with a different --teacher was accepted and the history mixed two
    validation sets."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = sha256_file(run / "checkpoint.safetensors")
    rc, err = cli(capsys, "train", "--backbone", "gmm-image", "--teacher", teachers[1], "--out", run, *TRAIN_OPTS, "--resume")
    assert_one_line_error(rc, err, "another teacher")
    assert sha256_file(run / "checkpoint.safetensors") == before
    rc, err = cli(capsys, "train", "--backbone", "gmm-image", "--teacher", teachers[0], "--out", run, *TRAIN_OPTS, "--resume",
                  "--lr", "0.5")
    assert_one_line_error(rc, err, "other settings", "lr")
    # the same teacher moved to another folder is the same teacher
    moved = tmp_path / "moved_teacher"
    shutil.copytree(teachers[0], moved)
    assert cli(capsys, "train", "--backbone", "gmm-image", "--teacher", moved, "--out", run, *TRAIN_OPTS, "--resume")[0] == 0


# ------------------------------------------------------------------------------------------------
# 8. A teacher rerun verifies every shard and makes the bad ones again
# ------------------------------------------------------------------------------------------------
def test_8_teacher_rerun_repairs_shards(teachers, tmp_path, capsys):
    """Before: rerunning `indis teacher` on a dataset with a corrupted or deleted shard returned "16 samples in
    4 shards" and left the damage (training then failed on the checksum)."""
    from indis.training.teacher import load_teacher

    root = tmp_path / "teacher"
    shutil.copytree(teachers[0], root)
    original = {p.name: p.read_bytes() for p in root.glob("shard_*.safetensors")}
    corrupt = root / "shard_00001.safetensors"
    data = bytearray(corrupt.read_bytes())
    data[-3] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    (root / "shard_00002.safetensors").unlink()
    rc = indis_main(["teacher", "--backbone", "gmm-image", "--out", str(root), "--count", "16", "--shard-size", "4",
                     "--steps", "4", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "2 of 4 shards" in out, out
    assert {p.name: p.read_bytes() for p in root.glob("shard_*.safetensors")} == original  # bit-exact again
    assert len(load_teacher(root)) == 16


# ------------------------------------------------------------------------------------------------
# 9. Seeds parsed with clear messages, any range in bounded memory; conflicting options refused
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,words", [("-1", ["negative"]), ("-5--1", ["negative"]),
                                        ("99999999999999999999", ["larger than the largest seed"]),
                                        ("a-b", ["not a seed"]), ("", ["empty"]), ("9-3", ["empty"]), ("1,,2", ["empty item"])])
def test_9_seed_errors_are_clear(text, words, tmp_path, capsys, monkeypatch):
    """Before: "invalid literal for int()", "too many values to unpack", "Overflow when unpacking long long"."""
    import indis.training.cli as tcli

    monkeypatch.setattr(tcli, "load_backbone_spec", lambda spec: pytest.fail("the backbone was loaded before the seeds were checked"))
    rc, err = cli(capsys, "sample", "--backbone", "gmm-image", f"--seeds={text}", "--out", tmp_path / "g.png", "--no-progress")
    assert_one_line_error(rc, err, "--seeds", *words)


def test_9_huge_seed_range_in_bounded_memory(tmp_path):
    """Before: `indis sample --seeds 0-999999999` built the whole list and died with a MemoryError traceback.
    Now the range is two integers: it is counted, batched and iterated lazily; the grid's cap is a message."""
    r = run_isolated(f"""
        import sys
        from indis.cli import main
        sys.exit(main(["sample", "--backbone", "gmm-image", "--seeds", "0-999999999", "--out", {str(tmp_path / 'g.png')!r},
                       "--no-progress"]))
    """, mem_gb=4, timeout=180)
    assert r.returncode == 2 and "at most" in r.stderr and "Traceback" not in r.stderr, (r.returncode, r.stderr[-1500:])
    from itertools import islice

    from indis.sampling.seeds import parse_seeds, seed_batches

    s = parse_seeds("0-999999999,5")
    assert s.count == 1_000_000_001 and list(islice(s, 3)) == [0, 1, 2]
    assert next(seed_batches(parse_seeds("7-9999999999"), 4)) == [7, 8, 9, 10]


def test_9_seed_streaming_through_the_engines(export_dir):
    """Seeds go through the engines batch by batch: a SeedList gives the samples of the same list."""
    from indis.sampling.sampler import Sampler
    from indis.sampling.seeds import parse_seeds

    fs = Sampler.from_engines(export_dir, "ort")
    a = fs.sample_seeds(parse_seeds("3-7,11"), batch_size=2).x0
    b = fs.sample_seeds([3, 4, 5, 6, 7, 11], batch_size=6).x0
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_9_conflicting_nfe_is_refused(export_dir, bb, tmp_path, capsys):
    """Before: `--nfe 3` with an NFE-5 predictor was silently ignored."""
    from indis.predictor import save_predictor
    from indis.sampling.fixed import heuristic

    pred = tmp_path / "p5.safetensors"
    save_predictor(pred, heuristic(bb, "polynomial", 5), {"backbone_id": bb.backbone_id})
    rc, err = cli(capsys, "sample", "--backbone", "gmm-image", "--predictor", pred, "--nfe", "3", "--out", tmp_path / "g.png",
                  "--no-progress")
    assert_one_line_error(rc, err, "--nfe 3", "5 steps")
    rc, err = cli(capsys, "sample", "--engines", export_dir, "--nfe", "3", "--out", tmp_path / "g.png", "--no-progress")
    assert_one_line_error(rc, err, "--nfe 3", "5 steps")
    rc, err = cli(capsys, "sample", "--engines", export_dir, "--predictor", pred, "--out", tmp_path / "g.png", "--no-progress")
    assert_one_line_error(rc, err, "not both")
    assert cli(capsys, "sample", "--backbone", "gmm-image", "--predictor", pred, "--nfe", "5", "--seeds", "0-3",
               "--out", tmp_path / "g.png", "--no-progress")[0] == 0


# ------------------------------------------------------------------------------------------------
# 10. Every expected error is a one-line message with exit code 2, and outputs are checked before any work
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def no_work(monkeypatch):
    import indis.training.cli as tcli

    monkeypatch.setattr(tcli, "load_backbone_spec", lambda spec: pytest.fail("work started before the output was checked"))


def test_10_unwritable_outputs_fail_before_any_work(tmp_path, capsys, no_work):
    """Before: `--out` under a file or naming a folder gave NotADirectoryError / IsADirectoryError tracebacks,
    and sample and eval failed only after computing."""
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    rc, err = cli(capsys, "sample", "--backbone", "gmm-image", "--seeds", "0-3", "--out", a_file / "g.png", "--no-progress")
    assert_one_line_error(rc, err, "file.txt")
    rc, err = cli(capsys, "sample", "--backbone", "gmm-image", "--seeds", "0-3", "--out", tmp_path, "--no-progress")
    assert_one_line_error(rc, err, "is a folder")
    rc, err = cli(capsys, "eval", "--backbone", "gmm-image", "--teacher", tmp_path, "--out", a_file / "res", "--no-progress")
    assert_one_line_error(rc, err, "file.txt")
    rc, err = cli(capsys, "teacher", "--backbone", "gmm-image", "--out", a_file, "--count", "4", "--no-progress")
    assert_one_line_error(rc, err, "is a file")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write into read-only folders")
def test_10_read_only_output_folder(tmp_path, capsys, no_work):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        rc, err = cli(capsys, "sample", "--backbone", "gmm-image", "--seeds", "0-3", "--out", ro / "g.png", "--no-progress")
        assert_one_line_error(rc, err, "permission")
    finally:
        ro.chmod(0o700)


def test_10_bad_config_value_is_a_message(teachers, tmp_path, capsys):
    """Before: a --config with "steps": "x" gave a TypeError traceback from inside the training loop."""
    for cfg, words in (({"steps": "x"}, ["steps", "int"]), ({"lr": True}, ["lr", "float"]), ([1, 2], ["JSON object"]),
                       ({"nope": 1}, ["unknown"])):
        path = tmp_path / "cfg.json"
        path.write_text(json.dumps(cfg))
        rc, err = cli(capsys, "train", "--backbone", "gmm-image", "--teacher", teachers[0], "--out", tmp_path / "r",
                      "--config", path, "--no-progress")
        assert_one_line_error(rc, err, *words)
    path.write_text("{not json")
    rc, err = cli(capsys, "train", "--backbone", "gmm-image", "--teacher", teachers[0], "--out", tmp_path / "r",
                  "--config", path, "--no-progress")
    assert_one_line_error(rc, err, "not valid JSON")


def test_10_manifest_missing_entries_are_messages(export_copy, tmp_path, capsys):
    """Before: a manifest missing predictor.onnx (or another field) gave a KeyError traceback."""
    _edit_manifest(export_copy, lambda m: m["artifacts"].pop("predictor.onnx"))
    rc, err = cli(capsys, "sample", "--engines", export_copy, "--backend", "ort", "--seeds", "0-1", "--out", tmp_path / "g.png",
                  "--no-progress")
    assert_one_line_error(rc, err, "predictor.onnx")
    for field in ("profile", "backbone_id", "nfe"):
        _edit_manifest(export_copy, lambda m: m.pop(field, None))
        rc, err = cli(capsys, "sample", "--engines", export_copy, "--backend", "ort", "--seeds", "0-1",
                      "--out", tmp_path / "g.png", "--no-progress")
        assert_one_line_error(rc, err, "manifest.json")


def test_10_teacher_manifest_damage_is_a_message(teachers, tmp_path):
    from indis.training.teacher import load_teacher

    root = tmp_path / "t"
    shutil.copytree(teachers[0], root)
    _edit_manifest(root, lambda m: m["shards"][0].__setitem__("file", "../../etc/hostname"))
    with pytest.raises(ValueError, match="not one of this dataset's shards"):
        load_teacher(root)
    _edit_manifest(root, lambda m: m.pop("count"))
    with pytest.raises(ValueError, match="count"):
        load_teacher(root)


# ------------------------------------------------------------------------------------------------
# 11. Files are written with the user's umask
# ------------------------------------------------------------------------------------------------
def test_11_files_get_the_umask_mode(tmp_path):
    """Before: every file INDIS wrote was mode 0600 (mkstemp), so a shared export folder was unreadable to others."""
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        save_tensors(tmp_path / "t.safetensors", {"x": torch.zeros(2)})
        os.umask(0o077)
        atomic_write_json(tmp_path / "private.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "t.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600


def test_1_registry_names(monkeypatch):
    """What a manifest may name: the backbones that ship with indis, nothing with a path or an import."""
    from indis.backbones.edm import EDMBackbone
    from indis.backbones.spec import is_registry_name, resolve_backbone

    for ok in ("bundled", "bundled-flow", "ideal", "gmm-image", "edm:cifar10_uncond", "edm:ffhq64:7"):
        assert is_registry_name(ok), ok
    for bad in ("os:abort", "edm:nope", "edm:cifar10_uncond:-1", "edm:cifar10_uncond:1:2", "/tmp/x", "x.json", "", None):
        assert not is_registry_name(bad), bad
    with pytest.raises(ValueError, match="registry name"):
        resolve_backbone("os:abort", registry_only=True)
    with pytest.raises(ValueError, match="SEED a non-negative integer"):
        resolve_backbone("edm:cifar10_uncond:x")
    seen = []
    monkeypatch.setattr(EDMBackbone, "from_preset", classmethod(lambda cls, name, seed=None: seen.append((name, seed)) or torch.nn.Identity()))
    resolve_backbone("edm:afhq64:12", registry_only=True)
    assert seen == [("afhq64", 12)]
