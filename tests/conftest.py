import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

ALL_PROCESSES = ["edm", "flow", "vp_linear", "vp_cosine"]
ALL_SOLVERS = ["euler", "ipndm", "dpmpp_2m", "unipc"]


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
