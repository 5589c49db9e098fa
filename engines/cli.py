"""The `--engines DIR --backend ...` path of `indis sample` (registered by indis.training.cli, which calls
`sample_from_engines`). `indis export` is registered by indis.export.cli."""
from __future__ import annotations

from ..backbones.spec import resolve_backbone
from ..discretization import Discretization
from .loader import sample_seeds
from .runtime import BACKENDS


def add_sample_options(p) -> None:
    """Options of `indis sample` for sampling from an export folder."""
    p.add_argument("--engines", default=None, help="export folder from `indis export` (then --backbone and --predictor are not needed)")
    p.add_argument("--backend", choices=BACKENDS, default="ort", help="runtime for --engines")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (for --engines)")


def sample_from_engines(args, seeds):
    """(x0 [S, ...], discretization parts, x_T, cond, predictor callable) for `indis sample --engines`.
    seeds: the parsed --seeds (a list or indis.sampling.seeds.SeedList). --backbone, when given, is the torch
    backbone of the torch / native backends (its id must be the manifest's); the manifest itself only ever names
    a registry backbone."""
    if getattr(args, "cfg_scale", 1.0) != 1.0:
        raise ValueError("--cfg-scale is not supported with --engines yet (the exported backbone is the plain conditional model)")
    backbone = None
    if getattr(args, "backbone", None):
        backbone = resolve_backbone(args.backbone)
    x, parts, x_T, cond, fs = sample_seeds(args.engines, seeds, args.backend, args.device,
                                           batch_size=args.batch_size, threads=getattr(args, "threads", 0) or 0,
                                           backbone=backbone, progress=not args.no_progress,
                                           solver=getattr(args, "solver", None))
    print(f"sampled {len(x)} seeds from {args.engines} on backend {args.backend} ({fs.backbone.provider})")
    return x, [Discretization(parts["timesteps"], parts["dtau"], parts["gamma"])], x_T, cond, fs.predictor

