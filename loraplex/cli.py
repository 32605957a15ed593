"""``loraplex`` command line: one entry point, one subcommand per deployable part.

Each subcommand lives in its component and owns its own argument parser; this module only
dispatches, importing the component lazily so ``loraplex router`` never imports torch and
``loraplex --version`` starts in milliseconds.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NamedTuple

from loraplex import __version__


class Subcommand(NamedTuple):
    module: str  # has ``main(argv: list[str]) -> int``
    help: str


SUBCOMMANDS: dict[str, Subcommand] = {
    "demo-models": Subcommand(
        "loraplex.demo.models", "build tiny demo base models and LoRAs in DIR"
    ),
    "worker": Subcommand("loraplex.worker.cli", "run a GPU worker for one base model"),
    "router": Subcommand("loraplex.router.cli", "run the HTTP router"),
    "operator": Subcommand("loraplex.operator.cli", "run the Kubernetes operator (kopf)"),
    "up": Subcommand(
        "loraplex.embedded.up", "run router + workers on this machine (embedded mode)"
    ),
    "simulate": Subcommand("loraplex.simulate.cli", "capacity planning: replay traffic"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loraplex",
        description="Serve thousands of LoRA adapters from a few warm base-model pools.",
    )
    parser.add_argument("--version", action="version", version=f"loraplex {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in SUBCOMMANDS.items():
        # add_help=False: the component's own parser answers --help with its real options.
        sub.add_parser(name, help=cmd.help, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not args or args[0] not in SUBCOMMANDS:
        parser.parse_args(args)  # handles --version / --help / unknown command errors
        parser.print_help()
        return 2
    command = SUBCOMMANDS[args[0]]
    try:
        module = importlib.import_module(command.module)
    except ModuleNotFoundError as exc:
        parser.exit(
            2,
            f"loraplex {args[0]}: cannot import {command.module} ({exc}); "
            "install the matching extra, e.g. pip install 'loraplex[worker]'\n",
        )
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
