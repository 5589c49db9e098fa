"""`indis` command line. Each feature module registers its own subcommands via `add_subparsers(subparsers)`
(optional dependencies such as diffusers, onnxruntime and TensorRT are imported only by the commands that use
them). Expected errors (bad options or files,
refused folders, unreadable or unwritable paths) end the command with a one-line message and exit code 2."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from . import __version__, _native
from .options import HelpFormatter

# modules that contribute subcommands, in help order
SUBCOMMAND_MODULES: List[str] = ["indis.backbones.cli", "indis.training.cli", "indis.export.cli", "indis.bench.cli", "indis.toy.cli", "indis.quickstart"]


def _version(args) -> int:
    print(f"indis {__version__}")
    try:
        info = _native.build_info()
        print("native: " + ", ".join(f"{k}={v}" for k, v in sorted(info.items())))
    except ImportError as e:
        print(f"native: not available ({e})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="indis",
        description="INDIS: few-step diffusion sampling with instance-aware discretizations",
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("version", help="print the version and the native build configuration", formatter_class=HelpFormatter)
    p.set_defaults(func=_version)
    for mod in SUBCOMMAND_MODULES:
        importlib.import_module(mod).add_subparsers(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except (ValueError, ImportError, OSError) as e:  # OSError: FileNotFoundError, PermissionError, FileExistsError, ...
        print(f"indis {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    return int(rc or 0)


def _one_line(e: BaseException) -> str:
    """The message of an expected error on one line. An OSError raised by the system (errno set) is shown as
    'what: path'; the ones INDIS raises carry their own sentence."""
    if isinstance(e, OSError) and e.errno is not None and e.strerror:
        msg = e.strerror + (f": {e.filename}" if e.filename is not None else "") + (
            f" -> {e.filename2}" if e.filename2 is not None else "")
    else:
        msg = str(e) or type(e).__name__
    return " ".join(msg.split())


if __name__ == "__main__":
    sys.exit(main())
