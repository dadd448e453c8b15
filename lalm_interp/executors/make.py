"""Executors from options: :func:`make_executor` (``local`` / ``ray``) and the CLI's
``--executor local|ray --workers N --address ADDR --shard-size N`` (:func:`add_cli_options`,
:func:`from_cli`). See ``docs/usage/scale-out.md``."""

from __future__ import annotations

import argparse
from typing import Any

from .base import ExecutorError, LocalExecutor, check_model_spec
from .ray_executor import RayExecutor


def make_executor(kind: str = "local", *, model: str | None = None, workers: int | None = None,
                  address: str | None = None, **kwargs: Any) -> Any:
    """An executor from CLI-style options: ``kind`` is ``local`` or ``ray``."""
    if kind == "local":
        return LocalExecutor(model)
    if kind == "ray":
        if model is None:
            raise ExecutorError("the Ray executor needs a model spec (a --model name/path) for its workers to load.")
        check_model_spec(model)
        return RayExecutor(model, workers=workers, address=address, **kwargs)
    raise ExecutorError(f"unknown executor {kind!r}; expected 'local' or 'ray'.")


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


def from_cli(args: Any, model: str) -> Any:
    """The executor the CLI options ask for: a :class:`LocalExecutor` of ``model`` (loaded on first
    use) for ``--executor local`` (the default), else a ``RayExecutor``. A context manager: close it
    (``with from_cli(args, model) as ex: ...``)."""
    kind = getattr(args, "executor", "local") or "local"
    ex = make_executor(kind, model=model, workers=getattr(args, "workers", None),
                       address=getattr(args, "address", None))
    ex.shard_size = getattr(args, "shard_size", None)  # tracing and evaluation shards (also inside `reproduce`)
    return ex
