import pytest
import torch

from indis.processes import get_process
from indis.schedules import HEURISTICS, flow_shift, get_schedule
from helpers import ALL_PROCESSES


@pytest.mark.parametrize("name", ALL_PROCESSES)
@pytest.mark.parametrize("sched", sorted(HEURISTICS))
@pytest.mark.parametrize("n", [1, 3, 10])
def test_heuristics_are_valid(name, sched, n):
    p = get_process(name)
    if sched == "flow_shift" and p.T >= 1:
        with pytest.raises(ValueError, match="flow shift"):
            get_schedule(sched, p, n)
        return
    ts = get_schedule(sched, p, n)
    assert ts.shape == (n + 1,) and ts.dtype == torch.float64
    assert ts[0].item() == p.T and ts[-1].item() == p.t0
    assert (ts[1:] < ts[:-1]).all()


def test_specific_forms():
    edm = get_process("edm")
    ts = get_schedule("polynomial", edm, 5)
    i = torch.arange(6, dtype=torch.float64)
    ref = (80 ** (1 / 7) + i / 5 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert torch.allclose(ts, ref, rtol=1e-12)
    lam = edm.log_snr(get_schedule("logsnr", edm, 4))
    assert torch.allclose(lam[1:] - lam[:-1], (lam[1] - lam[0]).expand(4), rtol=1e-9)
    u = get_schedule("uniform", "flow", 4)
    assert torch.allclose(u[1:] - u[:-1], (u[1] - u[0]).expand(4))
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.allclose(flow_shift(t, 1.0), t)
    assert (flow_shift(t, 3.0)[1:] > flow_shift(t, 3.0)[:-1]).all()
    assert torch.allclose(flow_shift(torch.tensor(0.5), 3.0), torch.tensor(0.75))


def test_bad_input():
    with pytest.raises(ValueError, match="unknown schedule"):
        get_schedule("cosine_warp", "edm", 5)
    with pytest.raises(ValueError, match="positive integer"):
        get_schedule("uniform", "edm", 0)
    with pytest.raises(ValueError, match="t0 < T"):
        get_schedule("uniform", "edm", 5, t0=1.0, T=0.5)
    with pytest.raises(ValueError, match="valid range"):
        get_schedule("uniform", "flow", 5, T=1.5)
