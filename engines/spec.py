"""`--backbone SPEC`: name a backbone on the command line.

  bundled                 the bundled digits EDM network (indis.backbones.bundled.load_bundled)
  edm:PRESET[:SEED]       an EDM architecture preset (cifar10_uncond, cifar10_cond, ffhq64, afhq64, imagenet64)
                          with random weights from SEED (default 0): for export and latency checks without a
                          checkpoint; the same seed gives the same weights and the same backbone id
  DIR or FILE.json        a backbone written by `indis convert-edm` / indis.backbones.convert.save_backbone
  ideal                   the ideal (empirical) denoiser of the digits training split
  gmm-image               a small image-like Gaussian mixture (indis.training.demo.ImageGMM), for tests and demos
  module:function         any importable factory returning a Backbone
Every command that takes `--backbone` resolves it here.
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
    if spec == "bundled-flow":
        from ..backbones.bundled_flow import load_bundled_flow

        return load_bundled_flow().eval()
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
    if spec == "ideal":
        from ..backbones.ideal import IdealDenoiser
        from ..data.digits import load_digits_split

        return IdealDenoiser(load_digits_split("train")[0]).eval()
    if spec == "gmm-image":
        from ..training.demo import ImageGMM

        return ImageGMM().eval()
    if ":" in spec:
        import importlib

        mod, fn = spec.split(":", 1)
        try:
            factory = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"backbone spec {spec!r}: cannot import {fn} from {mod}: {e}") from e
        return factory().eval()
    raise ValueError(f"unknown backbone spec {spec!r}; use bundled, bundled-flow, ideal, gmm-image, edm:PRESET[:SEED], "
                     "a folder from `indis convert-edm`, or module:function")
