"""The `indis` command line: every subcommand's options are declared once (indis.options), with help, defaults
shown once, flags that switch both ways, and choices that are the registries' names."""
from __future__ import annotations

import argparse
import dataclasses
import json
from typing import List

import pytest

from indis.backbones.base import DTYPES
from indis.backbones.spec import BACKBONE_HELP
from indis.baselines.search import AFS_SETTINGS
from indis.bench.quality import ALL_METHODS, COMPOSITES
from indis.bench.latency import BACKENDS as BENCH_BACKENDS
from indis.cli import build_parser, main
from indis.discretization import WARPS
from indis.engines.runtime import BACKENDS
from indis.export.tensorrt import PRECISIONS
from indis.metrics.distances import LOSSES, TRUNK_FILES
from indis.options import HelpFormatter, Switch, add_options, given_options, setting
from indis.schedules import SCHEDULE_NAMES
from indis.solvers import SOLVERS
from indis.training import cli as tcli
from indis.training.teacher import TeacherConfig
from indis.toy.study import BACKBONES as TOY_BACKBONES
from indis.training.train import METHODS, PEER_METHODS, TrainConfig

PARSER = build_parser()
COMMANDS = next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction)).choices

# option dest -> the registry whose names are its choices
REGISTRY = {
    "solver": tuple(SOLVERS), "schedule": SCHEDULE_NAMES, "heuristics": SCHEDULE_NAMES, "method": METHODS,
    "loss": LOSSES, "warp": WARPS, "state_dtype": tuple(DTYPES), "backbone_dtype": tuple(DTYPES),
    "lpips_net": tuple(TRUNK_FILES), "backend": BACKENDS, "precision": PRECISIONS,
    "init_schedule": SCHEDULE_NAMES + ("sdm",), "peer_afs": tuple(AFS_SETTINGS), "features": tcli.FEATURES,
}


def _options(name: str) -> List[argparse.Action]:
    return [a for a in COMMANDS[name]._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def test_every_subcommand_is_registered():
    assert set(COMMANDS) == {"version", "convert-edm", "train-backbone", "train-flow-backbone", "teacher", "train", "eval",
                             "sample", "export", "bench", "toy", "quickstart"}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_prints_and_every_option_explains_itself(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: indis {name}")
    fmt = COMMANDS[name]._get_formatter()
    assert isinstance(fmt, HelpFormatter), f"indis {name} does not use indis.options.HelpFormatter"
    for a in _options(name):
        assert a.help, f"indis {name} {a.option_strings[0]} has no help"
        shown = fmt._expand_help(a) if "%(default)" in fmt._get_help_string(a) else fmt._get_help_string(a)
        assert shown.count("(default") <= 1, f"indis {name} {a.option_strings[0]}: default shown twice: {shown!r}"
        assert "(default: None)" not in shown, f"indis {name} {a.option_strings[0]}: {shown!r}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_flags_switch_both_ways(name):
    """No store_true flag (a config file's true could not be switched off): every flag is a Switch."""
    for a in _options(name):
        assert not isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction)), (name, a.option_strings)
        if a.nargs == 0 and not isinstance(a, argparse._VersionAction):
            assert isinstance(a, argparse.BooleanOptionalAction), (name, a.option_strings)
            assert len(a.option_strings) == 2 and not any(s.startswith("--no-no-") for s in a.option_strings), a.option_strings


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_choices_are_the_registries(name):
    for a in _options(name):
        want = TOY_BACKBONES if (name, a.dest) == ("toy", "backbone") else REGISTRY.get(a.dest)
        if want is not None:
            assert a.choices is not None, f"indis {name} {a.option_strings[0]} lists no choices"
            assert tuple(a.choices) == tuple(want), (name, a.dest, a.choices)


def test_every_backbone_option_lists_every_form_the_resolver_takes():
    seen = 0
    for name in COMMANDS:
        for a in _options(name):
            if a.dest == "backbone" and name != "toy":  # toy's --backbone is exact | learned, not a spec
                assert a.help.startswith(BACKBONE_HELP), (name, a.help)
                seen += 1
    assert seen == 7  # teacher, train, eval, sample, export, bench, quickstart
    for form in ("bundled", "bundled-flow", "ideal", "gmm-image", "edm:PRESET[:SEED]", "FILE.json", "diffusers:PATH",
                 "module:function"):
        assert form in BACKBONE_HELP, form


def test_teacher_defaults_are_teacher_config():
    args = PARSER.parse_args(["teacher", "--backbone", "gmm-image", "--out", "x"])
    assert TeacherConfig(**given_options(TeacherConfig, args)) == TeacherConfig()
    args = PARSER.parse_args(["teacher", "--backbone", "gmm-image", "--out", "x", "--steps", "7", "--schedule", "logsnr"])
    assert TeacherConfig(**given_options(TeacherConfig, args)) == TeacherConfig(steps=7, schedule="logsnr")


def test_train_options_override_the_config_file_both_ways(tmp_path):
    cfg_file = tmp_path / "c.json"
    cfg_file.write_text(json.dumps({"afs": True, "no_shift": True, "nfe": 4, "loss": "l1"}))
    base = ["train", "--backbone", "gmm-image", "--teacher", "t", "--out", "o", "--config", str(cfg_file)]
    cfg = tcli.train_config(PARSER.parse_args(base))
    assert (cfg.afs, cfg.no_shift, cfg.nfe, cfg.loss) == (True, True, 4, "l1")
    cfg = tcli.train_config(PARSER.parse_args(base + ["--no-afs", "--shift", "--nfe", "6", "--loss", "pseudo-huber"]))
    assert (cfg.afs, cfg.no_shift, cfg.nfe, cfg.loss) == (False, False, 6, "pseudo_huber")
    # nothing given: TrainConfig's defaults
    plain = tcli.train_config(PARSER.parse_args(["train", "--backbone", "b", "--teacher", "t", "--out", "o"]))
    assert plain == TrainConfig()


def test_train_help_shows_the_config_default_once(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "solver state precision (default: float32)" in text  # --state-dtype: TrainConfig's default, not None
    assert "(default: None)" not in text


@pytest.mark.parametrize("argv", [["teacher", "--backbone", "b", "--out", "o", "--solver", "rk4"],
                                  ["train", "--backbone", "b", "--teacher", "t", "--out", "o", "--method", "magic"],
                                  ["sample", "--out", "x.png", "--schedule", "cosine"],
                                  ["export", "--backbone", "b", "--out", "o", "--precision", "int8"]])
def test_an_unknown_choice_is_refused_with_the_choices(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_bench_backends_help_names_the_bench_backends():
    a = next(a for a in _options("bench") if a.dest == "backends")
    assert a.default == list(BENCH_BACKENDS) and ",".join(BENCH_BACKENDS) in a.help


def test_add_options_and_switch():
    @dataclasses.dataclass
    class C:
        n: int = setting(3, "a count")
        name: str = setting("b", "a name", choices=("a", "b"))
        on: bool = setting(False, "a flag")
        no_x: bool = setting(True, "an ablation")

    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    add_options(p, C)
    assert vars(p.parse_args([])) == {"n": 3, "name": "b", "on": False, "no_x": True}
    assert vars(p.parse_args(["--on", "--x", "--n", "5"])) == {"n": 5, "name": "b", "on": True, "no_x": False}
    assert isinstance(p._option_string_actions["--on"], Switch)
    with pytest.raises(SystemExit):
        p.parse_args(["--name", "c"])
    q = argparse.ArgumentParser()
    add_options(q, C, unset=True, only=("n", "on"), flags={"n": "--count"})
    args = q.parse_args(["--count", "2"])
    assert given_options(C, args) == {"n": 2}
    assert "a count (default: 3)" in q.format_help()

    @dataclasses.dataclass
    class D:
        widths: List[int] = dataclasses.field(default_factory=list)

    with pytest.raises(TypeError, match="widths"):
        add_options(argparse.ArgumentParser(), D)
    with pytest.raises(TypeError, match="nope"):
        add_options(argparse.ArgumentParser(), C, only=("nope",))


def test_bench_quality_defaults_run_every_method_with_three_seeds_at_the_issue_sizes():
    args = PARSER.parse_args(["bench", "--quality", "--out", "q"])
    assert args.methods == list(ALL_METHODS) and args.train_seeds == [0, 1, 2]
    assert (args.n_train, args.n_eval) == (2000, 1000)
    assert set(PEER_METHODS) <= set(ALL_METHODS) and set(METHODS) <= set(ALL_METHODS) and "indis+sdm" in COMPOSITES
