"""Bandwidth of the fused multistep update (indis._C) against a plain copy and the unfused torch expression.

    python benchmarks/bench_fused_update.py [--device cpu|cuda] [--threads 2] [--json out.json]

For each size and M (history length) it times, on the same machine and in one run:
  fused    x <- u x + sum_j w_j h_j in place (indis.native.fused_update): (M + 2) n elements moved
  copy     dst.copy_(src) of a buffer holding the same number of bytes ((M + 2) n / 2 elements each way)
  unfused  the expression of indis.solvers.sample: out = u x; out = out + w_j h_j (several passes)
  inplace  the best plain torch can do without fusion: out = u * x, then out.add_(w_j * h_j) ... (addcmul_)
and reports GB/s (bytes moved / median time) and the ratios fused/copy and unfused/fused.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from indis import native


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timeit(fn, device, reps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(reps):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return statistics.median(times)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(shape, m, dtype, device, reps):
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
    # interleaved rounds (the machine may be shared: drift hits every variant alike); median and min
    samples = {k: [] for k, _ in fns}
    with torch.no_grad():
        for k, f in fns:
            timeit(f, device, 1, warmup=3)
        for _ in range(reps):
            for k, f in fns:
                samples[k].append(timeit(f, device, 1, warmup=0))
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
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--dtypes", default="float32,float16,bfloat16")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shapes = [(64, 3, 32, 32), (256, 3, 32, 32), (64, 3, 64, 64), (16, 4, 128, 128)]
    rows = []
    for dt_name in args.dtypes.split(","):
        dtype = getattr(torch, dt_name)
        for shape in shapes:
            for m in (1, 3, 4):
                if dtype != torch.float32 and m != 3:
                    continue
                r = bench(shape, m, dtype, args.device, args.reps)
                rows.append(r)
                print(f"{r['dtype']:8s} {str(tuple(shape)):18s} M={m} {r['MB_moved']:7.1f} MB  "
                      f"fused {r['fused_us']:8.1f} us {r['fused_GBps']:6.1f} GB/s | copy {r['copy_GBps']:6.1f} GB/s "
                      f"-> {100 * r['fused_vs_copy']:5.1f}% | unfused {r['unfused_us']:8.1f} us "
                      f"(x{r['speedup_vs_unfused']:.2f}) | in-place torch x{r['speedup_vs_inplace']:.2f} || min-based: "
                      f"{r['min_fused_GBps']:.1f} vs {r['min_copy_GBps']:.1f} GB/s -> {100 * r['min_fused_vs_copy']:.1f}%, "
                      f"x{r['min_speedup_vs_unfused']:.2f} vs unfused", flush=True)
    meta = {"device": args.device, "threads": args.threads, "torch": torch.__version__,
            "cpu": cpu_model(), "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
