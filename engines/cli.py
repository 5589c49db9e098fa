"""The `--engines DIR --backend ...` path of `indis sample` (registered by indis.training.cli, which calls
`engine_sampler`). `indis export` is registered by indis.export.cli."""
from __future__ import annotations

from ..backbones.spec import resolve_backbone
from ..sampling.sampler import Sampler
from .runtime import BACKENDS


def add_sample_options(p) -> None:
    """Options of `indis sample` for sampling from an export folder."""
    p.add_argument("--engines", default=None, help="export folder from `indis export` (then --backbone and --predictor are not needed)")
    p.add_argument("--backend", choices=BACKENDS, default="ort", help="runtime for --engines")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (for --engines)")


def engine_sampler(args, table=None) -> Sampler:
    """The Sampler of `indis sample --engines DIR --backend ...` (indis.sampling.sampler.Sampler.from_engines).
    --backbone, when given, is the torch backbone of the torch / native backends (its id must be the manifest's);
    the manifest itself only ever names a registry backbone. table: the prompt table of a text-conditional export."""
    if getattr(args, "cfg_scale", 1.0) != 1.0:
        raise ValueError("--cfg-scale is not supported with --engines yet (the exported backbone is the plain conditional model)")
    backbone = None
    if getattr(args, "backbone", None):
        backbone = resolve_backbone(args.backbone)
    return Sampler.from_engines(args.engines, args.backend, args.device, solver=getattr(args, "solver", None),
                                threads=getattr(args, "threads", 0) or 0, backbone=backbone, prompt_table=table)

