"""Backbones: the protocol (base.py) and the models INDIS samples from."""
from .base import Backbone, CondSpec, check_backbone_id, stable_hash
from .gmm import GMMBackbone, exact_gaussian_flow, gaussian_backbone

__all__ = ["Backbone", "CondSpec", "GMMBackbone", "check_backbone_id", "exact_gaussian_flow", "gaussian_backbone", "stable_hash"]
