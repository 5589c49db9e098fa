"""Backbones: the protocol (base.py) and the models INDIS samples from."""
from .base import Backbone, CondSpec, check_backbone_id, stable_hash
from .bundled import load_bundled
from .diffusers import DiffusersAdapter
from .edm import PRESETS as EDM_PRESETS, EDMBackbone
from .edm_nets import DhariwalUNet, EDMPrecond, SongUNet
from .flow import FlowMLPBackbone
from .gmm import GMMBackbone, exact_gaussian_flow, gaussian_backbone
from .ideal import IdealDenoiser



__all__ = [
    "Backbone", "CondSpec", "DhariwalUNet", "DiffusersAdapter", "EDMBackbone", "EDMPrecond", "EDM_PRESETS",
    "FlowMLPBackbone", "GMMBackbone", "IdealDenoiser", "SongUNet", "check_backbone_id", "exact_gaussian_flow",
    "gaussian_backbone", "load_bundled", "stable_hash",
]
