"""diffusers models in INDIS (indis.backbones.diffusers): imports, timesteps, prediction types, loading, families.
Every model is a tiny randomly initialised one built here; nothing is downloaded."""
import importlib.util
import subprocess
import sys

import pytest
import torch

HAS_DIFFUSERS = importlib.util.find_spec("diffusers") is not None


@pytest.mark.skipif(not HAS_DIFFUSERS, reason="diffusers is not installed (pip install indis[diffusers])")
def test_diffusers_models_import_without_indis():
    """In the README's venv the diffusers model classes import in a fresh interpreter, without indis hiding a broken
    torchvision first (the install does not bring torchvision: lpips is installed with --no-deps)."""
    code = ("import sys; from diffusers import UNet2DModel, UNet2DConditionModel, SD3Transformer2DModel, "
            "FluxTransformer2DModel; assert 'indis' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
