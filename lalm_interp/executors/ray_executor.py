"""Ray executor: one actor per GPU (or per CPU worker) loads the model once and runs shard
functions; the driver only schedules, retries and merges.

Failures: a shard whose task raised (anything but a ``LalmInterpError`` — those are deterministic
user errors and propagate at once) or whose actor died (killed, pre-empted, OOM) is put back in the
queue and retried up to ``retries`` times. Dead actors are restarted by Ray (``max_restarts``) and
replaced by the driver when Ray gives up. Shard functions skip work whose atomic result file
exists, so a retry never recomputes (or duplicates) completed items. See docs/usage/scale-out.md.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from typing import Any, Callable, Sequence

from ..errors import LalmInterpError
from .base import ExecutorError, ShardFn, load_state


class _Worker:
    """The actor body: holds ``(model, processor, adapter)`` loaded from the spec."""

    def __init__(self, model: str, device: str, dtype: str | None):
        import os

        self.pid = os.getpid()
        self.state = load_state(model, device, dtype)

    def run(self, fn: ShardFn, payload: Any) -> Any:
        return fn(self.state, payload)

    def ping(self) -> int:
        return self.pid


def _ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise ExecutorError(
            "the Ray executor needs Ray: pip install 'lalm-interp[ray]' (ray>=2.40). "
            "Without it use --executor local. Docs: docs/usage/scale-out.md."
        ) from err
    return ray


QUIET_INIT: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
"""``ray.init`` defaults that keep Ray's banners, INFO lines and workers' ANSI-prefixed logs out of
normal output (user ``init=`` values win)."""


class RayExecutor:
    """Shard functions on a pool of Ray actors, each holding one model.

    model: model spec each worker loads (``tiny-random``, ``organism``, a checkpoint dir, a hub id).
    workers: number of actors (default: the cluster's GPUs, or its CPUs when it has none).
    address: an existing Ray cluster (``auto`` or ``ray://host:10001``); ``None`` starts a local one
        unless Ray is already initialised in this process.
    gpus_per_worker: GPUs per actor (default 1 when the cluster has GPUs, else 0).
    cpus_per_worker: CPUs per actor (default 1; torch in the actor uses that many threads).
    retries: driver-side retries per shard after its first attempt (default 3).
    max_restarts: Ray restarts of a dead actor before the driver replaces it (default 2).
    device, dtype: where/how each worker loads the model (``auto``: CUDA if the actor has a GPU).
    init: extra ``ray.init`` keyword arguments when this executor starts Ray (e.g. ``num_cpus=2``,
        ``include_dashboard=False``, ``_temp_dir=...``); a Ray started here is shut down on close.
        By default Ray stays quiet (:data:`QUIET_INIT`: no start-up banner, workers' output — with
        its coloured ``(pid=…)`` prefixes — not copied to the driver; errors still arrive as
        exceptions). ``init={"log_to_driver": True}`` shows the workers' output again.
    """

    name = "ray"
    in_process = False

    def __init__(self, model: str, workers: int | None = None, *, address: str | None = None,
                 gpus_per_worker: float | None = None, cpus_per_worker: float = 1, retries: int = 3,
                 max_restarts: int = 2, device: str = "auto", dtype: str | None = None,
                 init: dict[str, Any] | None = None):
        if workers is not None and workers < 1:
            raise ExecutorError(f"--workers must be >= 1, got {workers}.")
        self.model = model
        self.address = address
        self._workers = workers
        self.gpus_per_worker = gpus_per_worker
        self.cpus_per_worker = cpus_per_worker
        self.retries = retries
        self.max_restarts = max_restarts
        self.device = device
        self.dtype = dtype
        self.init = dict(init or {})
        self.shard_size: int | None = None  # default tracing shard size (``--shard-size``)
        self._actors: list[Any] = []
        self._owns_ray = False
        self._cls: Any = None
        self.stats: dict[str, Any] = {"attempts": 0, "retried": 0, "replaced_actors": 0}

    # ------------------------------------------------------------------ pool
    @property
    def workers(self) -> int:
        return len(self._actors) if self._actors else (self._workers or 0)

    def start(self) -> "RayExecutor":
        """Start (or connect to) Ray and create the actors; called by the first ``map``."""
        if self._actors:
            return self
        ray = _ray()
        if not ray.is_initialized():
            # starting a cluster: no dashboard by default; connecting: Ray refuses cluster options
            kwargs = {"include_dashboard": False, **QUIET_INIT, **self.init} if self.address is None \
                else {**QUIET_INIT, **self.init}
            os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # no ANSI colour codes in any worker line shown
            ray.init(address=self.address, **kwargs)
            self._owns_ray = True
        res = ray.cluster_resources()
        gpw = self.gpus_per_worker
        if gpw is None:
            gpw = 1 if res.get("GPU", 0) >= 1 else 0
        n = self._workers or int(res.get("GPU", 0) // gpw if gpw else res.get("CPU", 1) // max(self.cpus_per_worker, 1))
        self._cls = ray.remote(num_cpus=self.cpus_per_worker, num_gpus=gpw, max_restarts=self.max_restarts,
                               max_task_retries=0)(_Worker)
        self._actors = [self._new_actor() for _ in range(max(n, 1))]
        ray.get([a.ping.remote() for a in self._actors])  # fail early if a worker cannot load the model
        return self

    def _new_actor(self) -> Any:
        return self._cls.remote(self.model, self.device, self.dtype)

    def pids(self) -> list[int]:
        """Process ids of the live actors (tests kill one to simulate a lost worker)."""
        ray = _ray()
        return ray.get([a.ping.remote() for a in self.start()._actors])

    # ------------------------------------------------------------------ scheduling
    def map(self, fn: ShardFn, payloads: Sequence[Any], *,
            on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        ray = _ray()
        self.start()
        results: list[Any] = [None] * len(payloads)
        queue = collections.deque(range(len(payloads)))
        tries = collections.Counter()
        idle = list(range(len(self._actors)))
        inflight: dict[Any, tuple[int, int]] = {}
        refs: dict[int, Any] = {}  # payloads put in the object store once, reused by retries
        while queue or inflight:
            while queue and idle:
                i, a = queue.popleft(), idle.pop(0)
                if i not in refs:
                    refs[i] = ray.put(payloads[i])
                inflight[self._actors[a].run.remote(fn, refs[i])] = (i, a)
                self.stats["attempts"] += 1
            done, _ = ray.wait(list(inflight), num_returns=1)
            i, a = inflight.pop(done[0])
            try:
                results[i] = ray.get(done[0])
            except ray.exceptions.RayTaskError as err:
                cause = getattr(err, "cause", None)
                if isinstance(cause, LalmInterpError):
                    self._drain(inflight)
                    raise cause from err
                self._retry(i, tries, queue, err, inflight)
                idle.append(a)
                continue
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                    ray.exceptions.ObjectLostError) as err:
                self._retry(i, tries, queue, err, inflight)
                if not self._alive(a):
                    self._actors[a] = self._new_actor()
                    self.stats["replaced_actors"] += 1
                idle.append(a)
                continue
            idle.append(a)
            refs.pop(i, None)
            if on_result is not None:
                on_result(i, results[i])
        return results

    def _retry(self, i: int, tries: collections.Counter, queue: collections.deque, err: Exception,
               inflight: dict) -> None:
        tries[i] += 1
        if tries[i] > self.retries:
            self._drain(inflight)
            raise ExecutorError(
                f"shard {i} failed {tries[i]} time(s) (retries={self.retries}); last error: "
                f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}. "
                "Completed shards are kept; fix the cause and rerun the same command to resume."
            ) from err
        self.stats["retried"] += 1
        queue.append(i)

    def _alive(self, a: int, timeout: float = 60.0) -> bool:
        """Whether actor ``a`` answers (after Ray restarted it, if it still may)."""
        ray = _ray()
        try:
            ray.get(self._actors[a].ping.remote(), timeout=timeout)
            return True
        except Exception:
            return False

    def _drain(self, inflight: dict) -> None:
        ray = _ray()
        for ref in inflight:
            try:
                ray.cancel(ref, force=False)
            except Exception:  # already finished, or an actor task Ray cannot cancel
                pass
        inflight.clear()

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Kill the actors (and shut Ray down if this executor started it)."""
        if not self._actors and not self._owns_ray:
            return
        ray = _ray()
        for a in self._actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass
        self._actors = []
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False

    def bind(self, state: Any) -> "RayExecutor":
        """Itself: the workers load their own model from the spec (a loaded ``state`` stays here)."""
        return self

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RayExecutor(model={self.model!r}, workers={self.workers}, address={self.address!r})"


def overhead_probe(state: Any, payload: Any) -> Any:
    """A shard function that does nothing (used to measure per-shard scheduling overhead)."""
    return payload


def timed_noop(executor: Any, n: int = 50) -> float:
    """Seconds per no-op shard round trip on a warm executor."""
    executor.map(overhead_probe, list(range(4)))
    t = time.perf_counter()
    executor.map(overhead_probe, list(range(n)))
    return (time.perf_counter() - t) / n
