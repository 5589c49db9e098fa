import json
import math

import pytest
import torch

from indis.backbones import gaussian_backbone
from indis.bench.latency import run_latency, write_report
from indis.bench.quality import plot_quality


def _bb():
    return gaussian_backbone(torch.zeros(4), 0.5, process="edm").float()


def test_latency_report_shape_and_files(tmp_path):
    rep = run_latency(_bb(), nfes=[2, 3], batches=[1, 4], backends=["torch", "trt"], reps=20, warmup=1, progress=False)
    assert set(rep) >= {"machine", "rows"} and rep["machine"]["cores"] >= 1
    ok = [r for r in rep["rows"] if r["status"] == "ok"]
    assert {(r["nfe"], r["batch"]) for r in ok} == {(2, 1), (2, 4), (3, 1), (3, 4)}
    for r in ok:
        assert r["backend"] == "torch" and r["device"] == "cpu"
        for k in ("latency_ms_median", "latency_ms_p90", "backbone_only_ms", "predictor_ms"):
            assert r[k] > 0
        assert r["latency_ms_p90"] >= r["latency_ms_median"]
    skipped = [r for r in rep["rows"] if r["backend"] == "trt"]
    assert skipped and all(r["status"] == "skipped" and "--engines" in r["reason"] for r in skipped)
    paths = write_report(rep, str(tmp_path))
    assert json.load(open(paths["json"]))["rows"][0]["nfe"] == 2
    assert "| torch | cpu | 2 | 1 |" in open(paths["md"]).read()
    assert open(paths["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_latency_bad_input():
    with pytest.raises(ValueError, match="unknown backend"):
        run_latency(_bb(), [2], [1], ["torch", "tensorflow"], progress=False)
    with pytest.raises(ValueError, match="at least 20"):
        run_latency(_bb(), [2], [1], ["torch"], reps=5, progress=False)
    with pytest.raises(ValueError, match="positive"):
        run_latency(_bb(), [0], [1], ["torch"], progress=False)


def test_quality_plot(tmp_path):
    rows = [{"method": m, "nfe": k, "mse": 1.0 / (k + i)} for i, m in enumerate(["best heuristic", "god", "indis"]) for k in (3, 5)]
    plot_quality({"a": rows, "b": rows}, str(tmp_path / "q.png"))
    assert (tmp_path / "q.png").stat().st_size > 1000


def test_ort_backend_against_its_own_backbone_and_refuses_foreign_engines(tmp_path):
    from indis.discretization import DiscretizationParam
    from indis.export.pipeline import export_folder
    from indis.predictor import Predictor
    from indis.backbones.demo import ImageGMM

    bb = ImageGMM(channels=1, res=8, components=3)
    phi = Predictor(DiscretizationParam(bb.process, 2), bb.data_shape, bb.cond_spec, hidden=16, conv_width=8).eval()
    export_folder(phi, bb, tmp_path / "e", backbone_spec_str="gmm-image", log=lambda *a: None)
    rep = run_latency(bb, [2, 3], [2], ["ort"], engines_dir={2: str(tmp_path / "e"), 3: str(tmp_path / "e")},
                      predictor_factory=lambda n: phi, reps=20, warmup=1, progress=False)
    ok, bad = rep["rows"]
    assert ok["status"] == "ok" and ok["nfe"] == 2 and ok["backbone_only_ms"] > 0
    assert bad["status"] == "skipped" and "at NFE 2" in bad["reason"]


def test_torch_engine_backbone_matches_the_backbone():
    """The wrapper the torch_graph row replays (here eager: no CUDA) computes the same function."""
    from indis.engines.runtime import torch_engine_backbone

    bb = _bb()
    net = torch_engine_backbone(bb)
    x, t = torch.randn(3, 4) * 2, torch.full((3,), 1.5)
    assert torch.allclose(net(x, t), bb(x, t)) and net.backbone_id == bb.backbone_id
    assert net.runner.provider == "eager-cpu"


def test_bench_one_records_a_failing_backend_and_cross_checks(monkeypatch):
    from indis.bench import latency
    from indis.bench.latency import BenchSetup, bench_one, default_predictor

    def broken(s):
        def run(x_T, cond):
            raise RuntimeError("boom")

        return run, s.backbone, s.predictor

    monkeypatch.setitem(latency.RUNNERS, "broken", broken)
    bb = _bb()
    setup = BenchSetup(bb, default_predictor(bb, 2).eval(), 2, 3, torch.device("cpu"))
    ok, graph, bad, again = bench_one(setup, ["torch", "native_graph", "broken", "torch"], warmup=1, reps=20,
                                      on_error="record")
    assert ok["status"] == "ok" and "max_abs_diff" not in ok  # the first backend is the reference
    assert graph["status"] == "skipped" and "CUDA" in graph["reason"]
    assert bad["status"] == "failed" and "RuntimeError: boom" in bad["reason"]
    assert again["status"] == "ok" and again["max_abs_diff_vs"] == "torch" and again["max_abs_diff"] == 0.0
    with pytest.raises(RuntimeError, match="boom"):
        bench_one(setup, ["broken"], warmup=1, reps=20)


def test_latency_times_a_latent_backbones_decode_apart(tmp_path):
    """A backbone with `decode` (a latent model's VAE) gets decode_ms per row, timed in the same rotation and not
    part of the sampler's latency; the report has its own decode table. Backbones without decode have neither."""
    bb = _bb()
    calls = []

    def decode(z):
        calls.append(z.shape[0])
        return z * 2
    bb.decode = decode
    rep = run_latency(bb, nfes=[2], batches=[3], backends=["torch"], reps=20, warmup=1, progress=False)
    (row,) = rep["rows"]
    assert row["decode_ms"] > 0 and calls and set(calls) == {3}
    md = open(write_report(rep, str(tmp_path))["md"]).read()
    assert "VAE decode" in md and "| torch | 2 | 3 |" in md
    plain = run_latency(_bb(), nfes=[2], batches=[3], backends=["torch"], reps=20, warmup=1, progress=False)
    assert "decode_ms" not in plain["rows"][0]


def _rows():
    from indis.bench.quality import aggregate_seeds

    seed_rows = [{"method": "indis", "nfe": k, "seed": s, "fd": v + 0.1 * s, "mse": 0.01 * v} for k, v in ((3, 4.0), (5, 2.0)) for s in (0, 1, 2)]
    seed_rows += [{"method": "dmn", "nfe": k, "seed": None, "fd": v, "mse": 0.01 * v} for k, v in ((3, 16.0), (5, 8.0), (7, 4.0), (10, 1.0))]
    seed_rows += [{"method": "gits", "nfe": k, "seed": None, "fd": v, "mse": 0.001} for k, v in ((3, 20.0), (5, 2.05), (10, 3.0))]
    seed_rows += [{"method": "indis+sdm", "nfe": 3, "seed": 0, "fd": 0.5, "mse": 0.5}]
    return aggregate_seeds(seed_rows)


def test_speedup_reading_interpolates_log_quality_on_synthetic_rows():
    from indis.bench.quality import nfe_to_reach, speedup_reading, speedup_text

    rows = _rows()
    indis3 = next(r for r in rows if r["method"] == "indis" and r["nfe"] == 3)
    assert indis3["fd"] == pytest.approx(4.1) and indis3["fd_std"] == pytest.approx(0.1) and indis3["n_seeds"] == 3
    # dmn halves its fd every 2 NFE between 3 and 7: log-linear, so the reading is exact
    assert nfe_to_reach(rows, "dmn", 8.0)["nfe"] == pytest.approx(5.0)
    assert nfe_to_reach(rows, "dmn", 4 * 2 ** 0.5)["nfe"] == pytest.approx(6.0)
    assert nfe_to_reach(rows, "dmn", 20.0) == {"nfe": 3.0, "bound": "<="}
    assert nfe_to_reach(rows, "dmn", 0.5) == {"nfe": 10.0, "bound": ">"}
    read = speedup_reading(rows, at=(3, 5), metric="fd")
    # NFE 3: the strongest other is dmn (16; indis+sdm is INDIS's own combination and does not count)
    assert read[0]["peer"] == "dmn" and read[0]["bound"] == "=" and read[0]["peer_nfe"] == pytest.approx(7 - 2 * math.log2(4.1 / 4.0))
    # NFE 5: gits (2.05) is the strongest; INDIS's 2.1 is crossed between gits's NFE 3 (20) and 5 (2.05)
    assert read[1]["peer"] == "gits" and 3 < read[1]["peer_nfe"] < 5
    assert "needs NFE" in speedup_text(read[0]) and "dmn" in speedup_text(read[0])
    # gits (20 at NFE 3, 2.05 at NFE 5) reaches INDIS's NFE-3 value 4.1 before dmn does
    g = 3 + 2 * math.log(4.1 / 20) / math.log(2.05 / 20)
    assert read[0]["soonest"]["method"] == "gits" and read[0]["soonest"]["nfe"] == pytest.approx(g)
    assert f"gits at NFE {g:.1f}" in speedup_text(read[0])
    with pytest.raises(ValueError, match="no fd rows"):
        nfe_to_reach(rows, "sdm", 1.0)


def test_versus_strongest_relative_change_and_spread():
    from indis.bench.quality import versus_strongest

    vs = {v["nfe"]: v for v in versus_strongest(_rows(), "fd")}
    assert vs[3]["other"] == "dmn" and vs[3]["relative"] == pytest.approx((4.1 - 16) / 16)
    assert vs[3]["beyond_std"] and vs[3]["ranges_apart"]
    # NFE 5: indis 2.1 +- 0.1 (2.0..2.2) against gits 2.05: inside the spread
    assert vs[5]["other"] == "gits" and vs[5]["relative"] == pytest.approx(0.05 / 2.05)
    assert not vs[5]["beyond_std"] and not vs[5]["ranges_apart"]


def test_quality_table_mean_and_spread():
    from indis.evaluate import quality_table

    t = quality_table(_rows())
    assert "| indis | 3 | 0.04 ± 0 | 4.1 ± 0.1 | 3 |" in t
    assert "| dmn | 10 | 0.01 | 1 | 1 |" in t
    assert t.index("| gits |") < t.index("| dmn |") < t.index("| indis |") < t.index("| indis+sdm |")


def test_quality_readings_markdown():
    from indis.bench.quality import quality_readings

    md = quality_readings(_rows())
    assert "| 3 | 4.1 ± 0.1 (3 seeds) | dmn: 16 (1 run) | -74% | yes / yes | -35% (FID) |" in md
    assert "| 5 | 2.1 ± 0.1 (3 seeds) | gits: 2.05 (1 run) | +2% | no / no | -31% (FID) |" in md
    assert "Speed-up (FD to teacher): INDIS at NFE 3" in md and "dmn, needs NFE 6.9" in md


def test_bench_quality_cli_seeds_and_free_nfes(tmp_path, capsys):
    from indis.cli import main

    out = tmp_path / "q"
    rc = main(["bench", "--quality", "--quality-backbones", "gmm-image", "--methods", "dmn,god", "--train-seeds", "0,1",
               "--n-train", "24", "--n-eval", "12", "--steps", "2", "--nfe", "2", "--free-nfes", "3", "--pilots", "4",
               "--n-select", "8", "--no-progress", "--out", str(out)])
    assert rc == 0
    doc = json.load(open(out / "quality_gmm-image.json"))
    god = next(r for r in doc["rows"] if r["method"] == "god")
    assert god["n_seeds"] == 2 and len(god["mse_seeds"]) == 2 and "mse_std" in god
    assert sorted(r["nfe"] for r in doc["rows"] if r["method"] == "dmn") == [2, 3]
    assert doc["meta"]["best_heuristic"]["3"]["select_n"] == 8
    assert (out / "quality_vs_nfe.png").stat().st_size > 1000
    assert "| god | 2 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["bench", "--quality", "--train-seeds", "0,0", "--out", str(out)])
    assert "distinct non-negative integers" in capsys.readouterr().err


def test_bench_quality_adds_rds_for_flow_models_with_image_tokens():
    """`indis bench --quality` gives a flow model that knows its image token count an RDS row (the paper's FLUX
    baseline) and RDS among the best heuristic's candidates; a backbone without one gets the defaults."""
    from indis.baselines.search import HEURISTIC_NAMES
    from indis.bench.cli import quality_heuristics

    class Tokens:
        image_seq_len = 16

    assert quality_heuristics(object()) == {}
    extra = quality_heuristics(Tokens())
    assert extra["heuristic_rows"] == ("rds",) and extra["heuristics"] == tuple(HEURISTIC_NAMES) + ("rds",)



def test_quickstart_end_to_end_at_tiny_sizes(tmp_path):
    """Every stage of `indis quickstart` (teacher, training, evaluation with Fréchet features where they apply,
    export, fast sampling, latency, grid) on the image Gaussian mixture at tiny sizes: the README's main job must not
    break in a stage no other test reaches."""
    from indis.cli import main

    out = tmp_path / "qs"
    rc = main(["quickstart", "--backbone", "gmm-image", "--out", str(out), "--n-train", "24", "--n-eval", "12",
               "--steps", "3", "--nfe", "3", "--latency-batch", "2", "--threads", "1", "--no-progress"])
    assert rc == 0
    doc = json.load(open(out / "quickstart.json"))
    assert {r["method"] for r in doc["quality"]} >= {"INDIS", "GOD"}
    assert all(r["nfe"] == 3 and r["mse"] >= 0 for r in doc["quality"])
    assert (out / "grid.png").stat().st_size > 1000
