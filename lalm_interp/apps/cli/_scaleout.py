"""The scale-out options of ``trace run``, ``edit run``, ``stats run`` and ``reproduce``
(``--executor local|ray --workers N --address ADDR --shard-size N``); :func:`lalm_interp.executors.from_cli`
turns them into an executor when the command runs. Plain argparse: building the parser imports
neither the executors nor torch. See ``docs/usage/scale-out.md``."""

from __future__ import annotations

import argparse
from typing import Any


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of at least 1")
    return int(text)


def add_cli_options(parser: Any) -> None:
    """``--executor local|ray --workers N --address ADDR --shard-size N`` on a subcommand."""
    g = parser.add_argument_group("scale-out (docs/usage/scale-out.md)")
    g.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: this process (default); ray: one Ray actor per GPU/CPU worker")
    g.add_argument("--workers", type=_positive, default=None,
                   help="Ray actors (default: the cluster's GPUs, else its CPUs)")
    g.add_argument("--address", default=None,
                   help="existing Ray cluster ('auto' or ray://HOST:10001); default: start a local one")
    g.add_argument("--shard-size", type=_positive, default=None,
                   help="examples per tracing shard, or edit cases per evaluation shard (default: ~4 "
                        "shards per worker, at most 16); statistics use two corpus chunks per worker")
