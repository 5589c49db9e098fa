"""`indis` command line. Each feature module registers its own subcommands via `add_subparsers(subparsers)`;
the handlers are imported lazily so that `indis --help` stays fast."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# modules that contribute subcommands, in help order
SUBCOMMAND_MODULES: List[str] = ["indis.backbones.cli", "indis.training.cli", "indis.engines.cli", "indis.bench.cli", "indis.toy.cli", "indis.quickstart"]


def _version(args) -> int:
    from . import __version__
    from . import _native

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
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("version", help="print the version and the native build configuration")
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
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"indis {args.command}: error: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
