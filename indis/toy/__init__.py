"""The synthetic study of paper section 4.1: the 2D tree mixture, a learned velocity model of it, metrics,
and the runner behind `indis toy`."""
from .tree import TreeBackbone, tree_backbone, tree_components, tree_summary

__all__ = ["TreeBackbone", "tree_backbone", "tree_components", "tree_summary"]
