import pytest
import torch

from indis.backbones import CondSpec
from indis.discretization import DiscretizationParam
from indis.predictor import GlobalDiscretization, Predictor, pool_text, save_predictor
from indis.sampling.load import load_predictor
from indis.schedules import get_schedule


def test_untrained_predictor_reproduces_its_init_schedule():
    param = DiscretizationParam("edm", 5, warp="logsnr", b_dtau=0.1, b_gamma=0.1)
    init = get_schedule("polynomial", "edm", 5)
    phi = Predictor(param, (3, 16, 16), init_timesteps=init)
    d = phi(torch.randn(4, 3, 16, 16) * 80)
    assert torch.allclose(d.timesteps.double(), init.expand(4, -1), rtol=1e-4)
    assert torch.allclose(d.gamma, torch.ones(4, 5)) and torch.allclose(d.dtau, torch.zeros(4, 5), atol=1e-5)


def test_vector_and_conditional_inputs_and_ablation():
    param = DiscretizationParam("flow", 3, warp="t")
    phi = Predictor(param, (2,), CondSpec("class", 2), hidden=32)
    torch.nn.init.normal_(phi.head.weight, std=0.5)
    x = torch.randn(6, 2)
    d0 = phi(x, torch.tensor([0] * 6))
    d1 = phi(x, torch.tensor([1] * 6))
    assert not torch.allclose(d0.timesteps, d1.timesteps)  # the condition matters
    assert not torch.allclose(d0.timesteps[0], d0.timesteps[1])  # the instance matters
    no_inst = Predictor(param, (2,), CondSpec("class", 2), hidden=32, use_instance=False)
    torch.nn.init.normal_(no_inst.head.weight, std=0.5)
    d = no_inst(x, torch.tensor([1] * 6))
    assert torch.allclose(d.timesteps[0], d.timesteps[1])
    with pytest.raises(ValueError, match="needs a class condition"):
        phi(x)
    with pytest.raises(ValueError, match="x_T must have shape"):
        phi(torch.randn(6, 3), torch.tensor([0] * 6))


def test_text_pooling_and_text_condition():
    tok, clip = torch.randn(2, 7, 8), torch.randn(2, 4)
    mask = torch.tensor([[1] * 7, [1] * 3 + [0] * 4])
    pooled = pool_text(tok, clip, mask)
    assert pooled.shape == (2, 12)
    assert torch.allclose(pooled[1, :8], tok[1, :3].mean(0))
    phi = Predictor(DiscretizationParam("flow", 4), (4, 8, 8), CondSpec("text", 12))
    assert phi(torch.randn(2, 4, 8, 8), pooled).timesteps.shape == (2, 5)


def test_global_and_save_load_roundtrip(tmp_path):
    param = DiscretizationParam("edm", 4, warp="sigma_rho")
    god = GlobalDiscretization(param, get_schedule("logsnr", "edm", 4))
    d = god(torch.zeros(3, 5))
    assert d.timesteps.shape == (3, 5) and torch.equal(d.timesteps[0], d.timesteps[2])
    phi = Predictor(param, (5,), hidden=16)
    torch.nn.init.normal_(phi.head.weight)
    for m in (god, phi):
        save_predictor(tmp_path / "p.safetensors", m, {"backbone_id": "abc", "solver": "ipndm"})
        m2, meta = load_predictor(tmp_path / "p.safetensors", backbone_id="abc")
        x = torch.randn(2, 5)
        assert torch.equal(m(x).timesteps, m2(x).timesteps) and meta["solver"] == "ipndm"
    with pytest.raises(ValueError, match="backbone id"):
        load_predictor(tmp_path / "p.safetensors", backbone_id="other")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_predictor(tmp_path / "bad.safetensors")
