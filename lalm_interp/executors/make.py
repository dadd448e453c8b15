"""Executors from options: :func:`make_executor` (``local`` / ``ray``) and :func:`from_cli`, the
executor the CLI's ``--executor local|ray --workers N --address ADDR --shard-size N`` ask for (the
options themselves: ``lalm_interp.apps.cli._scaleout``). See ``docs/usage/scale-out.md``."""

from __future__ import annotations

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


def from_cli(args: Any, model: str) -> Any:
    """The executor the CLI options ask for: a :class:`LocalExecutor` of ``model`` (loaded on first
    use) for ``--executor local`` (the default), else a ``RayExecutor``. A context manager: close it
    (``with from_cli(args, model) as ex: ...``)."""
    kind = getattr(args, "executor", "local") or "local"
    ex = make_executor(kind, model=model, workers=getattr(args, "workers", None),
                       address=getattr(args, "address", None))
    ex.shard_size = getattr(args, "shard_size", None)  # tracing and evaluation shards (also inside `reproduce`)
    return ex
