"""Latency per NFE, batch size and backend, against the physical limit (N backbone calls and nothing else).

For each (NFE, batch) and each backend that is available:
  latency        the whole sampler: predictor phi(x_T) + N backbone calls + the solver updates;
  backbone_only  N calls of the backend's own backbone runtime (torch for torch/native, ONNX Runtime for ort,
                 TensorRT for trt) on the same batch, nothing else: the limit that backend can reach;
  predictor      the backend's phi(x_T) alone, and its share of the whole latency;
  peak memory    CUDA: torch.cuda.max_memory_allocated over the backend's runs; CPU: the process's peak
                 resident set size (ru_maxrss, process-wide and monotone, so it only says how large the
                 process got).
Median and p90 over `reps` (>= 20) runs after `warmup` runs; the whole sampler, the backbone-only limit and the
predictor are timed in rotation (one of each per round) so that drifts of a shared machine hit them alike; on CUDA
every run is bracketed by synchronisation.
A backend that cannot run here is reported as skipped, with the reason, never silently dropped.
"""
from __future__ import annotations

import os
import platform
import resource
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch

from ..predictor import Predictor
from ..discretization import DiscretizationParam
from ..solvers import sample

Tensor = torch.Tensor

BACKENDS = ("torch", "torch_graph", "native", "ort", "trt")


class Unavailable(RuntimeError):
    """A backend that cannot run on this machine; the message says what is missing."""


@dataclass
class BenchSetup:
    backbone: torch.nn.Module
    predictor: torch.nn.Module
    nfe: int
    batch: int
    device: torch.device
    solver: str = "ipndm"
    order: int = 4
    engines_dir: Optional[str] = None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: torch.device) -> Dict:
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    try:
        from .. import _native

        info["native"] = _native.build_info()
    except ImportError as e:
        info["native"] = f"unavailable: {e}"
    return info


def default_predictor(backbone, nfe: int) -> Predictor:
    """An untrained predictor of the standard size for this backbone (latency does not depend on its weights)."""
    p = backbone.process
    param = DiscretizationParam(p, nfe, warp="logsnr" if p.name != "flow" else "t", b_dtau=0.05, b_gamma=0.05)
    return Predictor(param, backbone.data_shape, backbone.cond_spec, hidden=64, conv_width=16)


# ---- runners: each returns (run, backbone, predictor) or raises Unavailable -----------------------
# run: (x_T, cond) -> x0, the whole sampler; backbone and predictor: the networks that backend runs, for the
# backbone-only limit and the predictor's share
def _torch_runner(s: BenchSetup):
    bb, phi = s.backbone, s.predictor

    def run(x_T, cond):
        disc = phi(x_T, cond)
        return sample(bb, x_T, disc, solver=s.solver, order=s.order, cond=cond, state_dtype=torch.float32)

    return run, bb, phi


def _torch_graph_runner(s: BenchSetup):
    """The Python solver loop with every backbone call replayed from a CUDA graph (one per batch size)."""
    if s.device.type != "cuda":
        raise Unavailable("CUDA graphs need a CUDA device (none here)")
    from ..engines.runtime import torch_engine_backbone

    net = torch_engine_backbone(s.backbone, s.device, cuda_graph=True)
    phi = s.predictor

    def run(x_T, cond):
        return sample(net, x_T, phi(x_T, cond), solver=s.solver, order=s.order, cond=cond, state_dtype=torch.float32)

    return run, net, phi


def _native_runner(s: BenchSetup):
    try:
        from ..native import FastSampler
        from .. import _native

        _native.load()
    except ImportError as e:
        raise Unavailable(f"the native module is not available: {e}") from e
    fs = FastSampler(s.backbone, s.predictor, solver=s.solver, order=s.order, backend="native",
                     cuda_graph=s.device.type == "cuda")
    return (lambda x_T, cond: fs(x_T, cond)[0]), s.backbone, s.predictor


def _engine_runner(kind: str):
    def make(s: BenchSetup):
        if s.engines_dir is None:
            raise Unavailable(f"the {kind} backend runs exported artifacts: pass --engines DIR (made by `indis export`)")
        try:
            from ..engines.runtime import load_engine_sampler
        except ImportError as e:
            raise Unavailable(f"indis.engines is not importable: {e}") from e
        try:
            fs = load_engine_sampler(s.engines_dir, backend=kind, device=s.device, solver=s.solver, order=s.order,
                                     backbone=s.backbone, log=lambda *a: None)
        except (ImportError, RuntimeError, ValueError) as e:  # ValueError: an ArtifactError (other backbone, ...)
            raise Unavailable(str(e)) from e
        man_bid, man_nfe = fs.manifest["backbone_id"], int(fs.manifest["nfe"])
        if man_bid != s.backbone.backbone_id or man_nfe != s.nfe:
            raise Unavailable(f"{s.engines_dir} holds engines for backbone {man_bid} at NFE {man_nfe}; "
                              f"this row is backbone {s.backbone.backbone_id} at NFE {s.nfe}")
        return (lambda x_T, cond: fs(x_T, cond)[0]), fs.backbone, fs.predictor

    return make


RUNNERS: Dict[str, Callable[[BenchSetup], Callable]] = {
    "torch": _torch_runner,
    "torch_graph": _torch_graph_runner,
    "native": _native_runner,
    "ort": _engine_runner("ort"),
    "trt": _engine_runner("trt"),
}


# ---- timing ------------------------------------------------------------------------------------
def time_interleaved(fns: Dict[str, Callable[[], object]], device: torch.device, warmup: int, reps: int) -> Dict[str, List[float]]:
    """Wall times in milliseconds of `reps` calls of each function after `warmup` calls, measured in rotation (one
    call of each per round), so that slow drifts of the machine (other load, frequency) hit them alike and their
    ratios stay meaningful."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        for f in fns.values():
            f()
    sync()
    out: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            sync()
            out[k].append((time.perf_counter() - t0) * 1e3)
    return out


def _quantile(xs: Sequence[float], q: float) -> float:
    return float(torch.quantile(torch.tensor(xs, dtype=torch.float64), q))


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bench_one(s: BenchSetup, backends: Sequence[str], warmup: int = 3, reps: int = 20, seed: int = 0) -> List[Dict]:
    if reps < 20:
        raise ValueError(f"reps must be at least 20 for a stable median and p90, got {reps}")
    bb = s.backbone
    g = torch.Generator().manual_seed(seed)
    x_T = (torch.randn(s.batch, *bb.data_shape, generator=g) * bb.process.prior_std()).to(s.device)
    cond = None
    if bb.cond_spec.kind == "class":
        cond = torch.randint(bb.cond_spec.dim, (s.batch,), generator=g).to(s.device)
    elif bb.cond_spec.kind == "text":
        cond = torch.randn(s.batch, bb.cond_spec.dim, generator=g).to(s.device)
    t = torch.full((s.batch,), float(bb.process.T), device=s.device)
    rows = []
    with torch.no_grad():
        for name in backends:
            row = {"backend": name, "device": s.device.type, "nfe": s.nfe, "batch": s.batch}
            try:
                run, net, phi = RUNNERS[name](s)
            except Unavailable as e:
                row.update(status="skipped", reason=str(e))
                rows.append(row)
                continue
            if s.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(s.device)
            times = time_interleaved({"backbone_only": lambda: [net(x_T, t, cond) for _ in range(s.nfe)],
                                      "predictor": lambda: phi(x_T, cond), "run": lambda: run(x_T, cond)},
                                     s.device, warmup, reps)
            backbone_only, predictor = _quantile(times["backbone_only"], 0.5), _quantile(times["predictor"], 0.5)
            ms = times["run"]
            med = _quantile(ms, 0.5)
            row.update(status="ok", latency_ms_median=med, latency_ms_p90=_quantile(ms, 0.9),
                       backbone_only_ms=backbone_only, predictor_ms=predictor,
                       ratio_to_backbone_only=med / backbone_only, predictor_share=predictor / med,
                       peak_memory_mb=_peak_memory_mb(s.device), reps=reps, warmup=warmup)
            rows.append(row)
    return rows


def run_latency(backbone, nfes: Sequence[int], batches: Sequence[int], backends: Sequence[str], device="cpu",
                predictor_factory: Optional[Callable[[int], torch.nn.Module]] = None, engines_dir=None,
                warmup: int = 3, reps: int = 20, progress: bool = True) -> Dict:
    """engines_dir: one export folder, or {nfe: folder} (an export holds a predictor for one NFE)."""
    unknown = [b for b in backends if b not in RUNNERS]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; expected a subset of {list(RUNNERS)}")
    if any(n < 1 for n in nfes) or any(b < 1 for b in batches):
        raise ValueError(f"NFEs and batch sizes must be positive, got {list(nfes)} and {list(batches)}")
    device = torch.device(device)
    backbone = backbone.to(device).eval()
    rows: List[Dict] = []
    combos = [(n, b) for n in nfes for b in batches]
    from tqdm.auto import tqdm

    for n, b in tqdm(combos, desc="indis bench", disable=not progress):
        phi = (predictor_factory(n) if predictor_factory else default_predictor(backbone, n)).to(device).eval()
        edir = engines_dir.get(n) if isinstance(engines_dir, dict) else engines_dir
        rows += bench_one(BenchSetup(backbone, phi, n, b, device, engines_dir=edir), backends, warmup, reps)
    return {"machine": machine_info(device), "backbone": getattr(backbone, "backbone_id", None), "rows": rows}


# ---- reporting ---------------------------------------------------------------------------------
def markdown(report: Dict) -> str:
    m = report["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads)"
        + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU") + f"; load average {m.get('load_average')}",
        "",
        "| backend | device | NFE | batch | median ms | p90 ms | backbone-only ms | ratio | predictor ms | predictor share | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        if r.get("status") != "ok":
            reason = " ".join(str(r["reason"]).split()).replace("|", "/")  # one table cell
            lines.append(f"| {r['backend']} | {r['device']} | {r['nfe']} | {r['batch']} | skipped: {reason} | | | | | | |")
            continue
        lines.append(
            f"| {r['backend']} | {r['device']} | {r['nfe']} | {r['batch']} | {r['latency_ms_median']:.3g} | "
            f"{r['latency_ms_p90']:.3g} | {r['backbone_only_ms']:.3g} | {r['ratio_to_backbone_only']:.3f} | "
            f"{r['predictor_ms']:.3g} | {100 * r['predictor_share']:.2f}% | {r['peak_memory_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(report: Dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r.get("status") == "ok"]
    batches = sorted({r["batch"] for r in report["rows"]})
    fig, axes = plt.subplots(1, len(batches), figsize=(4.5 * len(batches), 3.8), squeeze=False)
    for ax, b in zip(axes[0], batches):
        for be in sorted({r["backend"] for r in rows if r["batch"] == b}):
            pts = sorted((r["nfe"], r["backbone_only_ms"]) for r in rows if r["batch"] == b and r["backend"] == be)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "--", color="gray", alpha=0.6)
        for be in sorted({r["backend"] for r in rows if r["batch"] == b}):
            pts = sorted((r["nfe"], r["latency_ms_median"]) for r in rows if r["batch"] == b and r["backend"] == be)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=be)
        ax.set_xlabel("NFE")
        ax.set_ylabel("latency (ms, median); dashed: backbone only")
        ax.set_title(f"batch {b}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"latency vs NFE ({report['machine'].get('gpu') or report['machine']['cpu']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(report: Dict, out_dir: str) -> Dict[str, str]:
    from ..io import atomic_write_json, atomic_write_text

    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f) for k, f in (("json", "bench.json"), ("md", "bench.md"), ("png", "latency_vs_nfe.png"))}
    atomic_write_json(paths["json"], report)
    atomic_write_text(paths["md"], markdown(report))
    plot(report, paths["png"])
    return paths
