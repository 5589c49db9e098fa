"""Bandwidth of the fused multistep update (indis._C) against a plain copy and the unfused torch expression.

    python benchmarks/bench_fused_update.py [--device cpu|cuda] [--threads 2] [--json out.json]

For each size and M (history length) it times, on the same machine and in one run:
  fused    x <- u x + sum_j w_j h_j in place (indis.native.fused_update): (M + 2) n elements moved
  copy     dst.copy_(src) of a buffer holding the same number of bytes ((M + 2) n / 2 elements each way)
  unfused  the expression of indis.solvers.sample: out = u x; out = out + w_j h_j (several passes)
  inplace  the best plain torch can do without fusion: out = u * x, then out.add_(w_j * h_j) ... (addcmul_)
and reports GB/s (bytes moved / median time) and the ratios fused/copy and unfused/fused. The measurement itself
lives in indis/bench/fused.py (shared with the GPU check, benchmarks/gpu_check.sh).
"""
from __future__ import annotations

import argparse
import json

import torch

from indis.bench.fused import BENCH_SHAPES, bench, format_row
from indis.bench.latency import cpu_model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--dtypes", default="float32,float16,bfloat16")
    ap.add_argument("--inner", type=int, default=1, help="calls per timed sample (CUDA: e.g. 20; one call is microseconds)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shapes = BENCH_SHAPES
    rows = []
    for dt_name in args.dtypes.split(","):
        dtype = getattr(torch, dt_name)
        for shape in shapes:
            for m in (1, 3, 4):
                if dtype != torch.float32 and m != 3:
                    continue
                r = bench(shape, m, dtype, args.device, args.reps, inner=args.inner)
                rows.append(r)
                print(format_row(r), flush=True)
    meta = {"device": args.device, "threads": args.threads, "torch": torch.__version__,
            "cpu": cpu_model(), "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
