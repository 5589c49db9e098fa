import pytest
import torch

from indis.processes import get_process
from helpers import ALL_PROCESSES


def _times(p):
    return torch.linspace(p.t0, p.T, 37, dtype=torch.float64)


@pytest.mark.parametrize("name", ALL_PROCESSES)
def test_log_snr_inverse_roundtrip(name):
    p = get_process(name)
    t = _times(p)
    back = p.t_from_log_snr(p.log_snr(t))
    assert torch.allclose(back, t, rtol=1e-9, atol=1e-9)
    # lambda is strictly decreasing in t
    assert (p.log_snr(t)[1:] < p.log_snr(t)[:-1]).all()


@pytest.mark.parametrize("name", ALL_PROCESSES)
def test_derivatives_match_autograd(name):
    p = get_process(name)
    t = _times(p).requires_grad_(True)
    (da,) = torch.autograd.grad((p.alpha(t) + 0 * t).sum(), t)
    (ds,) = torch.autograd.grad(p.sigma(t).sum(), t)
    assert torch.allclose(p.d_alpha(t.detach()), da, rtol=1e-7, atol=1e-10)
    assert torch.allclose(p.d_sigma(t.detach()), ds, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("name", ALL_PROCESSES)
def test_prediction_conversions_roundtrip(name, gen):
    p = get_process(name)
    b = 8
    t = torch.rand(b, generator=gen, dtype=torch.float64) * (p.T - p.t0) + p.t0
    x0 = torch.randn(b, 3, generator=gen, dtype=torch.float64)
    eps = torch.randn(b, 3, generator=gen, dtype=torch.float64)
    a, s = p.alpha(t)[:, None], p.sigma(t)[:, None]
    x = a * x0 + s * eps
    v = p.d_alpha(t)[:, None] * x0 + p.d_sigma(t)[:, None] * eps
    for ptype, pred in (("eps", eps), ("x0", x0), ("velocity", v)):
        assert torch.allclose(p.to_eps(pred, x, t, ptype), eps, atol=1e-9)
        assert torch.allclose(p.to_x0(pred, x, t, ptype), x0, atol=1e-9)
        assert torch.allclose(p.from_x0(x0, x, t, ptype), pred, atol=1e-9)
        assert torch.allclose(p.from_eps(eps, x, t, ptype), pred, atol=1e-9)


def test_known_forms():
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    edm, flow = get_process("edm"), get_process("flow")
    assert torch.allclose(edm.log_snr(t), -torch.log(t))
    assert torch.allclose(flow.alpha(t), 1 - t) and torch.allclose(flow.sigma(t), t)
    # flow matching velocity is eps - x0
    x0, eps = torch.ones(3, 1, dtype=torch.float64), 2 * torch.ones(3, 1, dtype=torch.float64)
    x = (1 - t)[:, None] * x0 + t[:, None] * eps
    assert torch.allclose(flow.from_x0(x0, x, t, "velocity"), eps - x0)
    vp = get_process("vp_linear")
    assert torch.allclose(vp.alpha(t) ** 2 + vp.sigma(t) ** 2, torch.ones(3, dtype=torch.float64))


def test_bad_names():
    with pytest.raises(ValueError, match="unknown process"):
        get_process("vp_quartic")
    with pytest.raises(ValueError, match="unknown prediction type"):
        get_process("edm").to_eps(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), "score")
    with pytest.raises(ValueError, match="valid range"):
        get_process("flow").check_times(torch.tensor([1.2, 0.5]))


@pytest.mark.parametrize("name", ALL_PROCESSES)
def test_check_times_accepts_the_end_points_in_float32(name):
    # a float32 tensor compared with the Python bound 1 + 1e-9 rounds the bound to 1.0 and rejected T = 1
    p = get_process(name)
    for dtype in (torch.float32, torch.float64):
        p.check_times(torch.tensor([p.T, p.t0], dtype=dtype))
    with pytest.raises(ValueError, match="valid range"):
        p.check_times(torch.tensor([p.t_valid[1] * 2 if p.t_valid[1] < 1e30 else -1.0], dtype=torch.float32))
