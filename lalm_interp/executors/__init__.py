"""Executors: generic machinery that runs a pipeline's *shard function* over payloads — in this
process (:class:`LocalExecutor`, the default) or on a pool of Ray actors that each load the model
once (:class:`RayExecutor`, the optional ``lalm-interp[ray]`` extra) — plus the one resume
mechanism every pipeline shares (:mod:`.resume`: one atomic file per finished item, quarantine of
damaged files, run keys) and the fault-injection hook the resume tests use (:mod:`.faults`).

The pipelines themselves (tracing, key statistics, edit cases, the known filter) live in the runs
layer (``lalm_interp.tracing.shards``, ``lalm_interp.evaluation.runs``,
``lalm_interp.evaluation.stats``) and always run through an executor, passed explicitly::

    from lalm_interp.executors import RayExecutor
    from lalm_interp.tracing.run import run_experiment

    with RayExecutor("organism", workers=4) as ex:
        agg = run_experiment(None, None, None, prompts, EXPERIMENT, "out/", executor=ex)

Importing this package never imports Ray (``RayExecutor`` imports it when it starts). See ``docs/usage/scale-out.md``.
"""

from .base import (
    Executor,
    ExecutorError,
    LocalExecutor,
    chunks,
    default_shard_size,
    load_state,
    shard_size_for,
)
from .faults import FAULT_ENV, InjectedFailure, fault_spec, maybe_fail
from .make import from_cli, make_executor
from .ray_executor import RayExecutor


__all__ = [
    "FAULT_ENV",
    "Executor",
    "ExecutorError",
    "InjectedFailure",
    "LocalExecutor",
    "RayExecutor",
    "chunks",
    "default_shard_size",
    "fault_spec",
    "from_cli",
    "load_state",
    "make_executor",
    "maybe_fail",
    "shard_size_for",
]
