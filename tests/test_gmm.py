import pytest
import torch

from indis.backbones import CondSpec, GMMBackbone, gaussian_backbone
from helpers import ALL_PROCESSES


def tiny_gmm(process, prediction_type="eps", conditional=False):
    g = torch.Generator().manual_seed(7)
    means = torch.randn(4, 2, generator=g, dtype=torch.float64)
    a = torch.randn(4, 2, 2, generator=g, dtype=torch.float64) * 0.4
    covs = a @ a.transpose(1, 2) + 0.02 * torch.eye(2, dtype=torch.float64)
    return GMMBackbone(means, covs, torch.tensor([1.0, 2.0, 3.0, 4.0]), process=process, prediction_type=prediction_type,
                       labels=torch.tensor([0, 0, 1, 1]), conditional=conditional)


@pytest.mark.parametrize("process", ALL_PROCESSES)
def test_eps_equals_minus_sigma_times_score(process):
    """Tweedie: eps(x, t) = -sigma(t) grad_x log p_t(x), checked against autograd of the exact log-density."""
    bb = tiny_gmm(process)
    p = bb.process
    g = torch.Generator().manual_seed(3)
    t = torch.rand(16, generator=g, dtype=torch.float64) * (p.T - p.t0) * 0.9 + p.t0 * 2
    x = (torch.randn(16, 2, generator=g, dtype=torch.float64) * p.sigma(t)[:, None]).requires_grad_(True)
    (score,) = torch.autograd.grad(bb.log_prob(x, t).sum(), x)
    assert torch.allclose(bb(x.detach(), t), -p.sigma(t)[:, None] * score, rtol=1e-7, atol=1e-9)


def test_conditional_restricts_to_class_and_needs_labels():
    bb = tiny_gmm("edm", prediction_type="x0", conditional=True)
    assert bb.cond_spec == CondSpec("class", 2)
    x = torch.zeros(3, 2, dtype=torch.float64)
    t = torch.full((3,), 0.01, dtype=torch.float64)
    d0 = bb(x, t, torch.tensor([0, 0, 0]))
    # at tiny noise the denoiser returns (nearly) a point of a class-0 component region
    uncond = tiny_gmm("edm", prediction_type="x0")
    assert not torch.allclose(d0, bb(x, t, torch.tensor([1, 1, 1])))
    with pytest.raises(ValueError, match="needs a class condition"):
        bb(x, t)
    with pytest.raises(ValueError, match="unconditional"):
        uncond(x, t, torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="class labels"):
        bb(x, t, torch.tensor([0, 5, 0]))


def test_sample_data_moments_and_mean_cov():
    bb = tiny_gmm("edm")
    x = bb.sample_data(200_000, torch.Generator().manual_seed(0))
    mu, cov = bb.mean_and_cov()
    assert torch.allclose(x.mean(0), mu, atol=0.01)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.02)


def test_backbone_id_is_stable_and_tracks_weights():
    a, b = tiny_gmm("edm"), tiny_gmm("edm")
    assert a.backbone_id == b.backbone_id and len(a.backbone_id) == 16
    assert tiny_gmm("flow").backbone_id != a.backbone_id
    b.means.add_(1e-3)
    assert b.refresh_id() != a.backbone_id


def test_diag_and_iso_covariances_and_bad_shapes():
    m = torch.zeros(2, 3, dtype=torch.float64)
    iso = GMMBackbone(m, torch.tensor([0.5, 0.5]))
    diag = GMMBackbone(m, torch.full((2, 3), 0.5))
    full = GMMBackbone(m, torch.eye(3).expand(2, 3, 3) * 0.5)
    x, t = torch.randn(4, 3, dtype=torch.float64), torch.full((4,), 0.7, dtype=torch.float64)
    assert torch.allclose(iso(x, t), diag(x, t)) and torch.allclose(iso(x, t), full(x, t))
    assert torch.allclose(gaussian_backbone(torch.zeros(3), 0.5 ** 0.5)(x, t), iso(x, t))
    with pytest.raises(ValueError, match="covs must have shape"):
        GMMBackbone(m, torch.ones(3, 3))
    with pytest.raises(ValueError, match="t must be"):
        iso(x, torch.ones(3))
