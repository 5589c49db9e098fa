"""Per-step overhead of the native sampler loop (indis._C.sample_loop) against the Python loop, and of the layers
above it: indis.native.FastSampler and the sampler facade indis.sampling.sampler.Sampler.

    python benchmarks/bench_loop_overhead.py [--device cpu|cuda] [--backbone null|conv|edm-cifar10] [--threads 2]

Overhead = loop wall time minus the time of the same N backbone calls made directly (measured in the same
run), i.e. everything but the backbone: coefficients, conversions, the update, Python/C++ glue. Reported as
microseconds per step and as a share of the total, at NFE 3, 5 and 7, batch 64 of CIFAR-10 shape.
Backbones: "null" returns precomputed tensors (isolates the loop), "conv" a small 2-layer conv net, and
"edm-cifar10" the EDM DDPM++ CIFAR-10 network (55.7M parameters, random weights; meant for a GPU).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from indis import native
from indis.discretization import Discretization
from indis.sampling.sampler import Sampler
from indis.solvers import sample as py_sample


class Null(torch.nn.Module):
    """Precomputed outputs, handed out in turn: 5 distinct tensors, so no output is returned again while an
    order-4 history still holds it (one tensor returned every call is a reused output buffer, which the
    native loop detects and recomputes with the copying ring)."""
    process, prediction_type = "edm", "eps"

    def __init__(self, shape, device, count: int = 5):
        super().__init__()
        self.outs = [torch.randn(shape, device=device) * 0.1 for _ in range(count)]
        self.calls = 0

    def forward(self, x, t, cond=None):
        self.calls += 1
        return self.outs[self.calls % len(self.outs)]


class Conv(torch.nn.Module):
    process, prediction_type = "edm", "eps"

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 32, 3, padding=1)
        self.c2 = torch.nn.Conv2d(32, 3, 3, padding=1)

    def forward(self, x, t, cond=None):
        return self.c2(torch.relu(self.c1(x / (1 + t.view(-1, 1, 1, 1) ** 2).sqrt())))


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def med(fn, device, reps):
    fn()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backbone", default="null", choices=["null", "conv", "edm-cifar10"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--solver", default="ipndm")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = args.device
    shape = (args.batch, 3, 32, 32)
    if args.backbone == "null":
        bb = Null(shape, dev)
    elif args.backbone == "conv":
        bb = Conv().to(dev)
    else:
        from indis.backbones.edm import EDMBackbone

        bb = EDMBackbone.from_preset("cifar10_uncond", seed=0, device=dev)
    bb.eval()
    x_T = 80 * torch.randn(shape, device=dev)
    rows = []
    with torch.no_grad():
        for nfe in (3, 5, 7):
            ts = torch.logspace(torch.log10(torch.tensor(80.0)), torch.log10(torch.tensor(0.002)), nfe + 1,
                                dtype=torch.float64)
            disc = Discretization(ts.expand(args.batch, -1).to(dev), torch.zeros(args.batch, nfe, dtype=torch.float64, device=dev),
                                  torch.ones(args.batch, nfe, dtype=torch.float64, device=dev))
            t_call = ts[:-1].float().to(dev)
            bb_only = med(lambda: [bb(x_T, t_call[i].expand(args.batch), None) for i in range(nfe)], dev, args.reps)
            t_py = med(lambda: py_sample(bb, x_T, disc, solver=args.solver), dev, args.reps)
            t_nat = med(lambda: native.sample(bb, x_T, disc, solver=args.solver), dev, args.reps)
            fs = native.FastSampler(bb, solver=args.solver, cuda_graph=False)
            t_fs = med(lambda: fs(x_T, disc=disc), dev, args.reps)
            sampler = Sampler(bb, solver=args.solver, loop="auto", cuda_graph=False, device=dev)
            t_sampler = med(lambda: sampler(x_T, disc=disc), dev, args.reps)
            row = {"nfe": nfe, "backbone_ms": bb_only * 1e3}
            for name, t in (("python", t_py), ("native", t_nat), ("fastsampler", t_fs), ("sampler", t_sampler)):
                ov = max(t - bb_only, 0.0)
                row[f"{name}_total_ms"] = t * 1e3
                row[f"{name}_overhead_us_per_step"] = ov / nfe * 1e6
                row[f"{name}_overhead_share"] = ov / t
            rows.append(row)
            print(f"NFE {nfe}: backbone {row['backbone_ms']:.2f} ms | python total {row['python_total_ms']:.2f} ms, "
                  f"overhead {row['python_overhead_us_per_step']:.0f} us/step ({100 * row['python_overhead_share']:.1f}%) | "
                  f"native total {row['native_total_ms']:.2f} ms, overhead {row['native_overhead_us_per_step']:.0f} us/step "
                  f"({100 * row['native_overhead_share']:.1f}%) | FastSampler {row['fastsampler_total_ms']:.2f} ms, "
                  f"{row['fastsampler_overhead_us_per_step']:.0f} us/step ({100 * row['fastsampler_overhead_share']:.1f}%) | "
                  f"Sampler {row['sampler_total_ms']:.2f} ms, {row['sampler_overhead_us_per_step']:.0f} us/step "
                  f"({100 * row['sampler_overhead_share']:.1f}%)",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
