"""Command-line options, each declared once.

A setting that a config dataclass holds (indis.training.train.TrainConfig, indis.training.teacher.TeacherConfig)
is declared once, as the dataclass field, with `setting(default, help, choices=...)`: its type (the annotation),
its default, its choices (the names of a registry: solvers, schedules, methods, losses, warps, dtypes; never a
second list) and its help. `add_options(parser, Config)` makes every field an option `--name-with-dashes` of that
type, with those choices and that help; a bool becomes a `Switch`, which sets it either way.

Options that belong to no config are declared with argparse directly, with `Switch` for flags and `HelpFormatter`
for every (sub)command, so that every command's help reads the same way: each default shown once.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

# annotation (a string: the config modules use `from __future__ import annotations`) -> the option's type; an
# Optional one is None when not given
_TYPES: Dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool,
                           "Optional[int]": int, "Optional[float]": float, "Optional[str]": str}


def setting(default: Any, help: str, choices: Optional[Iterable] = None,
            parse: Optional[Callable[[str], Any]] = None) -> Any:
    """A dataclass field that is also a command-line option: default, help and (optional) choices, declared once.
    choices: the accepted names (give a registry's keys); parse: converts the typed text (before the choices are
    checked), e.g. to accept an alias spelling."""
    meta = {"help": help, "choices": None if choices is None else (choices if isinstance(choices, tuple) else tuple(choices)),
            "parse": parse}
    return dataclasses.field(default=default, metadata=meta)


def option_name(field_name: str) -> str:
    """--name-with-dashes of a field."""
    return "--" + field_name.replace("_", "-")


def _show(value: Any) -> str:
    return repr(value) if value == "" else str(value)


def add_options(parser, cls, *, unset: bool = False, only: Optional[Sequence[str]] = None,
                flags: Optional[Dict[str, str]] = None) -> None:
    """One option per field of the dataclass `cls` (fields declared with `setting`; others get their name only).

    unset: the parsed value is None when the option is not given (so that a config file or the code's own config
    can supply it; the help then names the dataclass default), else the option's default is the field's default.
    only: these fields only; flags: field -> option name where it is not --field-name."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = (set(only or ()) | set(flags or ())) - names
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        flag = (flags or {}).get(f.name) or option_name(f.name)
        typ = str(f.type)
        if typ not in _TYPES:
            raise TypeError(f"{cls.__name__}.{f.name}: no command-line type for the annotation {typ!r} "
                            f"(supported: {', '.join(_TYPES)})")
        py = _TYPES[typ]
        help_text = str(f.metadata.get("help", "")).replace("%", "%%")
        if unset and f.default is not None:  # a None default is explained by the help
            help_text = (help_text + " " if help_text else "") + f"(default: {_show(f.default)})".replace("%", "%%")
        default = None if unset else f.default
        if py is bool:
            parser.add_argument(flag, dest=f.name, action=Switch, default=default, help=help_text)
            continue
        kw: Dict[str, Any] = {"type": f.metadata.get("parse") or py, "default": default, "help": help_text}
        if flags and f.name in flags:
            kw["metavar"] = flag.lstrip("-").replace("-", "_").upper()
        choices = f.metadata.get("choices")
        if choices is not None:
            kw["choices"] = choices
        parser.add_argument(flag, dest=f.name, **kw)


def given_options(cls, args) -> Dict[str, Any]:
    """The fields of `cls` that the command line set (options added with add_options(..., unset=True))."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}


class Switch(argparse.BooleanOptionalAction):
    """A flag that can be set both ways: `--afs` / `--no-afs`. A flag whose name already says no is switched
    back by the plain name: `--no-progress` / `--progress`, `--no-shift` / `--shift` (not `--no-no-shift`)."""

    def __init__(self, option_strings, dest, default=None, required=False, help=None, **kwargs):
        super().__init__(option_strings, dest, default=default, required=required, help=help, **kwargs)
        self._on = tuple(option_strings)
        names = []
        for s in option_strings:
            names.append(s)
            if s.startswith("--no-"):
                names.append("--" + s[len("--no-"):])
            elif s.startswith("--"):
                names.append("--no-" + s[2:])
        self.option_strings = names

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, option_string in self._on)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every command's help: an option's default once, after its help, when it has one (a None default, e.g.
    "the predictor's", is explained by the help itself); descriptions with line breaks printed as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is argparse.SUPPRESS or "%(default)" in text or "(default" in text:
            return text
        return super()._get_help_string(action)

    def _fill_text(self, text, width, indent):
        if "\n" in text.strip("\n"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)
