import os

import pytest
import torch

from indis.backbones.diffusers import require_diffusers

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

ALL_PROCESSES = ["edm", "flow", "vp_linear", "vp_cosine"]
ALL_SOLVERS = ["euler", "ipndm", "dpmpp_2m", "unipc"]


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


def random_schedule(T, t0, b, n, dtype, seed=0):
    """Per-sample random strictly decreasing times between t0 and T (in log-time when T > 2, e.g. EDM), with small
    scales gamma and negative shifts dtau: (timesteps [b, n+1], gamma [b, n], dtau [b, n])."""
    g = torch.Generator().manual_seed(seed)
    cuts = torch.sort(torch.rand(b, n - 1, generator=g, dtype=torch.float64), dim=1, descending=True).values
    frac = torch.cat([torch.ones(b, 1, dtype=torch.float64), 0.05 + 0.9 * cuts, torch.zeros(b, 1, dtype=torch.float64)], 1)
    if T > 2:
        ts = torch.exp(torch.log(torch.tensor(t0)) + frac * (torch.log(torch.tensor(T)) - torch.log(torch.tensor(t0))))
    else:
        ts = t0 + frac * (T - t0)
    gamma = 1 + 0.05 * torch.randn(b, n, generator=g, dtype=torch.float64)
    dtau = -0.02 * (ts[:, :-1] - ts[:, 1:]) * torch.rand(b, n, generator=g, dtype=torch.float64)
    return ts.to(dtype), gamma.to(dtype), dtau.to(dtype)


def small_edm(model_type="SongUNet", label_dim=0, img_channels=3, seed=0):
    """An EDM preset architecture at small width and 8x8 resolution (the 55M/296M presets are too slow for CI), with
    EDM's zero-initialised output layers given weights so that the network part F(x) matters."""
    from indis.backbones.edm import EDMBackbone

    torch.manual_seed(seed)
    kw = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
    bb = EDMBackbone.from_kwargs(img_resolution=8, img_channels=img_channels, label_dim=label_dim, model_type=model_type,
                                 **kw).eval()
    with torch.no_grad():
        for p in bb.parameters():
            if (p == 0).all():
                p.normal_(0, 0.3)
    bb.refresh_id()
    return bb


@pytest.fixture(scope="session")
def diffusers():
    """The diffusers module, or skip. indis.backbones.diffusers.require_diffusers also hides a torchvision build that
    cannot load beside this torch (it would break diffusers' model imports)."""
    try:
        return require_diffusers()
    except ImportError as e:
        pytest.skip(str(e))
