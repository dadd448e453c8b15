"""The executor abstraction: run a *shard function* over a list of payloads, on workers that each
hold one loaded model.

A shard function is a plain top-level function ``fn(state, payload) -> result`` where ``state`` is
what :func:`load_state` returns for the executor's model spec — ``(model, processor, adapter)`` —
and ``payload`` is picklable data (example ids and audio, corpus clips, paths). Shard functions
write their results as atomic files (the source of truth, so a restarted job resumes) and return
something small for the driver to merge.

* :class:`LocalExecutor` (default): in-process, one model, shards in order. Never imports Ray.
* :class:`~lalm_interp.executors.ray_executor.RayExecutor`: one actor per GPU (or CPU worker).

See ``docs/usage/scale-out.md``.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

from ..errors import LalmInterpError

ShardFn = Callable[[Any, Any], Any]
FAULT_ENV = "LALM_INTERP_FAULT"
"""Test hook: ``shard=1,after=1,mode=raise|exit,marker=/tmp/x`` makes the worker running shard 1
fail once (``raise`` an error or ``exit`` the worker process, i.e. a killed/pre-empted worker) after
it completed ``after`` items of that shard. The marker file records that the failure happened, so
the retry succeeds. Read on the driver when payloads are built and shipped inside them."""


class ExecutorError(LalmInterpError):
    """An executor could not run (bad options, Ray missing, a shard failed on every retry).
    Docs: docs/usage/scale-out.md (every message names it); messages: docs/errors/scale-out.md."""

    page = "scale-out"

    def __init__(self, message: str, *, page: str | None = None):
        if "docs/usage/scale-out.md" not in message:
            message = f"{message} Docs: docs/usage/scale-out.md."
        super().__init__(message, page=page)


class InjectedFailure(RuntimeError):
    """Raised by the :data:`FAULT_ENV` test hook."""


class Executor(Protocol):
    """What the drivers (tracing, statistics) need from an executor."""

    name: str
    model: str | None
    workers: int

    def map(self, fn: ShardFn, payloads: Sequence[Any], *,
            on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        """``[fn(state, p) for p in payloads]`` (in payload order), however distributed;
        ``on_result(i, result)`` is called on the driver as each shard completes."""
        ...

    def close(self) -> None: ...


def load_state(model: str, device: str = "auto", dtype: str | None = None) -> tuple[Any, Any, Any]:
    """``(model, processor, adapter)`` for a model *spec* (never pickled weights): ``tiny-random``,
    ``organism``, a checkpoint folder or a hub id, resolved by :func:`lalm_interp.loading.load`
    (the one place names become models). ``device="auto"``: CUDA when this worker sees a GPU, else CPU."""
    import torch

    from ..loading import load

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return tuple(load(model, device=device, dtype=dtype))  # type: ignore[return-value]


def check_model_spec(model: str | None) -> None:
    """Check a worker model spec on the driver before any worker starts, so an empty or unknown name
    fails at once (:class:`~lalm_interp.errors.LoadError` with the valid names and the closest one).
    Folders and hub ids are left to the workers, which may see files the driver does not."""
    if model is not None:
        from ..loading import check_name

        check_name(model)


class LocalExecutor:
    """Runs shard functions in this process, in order, on one model.

    model: a model spec loaded on first use; or give ``state=(model, processor, adapter)`` already
    loaded (what ``run_experiment`` does with the model it was given). ``retries``: re-run a failed
    shard this many times (``LalmInterpError`` s — bad specs, data — are never retried).
    """

    name = "local"

    def __init__(self, model: str | None = None, *, state: tuple[Any, Any, Any] | None = None, retries: int = 0):
        self.model = model
        self.state = state
        self.retries = retries
        self.workers = 1

    def with_state(self, state: tuple[Any, Any, Any]) -> "LocalExecutor":
        """This executor using an already loaded ``(model, processor, adapter)``."""
        return self if self.state is not None else LocalExecutor(self.model, state=state, retries=self.retries)

    def map(self, fn: ShardFn, payloads: Sequence[Any], *,
            on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        if self.state is None:
            if self.model is None:
                raise ExecutorError("LocalExecutor has neither a model spec nor a loaded state; pass "
                                    "LocalExecutor('tiny-random') or LocalExecutor(state=(model, processor, adapter)).")
            self.state = load_state(self.model)
        out = []
        for i, p in enumerate(payloads):
            for attempt in range(self.retries + 1):
                try:
                    r = fn(self.state, p)
                    break
                except LalmInterpError:
                    raise
                except Exception:
                    if attempt == self.retries:
                        raise
            out.append(r)
            if on_result is not None:
                on_result(i, r)
        return out

    def close(self) -> None:
        pass

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LocalExecutor(model={self.model!r})"


def make_executor(kind: str = "local", *, model: str | None = None, workers: int | None = None,
                  address: str | None = None, **kwargs: Any) -> Any:
    """An executor from CLI-style options: ``kind`` is ``local`` or ``ray``."""
    if kind == "local":
        return LocalExecutor(model)
    if kind == "ray":
        if model is None:
            raise ExecutorError("the Ray executor needs a model spec (a --model name/path) for its workers to load.")
        check_model_spec(model)
        from .ray_executor import RayExecutor

        return RayExecutor(model, workers=workers, address=address, **kwargs)
    raise ExecutorError(f"unknown executor {kind!r}; expected 'local' or 'ray'.")


# ---------------------------------------------------------------------------- ambient executor
_CURRENT: contextvars.ContextVar[Any] = contextvars.ContextVar("lalm_interp_executor", default=None)


def current() -> Any:
    """The executor set by :func:`using` (``None``: the plain in-process path)."""
    return _CURRENT.get()


@contextlib.contextmanager
def using(executor: Any) -> Iterator[Any]:
    """Make ``executor`` the default for ``run_experiment`` calls in this block (used by commands
    such as ``reproduce`` whose inner calls take no executor argument); closes it on exit."""
    token = _CURRENT.set(executor)
    try:
        yield executor
    finally:
        _CURRENT.reset(token)
        if executor is not None:
            executor.close()


# ---------------------------------------------------------------------------- helpers
def chunks(n: int, size: int) -> list[range]:
    """``range(n)`` cut into consecutive pieces of ``size`` (the last may be shorter)."""
    if size < 1:
        raise ExecutorError(f"shard size must be >= 1, got {size}.")
    return [range(a, min(a + size, n)) for a in range(0, n, size)]


def fault_spec() -> str | None:
    return os.environ.get(FAULT_ENV) or None


def maybe_fail(fault: str | None, shard: int, done_in_shard: int) -> None:
    """The :data:`FAULT_ENV` hook (a no-op unless a fault spec is given)."""
    if not fault:
        return
    f = dict(kv.split("=", 1) for kv in fault.split(",") if "=" in kv)
    if int(f.get("shard", -1)) != shard or int(f.get("after", 0)) != done_in_shard:
        return
    marker = Path(f.get("marker", "/tmp/lalm_interp_fault"))
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # first attempt only
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    if f.get("mode", "raise") == "exit":
        os._exit(1)  # a killed / pre-empted worker: no cleanup, no exception
    raise InjectedFailure(f"injected failure in shard {shard} after {done_in_shard} item(s)")
