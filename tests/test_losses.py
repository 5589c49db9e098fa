import sys
import types

import pytest
import torch

from helpers import trunk_file
from indis.metrics import distances as losses
from indis.metrics.distances import LPIPS, _build_features, get_distance


def test_simple_distances():
    x, y = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    y[1] = 3
    assert torch.allclose(losses.mse(x, y), torch.tensor([1.0, 9.0]))
    assert torch.allclose(losses.l1(x, y), torch.tensor([1.0, 3.0]))
    ph = losses.pseudo_huber(x, y)
    c = 0.00054 * 2
    assert torch.allclose(ph, torch.sqrt(torch.tensor([1.0, 9.0]) + c * c) - c)
    assert torch.allclose(get_distance("pseudo-huber")(x, x), torch.zeros(2), atol=1e-7)
    with pytest.raises(ValueError, match="unknown distance"):
        get_distance("ssim")





def test_missing_trunk_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with pytest.raises(FileNotFoundError) as e:
        LPIPS("alex")
    msg = str(e.value)
    assert "alexnet-owt-7be5be79.pth" in msg and str(tmp_path / "th" / "hub" / "checkpoints") in msg
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        LPIPS("vgg", trunk_path=tmp_path)


def test_trunk_from_hub_cache_and_gradients(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    trunk_file(tmp_path / "th" / "hub" / "checkpoints", "alex")
    lp = LPIPS("alex")
    x = torch.rand(2, 1, 8, 8) * 2 - 1  # grayscale, small: repeated and upsampled
    y = x.clone().requires_grad_(True)
    assert torch.allclose(lp(x, x), torch.zeros(2), atol=1e-6)
    d = lp(x, y + 0.3 * torch.randn_like(x))
    assert d.shape == (2,) and (d > 0).all()
    d.sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()
    assert not any(p.requires_grad for p in lp.parameters())


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_matches_the_lpips_package(tmp_path, monkeypatch, net):
    """Our torchvision-free LPIPS equals lpips.LPIPS given the same trunk (torchvision replaced by a stub)."""
    path = trunk_file(tmp_path, net)
    sd = torch.load(path, weights_only=True)

    def make(pretrained=True, **kw):
        m = torch.nn.Module()
        m.features = _build_features(net)
        m.features.load_state_dict({k[9:]: v for k, v in sd.items() if k.startswith("features.")})
        return m

    tv = types.ModuleType("torchvision")
    tv.models = types.ModuleType("torchvision.models")
    tv.models.alexnet = tv.models.vgg16 = make
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", tv.models)
    for k in [k for k in sys.modules if k == "lpips" or k.startswith("lpips.")]:
        monkeypatch.delitem(sys.modules, k)
    try:
        import lpips as lpips_pkg

        ref = lpips_pkg.LPIPS(net=net, verbose=False)
        ours = LPIPS(net, trunk_path=path, min_size=32)
        x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
        with torch.no_grad():
            assert torch.allclose(ours(x, y), ref(x, y).flatten(), rtol=1e-4, atol=1e-6)
    finally:
        for k in [k for k in sys.modules if k == "lpips" or k.startswith("lpips.")]:
            del sys.modules[k]
