"""`--backbone SPEC`: name a backbone on the command line.

  bundled                 the bundled digits EDM network (indis.backbones.bundled.load_bundled)
  edm:PRESET[:SEED]       an EDM architecture preset (cifar10_uncond, cifar10_cond, ffhq64, afhq64, imagenet64)
                          with random weights from SEED (default 0): for export and latency checks without a
                          checkpoint; the same seed gives the same weights and the same backbone id
  DIR or FILE.json        a backbone written by `indis convert-edm` / indis.backbones.convert.save_backbone
  ideal, gmm-image, module:function
                          as `indis sample` / `indis train` (indis.training.cli.load_backbone_spec)
"""
from __future__ import annotations

import os


def resolve_backbone(spec: str):
    """The backbone (an indis.backbones.base.Backbone, in eval mode) named by `spec`."""
    if not isinstance(spec, str) or not spec:
        raise ValueError("a backbone spec must be a non-empty string")
    if spec == "bundled":
        from ..backbones.bundled import load_bundled

        return load_bundled().eval()
    if spec.startswith("edm:"):
        from ..backbones.edm import PRESETS, EDMBackbone

        parts = spec.split(":")
        if len(parts) not in (2, 3) or parts[1] not in PRESETS:
            raise ValueError(f"backbone spec {spec!r}: expected edm:PRESET[:SEED] with PRESET one of {sorted(PRESETS)}")
        seed = int(parts[2]) if len(parts) == 3 else 0
        return EDMBackbone.from_preset(parts[1], seed=seed).eval()
    if os.path.isdir(spec) or spec.endswith(".json"):
        from ..backbones.convert import load_backbone

        return load_backbone(spec).eval()
    from ..training.cli import load_backbone_spec

    return load_backbone_spec(spec).eval()
