import json

import pytest
import torch

from indis.cli import main
from indis.evaluate import evaluate_methods, markdown_table, plot_timesteps, predictor_overhead, write_results
from indis.backbones.demo import ImageGMM
from indis.training.teacher import TeacherConfig, generate_teacher, load_teacher
from indis.sampling.fixed import heuristic
from indis.training.train import TrainConfig, build_model


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("ev")
    bb = ImageGMM(channels=3, res=8, components=4)
    generate_teacher(bb, d / "e", TeacherConfig(count=24, steps=10, first_seed=1000), progress=False)
    return bb, load_teacher(d / "e", bb)


def test_rows_tables_and_frechet(tmp_path, env):
    bb, ds = env
    methods = {"uniform": {3: heuristic(bb, "uniform", 3), 5: heuristic(bb, "uniform", 5)}, "polynomial": {3: heuristic(bb, "polynomial", 3)}}
    feats = lambda x: x.flatten(1)[:, :6].double()
    rows = evaluate_methods(bb, ds, methods, features=feats)
    assert {(r["method"], r["nfe"]) for r in rows} == {("uniform", 3), ("uniform", 5), ("polynomial", 3)}
    r = {(r["method"], r["nfe"]): r for r in rows}
    assert r[("uniform", 5)]["mse"] < r[("uniform", 3)]["mse"] and all(x["fd"] >= 0 for x in rows)
    table = markdown_table(rows, "mse")
    assert "| uniform |" in table and "NFE 5" in table and "| polynomial | " in table and "| - |" in table
    write_results(tmp_path / "res", rows, {"x": 1})
    assert json.loads((tmp_path / "res.json").read_text())["rows"][0]["n"] == 24
    assert "(fd)" in (tmp_path / "res.md").read_text()


def test_fig7_plot_and_overhead(tmp_path, env):
    bb, ds = env
    m = build_model(TrainConfig(nfe=4, hidden=16, conv_width=8), bb)
    torch.nn.init.normal_(m.head.weight, std=0.3)
    x_T, cond, _ = ds.batch(torch.arange(16))
    plot_timesteps(m, x_T, cond, tmp_path / "fig7.png", reference=heuristic(bb, "polynomial", 4).timesteps)
    assert (tmp_path / "fig7.png").stat().st_size > 1000
    o = predictor_overhead(m, bb, batch=8, reps=3)
    assert o["params"] == sum(p.numel() for p in m.parameters()) and o["share_of_one_call"] > 0


def test_cli_end_to_end(tmp_path, capsys):
    d = str(tmp_path)
    common = ["--backbone", "gmm-image", "--no-progress", "--threads", "1"]
    assert main(["teacher", *common, "--out", f"{d}/t", "--count", "40", "--steps", "8", "--shard-size", "20"]) == 0
    assert main(["teacher", *common, "--out", f"{d}/e", "--count", "16", "--steps", "8", "--first-seed", "500"]) == 0
    assert main(["train", *common, "--teacher", f"{d}/t", "--out", f"{d}/r", "--nfe", "3", "--steps", "4", "--batch-size", "8",
                 "--hidden", "16", "--conv-width", "8", "--val-every", "2"]) == 0
    assert main(["train", *common, "--teacher", f"{d}/t", "--out", f"{d}/r", "--nfe", "3", "--steps", "4", "--batch-size", "8",
                 "--hidden", "16", "--conv-width", "8", "--val-every", "2", "--resume"]) == 0
    assert main(["eval", *common, "--teacher", f"{d}/e", "--nfe", "3", "--predictor", f"indis={d}/r/predictor.safetensors",
                 "--out", f"{d}/ev"]) == 0
    rows = json.loads((tmp_path / "ev.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"uniform", "logsnr", "polynomial", "indis"}
    assert main(["sample", *common, "--predictor", f"{d}/r/predictor.safetensors", "--seeds", "0-5", "--plot", "--out", f"{d}/s/g.png"]) == 0
    ts = json.loads((tmp_path / "s" / "g.timesteps.json").read_text())
    assert ts["seeds"] == list(range(6)) and len(ts["timesteps"]) == 6 and len(ts["timesteps"][0]) == 4
    assert (tmp_path / "s" / "g.png").is_file() and (tmp_path / "s" / "g.timesteps.png").is_file()
    capsys.readouterr()


def test_several_feature_columns_and_reference_features_computed_once(env):
    """features={column: fn} gives one Fréchet column (and <column>_data) per feature; with a reference_cache kept
    across calls the references' features are computed on the first call only, and every row is the same."""
    bb, ds = env
    calls = []

    def feats(x):
        calls.append(len(x))
        return x.flatten(1)[:, :6].double()

    cols = {"fd": feats, "fid": lambda x: x.flatten(1)[:, 6:12].double()}
    methods = {"uniform": {3: heuristic(bb, "uniform", 3)}, "polynomial": {3: heuristic(bb, "polynomial", 3)}}
    data = ds.x0[:12] * 0.9
    plain = evaluate_methods(bb, ds, methods, features=cols, data_reference=data)
    assert all({"fd", "fd_data", "fid", "fid_data"} <= set(r) for r in plain)
    cache, rows = {}, []
    calls.clear()
    for name, m in methods.items():
        rows += evaluate_methods(bb, ds, {name: m}, features=cols, data_reference=data, reference_cache=cache)
    assert calls == [24, 12, 24, 24]  # teacher and data references once, then each row's samples
    for a, b in zip(plain, rows):
        assert all(a[k] == b[k] for k in ("mse", "fd", "fd_data", "fid", "fid_data"))
