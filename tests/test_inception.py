"""The FID Inception feature extractor (indis.metrics.inception): pytorch-fid's key layout, loading, features.

No real weights file is available here, so the file is made from a randomly initialised network; the layout is
also checked against names and shapes known from pytorch-fid / torchvision's Inception-v3."""
import json

import pytest
import torch

from indis.bench.quality import run_quality
from indis.cli import main
from indis.metrics.inception import FIDInceptionV3, load_fid_inception, inception_feature_fn, WEIGHTS_FILE


@pytest.fixture(autouse=True)
def one_thread():
    """Inception at 299x299 is the heavy part; one thread is faster than two on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _scaled_state_dict(seed=0):
    """A random state dict with He-scaled convolutions, so features are O(1) rather than vanishing."""
    g = torch.Generator().manual_seed(seed)
    sd = FIDInceptionV3().state_dict()
    for k, v in sd.items():
        if k.endswith("conv.weight"):
            sd[k] = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
        elif k.endswith(("bn.weight", "running_var")):
            sd[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith(("bn.bias", "running_mean")):
            sd[k] = torch.randn(v.shape, generator=g) * 0.1
    return sd


def _golden_input():
    """Two images [2, 3, 37, 53] in [0, 1] (not 299x299: the bilinear resize is part of what is pinned)."""
    return torch.rand(2, 3, 37, 53, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def _golden_projection():
    """A fixed random projection [2048, 3] of the features (pins every feature, not only the first few)."""
    return torch.randn(2048, 3, generator=torch.Generator().manual_seed(11), dtype=torch.float64)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("fidw")
    sd = _scaled_state_dict()
    torch.save(sd, d / WEIGHTS_FILE)
    return d / WEIGHTS_FILE, sd


def test_key_layout_matches_pytorch_fid():
    sd = FIDInceptionV3().state_dict()
    known = {  # names and shapes of pytorch-fid's pt_inception-2015-12-05-6726825d.pth (torchvision's Inception3 layout)
        "Conv2d_1a_3x3.conv.weight": [32, 3, 3, 3], "Conv2d_1a_3x3.bn.running_mean": [32],
        "Conv2d_2b_3x3.conv.weight": [64, 32, 3, 3], "Conv2d_3b_1x1.conv.weight": [80, 64, 1, 1],
        "Conv2d_4a_3x3.conv.weight": [192, 80, 3, 3], "Mixed_5b.branch1x1.conv.weight": [64, 192, 1, 1],
        "Mixed_5b.branch_pool.conv.weight": [32, 192, 1, 1], "Mixed_5d.branch5x5_2.conv.weight": [64, 48, 5, 5],
        "Mixed_6a.branch3x3.conv.weight": [384, 288, 3, 3], "Mixed_6b.branch7x7_2.conv.weight": [128, 128, 1, 7],
        "Mixed_6e.branch7x7dbl_5.conv.weight": [192, 192, 1, 7], "Mixed_7a.branch7x7x3_4.conv.weight": [192, 192, 3, 3],
        "Mixed_7b.branch3x3dbl_1.conv.weight": [448, 1280, 1, 1], "Mixed_7c.branch3x3_2b.conv.weight": [384, 384, 3, 1],
        "Mixed_7c.branch_pool.conv.weight": [192, 2048, 1, 1], "Mixed_7c.branch_pool.bn.running_var": [192],
        "fc.weight": [1008, 2048], "fc.bias": [1008],
    }
    for k, shape in known.items():
        assert list(sd[k].shape) == shape, k
    units = sorted(k[: -len(".conv.weight")] for k in sd if k.endswith(".conv.weight"))
    assert len(units) == 94  # 5 stem + 3x7 (A) + 4 (B) + 4x10 (C) + 6 (D) + 2x9 (E)
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    assert set(sd) == {f"{u}.conv.weight" for u in units} | {f"{u}.bn.{b}" for u in units for b in bn} | {"fc.weight", "fc.bias"}
    assert not any("AuxLogits" in k or k.endswith("conv.bias") for k in sd)
    assert all(sd[f"{u}.bn.running_mean"].shape[0] == sd[f"{u}.conv.weight"].shape[0] for u in units)
    # torchvision documents 27,161,264 parameters for inception_v3 (1000 classes, with AuxLogits: 3,326,696);
    # pytorch-fid's network drops AuxLogits and has 1008 classes (+16,392)
    assert sum(p.numel() for p in FIDInceptionV3().parameters()) == 27_161_264 - 3_326_696 + 8 * 2049


def test_load_by_path_features_and_determinism(weights):
    path, sd = weights
    net = load_fid_inception(path, cache=False)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    for k, v in net.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert load_fid_inception(path.parent, cache=False).state_dict()["fc.bias"].equal(sd["fc.bias"])  # a folder works too
    x = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        f = net(x)
        assert f.shape == (2, 2048) and f.dtype == torch.float32 and torch.isfinite(f).all() and f.abs().mean() > 1e-3
        assert torch.equal(f, net(x))  # deterministic
        assert not torch.allclose(f[0], f[1])
    fn = inception_feature_fn(path, input_range=(0, 1), batch=1, device="cpu")
    g = fn(x)
    assert g.dtype == torch.float64 and g.shape == (2, 2048) and torch.allclose(g, f.double(), rtol=1e-4, atol=1e-5)

    # the `indis eval --features inception --inception-weights PATH` route to the same extractor ([-1, 1] images)
    from indis.cli import build_parser
    from indis.training.cli import _features

    args = build_parser().parse_args(["eval", "--backbone", "bundled", "--teacher", "t", "--out", "o",
                                      "--features", "inception", "--inception-weights", str(path)])
    h = _features(args.features, args.inception_weights)(2 * x[:1] - 1)
    assert h.dtype == torch.float64 and torch.allclose(h[0], g[0], rtol=1e-4, atol=1e-5)


# pytorch-fid's own InceptionV3 (pytorch-fid b9c1811, src/pytorch_fid/inception.py, run unmodified) on the same
# weights (_scaled_state_dict(seed=0), loaded with load_state_dict(strict=True)) and input (_golden_input()), in
# float64 on the CPU, printed once: features [2, 2048] -> the first 8 of each, the projection on
# _golden_projection() and the norms. pytorch-fid builds on torchvision's Inception3 blocks, which cannot be
# installed beside this torch; they were transcribed unchanged from torchvision 02a0a90
# (torchvision/models/inception.py: BasicConv2d, InceptionA-E, Inception3) into a stub package outside the
# repository, with only torchvision's download and usage-logging imports removed.
GOLDEN_FIRST8 = [[0.0, 0.013310148101559971, 0.03548722808257137, 8.622577287876924, 1.4259519983052575,
                  3.9501231737668907, 8.598770908620505, 1.2888220948884799],
                 [0.0015172108787052587, 0.03206333886576635, 0.031550730711405905, 8.794766446338317,
                  1.4379598348133764, 3.983125288324829, 8.546666345869284, 1.4934047204025893]]
GOLDEN_PROJECTION = [[41.146245690319944, 253.65787998138805, -250.2908336851608],
                     [45.15090160231295, 256.9672811615746, -255.94296642999365]]
GOLDEN_NORM = [176.07774940167155, 178.68698502500226]


def test_features_equal_pytorch_fids_inception(weights):
    """The pool3 features of a fixed input with fixed random weights are pytorch-fid's (pinned above). Any change
    of a padding, a pooling (count_include_pad, Mixed_7c's max pool), a stride, the resize or the input scaling
    moves these numbers far beyond the tolerance (float64: agreement to ~1e-12 relative)."""
    path, _ = weights
    net = load_fid_inception(path, cache=False).double()
    with torch.no_grad():
        f = net(_golden_input())
    assert f.dtype == torch.float64 and f.shape == (2, 2048)
    golden = torch.tensor(GOLDEN_FIRST8, dtype=torch.float64)
    assert torch.allclose(f[:, :8], golden, rtol=1e-7, atol=1e-9), (f[:, :8] - golden).abs().max()
    assert torch.allclose(f @ _golden_projection(), torch.tensor(GOLDEN_PROJECTION, dtype=torch.float64), rtol=1e-7)
    assert torch.allclose(f.norm(dim=1), torch.tensor(GOLDEN_NORM, dtype=torch.float64), rtol=1e-7)


def test_grayscale_and_input_range(weights):
    path, _ = weights
    gen = torch.Generator().manual_seed(2)
    rgb, gray = torch.rand(1, 3, 32, 32, generator=gen), torch.rand(1, 1, 32, 32, generator=gen)
    net01 = load_fid_inception(path, input_range=(0, 1))
    net11 = load_fid_inception(path, input_range=(-1, 1))
    with torch.no_grad():
        f = net01(torch.cat([rgb, gray.repeat(1, 3, 1, 1)]))
        a, b = net11(2 * rgb - 1), net11(2 * gray - 1)  # [-1, 1] inputs; grayscale repeated to RGB
    assert torch.allclose(f[0], a[0], rtol=1e-4, atol=1e-5) and torch.allclose(f[1], b[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="images"):
        net01(torch.rand(1, 2, 32, 32))
    with pytest.raises(ValueError, match="input_range"):
        FIDInceptionV3(input_range=(0, 255))


def test_missing_file_names_file_folder_and_source(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    with pytest.raises(FileNotFoundError) as e:
        load_fid_inception()
    msg = str(e.value)
    assert WEIGHTS_FILE in msg and str(tmp_path / "th" / "hub" / "checkpoints") in msg and "github.com/mseitzer/pytorch-fid" in msg
    with pytest.raises(FileNotFoundError) as e:
        load_fid_inception(tmp_path / "nowhere" / "w.pth")
    assert "w.pth" in str(e.value) and str(tmp_path / "nowhere") in str(e.value) and "pytorch-fid" in str(e.value)
    with pytest.raises(FileNotFoundError, match=WEIGHTS_FILE):
        load_fid_inception(tmp_path)  # a folder without the file
    from indis.training.cli import _features

    with pytest.raises(FileNotFoundError):
        _features("inception", str(tmp_path / "x.pth"))


def test_default_location_and_wrong_files(tmp_path, monkeypatch, weights):
    _, sd = weights
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ck = tmp_path / "hub" / "checkpoints"
    ck.mkdir(parents=True)
    # a file saved without BatchNorm counters (as older torch versions wrote them) loads from the default location
    torch.save({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, ck / WEIGHTS_FILE)
    assert load_fid_inception(cache=False).state_dict()["Mixed_7c.branch_pool.conv.weight"].equal(sd["Mixed_7c.branch_pool.conv.weight"])
    bad = {k: v for k, v in sd.items() if k != "Mixed_6c.branch1x1.conv.weight"}
    bad["AuxLogits.fc.weight"] = torch.zeros(1008, 768)
    bad["fc.weight"] = torch.zeros(1000, 2048)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as e:
        load_fid_inception(tmp_path / "bad.pth", cache=False)
    msg = str(e.value)
    assert "Mixed_6c.branch1x1.conv.weight" in msg and "AuxLogits.fc.weight" in msg and "fc.weight: file [1000, 2048], expected [1008, 2048]" in msg
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="state dict"):
        load_fid_inception(tmp_path / "list.pth", cache=False)


def test_quality_tables_take_fid_when_given_the_weights(weights, tmp_path):
    """`indis bench --quality --inception-weights` (run_quality's inception_weights) adds an FID column (to the
    teacher's samples), cached apart from the rows without it; a backbone without the digits features gets FID only.
    (One row: each FID costs a 2048 x 2048 matrix square root.)"""
    path, _ = weights
    rc = main(["bench", "--quality", "--quality-backbones", "gmm-image", "--methods", "", "--nfe", "2", "--n-train", "16",
               "--n-eval", "4", "--train-seeds", "0", "--inception-weights", str(path), "--no-progress", "--out", str(tmp_path)])
    assert rc == 0
    rows = json.load(open(tmp_path / "quality_gmm-image.json"))["rows"]
    assert len(rows) == 1 and rows[0]["fid"] > 0 and "fd" not in rows[0] and "fid_data" not in rows[0]
    assert "FID to teacher" in (tmp_path / "quality.md").read_text()
    kw = dict(nfes=(2,), methods=(), n_train=16, n_eval=4, progress=False, log=lambda *a: None)
    plain = run_quality("gmm-image", str(tmp_path / "work"), **kw)  # the same work folder as the CLI's
    assert [r["mse"] for r in plain["rows"]] == [r["mse"] for r in rows] and "fid" not in plain["rows"][0]
    with pytest.raises(FileNotFoundError):  # before any teacher set is made
        run_quality("gmm-image", str(tmp_path / "new"), inception_weights=str(tmp_path / "missing.pth"), **kw)
    assert not (tmp_path / "new").exists()
