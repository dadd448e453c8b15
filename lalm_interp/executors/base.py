"""The executor abstraction: run a *shard function* over a list of payloads, on workers that each
hold one loaded model.

Every pipeline (tracing, key statistics, the known filter, edit cases) is *plan → pure shard
function → merge* and always runs through an executor — :class:`LocalExecutor` unless told
otherwise. A shard function is a plain top-level function ``fn(state, payload) -> result`` where
``state`` is what :func:`load_state` returns for the executor's model spec —
``(model, processor, adapter)`` — and ``payload`` is picklable data (example ids and audio, corpus
clips, paths). Shard functions write their results as atomic files (the source of truth, so a
restarted job resumes; :mod:`lalm_interp.executors.resume`) and return something small for the
driver to merge.

* :class:`LocalExecutor` (default): in this process, one model, shards in order. Never imports Ray.
* :class:`~lalm_interp.executors.ray_executor.RayExecutor`: one actor per GPU (or CPU worker).

See ``docs/usage/scale-out.md``.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

from ..errors import LalmInterpError
from ..handle import AudioLM
from ..loading import check_name, check_spec, model_spec

ShardFn = Callable[[Any, Any], Any]


class ExecutorError(LalmInterpError):
    """An executor could not run (bad options, Ray missing, a shard failed on every retry).
    Docs: docs/usage/scale-out.md (every message names it); messages: docs/errors/scale-out.md."""

    page = "scale-out"

    def __init__(self, message: str, *, page: str | None = None):
        if "docs/usage/scale-out.md" not in message:
            message = f"{message} Docs: docs/usage/scale-out.md."
        super().__init__(message, page=page)


class Executor(Protocol):
    """What the pipelines need from an executor."""

    name: str
    model: str | None
    workers: int
    shard_size: int | None
    in_process: bool
    """Whether shard functions run in the driver's process on payloads passed by reference (no
    copies, no pickling; a cache such as an editor's statistics is shared with the driver)."""

    def map(self, fn: ShardFn, payloads: Sequence[Any], *,
            on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        """``[fn(state, p) for p in payloads]`` (in payload order), however distributed;
        ``on_result(i, result)`` is called on the driver as each shard completes."""
        ...

    def bind(self, state: Any) -> "Executor":
        """This executor running on the already loaded ``state`` ``(model, processor, adapter)``
        where it can (in-process executors); executors whose workers load their own model return
        themselves."""
        ...

    def close(self) -> None: ...


def load_state(model: "str | dict[str, Any]", device: str = "auto", dtype: str | None = None) -> AudioLM:
    """The model handle a worker runs on, rebuilt from a small serialisable model *spec* (never
    pickled weights): a name or path (``tiny-random``, ``organism``, a checkpoint folder, a hub id;
    loaded on ``device`` in ``dtype``) or a handle's own :attr:`~lalm_interp.handle.AudioLM.spec`
    dict (which names its device and dtype). ``device="auto"``: CUDA when this worker sees a GPU,
    else CPU. The handle unpacks as ``(model, processor, adapter)``, which shard functions use."""
    if isinstance(model, dict):
        return AudioLM.from_spec(model)
    return AudioLM.from_spec(model_spec(model, device=device, dtype=dtype))


def _spec_name(model: "str | dict[str, Any] | None") -> "str | None":
    return model.get("name_or_path") if isinstance(model, dict) else model


def check_model_spec(model: "str | dict[str, Any] | None") -> None:
    """Check a worker model spec on the driver before any worker starts, so an empty or unknown name
    fails at once (:class:`~lalm_interp.errors.LoadError` with the valid names and the closest one).
    Folders and hub ids are left to the workers, which may see files the driver does not."""
    if isinstance(model, dict):
        check_spec(model)
    if model is not None:
        check_name(_spec_name(model))


class LocalExecutor:
    """Runs shard functions in this process, in order, on one model.

    model: a model spec loaded on first use (by :func:`load_state`, on ``device`` — ``"cpu"`` by
    default, as every command has always loaded it; ``"auto"``: CUDA when this process sees a GPU —
    in ``dtype``); or give ``state=(model, processor, adapter)`` already loaded (``bind``: what
    ``run_experiment`` does with the model it was given). ``retries``: re-run a failed shard this
    many times (``LalmInterpError`` s — bad specs, data — are never retried). Payloads are passed
    as they are (not copied or pickled).
    """

    name = "local"
    in_process = True

    def __init__(self, model: str | None = None, *, state: tuple[Any, Any, Any] | None = None, retries: int = 0,
                 device: str = "cpu", dtype: str | None = None):
        self.model = model
        self.state = state
        self.retries = retries
        self.device = device
        self.dtype = dtype
        self.workers = 1
        self.shard_size: int | None = None

    def bind(self, state: Any) -> "LocalExecutor":
        """This executor on the already loaded ``state`` (itself when it holds a model already)."""
        if self.state is not None or state is None:
            return self
        ex = LocalExecutor(self.model, state=state, retries=self.retries, device=self.device, dtype=self.dtype)
        ex.shard_size = self.shard_size
        return ex

    def map(self, fn: ShardFn, payloads: Sequence[Any], *,
            on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        if self.state is None:
            if self.model is None:
                raise ExecutorError("LocalExecutor has neither a model spec nor a loaded state; pass "
                                    "LocalExecutor('tiny-random') or LocalExecutor(state=(model, processor, adapter)).")
            self.state = load_state(self.model, self.device, self.dtype)
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


# ---------------------------------------------------------------------------- planning helpers
def chunks(n: int, size: int) -> list[range]:
    """``range(n)`` cut into consecutive pieces of ``size`` (the last may be shorter)."""
    if size < 1:
        raise ExecutorError(f"shard size must be >= 1, got {size}.")
    return [range(a, min(a + size, n)) for a in range(0, n, size)]


def default_shard_size(n: int, workers: int) -> int:
    """About four shards per worker (load balance vs. per-shard overhead), at most 16 items."""
    return max(1, min(16, -(-n // max(4 * workers, 1))))


def shard_size_for(executor: Any, n: int, shard_size: int | None = None) -> int:
    """Items per shard: ``shard_size``, else the executor's ``shard_size`` (``--shard-size``), else
    :func:`default_shard_size` for its workers."""
    return (shard_size or getattr(executor, "shard_size", None)
            or default_shard_size(n, max(getattr(executor, "workers", 1), 1)))
