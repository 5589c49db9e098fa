"""`--backbone SPEC`: name a backbone on the command line.

  bundled                 the bundled digits EDM network (indis.backbones.bundled.load_bundled)
  bundled-flow            the bundled class-conditional latent flow-matching digits model, a diffusers pipeline
                          folder (indis.backbones.bundled_flow.load_bundled_flow)
  edm:PRESET[:SEED]       an EDM architecture preset (cifar10_uncond, cifar10_cond, ffhq64, afhq64, imagenet64)
                          with random weights from SEED (default 0): for export and latency checks without a
                          checkpoint; the same seed gives the same weights and the same backbone id
  DIR or FILE.json        a backbone written by `indis convert-edm` / indis.backbones.convert.save_backbone
  diffusers:PATH          a local diffusers pipeline folder or save_pretrained model folder
                          (indis.backbones.diffusers.DiffusersAdapter.from_pretrained; never downloads)
  ideal                   the ideal (empirical) denoiser of the digits training split
  gmm-image               a small image-like Gaussian mixture (indis.backbones.demo.ImageGMM), for tests and demos
  module:function         any importable factory returning a Backbone
Every command that takes `--backbone` resolves it here.

The forms without a path (bundled, bundled-flow, edm:PRESET[:SEED], ideal, gmm-image) are *registry names*:
they name code that ships with indis. A spec read from a file (the backbone recorded in an export manifest)
is resolved with `registry_only=True`: a folder path or a `module:function` there would let whoever edits the
file choose what runs or what is read, so it is refused and the user names the backbone on the command line.
"""
from __future__ import annotations

import importlib
import os
import re
import sys

from ..data.digits import load_digits_split
from .bundled import load_bundled
from .bundled_flow import load_bundled_flow
from .convert import load_backbone
from .demo import ImageGMM
from .diffusers import DiffusersAdapter
from .edm import EDMBackbone, PRESETS
from .ideal import IdealDenoiser

REGISTRY_NAMES = ("bundled", "bundled-flow", "ideal", "gmm-image")
# the --backbone help of every command (one list of the forms resolve_backbone takes)
BACKBONE_HELP = ("backbone spec: bundled | bundled-flow | ideal | gmm-image | edm:PRESET[:SEED] (random weights) | "
                 "DIR or FILE.json from convert-edm | diffusers:PATH (a local pipeline or model folder) | "
                 "module:function (a module of the current folder or on the path)")
_EDM_SPEC = re.compile(r"edm:([A-Za-z0-9_]+)(?::([0-9]{1,18}))?")


def is_registry_name(spec) -> bool:
    """True for the specs that name a backbone shipped with indis (no path, no import)."""
    if not isinstance(spec, str):
        return False
    if spec in REGISTRY_NAMES:
        return True
    m = _EDM_SPEC.fullmatch(spec)
    if m is None:
        return False
    return m.group(1) in PRESETS


def resolve_backbone(spec: str, registry_only: bool = False):
    """The backbone (an indis.backbones.base.Backbone, in eval mode) named by `spec`.

    registry_only: accept only registry names (for specs that come from a file, never from the user)."""
    if not isinstance(spec, str) or not spec:
        raise ValueError("a backbone spec must be a non-empty string")
    if registry_only and not is_registry_name(spec):
        raise ValueError(f"backbone spec {spec!r} is not a registry name ({', '.join(REGISTRY_NAMES)}, "
                         "edm:PRESET[:SEED]); a path or module:function is honoured only on the command line")
    if spec == "bundled":
        return load_bundled().eval()
    if spec == "bundled-flow":
        return load_bundled_flow().eval()
    if spec.startswith("edm:"):
        m = _EDM_SPEC.fullmatch(spec)
        if m is None or m.group(1) not in PRESETS:
            raise ValueError(f"backbone spec {spec!r}: expected edm:PRESET[:SEED] with PRESET one of {sorted(PRESETS)} "
                             "and SEED a non-negative integer (at most 18 digits)")
        seed = int(m.group(2) or 0)
        return EDMBackbone.from_preset(m.group(1), seed=seed).eval()
    if os.path.isdir(spec) or spec.endswith(".json"):
        return load_backbone(spec).eval()
    if spec == "ideal":
        return IdealDenoiser(load_digits_split("train")[0]).eval()
    if spec == "gmm-image":
        return ImageGMM().eval()
    if spec.startswith("diffusers:"):
        return DiffusersAdapter.from_pretrained(spec[len("diffusers:"):]).eval()
    if ":" in spec:
        mod, fn = spec.split(":", 1)
        # a module in the current folder is found as `python -m` would find it (the `indis` script's own folder
        # is first on sys.path, not the user's): only for specs the user typed, never for a registry-only lookup
        cwd = os.getcwd()
        added = cwd not in sys.path and "" not in sys.path
        if added:
            sys.path.insert(0, cwd)
        try:
            factory = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"backbone spec {spec!r}: cannot import {fn} from {mod}: {e}") from e
        finally:
            if added:
                sys.path.remove(cwd)
        return factory().eval()
    raise ValueError(f"unknown backbone spec {spec!r}; use bundled, bundled-flow, ideal, gmm-image, edm:PRESET[:SEED], "
                     "a folder from `indis convert-edm`, diffusers:PATH, or module:function")
