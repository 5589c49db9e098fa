"""The synthetic study of paper section 4.1: tree construction, exact velocity, metrics, a quick study run."""
import argparse
import json
import math

import numpy as np
import pytest
import torch

from indis.backbones.gmm import GMMBackbone
from indis.toy.metrics import MetricSpec, kl_hist, w2_exact
from indis.toy.tree import T0_TOY, T_TOY, tree_backbone, tree_components, tree_summary


@pytest.fixture(scope="module")
def tree():
    return tree_backbone()


def test_tree_construction_counts_and_moments(tree):
    m, c, w, l = tree_components()
    assert m.shape == (2032, 2) and c.shape == (2032, 2, 2) and w.shape == (2032,)
    assert (l == 0).sum() == 1016 and (l == 1).sum() == 1016
    assert (w > 0).all()
    assert (np.linalg.eigvalsh(c) > 0).all()
    s = tree_summary(tree)
    assert s["components"] == 2032 and s["components_per_class"] == [1016, 1016]
    assert max(abs(v) for v in s["mean"]) < 0.01  # "mixture mean about 0"
    assert all(abs(v - 0.25) < 0.01 for v in s["variance"])  # "per-axis variance about 0.25"
    # class A grows towards +x+y (angle pi/4), class B towards -x-y
    assert m[l == 0].mean(0).sum() > 0 and m[l == 1].mean(0).sum() < 0
    # deterministic
    m2, *_ = tree_components()
    assert np.array_equal(m, m2)
    assert tree.process.name == "flow" and tree.process.T == T_TOY and tree.process.t0 == T0_TOY
    assert tree.prediction_type == "velocity"


def test_sample_data_matches_moments(tree):
    g = torch.Generator().manual_seed(0)
    x = tree.sample_data(100_000, generator=g)
    mu, cov = tree.mean_and_cov()
    assert torch.allclose(x.mean(0), mu, atol=0.01)
    assert torch.allclose(torch.cov(x.T), cov, atol=0.01)
    xa = tree.sample_data(20_000, generator=g, labels=torch.zeros(20_000, dtype=torch.long))
    assert xa.mean(0).sum() > 0.2  # class A lies in the upper right


@pytest.mark.parametrize("conditional", [False, True])
def test_exact_velocity_matches_autograd_of_log_density(conditional):
    bb = tree_backbone(conditional=conditional)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 2, generator=g, dtype=torch.float64) * 0.8
    t = torch.rand(64, generator=g, dtype=torch.float64) * 0.98 + 0.005
    cond = torch.randint(2, (64,), generator=g) if conditional else None
    xr = x.clone().requires_grad_(True)
    score = torch.autograd.grad(bb.log_prob(xr, t, cond).sum(), xr)[0]
    a, s = (1 - t)[:, None], t[:, None]
    # flow OT: eps_hat = -s * score, x0_hat = (x + s^2 score) / a (Tweedie), v = eps_hat - x0_hat
    v_ref = -s * score - (x + s**2 * score) / a
    v = bb(x, t, cond)
    assert torch.allclose(v, v_ref, rtol=1e-8, atol=1e-8)


def test_fast_2d_denoiser_equals_generic_gmm(tree):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(300, 2, generator=g, dtype=torch.float64)
    t = torch.rand(300, generator=g, dtype=torch.float64) * 0.99 + 0.002
    assert torch.allclose(tree.denoise(x, t), GMMBackbone.denoise(tree, x, t), atol=1e-10)


def test_metrics_estimators():
    rng = np.random.RandomState(0)
    a = rng.randn(500, 2)
    c = np.array([0.3, -0.4])
    assert w2_exact(a, a + c) == pytest.approx(0.5, abs=1e-9)  # translation: W2 = |c| exactly
    assert w2_exact(a, a[::-1].copy()) == pytest.approx(0.0, abs=1e-12)
    spec = MetricSpec()
    assert kl_hist(a, a, spec) == pytest.approx(0.0, abs=1e-12)
    assert kl_hist(a, a + 1.0, spec) > kl_hist(a, a + 0.1, spec) > 0


def test_quick_study_orderings_and_resume(tmp_path):
    from indis.toy.study import Study, quick_config

    torch.set_num_threads(1)
    cfg = quick_config(num_train=600, num_fit=64, num_eval=128, ipndm=False, global_iters=30, global_batch=64,
                       global_full_iters=5, oracle_iters=25, oracle_full_iters=3, indis_iters=40, indis_batch=64,
                       indis_full_iters=3, metrics=MetricSpec(ref_n=5000, w2_n=64).to_dict())
    doc = Study(cfg, tmp_path, progress=False).run()
    r = {(x["strategy"], x["split"]): x for x in doc["results"] if x["nfe"] == 3 and x["solver"] == "euler"}
    mse = lambda s, sp="train": r[(s, sp)]["mse"]
    assert mse("oracle") <= mse("global") * 1.0001  # the oracle is no worse than the global schedule
    assert mse("global") < mse("uniform")
    assert mse("indis") < mse("uniform")
    assert mse("indis", "heldout") < mse("uniform", "heldout")
    assert all(math.isfinite(x[k]) for x in doc["results"] for k in ("mse", "kl", "w2"))
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["backbone"] == "exact" and on_disk["teacher_steps"] == 100
    assert {"process", "num_train", "num_eval", "results"} <= set(on_disk)
    assert (tmp_path / "fig2_exact.png").is_file() and (tmp_path / "fig3_exact.png").is_file()
    # resume: a second run of the same config finds every entry and trains nothing
    s2 = Study(cfg, tmp_path, progress=False)
    assert s2.done(3)
    doc2 = s2.run()
    assert [x["mse"] for x in doc2["results"]] == [x["mse"] for x in doc["results"]]


def test_cli_registers_toy_subcommand():
    from indis.toy.cli import add_subparsers, run_toy

    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd")
    add_subparsers(sub)
    args = p.parse_args(["toy", "--out", "x", "--nfe", "3,4", "--backbone", "learned", "--quick"])
    assert args.func is run_toy and args.nfe == (3, 4) and args.backbone == "learned" and args.quick
    with pytest.raises(SystemExit):
        p.parse_args(["toy", "--out", "x", "--nfe", "a,b"])
    args = p.parse_args(["toy", "--out", "x", "--predictor-share", "--sweep", "init,lr", "--share-seeds", "2"])
    assert args.predictor_share and args.sweep == "init,lr" and args.share_seeds == 2
    args.sweep = "nonsense"
    with pytest.raises(SystemExit, match="unknown --sweep factors"):
        run_toy(args)


def test_learned_backbone_is_a_flow_velocity_backbone(tmp_path):
    from indis.backbones.base import Backbone
    from indis.toy.learned import MLPVelocity, load_or_train

    m = MLPVelocity(hidden=16, depth=2)
    assert isinstance(m, Backbone) and m.prediction_type == "velocity" and m.process.name == "flow"
    cfg = {"hidden": 16, "depth": 2, "steps": 30, "batch": 128, "lr": 3e-3, "seed": 1}
    a, info = load_or_train(cfg, cache_dir=tmp_path, progress=False)
    assert info["loss_final"] < info["loss_first"] and not info["cached"]
    b, info2 = load_or_train(cfg, cache_dir=tmp_path, progress=False)
    assert info2["cached"] and a.backbone_id == b.backbone_id  # cached, and the same weights
    c, _ = load_or_train(cfg, cache_dir=tmp_path / "again", progress=False)
    assert c.backbone_id == a.backbone_id  # training is deterministic given the seed


def test_predictor_share_formula_and_quick_run(tmp_path):
    from dataclasses import asdict

    from indis.toy.recipe import Recipe, ShareRunner, make_phi, quick_share_config, share, sweep_table
    from indis.toy.study import lr_lambda, phi_loss

    assert share(1.0, 1.0, 0.5) == 0.0 and share(1.0, 0.5, 0.5) == 1.0 and share(1.0, 1.2, 0.6) == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="not below GOD"):
        share(0.5, 0.4, 0.6)
    with pytest.raises(ValueError, match="features"):
        Recipe(features="raw").check()
    with pytest.raises(ValueError, match="schedule"):
        lr_lambda("step", 10)
    f = lr_lambda("warmup_cosine", 100)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(99) < 0.01
    assert phi_loss(torch.tensor([1.0, math.e]), "log_mse").item() == pytest.approx(0.5)

    torch.set_num_threads(1)
    cfg = quick_share_config(seeds=(0,), num_fit=16, num_heldout=16, max_train=200)
    r = ShareRunner(cfg, tmp_path, log=lambda *a: None)
    ref = r.references(3)
    for sp in ("fit", "heldout"):  # the per-prior oracle keeps its best iterate: never above GOD
        assert ref[f"oracle_full_{sp}"] < ref[f"god_{sp}"] < ref[f"global_{sp}"]
    p0, p1 = r.params(3)
    for feats in ("norm", "polar", "fourier"):  # an untrained phi reproduces its initial schedule exactly
        phi = make_phi(p1, Recipe(features=feats), ref["god"], 0)
        assert r.mse(lambda z: phi(z, None), "fit") == pytest.approx(ref["god_fit"], rel=1e-6)
    base = Recipe(iters=10, full_iters=10, batch=32, num_train=200)
    rows = r.run_recipe(base, "baseline", "b")
    rows += r.run_recipe(Recipe(**{**asdict(base), "full_init": "god", "features": "polar"}), "init", "god")
    for row in rows:
        for sp in ("fit", "heldout"):
            assert row[f"share_{sp}"] == pytest.approx(share(ref[f"god_{sp}"], row[f"mse_{sp}"], ref[f"oracle_full_{sp}"]))
    again = ShareRunner(cfg, tmp_path, log=lambda *a: None)  # resumes: same numbers, nothing retrained
    assert again.run(base, 0, 3, "baseline", "b") == rows[0]
    table = sweep_table(again.doc)
    assert "| baseline | b |" in table and "| init | god |" in table


def test_train_option_init_from_starts_phi_at_a_god_schedule(tmp_path, tree):
    from indis.predictor import Predictor, save_predictor
    from indis.training.train import TrainConfig, build_model

    god = build_model(TrainConfig(method="god", nfe=3), tree)
    with torch.no_grad():
        god.logits.copy_(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))
    save_predictor(tmp_path / "god.safetensors", god, {"backbone_id": tree.backbone_id})
    default = build_model(TrainConfig(method="indis", nfe=3), tree)
    phi = build_model(TrainConfig(method="indis", nfe=3, init_from=str(tmp_path / "god.safetensors")), tree)
    assert isinstance(phi, Predictor)
    x = torch.randn(5, 2)
    d, dg = phi(x), god(x)
    for a, b in ((d.timesteps, dg.timesteps), (d.dtau, dg.dtau), (d.gamma, dg.gamma)):
        assert torch.allclose(a, b.expand_as(a), atol=1e-6)  # the untrained phi is that GOD schedule
    assert not torch.allclose(default(x).gamma, dg.gamma.expand_as(default(x).gamma))  # the default start is not
    with pytest.raises(ValueError, match="differs from this run"):
        build_model(TrainConfig(method="indis", nfe=4, init_from=str(tmp_path / "god.safetensors")), tree)
    with pytest.raises(ValueError, match="expected a GOD predictor"):
        save_predictor(tmp_path / "phi.safetensors", default)
        build_model(TrainConfig(method="indis", nfe=3, init_from=str(tmp_path / "phi.safetensors")), tree)
    with pytest.raises(ValueError, match="applies to method indis"):
        TrainConfig(method="god", nfe=3, init_from=str(tmp_path / "god.safetensors")).validate()


def test_share_against_another_god():
    from indis.toy.recipe import against_god

    doc = {"config": {}, "references": {"3": {"god_fit": 1.0, "god_heldout": 2.0, "oracle_full_fit": 0.5, "oracle_full_heldout": 1.0}},
           "runs": [{"nfe": 3, "mse_fit": 0.75, "mse_heldout": 1.5, "share_fit": 0.5, "share_heldout": 0.5}]}
    d = against_god(doc, {3: {"fit": 0.75, "heldout": 1.25}})
    assert d["runs"][0]["share_fit"] == 0.0 and d["runs"][0]["share_heldout"] == pytest.approx(-1.0)
    assert d["runs"][0]["vs_god_heldout"] == pytest.approx(0.2) and doc["runs"][0]["share_fit"] == 0.5  # input untouched
