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
    sched = "rds:16" if sched == "rds" else sched  # RDS is keyed on the image sequence length
    if sched in ("flow_shift", "rds:16") and p.T >= 1:
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


def test_rds_is_fluxs_resolution_dependent_shift():
    """RDS: mu linear in the image sequence length between (256, 0.5) and (4096, 1.15) as diffusers' FluxPipeline
    calculate_shift, then FLUX's exponential time shift e^mu / (e^mu + (1/t - 1)) of a uniform grid."""
    import math

    from indis.schedules import rds_mu, shifted_uniform

    assert rds_mu(256) == pytest.approx(0.5) and rds_mu(4096) == pytest.approx(1.15)
    assert rds_mu(16) == pytest.approx(0.5 - 240 * 0.65 / 3840)
    p = get_process("flow")
    ts = get_schedule("rds:4096", p, 6)
    mu = rds_mu(4096)
    # the interior points: FLUX's time shift applied to the unshifted uniform grid
    inv = lambda y: y / (math.exp(mu) - (math.exp(mu) - 1) * y)
    lo, hi = inv(p.t0), inv(p.T)
    u = torch.linspace(1.0, 0.0, 7, dtype=torch.float64)
    g = lo + u * (hi - lo)
    ref = math.exp(mu) / (math.exp(mu) + (1 / g - 1))
    assert torch.allclose(ts, ref, atol=1e-12) and ts[0] == p.T and ts[-1] == p.t0
    assert torch.equal(ts, shifted_uniform(6, p.t0, p.T, shift=math.exp(mu)))
    # more tokens shift towards noise: every interior time grows with the sequence length
    assert (get_schedule("rds:4096", p, 6)[1:-1] > get_schedule("rds:16", p, 6)[1:-1]).all()
    with pytest.raises(ValueError, match="image sequence length"):
        get_schedule("rds", p, 5)
    with pytest.raises(ValueError, match="rds:SEQ_LEN"):
        get_schedule("rds:big", p, 5)


def test_rds_heuristic_reads_the_backbones_sequence_length():
    from indis.backbones.base import CondSpec
    from indis.sampling.fixed import heuristic, schedule_name_for

    class Tokens:
        process, data_shape, cond_spec, image_seq_len = get_process("flow"), (4, 8, 8), CondSpec(), 16

    assert schedule_name_for(Tokens(), "rds") == "rds:16" and schedule_name_for(Tokens(), "uniform") == "uniform"
    assert torch.equal(heuristic(Tokens(), "rds", 5).timesteps, get_schedule("rds:16", "flow", 5))

    class NoTokens:
        process, data_shape, cond_spec = get_process("flow"), (4, 8, 8), CondSpec()

    with pytest.raises(ValueError, match="image_seq_len"):
        heuristic(NoTokens(), "rds", 5)
