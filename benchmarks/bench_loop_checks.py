"""Host cost per step of the native sampler loop itself (_C.sample_loop with validate=False, timing=False; its step
tables computed once, outside the timing), on a null backbone at batch 1: the number that the loop's per-call
safety checks (state and history pointers re-checked after every backbone call, reused-output detection;
issue 15) add to.

    python benchmarks/bench_loop_checks.py [--batch 1] [--nfe 5] [--blocks 30] [--calls 100]

Prints the median over blocks of the mean time per step. For a before/after comparison run it once against each
build (e.g. PYTHONPATH=/path/to/an/older/checkout-with-its-built-indis/_C) and alternate the runs.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench_loop_overhead import Null
from indis import native
from indis.solvers import step_tables


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--nfe", type=int, default=5)
    ap.add_argument("--blocks", type=int, default=30)
    ap.add_argument("--calls", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    shape = (args.batch, 3, 32, 32)
    bb, x_T = Null(shape, "cpu"), 80 * torch.randn(shape)
    ts = torch.logspace(torch.log10(torch.tensor(80.0)), torch.log10(torch.tensor(0.002)), args.nfe + 1).float()
    C = native._C()
    tables = step_tables("ipndm", "edm", ts, order=4, batch=args.batch)._asdict()

    def run():
        C.sample_loop(lambda x, t: bb(x, t), x_T, **tables, validate=False, timing=False)

    with torch.no_grad():
        for _ in range(50):
            run()
        blocks = []
        for _ in range(args.blocks):
            t0 = time.perf_counter()
            for _ in range(args.calls):
                run()
            blocks.append((time.perf_counter() - t0) / args.calls / args.nfe * 1e6)
    print(f"{statistics.median(blocks):.2f} us/step (median of {args.blocks} blocks of {args.calls} calls, NFE {args.nfe}, "
          f"batch {args.batch}, iPNDM order 4, float32, 1 thread)")


if __name__ == "__main__":
    main()
