"""Cost of the Python step tables (indis.solvers.step_tables, once per sampler call) against the native loop's
per-step overhead, on one thread, measured in one run with the measurements interleaved.

    python benchmarks/bench_step_tables.py [--nfe 5] [--batches 1,64] [--blocks 15] [--calls 40]

Per batch size (state 3x32x32, float32, schedule [B, N+1] with per-sample dtau and gamma, as a predictor gives):
  tables     step_tables for iPNDM (order 4, eps prediction) and DPM-Solver++(2M) (x0 prediction, vp_linear)
  loop/step  _C.sample_loop on precomputed tables with a null backbone (precomputed outputs), validate=False,
             minus the same N backbone calls made directly: the loop's own host time per step
  call       indis.native.sample (schedule checks, tables, loop with validation) minus the backbone calls
Prints medians over blocks (each block the mean of `calls` calls) and the ratio tables / (N x loop per step).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bench_loop_overhead import Null
from indis import native
from indis.solvers import step_tables


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nfe", type=int, default=5)
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--blocks", type=int, default=15)
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    n = args.nfe
    C = native._C()
    rows = []
    with torch.no_grad():
        for b in (int(v) for v in args.batches.split(",")):
            shape = (b, 3, 32, 32)
            bb = Null(shape, "cpu")
            x_T = 80 * torch.randn(shape)
            ts = torch.logspace(torch.log10(torch.tensor(80.0)), torch.log10(torch.tensor(0.002)), n + 1)
            ts = (ts * (1 + 0.01 * torch.rand(b, 1))).contiguous()
            dtau, gamma = -0.001 * ts[:, :-1], 1 + 0.01 * torch.randn(b, n)
            ts_vp = torch.linspace(1.0, 1e-3, n + 1).expand(b, -1).contiguous()
            tables = step_tables("ipndm", "edm", ts, dtau, gamma, 4, "eps")._asdict()
            fn = lambda x, t: bb(x, t)
            tc = [tables["t_call"][:, i].contiguous() for i in range(n)]
            work = {
                "tables_ipndm": lambda: step_tables("ipndm", "edm", ts, dtau, gamma, 4, "eps"),
                "tables_dpmpp_x0": lambda: step_tables("dpmpp_2m", "vp_linear", ts_vp, None, gamma, 2, "x0"),
                "loop": lambda: C.sample_loop(fn, x_T, **tables, validate=False, timing=False),
                "backbone": lambda: [bb(x_T, tc[i]) for i in range(n)],
                "native_sample": lambda: native.sample(bb, x_T, ts, solver="ipndm", dtau=dtau, gamma=gamma),
            }
            for f in work.values():
                for _ in range(5):
                    f()
            times = {k: [] for k in work}
            for _ in range(args.blocks):  # interleaved: every block times each piece once
                for k, f in work.items():
                    t0 = time.perf_counter()
                    for _ in range(args.calls):
                        f()
                    times[k].append((time.perf_counter() - t0) / args.calls * 1e6)
            med = {k: statistics.median(v) for k, v in times.items()}
            loop_step = (med["loop"] - med["backbone"]) / n
            call_over = med["native_sample"] - med["backbone"]
            row = {"batch": b, "nfe": n, "tables_ipndm_us": med["tables_ipndm"],
                   "tables_dpmpp_x0_us": med["tables_dpmpp_x0"], "loop_us_per_step": loop_step,
                   "native_sample_overhead_us": call_over,
                   "tables_over_loop": med["tables_ipndm"] / (n * loop_step),
                   "tables_share_of_call_overhead": med["tables_ipndm"] / call_over}
            rows.append(row)
            print(f"batch {b}, NFE {n}: tables {row['tables_ipndm_us']:.0f} us (iPNDM/eps), "
                  f"{row['tables_dpmpp_x0_us']:.0f} us (DPM-Solver++/x0, vp_linear) per call | loop "
                  f"{loop_step:.1f} us per step ({n * loop_step:.0f} us per call) | native.sample overhead "
                  f"{call_over:.0f} us per call | tables / loop = {row['tables_over_loop']:.2f}, tables / call "
                  f"overhead = {row['tables_share_of_call_overhead']:.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
