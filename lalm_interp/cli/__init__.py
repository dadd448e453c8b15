"""The ``lalm-interp`` command. Each subcommand lives in its own module of this package and exposes
``register(subparsers)``; modules are discovered here, so adding a subcommand touches one file."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from ..errors import LalmInterpError


def start(args: argparse.Namespace):
    """Common start of a long-running subcommand: torch threads from ``--threads`` (0 keeps torch's
    default) and a ``say(msg)`` that writes progress to stderr unless ``--quiet``."""
    if getattr(args, "threads", 0):
        import torch

        torch.set_num_threads(args.threads)

    def say(msg: str) -> None:
        if not getattr(args, "quiet", False):
            print(msg, file=sys.stderr, flush=True)

    return say


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lalm-interp",
        description="Interpretability and knowledge editing for large audio-language models.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except LalmInterpError as err:
        print(f"lalm-interp: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
