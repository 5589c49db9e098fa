"""Datasets that ship inside installed packages (no download, ever)."""
from .digits import DIGITS_SPLIT_SEED, load_digits_split, load_digits_tensor

__all__ = ["DIGITS_SPLIT_SEED", "load_digits_split", "load_digits_tensor"]
