"""The GPU check: one short run on a bare GPU machine that builds, tests and measures the CUDA path (docs/gpu.md).

    OUT=runs/gpu_check bash benchmarks/gpu_check.sh            # on the GPU machine, from the repository root
    OUT=/tmp/gpu_dry  bash benchmarks/gpu_check.sh --dry-run  # anywhere: every stage with CPU stand-ins

Stages, each in its own process with its own time budget (a stage that fails or hangs costs only its own budget;
the time a stage does not use goes to the later ones), in this order:

  env      python, torch (+CUDA), nvidia-smi, nvcc, cmake, ninja, pybind11 and the optional packages present
  build    indis._C with CUDA for sm_90 against this machine's torch: `pip install --no-build-isolation --no-deps
           --no-index -e .` with INDIS_CUDA=1 INDIS_CUDA_ARCHS=90 (nothing resolved or downloaded). Dry run: not
           rebuilt, the installed extension is used
  info     what was built (indis._C.build_info()) and the GPU found
  tests    pytest tests/test_native_build.py tests/test_native_cuda.py (the CUDA tests, errors bounded as on CPU)
  latency  EDM CIFAR-10 SongUNet (random weights) at batch 1 and 64, NFE 3/5/7/10, fp32 and bf16 network: torch
           eager, torch with CUDA graphs, native loop, native loop in one CUDA graph, each against its own
           backbone-only limit in rotation, CUDA-event timing, the predictor's share (indis.bench.latency)
  fused    the fused update's bandwidth against a device copy of the same bytes and unfused torch, fp32 / fp16 /
           bf16 at the bench shapes and one larger than the L2 cache (indis.bench.fused)

Results: $OUT/gpu_check.json (everything), $OUT/gpu_check.md (the tables), $OUT/build.log, $OUT/tests.log and
$OUT/stages.log (the stages' own output): five files. The summary is written whatever fails; the exit status is
non-zero when a required stage failed or ran out of time. The dry run (--dry-run) runs the same stages on the CPU
with a small EDM network and tiny sizes; tests/test_gpu_check.py runs it so that the script cannot rot.

Only torch and numpy (through torch) are needed by the stages that measure; onnx, onnxruntime, TensorRT, scipy,
matplotlib, lpips or diffusers are never imported.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .. import _native
from ..backbones.edm import EDMBackbone
from ..io import atomic_write_json, atomic_write_text
from .fused import BENCH_SHAPES, bench, format_row
from .latency import BenchSetup, bench_one, default_predictor, machine_info

REPO = Path(__file__).resolve().parents[2]
JSON_NAME, MD_NAME = "gpu_check.json", "gpu_check.md"
LOG_NAMES = {"build": "build.log", "tests": "tests.log"}  # the other stages' output goes to stages.log
LOG_TAIL_BYTES = 400_000  # per log file in OUT
ERROR_TAIL_CHARS = 3000  # per failed stage in the summary

#: the targets of the issue that introduced this check (GPU only)
TARGET_GRAPH_RATIO = 1.02  # native loop in one CUDA graph within 1.02x of its backbone-only limit at NFE 5
TARGET_GRAPH_NFE = 5
TARGET_FUSED_VS_COPY = 0.80  # fused update at least 80% of a device copy's bandwidth
#: cross-check of the fast paths against torch eager on the same x_T: max |diff| / max |x0_torch|
CROSSCHECK_TOL = {"float32": 1e-3, "bfloat16": 5e-2}

TEST_FILES = ("tests/test_native_build.py", "tests/test_native_cuda.py")
OPTIONAL_PACKAGES = ("numpy", "pybind11", "pytest", "setuptools", "safetensors", "tqdm", "matplotlib", "scipy",
                     "sklearn", "onnx", "onnxruntime", "tensorrt", "lpips", "diffusers")


class StageError(RuntimeError):
    """A stage cannot do its job; the message says what is missing."""


@dataclass(frozen=True)
class Stage:
    name: str
    budget_s: float  # nominal budget on the GPU; unused time of earlier stages is added
    dry_budget_s: float
    required: bool = True


STAGES = (
    Stage("env", 15, 15, required=False),
    Stage("build", 200, 5),
    Stage("info", 25, 30),
    Stage("tests", 60, 60),
    Stage("latency", 135, 60),
    Stage("fused", 35, 20),
)
TOTAL_BUDGET_S = {"gpu": 470.0, "dry": 200.0}  # the whole check (issue: within 8 minutes)


# ================================================================================================
# configuration of the measuring stages
# ================================================================================================
def latency_config(dry_run: bool) -> Dict:
    if dry_run:
        return dict(device="cpu", backbone="tiny EDM SongUNet (8x8, 8 channels, one level)", nfes=[2], batches=[1, 2],
                    dtypes=["float32", "bfloat16"], backends=["torch", "torch_graph", "native", "native_graph"],
                    reps=20, warmup=1)
    return dict(device="cuda", backbone="edm:cifar10_uncond (SongUNet, 55.7M parameters, random weights)",
                nfes=[5, 3, 7, 10], batches=[1, 64], dtypes=["float32", "bfloat16"],
                backends=["torch", "torch_graph", "native", "native_graph"], reps=20, warmup=3)


def fused_config(dry_run: bool) -> Dict:
    if dry_run:
        return dict(device="cpu", shapes=[(4, 3, 8, 8), (8, 3, 16, 16)], reps=5, inner=1)
    # the bench shapes fit in the H200's 60 MB L2 cache; the last one (5 x 33.5 MB at M = 3, fp32) does not
    return dict(device="cuda", shapes=[tuple(s) for s in BENCH_SHAPES] + [(128, 4, 128, 128)], reps=30, inner=20)


def fused_cases(shapes) -> List[tuple]:
    """(dtype name, shape, M): every M in fp32, M = 3 in fp16 / bf16 (as benchmarks/bench_fused_update.py)."""
    cases = []
    for dt in ("float32", "float16", "bfloat16"):
        for shape in shapes:
            for m in ((1, 3, 4) if dt == "float32" else (3,)):
                cases.append((dt, tuple(shape), m))
    return cases


# ================================================================================================
# stages run in their own process: python -m indis.bench.gpu_check --stage NAME --work DIR
# ================================================================================================
class StageContext:
    def __init__(self, name: str, work: Path, dry_run: bool, deadline: float):
        self.name, self.work, self.dry_run, self.deadline = name, work, dry_run, deadline
        self.data: Dict = {}

    def left(self) -> float:
        return self.deadline - time.time()

    def save(self, status: str, **extra) -> None:
        """Write this stage's result so far (the orchestrator reads it even if the stage is killed later)."""
        atomic_write_json(self.work / f"{self.name}.json", {"status": status, "data": self.data, **extra})


def _gpu_device(ctx: StageContext):
    import torch

    if ctx.dry_run:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise StageError(f"torch {torch.__version__} sees no CUDA device (torch.version.cuda={torch.version.cuda})")
    return torch.device("cuda", 0)


def stage_info(ctx: StageContext) -> str:
    import torch

    d = ctx.data
    d["torch"] = torch.__version__
    d["torch_cuda"] = torch.version.cuda
    d["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        d["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1),
                    "multiprocessors": p.multi_processor_count, "count": torch.cuda.device_count()}
    d["native_error"] = _native.load_error()
    if d["native_error"] is not None:
        raise StageError(f"indis._C does not import: {d['native_error']}")
    C = _native.load()
    d["build_info"] = _native.build_info()
    d["native_file"] = C.__file__
    d["native_cuda_devices"] = C.cuda_device_count()
    print(json.dumps(d, indent=1), flush=True)
    if ctx.dry_run:
        return "ok"
    info = d["build_info"]
    if not info["cuda"]:
        raise StageError("indis._C was built without CUDA (build_info()['cuda'] is False)")
    if "90" not in (info.get("cuda_archs") or "").split(","):
        raise StageError(f"indis._C was built for CUDA archs {info.get('cuda_archs')!r}, not sm_90")
    if not torch.cuda.is_available() or d["native_cuda_devices"] < 1:
        raise StageError(f"no usable GPU: torch sees {torch.cuda.device_count()}, indis._C sees "
                         f"{d['native_cuda_devices']}")
    return "ok"


def _edm_backbone(dry_run: bool, device):
    """The latency stage's network: EDM's CIFAR-10 SongUNet with random weights (GPU) or a small SongUNet (dry run).
    EDM zero-initialises its output layers; they get small random weights here so that the samples depend on the
    network and the cross-check between backends compares something (timing does not depend on the values)."""
    import torch

    if dry_run:
        torch.manual_seed(0)
        bb = EDMBackbone.from_kwargs(img_resolution=8, img_channels=3, label_dim=0, model_type="SongUNet",
                                     model_channels=8, channel_mult=[1], num_blocks=1, attn_resolutions=[8])
    else:
        bb = EDMBackbone.from_preset("cifar10_uncond", seed=0, device=device)
    bb = bb.to(device).eval()
    with torch.no_grad():
        for p in bb.parameters():
            if (p == 0).all():
                p.normal_(0, 0.02)
    return bb


def crosscheck_failures(rows: Sequence[Dict]) -> List[str]:
    """Rows whose samples differ from the reference backend's by more than CROSSCHECK_TOL (relative to its scale)."""
    bad = []
    for r in rows:
        if r.get("status") != "ok" or "max_abs_diff" not in r:
            continue
        rel = r["max_abs_diff"] / max(r["ref_abs_max"], 1e-12)
        tol = CROSSCHECK_TOL.get(r.get("network_dtype", "float32"), 1e-3)
        if not rel <= tol:  # also catches NaN
            bad.append(f"{r['backend']} ({r.get('network_dtype')}, NFE {r['nfe']}, batch {r['batch']}) differs from "
                       f"{r['max_abs_diff_vs']} by {rel:.3g} of its scale (tolerance {tol:g})")
    return bad


def stage_latency(ctx: StageContext) -> str:
    import torch

    cfg = latency_config(ctx.dry_run)
    dev = _gpu_device(ctx)
    if ctx.dry_run:
        torch.set_num_threads(1)  # a shared small CPU: parallel regions only add scheduling noise at these sizes
    d = ctx.data
    d["config"] = cfg
    d["machine"] = machine_info(dev)
    d["settings"] = {"cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                     "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                     "cudnn_benchmark": torch.backends.cudnn.benchmark}
    bb = _edm_backbone(ctx.dry_run, dev)
    d["backbone_id"], d["parameters"] = bb.backbone_id, bb.num_parameters()
    d["rows"], d["not_run"] = [], []
    ctx.save("running")
    # in order of importance: the target's NFE (the first) in every dtype first, then the other NFEs
    first = cfg["nfes"][0]
    combos = ([(dt, first, b) for dt in cfg["dtypes"] for b in cfg["batches"]]
              + [(dt, n, b) for dt in cfg["dtypes"] for n in cfg["nfes"][1:] for b in cfg["batches"]])
    cost_per_nfe: Dict[int, float] = {}  # seconds per NFE of one combo, per batch size (the last seen)
    for dt, n, b in combos:
        need = 1.3 * cost_per_nfe.get(b, max(cost_per_nfe.values(), default=0.0)) * n
        if ctx.left() < need + 2:
            d["not_run"].append({"network_dtype": dt, "nfe": n, "batch": b,
                                 "reason": f"time budget: {ctx.left():.0f} s left, about {need:.0f} s needed"})
            continue
        bb.set_compute_dtype(dt)
        t0 = time.time()
        try:
            phi = default_predictor(bb, n).to(dev).eval()
            rows = bench_one(BenchSetup(bb, phi, n, b, dev), cfg["backends"], warmup=cfg["warmup"], reps=cfg["reps"],
                             on_error="record")
        except Exception as e:  # noqa: BLE001  (one configuration's failure must not cost the others)
            rows = [{"backend": name, "device": dev.type, "nfe": n, "batch": b, "status": "failed",
                     "reason": f"{type(e).__name__}: {e}"} for name in cfg["backends"]]
        cost_per_nfe[b] = (time.time() - t0) / n
        for r in rows:
            r["network_dtype"] = dt
            if r["status"] == "ok":
                print(f"{dt:8s} NFE {n:2d} batch {b:3d} {r['backend']:12s} {r['latency_ms_median']:9.3f} ms, "
                      f"backbone-only {r['backbone_only_ms']:9.3f} ms, ratio {r['ratio_to_backbone_only']:.3f}, "
                      f"predictor {100 * r['predictor_share']:.2f}%", flush=True)
            else:
                print(f"{dt:8s} NFE {n:2d} batch {b:3d} {r['backend']:12s} {r['status']}: {r['reason']}", flush=True)
        d["rows"] += rows
        ctx.save("running")
        del rows
        if dev.type == "cuda":
            torch.cuda.empty_cache()  # every combo captured its own CUDA graphs
    bb.set_compute_dtype("float32")
    # what counts as a failure: a backend skipped that should run here, and samples that disagree with torch's
    expected_skips = {"torch_graph", "native_graph"} if dev.type == "cpu" else set()
    problems = [f"{r['backend']} ({r['network_dtype']}, NFE {r['nfe']}, batch {r['batch']}) {r['status']}: {r['reason']}"
                for r in d["rows"] if r["status"] != "ok" and r["backend"] not in expected_skips]
    problems += crosscheck_failures(d["rows"])
    d["problems"] = problems
    if problems:
        raise StageError("; ".join(problems[:6]) + (f" (and {len(problems) - 6} more)" if len(problems) > 6 else ""))
    return "partial" if d["not_run"] else "ok"


def stage_fused(ctx: StageContext) -> str:
    import torch

    cfg = fused_config(ctx.dry_run)
    dev = _gpu_device(ctx)
    _native.load()  # ImportError with the build hint when the extension is missing
    if dev.type == "cuda" and not _native.build_info()["cuda"]:
        raise StageError("indis._C was built without CUDA")
    if ctx.dry_run:
        torch.set_num_threads(1)
    d = ctx.data
    d["config"] = {k: (list(map(list, v)) if k == "shapes" else v) for k, v in cfg.items()}
    d["gpu"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    d["rows"], d["not_run"] = [], []
    for dt, shape, m in fused_cases(cfg["shapes"]):
        if ctx.left() < 3:
            d["not_run"].append({"dtype": dt, "shape": list(shape), "m": m, "reason": "time budget"})
            continue
        r = bench(shape, m, getattr(torch, dt), dev, cfg["reps"], inner=cfg["inner"])
        print(format_row(r), flush=True)
        d["rows"].append(r)
        ctx.save("running")
    return "partial" if d["not_run"] else "ok"


PY_STAGES: Dict[str, Callable[[StageContext], str]] = {"info": stage_info, "latency": stage_latency,
                                                       "fused": stage_fused}


def run_stage(name: str, work: Path, dry_run: bool, deadline: float) -> int:
    """Body of a stage process: run it, record status and data in WORK/NAME.json; exit 0 unless it failed."""
    import traceback

    ctx = StageContext(name, work, dry_run, deadline)
    try:
        status = PY_STAGES[name](ctx)
        ctx.save(status)
        return 0
    except BaseException as e:  # noqa: BLE001  (recorded, then reported by the orchestrator)
        traceback.print_exc()
        sys.stdout.flush()
        ctx.save("failed", error=f"{type(e).__name__}: {e}")
        return 1


# ================================================================================================
# the orchestrator (no torch import: a broken torch is reported, not fatal)
# ================================================================================================
def _run_logged(cmd: Sequence[str], log: Path, timeout: float, env: Optional[Dict] = None) -> Dict:
    """Run cmd in its own process group, output appended to log; kill the group at the timeout."""
    t0 = time.time()
    with open(log, "ab") as f:
        f.write(f"\n$ {' '.join(cmd)}\n".encode())
        f.flush()
        p = subprocess.Popen(list(cmd), cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = p.wait(timeout=max(1.0, timeout))
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    continue
            rc = p.returncode
        f.write(f"\n[exit {rc}{', killed at the time budget' if timed_out else ''} after {time.time() - t0:.1f} s]\n"
                .encode())
    return {"rc": rc, "timed_out": timed_out, "seconds": time.time() - t0}


def _tail(path: Path, chars: int, start: int = 0) -> str:
    """The last `chars` characters of a log, from byte offset `start` on (one stage's part of a shared log)."""
    try:
        data = path.read_bytes()[start:][-chars * 4:].decode("utf-8", "replace")
    except OSError:
        return ""
    return data[-chars:]


def _quick(cmd: Sequence[str], timeout: float = 20) -> Optional[str]:
    """First lines of a tool's output, or None when it is missing or fails."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"failed: {e}"
    out = (r.stdout or r.stderr).strip()
    return out if r.returncode == 0 else f"failed (exit {r.returncode}): {out[-300:]}"


def stage_env(py: str) -> Dict:
    """What this machine has, from the outside (each probe bounded in time)."""
    probe = ("import json, torch; print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, "
             "'cuda_available': torch.cuda.is_available(), 'gpu': torch.cuda.get_device_name(0) "
             "if torch.cuda.is_available() else None, 'cmake_prefix': __import__('torch.utils').utils.cmake_prefix_path}))")
    d: Dict = {"python": py, "python_version": platform.python_version(), "machine": platform.machine(),
               "cpus": os.cpu_count()}
    try:
        r = subprocess.run([py, "-c", probe], capture_output=True, text=True, timeout=60)
        d["torch"] = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else f"failed: {r.stderr[-500:]}"
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as e:
        d["torch"] = f"failed: {e}"
    d["nvidia_smi"] = _quick(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    nvcc = _quick(["nvcc", "--version"])
    d["nvcc"] = nvcc.strip().splitlines()[-1] if nvcc else None
    cmake = _quick(["cmake", "--version"])
    d["cmake"] = cmake.splitlines()[0] if cmake else None
    d["ninja"] = _quick(["ninja", "--version"])
    d["packages"] = {m: _importable(m) for m in OPTIONAL_PACKAGES}
    return d


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules (made unimportable)
        return False


def build_command(py: str) -> List[str]:
    """The build of the GPU mode: editable install against the installed torch, nothing resolved or downloaded."""
    return [py, "-m", "pip", "install", "-v", "--no-build-isolation", "--no-deps", "--no-index", "-e", "."]


def tests_command(py: str, junit: Path) -> List[str]:
    return [py, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", f"--junitxml={junit}", *TEST_FILES]


def parse_junit(path: Path) -> Dict:
    """Counts and the failures / skips of a pytest JUnit XML file."""
    root = ET.parse(path).getroot()
    out = {"passed": 0, "failed": 0, "skipped": 0, "failures": [], "skips": {}}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        skip = case.find("skipped")
        if bad is not None:
            out["failed"] += 1
            out["failures"].append({"test": name, "message": (bad.get("message") or "")[:500]})
        elif skip is not None:
            out["skipped"] += 1
            msg = (skip.get("message") or "").strip()[:200]
            out["skips"][msg] = out["skips"].get(msg, 0) + 1
        else:
            out["passed"] += 1
    return out


class Orchestrator:
    def __init__(self, out: Path, dry_run: bool, py: str, total_s: Optional[float] = None):
        self.out, self.dry_run, self.py = out, dry_run, py
        self.mode = "dry" if dry_run else "gpu"
        self.t_start = time.time()
        self.deadline = self.t_start + (total_s if total_s is not None else TOTAL_BUDGET_S[self.mode])
        # stage results and full logs live outside OUT (at most 8 files come back from a device run)
        self.work = Path(tempfile.mkdtemp(prefix="indis-gpu-check-"))
        self.stages: Dict[str, Dict] = {}
        self.stages_log = self.work / "stages.log"

    def budget(self, stage: Stage) -> float:
        """Time this stage may use: what is left minus the nominal budgets of the stages after it."""
        later = STAGES[STAGES.index(stage) + 1:]
        reserve = sum(s.dry_budget_s if self.dry_run else s.budget_s for s in later)
        return max(5.0, self.deadline - time.time() - reserve)

    def env(self) -> Dict:
        return dict(os.environ) | {"PYTHONUNBUFFERED": "1"}

    # -- the stages ------------------------------------------------------------------------------
    def run(self) -> int:
        for st in STAGES:
            allowed = self.budget(st)
            t0 = time.time()
            print(f"[gpu_check] stage {st.name} (budget {allowed:.0f} s)", flush=True)
            try:
                res = getattr(self, f"do_{st.name}")(allowed)
            except Exception as e:  # noqa: BLE001  (the orchestrator itself must not die in a stage)
                res = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
            res.update(seconds=round(time.time() - t0, 1), budget_s=round(allowed, 1), required=st.required)
            self.stages[st.name] = res
            print(f"[gpu_check] stage {st.name}: {res['status']} in {res['seconds']} s"
                  + (f" ({res.get('error', '')[:300]})" if res["status"] in ("failed", "timeout") else ""), flush=True)
            if st.name == "info" and "build_info" in res.get("data", {}):
                d = res["data"]
                print(f"[gpu_check] built: {d['build_info']} ({d.get('native_file')}); GPU: {d.get('gpu')}", flush=True)
            self.write()  # after every stage: a kill of the whole check leaves what was done
        failed = [n for n, r in self.stages.items() if r["required"] and r["status"] in ("failed", "timeout")]
        return 1 if failed else 0

    def do_env(self, allowed: float) -> Dict:
        return {"status": "ok", "data": stage_env(self.py)}

    def do_build(self, allowed: float) -> Dict:
        cmd = build_command(self.py)
        # TORCH_CUDA_ARCH_LIST: torch's CMake config (CUDA wheel) would otherwise probe the GPU for its own nvcc
        # flags, which CMakeLists.txt discards anyway
        env = self.env() | {"INDIS_CUDA": "1", "INDIS_CUDA_ARCHS": "90", "TORCH_CUDA_ARCH_LIST": "9.0",
                            "INDIS_BUILD_JOBS": str(max(1, os.cpu_count() or 1))}
        data = {"command": "INDIS_CUDA=1 INDIS_CUDA_ARCHS=90 " + " ".join(["python3"] + cmd[1:])}
        if self.dry_run:
            return {"status": "skipped", "reason": "dry run: the installed indis._C is used, not rebuilt", "data": data}
        r = _run_logged(cmd, self.work / LOG_NAMES["build"], allowed, env)
        if r["timed_out"]:
            return {"status": "timeout", "error": f"build killed after {allowed:.0f} s\n"
                    + _tail(self.work / LOG_NAMES["build"], ERROR_TAIL_CHARS), "data": data}
        if r["rc"] != 0:
            return {"status": "failed", "error": f"build exit code {r['rc']}\n"
                    + _tail(self.work / LOG_NAMES["build"], ERROR_TAIL_CHARS), "data": data}
        return {"status": "ok", "data": data}

    def _py_stage(self, name: str, allowed: float) -> Dict:
        cmd = [self.py, "-m", "indis.bench.gpu_check", "--stage", name, "--work", str(self.work),
               "--deadline", f"{time.time() + allowed - 3:.1f}"] + (["--dry-run"] if self.dry_run else [])
        with open(self.stages_log, "ab") as f:
            f.write(f"\n===== stage {name} =====\n".encode())
            start = f.tell()
        r = _run_logged(cmd, self.stages_log, allowed, self.env())
        res_path = self.work / f"{name}.json"
        try:
            res = json.loads(res_path.read_text())
        except (OSError, ValueError):
            res = {"status": "failed", "data": {}}
        if r["timed_out"]:
            res["status"] = "timeout"
            res["error"] = f"killed after {allowed:.0f} s (results so far kept)"
        elif r["rc"] != 0 or res["status"] == "running":
            res["status"] = "failed"
            res.setdefault("error", f"exit code {r['rc']}")
        if res["status"] in ("failed", "timeout"):
            res["error"] = res.get("error", "") + "\n" + _tail(self.stages_log, ERROR_TAIL_CHARS, start)
        return res

    def do_info(self, allowed: float) -> Dict:
        return self._py_stage("info", allowed)

    def do_latency(self, allowed: float) -> Dict:
        return self._py_stage("latency", allowed)

    def do_fused(self, allowed: float) -> Dict:
        return self._py_stage("fused", allowed)

    def do_tests(self, allowed: float) -> Dict:
        if not _importable("pytest"):
            return {"status": "failed", "error": f"pytest is not installed for {self.py}"}
        junit = self.work / "tests.xml"
        log = self.work / LOG_NAMES["tests"]
        r = _run_logged(tests_command(self.py, junit), log, allowed, self.env())
        data = {"command": "python3 -m pytest " + " ".join(TEST_FILES)}
        if junit.exists():
            data.update(parse_junit(junit))
        if r["timed_out"]:
            return {"status": "timeout", "error": f"pytest killed after {allowed:.0f} s\n" + _tail(log, ERROR_TAIL_CHARS),
                    "data": data}
        if r["rc"] != 0:
            return {"status": "failed", "error": f"pytest exit code {r['rc']}\n" + _tail(log, ERROR_TAIL_CHARS),
                    "data": data}
        cuda_skips = {m: c for m, c in data.get("skips", {}).items() if "GPU" in m or "CUDA" in m or "cuda" in m}
        if not self.dry_run and cuda_skips:
            return {"status": "failed", "error": f"CUDA tests were skipped on the GPU machine: {cuda_skips}", "data": data}
        return {"status": "ok", "data": data}

    # -- results ---------------------------------------------------------------------------------
    def report(self) -> Dict:
        return {"check": "indis GPU check (docs/gpu.md)", "mode": self.mode,
                "command": ("bash benchmarks/gpu_check.sh" + (" --dry-run" if self.dry_run else "")),
                "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.t_start)),
                "seconds": round(time.time() - self.t_start, 1),
                "stages": self.stages, "targets": targets(self.stages, self.dry_run)}

    def write(self) -> None:
        rep = self.report()
        atomic_write_json(self.out / JSON_NAME, rep)
        atomic_write_text(self.out / MD_NAME, markdown(rep))
        for name, fname in list(LOG_NAMES.items()) + [("stages", "stages.log")]:
            src = self.work / fname
            if src.exists():
                atomic_write_text(self.out / fname, _tail(src, LOG_TAIL_BYTES))


# ================================================================================================
# targets and Markdown
# ================================================================================================
def targets(stages: Dict, dry_run: bool) -> List[Dict]:
    """The issue's GPU targets against what was measured (informational: they do not fail the check)."""
    out = []
    lat = stages.get("latency", {}).get("data", {}).get("rows", [])
    for r in lat:
        if r.get("backend") == "native_graph" and r.get("status") == "ok" and r["nfe"] == TARGET_GRAPH_NFE:
            # the target is about the loop: the whole sampler's time less the predictor's (timed in the same rounds)
            loop = (r["latency_ms_median"] - r["predictor_ms"]) / r["backbone_only_ms"]
            out.append({"target": f"native loop in one CUDA graph <= {TARGET_GRAPH_RATIO}x backbone-only at NFE "
                                  f"{TARGET_GRAPH_NFE}", "case": f"{r['network_dtype']}, batch {r['batch']}",
                        "measured": round(loop, 4), "met": loop <= TARGET_GRAPH_RATIO,
                        "note": f"(sampler - predictor) / backbone-only; whole sampler "
                                f"{r['ratio_to_backbone_only']:.4f}, predictor share {100 * r['predictor_share']:.2f}%"})
    for r in stages.get("fused", {}).get("data", {}).get("rows", []):
        out.append({"target": f"fused update >= {TARGET_FUSED_VS_COPY:.0%} of a device copy's bandwidth",
                    "case": f"{r['dtype']} {tuple(r['shape'])} M={r['m']}", "measured": round(r["fused_vs_copy"], 3),
                    "met": r["fused_vs_copy"] >= TARGET_FUSED_VS_COPY,
                    "note": f"{r['fused_GBps']:.0f} vs {r['copy_GBps']:.0f} GB/s; min-based {r['min_fused_vs_copy']:.3f}"})
    if dry_run:  # CPU stand-ins: the numbers say nothing about the GPU targets
        for t in out:
            t["met"] = None
    return out


def _cell(x) -> str:
    return " ".join(str(x).split()).replace("|", "/")


def markdown(rep: Dict) -> str:
    st = rep["stages"]
    env = st.get("env", {}).get("data", {})
    info = st.get("info", {}).get("data", {})
    torch_env = env.get("torch") if isinstance(env.get("torch"), dict) else {}
    gpu = (info.get("gpu") or {}).get("name") or torch_env.get("gpu") or "none"
    lines = [f"# INDIS GPU check ({'dry run on CPU stand-ins' if rep['mode'] == 'dry' else 'GPU'})", "",
             f"- command: `{rep['command']}` (repository root, results in `$OUT`)",
             f"- started {rep['started_utc']} UTC, {rep['seconds']} s in all",
             f"- GPU: {gpu}; driver: {env.get('nvidia_smi') or 'n/a'}",
             f"- torch {torch_env.get('torch', info.get('torch', '?'))} (CUDA {torch_env.get('cuda')}), "
             f"python {env.get('python_version', '?')}, nvcc: {env.get('nvcc') or 'none'}, "
             f"cmake: {env.get('cmake') or 'none'}, ninja: {env.get('ninja') or 'none'}, {env.get('cpus', '?')} CPUs",
             f"- indis._C: {_cell(info.get('build_info', info.get('native_error', 'not loaded')))}", "",
             "## Stages", "", "| stage | status | seconds | budget s | note |", "|---|---|---|---|---|"]
    for name, r in st.items():
        note = r.get("reason") or r.get("error", "").strip().splitlines()[0:1] or ""
        if isinstance(note, list):
            note = note[0] if note else ""
        if name == "tests" and "passed" in r.get("data", {}):
            t = r["data"]
            note = f"{t['passed']} passed, {t['failed']} failed, {t['skipped']} skipped. " + note
        lines.append(f"| {name} | {r['status']} | {r['seconds']} | {r['budget_s']} | {_cell(note)[:300]} |")
    missing = [p for p, ok in env.get("packages", {}).items() if not ok]
    if missing:
        lines += ["", f"Packages not installed here (the check does not need them): {', '.join(missing)}."]

    tests = st.get("tests", {}).get("data", {})
    if tests.get("failures"):
        lines += ["", "## Test failures", ""] + [f"- `{f['test']}`: {_cell(f['message'])[:300]}" for f in tests["failures"]]

    lat = st.get("latency", {}).get("data", {})
    if lat.get("rows"):
        cfg = lat.get("config", {})
        lines += ["", "## Latency", "",
                  f"{cfg.get('backbone')}, {cfg.get('device')}; median and p90 of {cfg.get('reps')} runs, each backend "
                  "against its own backbone-only limit in rotation (CUDA events on the GPU); iPNDM order 4, untrained "
                  "predictor of the standard size. torch: Python solver loop, eager; torch_graph: Python loop, each "
                  "backbone call a CUDA-graph replay; native: C++ loop (FastSampler); native_graph: the C++ loop "
                  "captured whole in one CUDA graph, against one CUDA graph of the N backbone calls. diff: max |x0 - "
                  "x0_torch| / max |x0_torch| on the same x_T.", "",
                  "| network | backend | NFE | batch | median ms | p90 ms | backbone-only ms | ratio | predictor share "
                  "| peak MB | diff vs torch |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        order = {dt: i for i, dt in enumerate(cfg.get("dtypes", []))}
        for r in sorted(lat["rows"], key=lambda r: (order.get(r["network_dtype"], 9), r["batch"], r["nfe"])):
            head = f"| {r['network_dtype']} | {r['backend']} | {r['nfe']} | {r['batch']} |"
            if r["status"] != "ok":
                lines.append(f"{head} {r['status']}: {_cell(r['reason'])} | | | | | | |")
                continue
            diff = (f"{r['max_abs_diff'] / max(r['ref_abs_max'], 1e-12):.2g}" if "max_abs_diff" in r else "(reference)")
            lines.append(f"{head} {r['latency_ms_median']:.3f} | {r['latency_ms_p90']:.3f} | {r['backbone_only_ms']:.3f} | "
                         f"{r['ratio_to_backbone_only']:.3f} | {100 * r['predictor_share']:.2f}% | "
                         f"{r['peak_memory_mb']:.0f} | {diff} |")
        for nr in lat.get("not_run", []):
            lines.append(f"| {nr['network_dtype']} | all | {nr['nfe']} | {nr['batch']} | not run: {_cell(nr['reason'])} "
                         "| | | | | | |")

    fu = st.get("fused", {}).get("data", {})
    if fu.get("rows"):
        cfg = fu.get("config", {})
        lines += ["", "## Fused update", "",
                  f"{cfg.get('device')}; median of {cfg.get('reps')} samples of {cfg.get('inner')} back-to-back calls, "
                  "in rotation. fused: x <- u x + sum_j w_j h_j in place, (M + 2) n elements moved; copy: a device copy "
                  "of the same bytes; unfused: the solver's torch expression; in-place: torch mul + addcmul_.", "",
                  "| dtype | shape | M | MB moved | fused us | fused GB/s | copy GB/s | fused / copy | x vs unfused "
                  "| x vs in-place |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in fu["rows"]:
            lines.append(f"| {r['dtype']} | {tuple(r['shape'])} | {r['m']} | {r['MB_moved']:.2f} | {r['fused_us']:.2f} | "
                         f"{r['fused_GBps']:.1f} | {r['copy_GBps']:.1f} | {100 * r['fused_vs_copy']:.1f}% | "
                         f"{r['speedup_vs_unfused']:.2f} | {r['speedup_vs_inplace']:.2f} |")

    if rep["targets"]:
        lines += ["", "## Targets", "", "| target | case | measured | met | note |", "|---|---|---|---|---|"]
        for t in rep["targets"]:
            met = {True: "yes", False: "NO", None: "n/a (dry run)"}[t["met"]]
            lines.append(f"| {t['target']} | {t['case']} | {t['measured']} | {met} | {_cell(t.get('note', ''))} |")

    bad = {n: r for n, r in st.items() if r["status"] in ("failed", "timeout")}
    if bad:
        lines += ["", "## Failures", ""]
        for n, r in bad.items():
            lines += [f"### {n} ({r['status']})", "", "```", r.get("error", "").strip()[-ERROR_TAIL_CHARS:], "```", ""]
    return "\n".join(lines).rstrip() + "\n"


# ================================================================================================
def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU stand-ins and tiny sizes; the extension is not rebuilt")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="results folder (default: $OUT)")
    ap.add_argument("--total-s", type=float, default=None, help="time for the whole check (default 470 s; dry run 200 s)")
    ap.add_argument("--stage", choices=sorted(PY_STAGES), help=argparse.SUPPRESS)  # internal: one stage process
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stage:
        return run_stage(args.stage, Path(args.work), args.dry_run, args.deadline)
    if not args.out:
        ap.error("name the results folder with --out or the environment variable OUT")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    orch = Orchestrator(out, args.dry_run, sys.executable, args.total_s)
    rc = 1
    try:
        rc = orch.run()
    finally:
        orch.write()
        shutil.rmtree(orch.work, ignore_errors=True)
        print(f"[gpu_check] {'ok' if rc == 0 else 'FAILED'}: {out / MD_NAME}", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
