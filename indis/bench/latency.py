"""Latency per NFE, batch size and backend, against the physical limit (N backbone calls and nothing else).

For each (NFE, batch) and each backend that is available:
  latency        the whole sampler: predictor phi(x_T) + N backbone calls + the solver updates;
  backbone_only  N calls of the backend's own backbone runtime (torch for torch/native, ONNX Runtime for ort,
                 TensorRT for trt) on the same batch, nothing else: the limit that backend can reach;
  predictor      the backend's phi(x_T) alone, and its share of the whole latency;
  decode         a latent backbone's (one with `decode`, e.g. bundled-flow) VAE decode of the batch, timed apart in
                 the same rotation and not part of the latency (the sampler's output is latents);
  peak memory    CUDA: torch.cuda.max_memory_allocated over the backend's runs; CPU: the process's peak
                 resident set size (ru_maxrss, process-wide and monotone, so it only says how large the
                 process got).
Median and p90 over `reps` (>= 20) runs after `warmup` runs; the whole sampler, the backbone-only limit and the
predictor are timed in rotation (one of each per round) so that drifts of a shared machine hit them alike; on CUDA
every run starts on an idle device and is timed with CUDA events on the current stream (host launch gaps included).
A backend that cannot run here is reported as skipped, with the reason, never silently dropped.

Every backend runs the one sampler, indis.sampling.sampler.Sampler (timings in its Timings record).
Backends: torch (the Python solver loop, eager), torch_graph (the Python loop, every backbone call replayed from a
CUDA graph), native (the C++ sampler loop of indis.native, without CUDA graphs), native_graph (the C++ loop
captured whole in one CUDA graph: N backbone calls, N fused updates and the coefficients; its limit is one CUDA
graph of the N backbone calls alone), ort and trt (exported engines). Each row also gives the largest difference of
its samples from the first backend's on the same x_T (`max_abs_diff_vs`), a cross-check of the fast paths.
"""
from __future__ import annotations

import os
import platform
import resource
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .. import _native
from ..cuda_graphs import capture
from ..discretization import DiscretizationParam
from ..engines.runtime import torch_engine_backbone
from ..io import atomic_write_json, atomic_write_text
from ..predictor import Predictor
from ..sampling.sampler import Sampler

Tensor = torch.Tensor

BACKENDS = ("torch", "torch_graph", "native", "native_graph", "ort", "trt")


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
        info["native"] = _native.build_info()
    except ImportError as e:
        info["native"] = f"unavailable: {e}"
    return info


def default_predictor(backbone, nfe: int) -> Predictor:
    """An untrained predictor of the standard size for this backbone (latency does not depend on its weights)."""
    p = backbone.process
    param = DiscretizationParam(p, nfe, warp="logsnr" if p.name != "flow" else "t", b_dtau=0.05, b_gamma=0.05)
    return Predictor(param, backbone.data_shape, backbone.cond_spec, hidden=64, conv_width=16)


# ---- runners: each returns (run, backbone, predictor[, limit]) or raises Unavailable ---------------
# run: (x_T, cond) -> x0, the whole sampler; backbone and predictor: the networks that backend runs, for the
# backbone-only limit and the predictor's share; limit (optional): (x_T, t, cond, nfe) -> a zero-argument callable
# that is that backend's backbone-only limit (default: nfe calls of backbone)
def _torch_runner(s: BenchSetup):
    sampler = Sampler(s.backbone, s.predictor, solver=s.solver, order=s.order, loop="python", device=s.device)
    return (lambda x_T, cond: sampler(x_T, cond)[0]), s.backbone, s.predictor


def _torch_graph_runner(s: BenchSetup):
    """The Python solver loop with every backbone call replayed from a CUDA graph (one per batch size)."""
    if s.device.type != "cuda":
        raise Unavailable("CUDA graphs need a CUDA device (none here)")
    net = torch_engine_backbone(s.backbone, s.device, cuda_graph=True)
    sampler = Sampler(net, s.predictor, solver=s.solver, order=s.order, loop="python", device=s.device)
    return (lambda x_T, cond: sampler(x_T, cond)[0]), net, s.predictor


def _native_sampler(s: BenchSetup, cuda_graph: bool):
    try:
        _native.load()
    except ImportError as e:
        raise Unavailable(f"the native module is not available: {e}") from e
    if s.device.type == "cuda" and not _native.build_info()["cuda"]:
        raise Unavailable("indis._C was built without CUDA (rebuild with INDIS_CUDA=1)")
    sampler = Sampler(s.backbone, s.predictor, solver=s.solver, order=s.order, loop="native", cuda_graph=cuda_graph,
                      device=s.device)
    want = "native+cuda_graph" if cuda_graph else "native"

    def run(x_T, cond):
        x0, timings = sampler(x_T, cond)
        if timings.path != want:  # a silent fallback would time the wrong thing
            raise RuntimeError(f"the sampler took path {timings.path!r}, expected {want!r}")
        return x0

    return run


def _native_runner(s: BenchSetup):
    """The C++ sampler loop (N backbone calls from C++, N fused updates), without CUDA graphs."""
    return _native_sampler(s, cuda_graph=False), s.backbone, s.predictor


def graphed_backbone_calls(net, x_T: Tensor, t: Tensor, cond, nfe: int) -> Callable[[], Tensor]:
    """One CUDA graph of `nfe` calls of net(x, t, cond) (each call's output feeds the next call's input, as in a
    sampler): the backbone-only limit of a whole-loop CUDA graph. Returns its replay."""
    static_x = x_T.clone()

    def calls():
        x = static_x
        for _ in range(nfe):
            x = net(x, t, cond)
        return x

    graph, _ = capture(calls, x_T.device)  # warm-up on a side stream, then the capture (indis.cuda_graphs)
    return graph.replay


def _native_graph_runner(s: BenchSetup):
    """The C++ sampler loop captured whole in one CUDA graph, against one CUDA graph of the N backbone calls."""
    if s.device.type != "cuda":
        raise Unavailable("CUDA graphs need a CUDA device (none here)")
    run = _native_sampler(s, cuda_graph=True)
    return run, s.backbone, s.predictor, (lambda x_T, t, cond, nfe: graphed_backbone_calls(s.backbone, x_T, t, cond, nfe))


def _engine_runner(kind: str):
    def make(s: BenchSetup):
        if s.engines_dir is None:
            raise Unavailable(f"the {kind} backend runs exported artifacts: pass --engines DIR (made by `indis export`)")
        try:
            fs = Sampler.from_engines(s.engines_dir, backend=kind, device=s.device, solver=s.solver, order=s.order,
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
    "native_graph": _native_graph_runner,
    "ort": _engine_runner("ort"),
    "trt": _engine_runner("trt"),
}


# ---- timing ------------------------------------------------------------------------------------
def time_interleaved(fns: Dict[str, Callable[[], object]], device: torch.device, warmup: int, reps: int) -> Dict[str, List[float]]:
    """Times in milliseconds of `reps` calls of each function after `warmup` calls, measured in rotation (one
    call of each per round), so that slow drifts of the machine (other load, frequency) hit them alike and their
    ratios stay meaningful. CPU: wall clock. CUDA: each call starts on an idle device and is bracketed by CUDA events
    on the current stream (so host-side launch gaps inside the call count, work queued before it does not)."""
    cuda = device.type == "cuda"
    for _ in range(warmup):
        for f in fns.values():
            f()
    if cuda:
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    out: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            if cuda:
                start.record()
                f()
                end.record()
                end.synchronize()
                torch.cuda.synchronize(device)  # work the call left on other streams must not leak into the next
                out[k].append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                f()
                out[k].append((time.perf_counter() - t0) * 1e3)
    return out


def _quantile(xs: Sequence[float], q: float) -> float:
    return float(torch.quantile(torch.tensor(xs, dtype=torch.float64), q))


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bench_one(s: BenchSetup, backends: Sequence[str], warmup: int = 3, reps: int = 20, seed: int = 0,
              on_error: str = "raise") -> List[Dict]:
    """One row per backend at (s.nfe, s.batch). on_error="record": a backend that raises while it is measured gets
    status "failed" with the error as its reason and the next backend is measured (the GPU check's sweep);
    "raise" (default) lets the exception through."""
    if reps < 20:
        raise ValueError(f"reps must be at least 20 for a stable median and p90, got {reps}")
    if on_error not in ("raise", "record"):
        raise ValueError(f"on_error must be 'raise' or 'record', got {on_error!r}")
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
    ref = None  # (backend, samples) of the first backend that ran: the others are compared with it
    with torch.no_grad():
        for name in backends:
            row = {"backend": name, "device": s.device.type, "nfe": s.nfe, "batch": s.batch}

            def failed(e: Exception) -> None:  # record a failing backend (or re-raise) and go on with the others
                if on_error == "raise":
                    raise e
                row.update(status="failed", reason=f"{type(e).__name__}: {e}")
                rows.append(row)

            try:
                run, net, phi, *limit = RUNNERS[name](s)
            except Unavailable as e:
                row.update(status="skipped", reason=str(e))
                rows.append(row)
                continue
            except Exception as e:  # noqa: BLE001
                failed(e)
                continue
            try:
                if s.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(s.device)
                backbone_only = (limit[0](x_T, t, cond, s.nfe) if limit
                                 else (lambda: [net(x_T, t, cond) for _ in range(s.nfe)]))
                fns = {"backbone_only": backbone_only, "predictor": lambda: phi(x_T, cond), "run": lambda: run(x_T, cond)}
                if hasattr(bb, "decode"):  # a latent backbone: its VAE decode of the batch, timed apart (not in "run")
                    fns["decode"] = lambda: bb.decode(x_T)
                times = time_interleaved(fns, s.device, warmup, reps)
                x0 = run(x_T, cond).float()
            except Exception as e:  # noqa: BLE001
                failed(e)
                continue
            if ref is None:
                ref = (name, x0)
            else:
                row.update(max_abs_diff_vs=ref[0], max_abs_diff=float((x0 - ref[1]).abs().max()),
                           ref_abs_max=float(ref[1].abs().max()))
            backbone_only, predictor = _quantile(times["backbone_only"], 0.5), _quantile(times["predictor"], 0.5)
            ms = times["run"]
            med = _quantile(ms, 0.5)
            row.update(status="ok", latency_ms_median=med, latency_ms_p90=_quantile(ms, 0.9),
                       backbone_only_ms=backbone_only, predictor_ms=predictor,
                       ratio_to_backbone_only=med / backbone_only, predictor_share=predictor / med,
                       peak_memory_mb=_peak_memory_mb(s.device), reps=reps, warmup=warmup)
            if "decode" in times:
                row.update(decode_ms=_quantile(times["decode"], 0.5))
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
            lines.append(f"| {r['backend']} | {r['device']} | {r['nfe']} | {r['batch']} | {r['status']}: {reason} | | | | | | |")
            continue
        lines.append(
            f"| {r['backend']} | {r['device']} | {r['nfe']} | {r['batch']} | {r['latency_ms_median']:.3g} | "
            f"{r['latency_ms_p90']:.3g} | {r['backbone_only_ms']:.3g} | {r['ratio_to_backbone_only']:.3f} | "
            f"{r['predictor_ms']:.3g} | {100 * r['predictor_share']:.2f}% | {r['peak_memory_mb']:.0f} |"
        )
    decode = [r for r in report["rows"] if "decode_ms" in r]
    if decode:
        lines += ["", "VAE decode of the batch (latent backbone), timed apart, not in the latency above:", "",
                  "| backend | NFE | batch | decode median ms | decode / sampler latency |", "|---|---|---|---|---|"]
        lines += [f"| {r['backend']} | {r['nfe']} | {r['batch']} | {r['decode_ms']:.3g} | {r['decode_ms'] / r['latency_ms_median']:.3f} |"
                  for r in decode]
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
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f) for k, f in (("json", "bench.json"), ("md", "bench.md"), ("png", "latency_vs_nfe.png"))}
    atomic_write_json(paths["json"], report)
    atomic_write_text(paths["md"], markdown(report))
    plot(report, paths["png"])
    return paths
