"""The GPU check (benchmarks/gpu_check.sh, indis.bench.gpu_check) cannot rot: its dry run passes on a CPU machine,
and its failure paths (a failing stage, a hung command, a missing interpreter) still leave a summary."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from indis.bench import gpu_check as gc

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
#: what the GPU machine may lack: the check's stages must run without any of them
BLOCKED = ("onnx", "onnxruntime", "tensorrt", "scipy", "sklearn", "matplotlib", "lpips", "diffusers", "tqdm",
           "torchvision", "safetensors")


def _env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **extra})
    return env


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run, with the packages a bare GPU machine may lack made unimportable in every stage process."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    block = tmp / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in BLOCKED))
    out = tmp / "out"
    t0 = time.time()
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env=_env(tmp, OUT=str(out), PYTHONPATH=str(block)))
    return r, out, time.time() - t0


def test_dry_run_passes_and_writes_the_summary(dry_run):
    r, out, seconds = dry_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir()), files
    assert {"gpu_check.json", "gpu_check.md", "stages.log", "tests.log"} <= set(files)
    rep = json.loads((out / "gpu_check.json").read_text())
    assert rep["mode"] == "dry" and rep["seconds"] < 200
    assert set(rep["stages"]) == {s.name for s in gc.STAGES}
    for name, st in rep["stages"].items():
        assert st["status"] == ("skipped" if name == "build" else "ok"), (name, st)
        assert st["seconds"] <= st["budget_s"] + 5
    # the packages a bare GPU machine may lack were really unavailable to the stages
    assert not any(rep["stages"]["env"]["data"]["packages"][m] for m in ("onnx", "scipy", "matplotlib", "tqdm"))
    assert "INDIS_CUDA=1 INDIS_CUDA_ARCHS=90" in rep["stages"]["build"]["data"]["command"]


def test_dry_run_measured_every_stage(dry_run):
    _, out, _ = dry_run
    st = json.loads((out / "gpu_check.json").read_text())["stages"]
    assert st["info"]["data"]["build_info"]["torch_version"]
    tests = st["tests"]["data"]
    assert tests["failed"] == 0 and tests["passed"] > 0 and tests["skipped"] > 0  # CUDA tests skip on the CPU
    cfg = gc.latency_config(True)
    rows = st["latency"]["data"]["rows"]
    assert len(rows) == len(cfg["dtypes"]) * len(cfg["nfes"]) * len(cfg["batches"]) * len(cfg["backends"])
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["backend"] for r in ok} == {"torch", "native"}  # the graph rows need CUDA
    assert {r["network_dtype"] for r in ok} == {"float32", "bfloat16"}
    for r in ok:
        assert 0 < r["backbone_only_ms"] and 0 < r["predictor_share"] < 1
        if r["backend"] == "native":  # the native loop's samples agree with the Python solver's
            assert r["max_abs_diff_vs"] == "torch" and r["max_abs_diff"] <= 1e-3 * r["ref_abs_max"]
    fused = st["fused"]["data"]["rows"]
    assert len(fused) == len(gc.fused_cases(gc.fused_config(True)["shapes"]))
    assert all(r["fused_GBps"] > 0 and r["copy_GBps"] > 0 for r in fused)


def test_dry_run_markdown_has_the_tables(dry_run):
    _, out, _ = dry_run
    md = (out / "gpu_check.md").read_text()
    for head in ("# INDIS GPU check (dry run", "## Stages", "## Latency", "## Fused update", "## Targets"):
        assert head in md
    assert "| float32 | torch | 2 | 1 |" in md and "| float32 | native | 2 | 2 |" in md
    assert "| float32 | native_graph | 2 | 1 | skipped: CUDA graphs need a CUDA device" in md
    assert "| float16 | (8, 3, 16, 16) | 3 |" in md
    assert "n/a (dry run)" in md and "## Failures" not in md


def test_failed_stage_is_reported_with_its_error(tmp_path):
    """GPU mode on a machine without a GPU: the info stage fails, and the summary says why."""
    orch = gc.Orchestrator(tmp_path, dry_run=False, py=sys.executable, total_s=60)
    try:
        res = orch._py_stage("info", 60)
    finally:
        shutil.rmtree(orch.work, ignore_errors=True)
    assert res["status"] == "failed"
    assert "without CUDA" in res["error"] or "no usable GPU" in res["error"], res["error"]
    res.update(seconds=1.0, budget_s=60.0, required=True)
    orch.stages["info"] = res
    orch.write()
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| info | failed |" in md and "### info (failed)" in md
    assert json.loads((tmp_path / "gpu_check.json").read_text())["stages"]["info"]["status"] == "failed"


def test_hung_command_is_killed_at_its_budget(tmp_path):
    t0 = time.time()
    r = gc._run_logged([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                       tmp_path / "log", timeout=1.5)
    assert r["timed_out"] and time.time() - t0 < 20
    log = (tmp_path / "log").read_text()
    assert "started" in log and "killed at the time budget" in log


def test_missing_interpreter_still_leaves_a_summary(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=60,
                       env=_env(tmp_path, OUT=str(out), PYTHON=str(tmp_path / "no-python")))
    assert r.returncode != 0
    assert "did not write its summary" in (out / "gpu_check.md").read_text()
    assert json.loads((out / "gpu_check.json").read_text())["stages"] == {}


def test_junit_parsing(tmp_path):
    xml = tmp_path / "t.xml"
    xml.write_text('<testsuites><testsuite name="pytest">'
                   '<testcase classname="tests.a" name="ok"/>'
                   '<testcase classname="tests.a" name="bad"><failure message="assert 1 == 2">x</failure></testcase>'
                   '<testcase classname="tests.b" name="s1"><skipped message="needs a GPU"/></testcase>'
                   '<testcase classname="tests.b" name="s2"><skipped message="needs a GPU"/></testcase>'
                   '</testsuite></testsuites>')
    got = gc.parse_junit(xml)
    assert (got["passed"], got["failed"], got["skipped"]) == (1, 1, 2)
    assert got["failures"] == [{"test": "tests.a::bad", "message": "assert 1 == 2"}]
    assert got["skips"] == {"needs a GPU": 2}


def test_targets_and_crosscheck():
    row = dict(backend="native_graph", status="ok", nfe=5, batch=64, network_dtype="float32", backbone_only_ms=10.0,
               predictor_ms=0.5, ratio_to_backbone_only=1.06, predictor_share=0.05)
    fu = dict(dtype="float32", shape=[64, 3, 32, 32], m=3, fused_GBps=1.0, copy_GBps=1.0, min_fused_vs_copy=1.0)
    stages = {"latency": {"data": {"rows": [dict(row, latency_ms_median=10.6),  # loop 1.01: met
                                            dict(row, batch=1, latency_ms_median=11.0),  # loop 1.05: missed
                                            dict(row, nfe=3, latency_ms_median=30.0)]}},  # not NFE 5: no target
              "fused": {"data": {"rows": [dict(fu, fused_vs_copy=0.9), dict(fu, dtype="bfloat16", fused_vs_copy=0.5)]}}}
    got = gc.targets(stages, dry_run=False)
    assert [t["met"] for t in got] == [True, False, True, False]
    assert got[0]["measured"] == pytest.approx(1.01) and "whole sampler 1.06" in got[0]["note"]
    assert all(t["met"] is None for t in gc.targets(stages, dry_run=True))
    cmp = dict(backend="native", status="ok", nfe=3, batch=1, max_abs_diff_vs="torch", ref_abs_max=10.0)
    rows = [dict(cmp, network_dtype="float32", max_abs_diff=1e-5), dict(cmp, network_dtype="float32", max_abs_diff=0.1),
            dict(cmp, network_dtype="bfloat16", max_abs_diff=0.1), dict(cmp, network_dtype="float32",
                                                                        max_abs_diff=float("nan"))]
    bad = gc.crosscheck_failures(rows)
    assert len(bad) == 2 and "differs from torch by 0.01" in bad[0] and "nan" in bad[1]
