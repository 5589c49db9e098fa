import os

import pytest
import torch

from indis.backbones.diffusers import require_diffusers

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def diffusers():
    """The diffusers module, or skip. indis.backbones.diffusers.require_diffusers also hides a torchvision build that
    cannot load beside this torch (it would break diffusers' model imports)."""
    try:
        return require_diffusers()
    except ImportError as e:
        pytest.skip(str(e))
