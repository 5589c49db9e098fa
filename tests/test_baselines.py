"""The training-free peers (indis.baselines): each one's defining property on the exact GMM backbone, the
order-schedule and AFS options, and the interface (save/load, train --method, evaluation with their own solver)."""
import math

import pytest
import torch

from indis.backbones.gmm import GMMBackbone, gaussian_backbone
from indis.baselines import AnalyticFirstStep, PeerSchedule, order_scheduled, peer_schedule
from indis.baselines import dmn, gits, sdm
from indis.baselines.common import pilot_trajectory, ve_s
from indis.baselines.search import best_heuristic
from indis.bench import quality as q
from indis.bench.quality import run_quality
from indis.evaluate import evaluate_methods
from indis.predictor import save_predictor
from indis.schedules import get_schedule
from indis.solvers import sample
from indis.training.teacher import TeacherConfig, generate_teacher, load_teacher
from indis.sampling.load import load_predictor
from indis.sampling.solve import solve
from indis.training.train import TrainConfig, train


@pytest.fixture(scope="module")
def gmm():
    g = torch.Generator().manual_seed(3)
    return GMMBackbone(torch.randn(4, 6, generator=g), torch.full((4,), 0.05), process="edm")


@pytest.fixture(scope="module")
def pilots(gmm):
    return torch.randn(48, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * gmm.process.T


# ------------------------------------------------------------------------------------------------ options
@pytest.mark.parametrize("solver", ["ipndm", "dpmpp_2m", "unipc"])
def test_order_schedule_at_full_order_is_bit_identical_and_caps_orders(gmm, pilots, solver):
    ts = get_schedule("logsnr", gmm.process, 6)
    base = sample(gmm, pilots, ts, solver=solver)
    full = order_scheduled(solver, [order_scheduled(solver, None).max_order] * 6)
    assert torch.equal(sample(gmm, pilots, ts, solver=full), base)
    assert order_scheduled(solver, None).__class__.__name__ == type(order_scheduled(solver, None)).__name__
    low = sample(gmm, pilots, ts, solver=order_scheduled(solver, [1, 1, 2, 2, 2, 2]))
    assert not torch.equal(low, base)
    with pytest.raises(ValueError, match="per-step orders"):
        sample(gmm, pilots, ts, solver=order_scheduled(solver, [1, 2]))
    with pytest.raises(ValueError, match="orders must lie"):
        order_scheduled(solver, [0, 1])


def test_order_one_ipndm_is_euler(gmm, pilots):
    ts = get_schedule("polynomial", gmm.process, 5)
    assert torch.allclose(sample(gmm, pilots, ts, solver=order_scheduled("ipndm", [1] * 5)), sample(gmm, pilots, ts, solver="euler"), rtol=0, atol=1e-12)


def test_afs_replaces_the_call_at_T_and_saves_one_network_call(pilots):
    bb = gaussian_backbone(torch.zeros(6), 1.0, process="edm")  # unit-variance data: E[eps | x_T] = T x_T / (1 + T^2)
    w = AnalyticFirstStep(bb)
    T = bb.process.T
    t = torch.full((pilots.shape[0],), T, dtype=torch.float64)
    est = w.process.to_eps(w(pilots, t), pilots, t, bb.prediction_type)
    assert torch.allclose(est, pilots / math.sqrt(1 + T * T), rtol=1e-12, atol=0)
    exact = bb.process.to_eps(bb(pilots, t), pilots, t, bb.prediction_type)
    assert torch.allclose(est, exact, rtol=1e-3, atol=0)  # GENIE's estimate vs the exact posterior mean at T = 80
    assert w.network_calls == 0
    m = peer_schedule(bb, get_schedule("logsnr", bb.process, 5), afs=True)
    assert m.network_calls == 4
    _, ov_backbone = m.sampling("euler", None, bb)[1:]
    solve(m, bb, pilots, None)
    x0 = sample(ov_backbone, pilots, m.timesteps, solver="ipndm")
    assert ov_backbone.network_calls == 4
    mixed = torch.tensor([T, 1.0], dtype=torch.float64)
    out = w(pilots[:2], mixed)
    assert torch.allclose(out[1], bb(pilots[1:2], mixed[1:])[0])
    assert torch.isfinite(x0).all()


def test_peer_schedule_saves_loads_and_samples_with_its_own_solver(tmp_path, gmm, pilots):
    m = peer_schedule(gmm, get_schedule("logsnr", gmm.process, 5), solver="dpmpp_2m", orders=[1, 1, 2, 2, 2], afs=True, method="x")
    save_predictor(tmp_path / "p.safetensors", m, {"nfe": m.network_calls, "backbone_id": gmm.backbone_id})
    m2, meta = load_predictor(tmp_path / "p.safetensors", gmm.backbone_id)
    assert isinstance(m2, PeerSchedule) and meta["nfe"] == 4
    assert (m2.solver_name, m2.orders, m2.afs, m2.method) == ("dpmpp_2m", [1, 1, 2, 2, 2], True, "x")
    assert torch.equal(m2.timesteps, m.timesteps)
    a = solve(m2, gmm, pilots, None, solver="ipndm", state_dtype=torch.float64)  # the caller's solver is replaced by the method's
    w = AnalyticFirstStep(gmm)
    b = sample(w, pilots, m.timesteps, solver=order_scheduled("dpmpp_2m", [1, 1, 2, 2, 2]))
    assert torch.equal(a, b) and w.network_calls == 4
    with pytest.raises(ValueError, match="per-step orders"):
        peer_schedule(gmm, m.timesteps, orders=[1, 2])


# ------------------------------------------------------------------------------------------------ GITS
@pytest.mark.parametrize("gamma", [1.0, 1.15])
def test_dp_path_is_the_brute_force_optimum(gamma):
    g = torch.Generator().manual_seed(0)
    for m, k in [(6, 2), (7, 3), (8, 4), (9, 5)]:
        c = torch.rand(m + 1, m + 1, generator=g, dtype=torch.float64) - 0.2  # signed, like the dev metric
        path, val = gits.dp_path(c, k, gamma)
        bf, bval = gits.brute_force_path(c, k, gamma)
        assert path == bf and val == pytest.approx(bval, rel=1e-12)
        assert val == pytest.approx(gits.path_cost(c, path, gamma), rel=1e-12)
    with pytest.raises(ValueError, match="steps"):
        gits.dp_path(c, 10, gamma)


@pytest.mark.parametrize("metric", ["dev", "l2"])
def test_gits_on_the_gmm_is_the_dp_optimum_of_its_cost_matrix(gmm, pilots, metric):
    ts, info = gits.gits_schedule(gmm, pilots, None, 3, grid_steps=9, metric=metric)
    bf, bval = gits.brute_force_path(info["cost"], 3, 1.15)
    assert info["path"] == bf and info["path_cost"] == pytest.approx(bval, rel=1e-12)
    assert torch.equal(ts, torch.tensor(info["grid"], dtype=torch.float64)[bf])
    assert ts[0] == gmm.process.T and ts[-1] == gmm.process.t0 and (ts[1:] < ts[:-1]).all()


def test_gits_cost_is_the_one_step_error_against_the_teacher(gmm, pilots):
    grid = get_schedule("polynomial", gmm.process, 8)
    states, eps = pilot_trajectory(gmm, pilots, None, grid, solver="euler")
    c = gits.cost_matrix(gmm.process, grid, states, eps, "l2")
    assert torch.allclose(torch.diagonal(c, 1), torch.zeros(8, dtype=torch.float64), atol=1e-9)  # Euler teacher: exact
    assert (c[0, 2:] > 1e-6).all() and torch.isinf(c[3, :4]).all()
    # afs: the first row uses the analytical eps, the others are unchanged
    ca = gits.cost_matrix(gmm.process, grid, states, eps, "l2", afs=True)
    assert torch.equal(ca[1:], c[1:]) and not torch.equal(ca[0], c[0])


# ------------------------------------------------------------------------------------------------ DMN
def test_dmn_weights_match_the_closed_forms():
    lam = torch.linspace(-4.4, 6.2, 7, dtype=torch.float64).numpy()
    lam[2] += 0.3
    h = lam[1:] - lam[:-1]
    H0 = lambda x: math.expm1(x)
    H1 = lambda x: math.exp(x) * x - H0(x)
    nodes, j = dmn.node_weights(lam, 0, 1)
    assert list(nodes) == [0] and j[0] == pytest.approx(math.exp(lam[1]) - math.exp(lam[0]), rel=1e-12)
    s = 3
    nodes, j = dmn.node_weights(lam, s, 2)
    assert list(nodes) == [2, 3]
    assert j[0] == pytest.approx(-math.exp(lam[s]) * H1(h[s]) / h[s - 1], rel=1e-10)
    assert j[1] == pytest.approx(math.exp(lam[s]) * (H1(h[s]) + h[s - 1] * H0(h[s])) / h[s - 1], rel=1e-10)
    # order 3: the weights integrate the interpolant exactly, so a quadratic in lambda is integrated exactly
    nodes, j = dmn.node_weights(lam, 4, 3)
    f = lambda x: 1.0 + 0.5 * x - 0.2 * x * x
    a, b = lam[4], lam[5]
    xs = torch.linspace(a, b, 20001, dtype=torch.float64)
    exact = float(torch.trapezoid(torch.exp(xs) * f(xs), xs))
    assert float(sum(j[k] * f(lam[n]) for k, n in enumerate(nodes))) == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("process", ["edm", "vp_linear", "flow"])
@pytest.mark.parametrize("steps", [3, 5, 7])
def test_dmn_lowers_its_objective_and_returns_a_valid_schedule(process, steps):
    from indis.processes import get_process

    proc = get_process(process)
    ts, info = dmn.dmn_schedule(proc, steps)
    assert info["improved"] and info["objective"] < info["objective_init"]
    lam = proc.log_snr(ts).numpy()
    assert dmn.objective(lam) == pytest.approx(info["objective"], rel=1e-6)
    assert ts[0] == proc.T and ts[-1] == proc.t0 and (ts[1:] < ts[:-1]).all() and len(ts) == steps + 1
    proc.check_times(ts)


# ------------------------------------------------------------------------------------------------ SDM
def test_sdm_adaptive_steps_respect_the_wasserstein_bound(gmm, pilots):
    kw = dict(eta_min=0.02, eta_max=0.5, eta_p=1.0, grid_steps=20)
    ts, info = sdm.adaptive_schedule(gmm, pilots, None, **kw)
    assert ts[0] == gmm.process.T and ts[-1] == gmm.process.t0 and (ts[1:] < ts[:-1]).all()
    assert info["steps"] == len(ts) - 1 >= 3
    eta = sdm.interval_errors(gmm, pilots, None, ts)  # an independent Euler run along the result
    s = ve_s(gmm.process, ts)
    bound = torch.tensor([sdm.eta_bound(float(v), float(s[0]), 0.02, 0.5, 1.0) for v in s[:-1]], dtype=torch.float64)
    assert (eta <= bound * (1 + 1e-6)).all(), (eta, bound)
    assert torch.allclose(eta, torch.tensor([r["eta_hat"] for r in info["log"]], dtype=torch.float64), rtol=1e-6)
    # a tighter tolerance takes more steps
    ts2, _ = sdm.adaptive_schedule(gmm, pilots, None, eta_min=0.005, eta_max=0.1, grid_steps=20)
    assert len(ts2) > len(ts)


def test_sdm_resampling_follows_the_cumulative_error():
    from indis.processes import get_process

    proc = get_process("edm")
    ts = get_schedule("polynomial", proc, 12)
    eta = torch.ones(12, dtype=torch.float64)
    r = sdm.resample(proc, ts, eta, 4, power=0.5, q=0.0)  # equal lengths: every third point of the path
    assert torch.allclose(r, ts[::3], rtol=1e-9)
    w = torch.linspace(1, 3, 12, dtype=torch.float64)
    r2 = sdm.resample(proc, ts, w, 6, power=1.0, q=0.3)
    assert r2[0] == proc.T and r2[-1] == proc.t0 and (r2[1:] < r2[:-1]).all() and len(r2) == 7


def test_sdm_order_schedule_follows_its_criterion(gmm, pilots):
    ts = get_schedule("polynomial", gmm.process, 6)
    _, kappa = sdm.order_schedule(gmm, pilots, None, ts, "ipndm", tau_k=math.inf)
    # kappa recomputed here from an Euler run (the first-order trajectory)
    _, eps = pilot_trajectory(gmm, pilots, None, ts, solver="euler")
    s = ve_s(gmm.process, ts)
    ref = [0.0] + [float(((eps[i] - eps[i - 1]).norm(dim=1) / (abs(float(s[i] - s[i - 1])) * eps[i - 1].norm(dim=1))).mean()) for i in range(1, 6)]
    assert kappa == pytest.approx(ref, rel=1e-10)
    assert kappa[1] < kappa[-1]  # curvature grows towards the data: low order first, higher later
    for tau in sorted(kappa[1:]):
        orders, _ = sdm.order_schedule(gmm, pilots, None, ts, "ipndm", tau_k=tau)
        first = min(i for i in range(6) if kappa[i] >= tau)
        assert orders == [1] * first + [4] * (6 - first)
    orders, _ = sdm.order_schedule(gmm, pilots, None, ts, "dpmpp_2m", tau_k=0.0, euler_last=True)
    assert orders == [2] * 5 + [1]


def test_sdm_schedule_end_to_end(gmm, pilots):
    ts, orders, info = sdm.sdm_schedule(gmm, pilots, None, 5, solver="unipc", eta_max=0.5, grid_steps=20)
    assert len(ts) == 6 and len(orders) == 5 and set(orders) <= {1, 2} and (ts[1:] < ts[:-1]).all()
    m = peer_schedule(gmm, ts, "unipc", orders=orders, method="sdm")
    assert torch.isfinite(solve(m, gmm, pilots, None)).all()


# ------------------------------------------------------------------------------------------------ interface
@pytest.fixture(scope="module")
def teacher(tmp_path_factory, gmm):
    d = tmp_path_factory.mktemp("peers")
    generate_teacher(gmm, d / "t", TeacherConfig(count=64, shard_size=64, steps=20), progress=False)
    return load_teacher(d / "t", gmm)


@pytest.mark.parametrize("method", ["gits", "dmn", "sdm"])
def test_train_method_searches_solvers_and_afs_and_evaluates_with_them(tmp_path, gmm, teacher, method):
    cfg = TrainConfig(method=method, nfe=3, pilots=16, val_fraction=0.25, peer_solvers="ipndm,dpmpp_2m,unipc", peer_afs="both",
                      peer_options='{"grid_steps": 12}' if method == "gits" else ('{"grid_steps": 12, "eta_max": 0.5}' if method == "sdm" else ""))
    meta = train(gmm, teacher, cfg, tmp_path / method, progress=False)
    rep = meta["metrics"]["search"]
    assert len(rep["candidates"]) == 6 and {(c["solver"], c["afs"]) for c in rep["candidates"]} == {
        (s, a) for s in ("ipndm", "dpmpp_2m", "unipc") for a in (False, True)}
    assert rep["best_val"] == min(c["distance"] for c in rep["candidates"])
    assert meta["metrics"]["initial_val"] > 0  # the polynomial schedule with iPNDM, the trained methods' start
    model, m2 = load_predictor(tmp_path / method / "predictor.safetensors", gmm.backbone_id)
    assert isinstance(model, PeerSchedule) and m2["nfe"] == 3 and model.network_calls == 3
    assert (model.solver_name, model.afs) == (rep["solver"], rep["afs"])
    rows = evaluate_methods(gmm, teacher, {method: {3: model}}, solver="euler")
    assert rows[0]["solver"] == rep["solver"] and rows[0]["afs"] == rep["afs"]


def test_unknown_peer_options_are_named(gmm, pilots, teacher):
    from indis.baselines.search import select

    x_T, cond, x0 = teacher.batch(torch.arange(8))
    with pytest.raises(ValueError, match=r"unknown gits option\(s\) \['grid_size'\]"):
        select("gits", gmm, 3, (pilots, None), (x_T, cond, x0), options={"grid_size": 10})


def test_best_heuristic_searches_schedules_and_solvers(gmm, teacher):
    model, rep = best_heuristic(gmm, teacher, 3)
    assert len(rep["scores"]) == 9
    best = min(rep["scores"], key=lambda r: r["mse"])
    assert (model.solver_name, rep["name"]) == (best["solver"], best["name"])
    assert model.method == f"heuristic:{best['name']}"


def test_export_uses_the_peer_solver_and_refuses_what_engines_cannot_run(tmp_path):
    from indis.export.pipeline import export_folder
    from indis.backbones.demo import ImageGMM

    bb = ImageGMM(channels=1, res=8, components=3)
    m = peer_schedule(bb, get_schedule("logsnr", bb.process, 3), solver="dpmpp_2m", method="gits")
    msgs = []
    man = export_folder(m, bb, tmp_path / "e", backbone_spec_str="gmm-image", profile={"min": 1, "opt": 2, "max": 4}, log=msgs.append)
    assert man["solver"] == "dpmpp_2m" and man["nfe"] == 3 and any("dpmpp_2m" in s for s in msgs)
    back, _ = load_predictor(tmp_path / "e" / "predictor.safetensors")
    assert isinstance(back, PeerSchedule) and back.solver_name == "dpmpp_2m"
    for bad in (peer_schedule(bb, m.timesteps, afs=True), peer_schedule(bb, m.timesteps, orders=[1, 4, 4])):
        with pytest.raises(ValueError, match="engines do not implement"):
            export_folder(bad, bb, tmp_path / "f", backbone_spec_str="gmm-image", log=lambda *a: None)


# ------------------------------------------------------------------------------------------------ AMED-Plugin
def _amed(bb, nfe, seed=None):
    from indis.baselines.amed import AMEDPlugin, amed_steps
    from indis.discretization import DiscretizationParam

    k, afs = amed_steps(nfe)
    m = AMEDPlugin(DiscretizationParam(bb.process, k, b_dtau=0.0, b_gamma=0.0), get_schedule("polynomial", bb.process, k),
                   bb.data_shape, nfe=nfe, hidden=16).double()
    if seed is not None:
        torch.manual_seed(seed)
        torch.nn.init.normal_(m.heads.weight, std=0.5)
    assert m.afs == afs
    return m


@pytest.mark.parametrize("nfe", [4, 5, 6])
def test_untrained_amed_is_ipndm_on_the_grid_with_geometric_midpoints(gmm, pilots, nfe):
    m = _amed(gmm, nfe)
    c = m.timesteps
    fine = torch.stack([c[:-1], torch.sqrt(c[:-1] * c[1:])], 1).flatten()
    fine = torch.cat([fine, c[-1:]])
    w = AnalyticFirstStep(gmm)
    ref = sample(w if m.afs else gmm, pilots, fine, solver="ipndm")
    with torch.no_grad():
        out = solve(m, gmm, pilots, None, state_dtype=torch.float64)
    assert torch.allclose(out, ref, rtol=1e-9, atol=1e-9)
    assert (w.network_calls if m.afs else nfe) == nfe
    assert m.sampling_info()["network_calls"] == nfe


def test_amed_outputs_stay_in_their_ranges_and_roundtrip(tmp_path, gmm, pilots):
    m = _amed(gmm, 5, seed=0)
    s = torch.full((pilots.shape[0],), 3.0, dtype=torch.float64)
    r, c, a = m.outputs(pilots, pilots / 80, s, s / 2)
    assert ((r > 0) & (r < 1)).all() and ((c - 1).abs() <= 0.01).all() and ((a - 1).abs() <= 0.2).all() and r.std() > 0
    m = m.float()  # the predictor format stores the module's float32 weights
    save_predictor(tmp_path / "a.safetensors", m, {"nfe": 5})
    m2, meta = load_predictor(tmp_path / "a.safetensors")
    with torch.no_grad():
        assert torch.equal(solve(m2, gmm, pilots, None, state_dtype=torch.float64), solve(m, gmm, pilots, None, state_dtype=torch.float64))
    from indis.export.pipeline import export_folder

    with pytest.raises(ValueError, match="runs its own sampler"):
        export_folder(m2, gmm, tmp_path / "e", log=lambda *a: None)


def test_amed_trains_with_the_existing_loop(tmp_path, gmm, teacher):
    cfg = TrainConfig(method="amed", nfe=4, steps=30, batch_size=16, lr=1e-2, val_every=10, ckpt_every=30, hidden=16,
                      val_fraction=0.25)
    meta = train(gmm, teacher, cfg, tmp_path / "amed", progress=False)
    assert meta["metrics"]["best_val"] < meta["metrics"]["initial_val"]
    model, m2 = load_predictor(tmp_path / "amed" / "predictor.safetensors", gmm.backbone_id)
    assert m2["nfe"] == 4 and type(model).__name__ == "AMEDPlugin"
    rows = evaluate_methods(gmm, teacher, {"amed": {4: model}})
    assert rows[0]["solver"] == "ipndm+amed" and rows[0]["network_calls"] == 4


# ------------------------------------------------------------------------------------------------ learned + options
def test_orders_at_full_order_train_exactly_like_the_plain_solver(tmp_path, gmm, teacher):
    base = dict(method="god", nfe=3, steps=6, batch_size=8, val_every=3, ckpt_every=6, lr=1e-2, val_fraction=0.25)
    a = train(gmm, teacher, TrainConfig(**base), tmp_path / "a", progress=False)
    b = train(gmm, teacher, TrainConfig(**base, orders="4,4,4"), tmp_path / "b", progress=False)
    assert [h["distance"] for h in a["metrics"]["history"]] == [h["distance"] for h in b["metrics"]["history"]]
    mb, _ = load_predictor(tmp_path / "b" / "predictor.safetensors")
    assert type(mb).__name__ == "Sampled" and mb.orders == [4, 4, 4] and not mb.afs


def test_indis_from_sdm_schedule_with_its_orders_and_afs(tmp_path, gmm, teacher):
    from indis.baselines.common import Sampled

    cfg = TrainConfig(method="indis", nfe=3, steps=6, batch_size=8, val_every=3, ckpt_every=6, lr=1e-2, val_fraction=0.25,
                      hidden=16, init_schedule="sdm", orders="sdm", afs=True, pilots=16)
    train(gmm, teacher, cfg, tmp_path / "i", progress=False)
    m, m2 = load_predictor(tmp_path / "i" / "predictor.safetensors", gmm.backbone_id)
    assert isinstance(m, Sampled) and m.afs and m.param.nfe == 4 and m.network_calls == 3 and m2["nfe"] == 3
    assert len(m.orders) == 4 and m.orders[0] == 1 and set(m.orders) <= {1, 4}
    x_T, cond, _ = teacher.batch(torch.arange(8))
    d = m(x_T, cond)
    assert torch.all(d.dtau[:, 0] == 0)  # the analytical first call is not shifted
    rows = evaluate_methods(gmm, teacher, {"indis+sdm": {3: m}})
    assert rows[0]["afs"] and rows[0]["orders"] == m.orders and rows[0]["network_calls"] == 3
    with pytest.raises(ValueError, match="apply to indis, god and ld3"):
        TrainConfig(method="gits", afs=True).validate()
    with pytest.raises(ValueError, match="comma-separated"):
        TrainConfig(orders="1,x").validate()


def test_run_quality_runs_peers_and_learned_methods_through_several_solvers(tmp_path):
    out = run_quality("gmm-image", str(tmp_path), nfes=(3,), methods=("dmn", "god", "indis+sdm"), n_train=40, n_eval=24, steps=4, batch=8,
                      progress=False, log=lambda *a: None, pilots=8, learned_solvers=("ipndm", "unipc"), peer_afs="off",
                      results_stem=str(tmp_path / "q"))
    rows = {r["method"]: r for r in out["rows"]}
    assert {"best heuristic", "dmn", "god"} <= set(rows)
    tr = out["meta"]["training"]
    assert {"god_nfe3_seed0", "god_unipc_nfe3_seed0", "dmn_nfe3_seed0"} <= set(tr)
    sel = tr["god_nfe3_seed0_selected"]
    assert rows["god"]["solver"] == tr[sel]["solver"] if sel != "god_nfe3_seed0" else rows["god"]["solver"] == "ipndm"
    assert rows["dmn"]["solver"] == tr["dmn_nfe3_seed0"]["solver"] and rows["dmn"]["afs"] is False
    assert rows["best heuristic"]["solver"] == out["meta"]["best_heuristic"][3]["solver"]
    assert (tmp_path / "q.md").is_file()
    assert rows["indis+sdm"]["orders"] is not None and rows["indis+sdm"]["orders"][0] == 1
    with pytest.raises(ValueError, match="unknown method"):
        run_quality("gmm-image", str(tmp_path), methods=("bogus",))


def test_run_quality_training_seeds_are_aggregated_and_finished_runs_are_skipped(tmp_path, monkeypatch):
    kw = dict(nfes=(2,), methods=("dmn", "god"), n_train=30, n_eval=16, steps=3, batch=8, progress=False, pilots=4,
              peer_afs="off", heuristic_solvers=("ipndm",), heuristics=("uniform", "logsnr"), free_nfes=(4,))
    lines = []
    out = q.run_quality("gmm-image", str(tmp_path), train_seeds=(0, 1, 2), log=lines.append, **kw)
    seed_rows = [r for r in out["seed_rows"] if r["method"] == "god"]
    assert sorted(r["seed"] for r in seed_rows) == [0, 1, 2]
    vals = [r["mse"] for r in sorted(seed_rows, key=lambda r: r["seed"])]
    assert len(set(vals)) == 3  # the seed changes the run (init, split, data order)
    god = next(r for r in out["rows"] if r["method"] == "god")
    t = torch.tensor(vals, dtype=torch.float64)
    assert god["n_seeds"] == 3 and god["mse_seeds"] == vals
    assert god["mse"] == pytest.approx(float(t.mean())) and god["mse_std"] == pytest.approx(float(t.std()))
    assert god["mse_min"] == min(vals) and god["mse_max"] == max(vals)
    dmn = [r for r in out["rows"] if r["method"] == "dmn"]  # training-free: once, also at the free NFE
    assert sorted(r["nfe"] for r in dmn) == [2, 4] and all(r["n_seeds"] == 1 and r["mse_std"] == 0.0 for r in dmn)
    assert not any(r["method"] == "god" and r["nfe"] == 4 for r in out["rows"])
    assert any("god_nfe2_seed2" in l for l in lines)

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(q, "train", no_training)
    monkeypatch.setattr(q, "evaluate_methods", no_training)
    monkeypatch.setattr(q, "best_heuristic", no_training)
    again = q.run_quality("gmm-image", str(tmp_path), train_seeds=(0, 1, 2), log=lambda *a: None, **kw)
    assert [r["mse"] for r in again["seed_rows"]] == [r["mse"] for r in out["seed_rows"]]
    assert all(v["cached"] for v in again["meta"]["training"].values() if isinstance(v, dict))
    monkeypatch.undo()
    # another training length is another run: trained again, not taken from the cache
    calls = []
    real = q.train
    monkeypatch.setattr(q, "train", lambda *a, **k: calls.append(a[2].seed) or real(*a, **k))
    q.run_quality("gmm-image", str(tmp_path), train_seeds={"god": (1,), "*": (0,)}, log=lambda *a: None, **dict(kw, steps=2))
    assert calls == [0, 0, 1]  # steps is in every config: dmn (seed 0, NFE 2 and 4) and god seed 1 run again
    with pytest.raises(ValueError, match="not among methods"):
        q.run_quality("gmm-image", str(tmp_path), train_seeds={"indis": (0,)}, **kw)


def test_run_quality_plots_indis_timesteps_when_the_best_heuristic_uses_afs(tmp_path):
    """The timesteps plot's reference is INDIS's starting schedule (NFE + 1 points), not the best heuristic's, which
    has one more point with AFS (a shape mismatch crashed the plot)."""
    out = run_quality("gmm-image", str(tmp_path), nfes=(2,), methods=("indis",), n_train=24, n_eval=12, steps=1, batch=8,
                      progress=False, n_select=8, results_stem=str(tmp_path / "q"), plot_dir=str(tmp_path), log=lambda *a: None)
    assert out["meta"]["best_heuristic"][2]["afs"] is True  # (the case of the crash: UniPC with AFS here)
    assert (tmp_path / "q_timesteps_nfe2.png").stat().st_size > 1000
