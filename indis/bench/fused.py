"""Bandwidth of the fused multistep update (indis._C) against a device copy of the same bytes and unfused torch.

For one shape, history length M and dtype, timed on the same device and in rotation (one call of each per round,
so that drifts of a shared machine hit every variant alike):
  fused    x <- u x + sum_j w_j h_j in place (indis.native.fused_update): (M + 2) n elements moved
  copy     dst.copy_(src) of a buffer holding the same number of bytes ((M + 2) n / 2 elements each way)
  unfused  the expression of indis.solvers.sample: out = u x; out = out + w_j h_j (several passes)
  inplace  the best plain torch can do without fusion: out = u * x, then out.add_(w_j * h_j) ... (addcmul_)
GB/s = bytes moved / median time; fused_vs_copy = copy time / fused time (the share of a copy's bandwidth the
kernel reaches). On CUDA each sample is `inner` back-to-back calls between two CUDA events, divided by `inner`
(one call at these sizes takes microseconds, about the events' resolution).
Used by benchmarks/bench_fused_update.py and the GPU check (indis.bench.gpu_check).
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, Sequence

import torch

from .. import native

#: the shapes of the fused-update table in BENCHMARKS.md (CIFAR-10-size batches, 64x64, a latent-size batch)
BENCH_SHAPES = ((64, 3, 32, 32), (256, 3, 32, 32), (64, 3, 64, 64), (16, 4, 128, 128))


def timeit(fn: Callable[[], object], device, reps: int, warmup: int = 3, inner: int = 1) -> float:
    """Median seconds per call of fn over `reps` samples of `inner` calls each, after `warmup` calls."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(reps):
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / inner)
        return statistics.median(times)
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def bench(shape: Sequence[int], m: int, dtype: torch.dtype, device, reps: int, inner: int = 1) -> Dict:
    """One row: times (us), GB/s and ratios of fused / copy / unfused / inplace at this shape, M and dtype."""
    b = shape[0]
    x = torch.randn(shape, device=device).to(dtype)
    hist = [torch.randn(shape, device=device).to(dtype) for _ in range(m)]
    u = torch.rand(b, device=device) * 0.01 + 0.995  # keeps x bounded over repetitions
    w = torch.randn(b, m, device=device) * 1e-3
    n, es = x.numel(), x.element_size()
    bytes_fused = (m + 2) * n * es
    src = torch.empty(bytes_fused // 2, dtype=torch.uint8, device=device)
    src.random_(0, 255)
    dst = torch.empty_like(src)
    view = (b,) + (1,) * (len(shape) - 1)
    uv, wv = u.to(dtype).view(view), [w[:, j].to(dtype).view(view) for j in range(m)]

    def fused():
        native.fused_update(x, x, hist, u, w, check_finite=False)

    def copy():
        dst.copy_(src)

    def unfused():
        out = uv * x
        for j in range(m):
            out = out + wv[j] * hist[j]
        return out

    out_buf = torch.empty_like(x)

    def inplace():
        torch.mul(x, uv, out=out_buf)
        for j in range(m):
            out_buf.addcmul_(wv[j], hist[j])

    fns = (("fused", fused), ("copy", copy), ("unfused", unfused), ("inplace", inplace))
    samples = {k: [] for k, _ in fns}
    with torch.no_grad():
        for k, f in fns:
            timeit(f, device, 1, warmup=3, inner=inner)
        for _ in range(reps):
            for k, f in fns:
                samples[k].append(timeit(f, device, 1, warmup=0, inner=inner))
    t = {k: statistics.median(v) for k, v in samples.items()}
    tmin = {k: min(v) for k, v in samples.items()}
    gbs = lambda sec: bytes_fused / sec / 1e9
    return {
        "shape": list(shape), "m": m, "dtype": str(dtype).replace("torch.", ""), "MB_moved": bytes_fused / 1e6,
        "fused_us": t["fused"] * 1e6, "copy_us": t["copy"] * 1e6, "unfused_us": t["unfused"] * 1e6,
        "inplace_us": t["inplace"] * 1e6,
        "fused_GBps": gbs(t["fused"]), "copy_GBps": gbs(t["copy"]),
        "fused_vs_copy": t["copy"] / t["fused"], "speedup_vs_unfused": t["unfused"] / t["fused"],
        "speedup_vs_inplace": t["inplace"] / t["fused"],
        "min_fused_vs_copy": tmin["copy"] / tmin["fused"], "min_speedup_vs_unfused": tmin["unfused"] / tmin["fused"],
        "min_fused_GBps": gbs(tmin["fused"]), "min_copy_GBps": gbs(tmin["copy"]),
        "reps": reps, "inner": inner,
    }


def format_row(r: Dict) -> str:
    return (f"{r['dtype']:8s} {str(tuple(r['shape'])):18s} M={r['m']} {r['MB_moved']:7.1f} MB  "
            f"fused {r['fused_us']:8.1f} us {r['fused_GBps']:6.1f} GB/s | copy {r['copy_GBps']:6.1f} GB/s "
            f"-> {100 * r['fused_vs_copy']:5.1f}% | unfused {r['unfused_us']:8.1f} us "
            f"(x{r['speedup_vs_unfused']:.2f}) | in-place torch x{r['speedup_vs_inplace']:.2f} || min-based: "
            f"{r['min_fused_GBps']:.1f} vs {r['min_copy_GBps']:.1f} GB/s -> {100 * r['min_fused_vs_copy']:.1f}%, "
            f"x{r['min_speedup_vs_unfused']:.2f} vs unfused")
