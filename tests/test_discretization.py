import pytest
import torch

from indis.discretization import WARPS, DiscretizationParam
from indis.schedules import get_schedule
from helpers import ALL_PROCESSES


@pytest.mark.parametrize("name", ALL_PROCESSES)
@pytest.mark.parametrize("warp", WARPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_monotone_and_finite_for_random_and_extreme_logits(name, warp, dtype, gen):
    n = 5
    param = DiscretizationParam(name, n, warp=warp, b_dtau=0.2, b_gamma=0.3)
    p = param.process
    o = torch.cat(
        [
            torch.randn(64, 3, n, generator=gen) * 3,
            torch.full((1, 3, n), 1e4),
            torch.full((1, 3, n), -1e4),
            torch.tensor([[1e4, -1e4, 0, 1e4, -1e4]] * 3).unsqueeze(0),
            torch.tensor([[-1e4, -1e4, -1e4, -1e4, 1e4]] * 3).unsqueeze(0),
        ]
    ).to(dtype)
    d = param(o)
    for v in (d.timesteps, d.dtau, d.gamma):
        assert torch.isfinite(v).all()
    assert d.timesteps.shape == (68, n + 1) and d.dtau.shape == (68, n) and d.gamma.shape == (68, n)
    assert (d.timesteps[:, 1:] < d.timesteps[:, :-1]).all(), "timesteps must be strictly decreasing"
    assert torch.all(d.timesteps[:, 0] == torch.tensor(param.T, dtype=dtype))
    assert torch.all(d.timesteps[:, -1] == torch.tensor(param.t0, dtype=dtype))
    assert (d.gamma >= 1 - 0.3 - 1e-6).all() and (d.gamma <= 1 + 0.3 + 1e-6).all()
    p.check_times(d.call_times().double(), "call times")


@pytest.mark.parametrize("warp", WARPS)
def test_zero_logits_give_uniform_warp_and_identity_factors(warp):
    param = DiscretizationParam("edm", 6, warp=warp)
    d = param(param.identity_logits(dtype=torch.float64))
    w = param.warp(d.timesteps)
    gaps = w[:-1] - w[1:]
    assert torch.allclose(gaps, gaps.mean().expand_as(gaps), rtol=1e-9)
    assert torch.allclose(d.dtau, torch.zeros(6, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(d.gamma, torch.ones(6, dtype=torch.float64))


def test_logits_for_schedule_roundtrip():
    param = DiscretizationParam("edm", 5, warp="sigma_rho")
    target = get_schedule("logsnr", "edm", 5)
    d = param(torch.stack([param.logits_for_schedule(target), torch.zeros(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)]))
    assert torch.allclose(d.timesteps, target, rtol=1e-9)


def test_shift_applied_in_warp_space_and_bounded():
    param = DiscretizationParam("edm", 4, warp="logsnr", b_dtau=0.1)
    o = torch.zeros(3, 4, dtype=torch.float64)
    o[1] = 50.0  # saturate tanh -> +b_dtau in -logSNR units
    d = param(o)
    shifted = param.warp(d.call_times()) - param.warp(d.timesteps[:-1])
    assert torch.allclose(shifted, torch.full((4,), 0.1, dtype=torch.float64), atol=1e-9)
    off = DiscretizationParam("edm", 4, b_dtau=0.0, b_gamma=0.0)(o)
    assert torch.all(off.dtau == 0) and torch.all(off.gamma == 1)


def test_gradients_flow_to_all_logits():
    param = DiscretizationParam("flow", 4, warp="t", b_dtau=0.05, b_gamma=0.1)
    o = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    d = param(o)
    (d.timesteps.sum() + d.dtau.sum() + d.gamma.sum()).backward()
    assert torch.isfinite(o.grad).all() and (o.grad.abs().sum(dim=-1) > 0).all()


def test_bad_input():
    with pytest.raises(ValueError, match="shape"):
        DiscretizationParam("edm", 5)(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="NaN"):
        DiscretizationParam("edm", 2)(torch.tensor([[float("nan"), 0.0]] * 3))
    with pytest.raises(ValueError, match="warp"):
        DiscretizationParam("edm", 2, warp="sqrt")
    with pytest.raises(ValueError, match="b_gamma"):
        DiscretizationParam("edm", 2, b_gamma=1.5)
    with pytest.raises(ValueError, match="nfe"):
        DiscretizationParam("edm", 0)
