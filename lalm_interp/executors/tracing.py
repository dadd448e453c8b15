"""Sharded tracing: shards are groups of examples; every example's result is its own atomic file
(``OUT/examples/<safe id>.nc``), so a shard that is retried — or a job that is restarted — skips
the examples already written and nothing is computed or written twice.

The driver (:func:`trace_sharded`, called by ``run_experiment(..., executor=...)``) sends each
worker a shard (examples + the serialised experiment), then opens every per-example file lazily
(xarray + dask) for :func:`~lalm_interp.tracing.causal.aggregate`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import xarray as xr

from .base import chunks, fault_spec, maybe_fail


def example_path(out: Path, example_id: str) -> Path:
    from ..atomic import safe_name as _safe

    return out / "examples" / f"{_safe(example_id)}.nc"


def trace_shard(state: Any, payload: dict[str, Any]) -> list[tuple[str, bool, str | None]]:
    """Shard function: trace each ``(index, prompt)`` of ``payload["items"]`` whose result file is
    missing, write it atomically, record ``Read`` sites into the cache (``store_root``) when the
    experiment has any. Returns ``[(example id, traced now?, why it was skipped or None)]``: an
    example whose data cannot run (a span or audio error) is skipped and reported, not fatal."""
    from ..errors import LalmInterpError
    from ..specs import Experiment
    from ..tracing.causal import trace_example
    from ..tracing.run import _annotate, _reason, data_problem, write_atomic_netcdf, write_reads

    model, processor, adapter = state
    exp = Experiment.from_json(payload["experiment"])
    exp.validate(adapter)
    out = Path(payload["out"])
    ann = payload.get("annotate")
    store = None
    if payload.get("store_root") and exp.reads:
        from ..cache import Store

        store = Store(payload["store_root"])
    done = []
    for k, (index, ex) in enumerate(payload["items"]):
        maybe_fail(payload.get("fault"), payload["shard"], k)
        path = example_path(out, ex.id)
        traced = False
        if not path.exists():
            try:
                ds = trace_example(model, processor, adapter, ex, exp)
            except LalmInterpError as err:
                if not data_problem(err):
                    raise
                done.append((ex.id, False, _reason(err)))
                continue
            if ann is not None:
                _annotate(ds, ex, ann["key"], ann["windows"])
            write_atomic_netcdf(ds, path)
            traced = True
        if store is not None:
            write_reads(model, processor, adapter, ex, exp, store, payload.get("provenance") or {}, index=index)
        done.append((ex.id, traced, None))
    maybe_fail(payload.get("fault"), payload["shard"], len(payload["items"]))
    return done


def run_info(state: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """Shard function: :func:`lalm_interp.tracing.run.model_info` of the worker's model (name,
    weights fingerprint, layers per stream, encoder window); validates ``payload["experiment"]``
    there first, so a bad spec fails before anything is scheduled."""
    from ..specs import Experiment
    from ..tracing.run import model_info

    model, _, adapter = state
    if payload.get("experiment"):
        Experiment.from_json(payload["experiment"]).validate(adapter)
    return model_info(model, adapter)


def shard_payloads(prompts: Sequence[Any], exp: Any, out: Path, *, shard_size: int,
                   store_root: str | None = None, provenance: dict[str, Any] | None = None,
                   skip_done: bool = True, annotate: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Payloads for :func:`trace_shard`. With ``skip_done`` (and no ``Read`` specs to record),
    examples whose file exists are not shipped at all."""
    todo = [(i, ex) for i, ex in enumerate(prompts)
            if not (skip_done and not (store_root and exp.reads) and example_path(out, ex.id).exists())]
    fault = fault_spec()
    return [{"shard": s, "items": [todo[j] for j in r], "experiment": exp.to_json(), "out": str(out),
             "store_root": store_root, "provenance": provenance or {}, "fault": fault, "annotate": annotate}
            for s, r in enumerate(chunks(len(todo), shard_size))]


def default_shard_size(n: int, workers: int) -> int:
    """About four shards per worker (load balance vs. per-shard overhead), at most 16 examples."""
    return max(1, min(16, -(-n // max(4 * workers, 1))))


def trace_sharded(executor: Any, prompts: Sequence[Any], exp: Any, out: "str | os.PathLike", *,
                  shard_size: int | None = None, store_root: str | None = None,
                  provenance: dict[str, Any] | None = None, progress: bool = True,
                  annotate: dict[str, Any] | None = None) -> tuple[list[xr.Dataset], int, dict[str, str]]:
    """Trace ``prompts`` on ``executor``; returns (per-example Datasets opened lazily, in prompt
    order; how many examples were traced now; {example id: why it was skipped} for examples whose
    data could not run). ``annotate``: ``{"key": run key, "windows": windows}`` written into each
    new per-example file's attrs (see ``tracing.run``)."""
    out = Path(out)
    (out / "examples").mkdir(parents=True, exist_ok=True)
    size = (shard_size or getattr(executor, "shard_size", None)
            or default_shard_size(len(prompts), max(executor.workers, 1)))
    payloads = shard_payloads(prompts, exp, out, shard_size=size, store_root=store_root, provenance=provenance,
                              annotate=annotate)
    bar = None
    if progress and payloads:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(p["items"]) for p in payloads), desc=f"trace {exp.name} [{executor.name}]",
                   unit="example")
    try:
        res = executor.map(trace_shard, payloads,
                           on_result=(lambda i, r: bar.update(len(r))) if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    remove_orphan_temps(out / "examples")
    rows = [row for shard in res for row in shard]
    n_now = sum(bool(row[1]) for row in rows)
    skipped = {row[0]: row[2] for row in rows if len(row) > 2 and row[2]}
    return open_examples(out, [ex.id for ex in prompts if ex.id not in skipped]), n_now, skipped


def remove_orphan_temps(folder: Path) -> list[Path]:
    """Delete temp files a killed worker left behind (our own temp names only, see
    ``lalm_interp.atomic.remove_orphan_temps``; call once no worker of this run is alive)."""
    from ..atomic import remove_orphan_temps as remove

    return remove(folder)


def open_examples(out: "str | os.PathLike", ids: Sequence[str]) -> list[xr.Dataset]:
    """Every example's result as a lazily loaded (dask-backed) Dataset, in ``ids`` order."""
    from ..specs import SpecError

    out = Path(out)
    missing = [i for i in ids if not example_path(out, i).exists()]
    if missing:
        raise SpecError(f"{len(missing)} example result(s) missing under {out}/examples (e.g. {missing[0]!r}); "
                        "rerun the same command to trace them.")
    return [xr.open_dataset(example_path(out, i), engine="h5netcdf", chunks={}) for i in ids]
