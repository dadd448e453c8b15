"""Run a tracing experiment over many spoken prompts: resumable, one result shard per example.

Layout of an output folder::

    OUT/experiment.json           the spec (Experiment.to_json) and provenance
    OUT/examples/<id>.nc          one per-example Dataset (written atomically: temp file + rename)
    OUT/aie.nc                    the aggregate (example × family × span × layer) and its mean
    OUT/figure2.png|pdf           AIE-vs-layer curves per stream × kind (span-mode families)
    OUT/heatmap_<family>.png|pdf  layer × position heatmap of the first example (each-mode families)

An interrupted run resumes by skipping examples whose shard exists. ``Read`` specs write the clean
and corrupted activations into the activation cache (``lalm_interp.cache.Store``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import xarray as xr

from ..specs import Experiment, SpecError
from .causal import Prepared, SpokenPrompt, aggregate, trace_example


def _safe(example_id: str) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", example_id)[:80]
    return f"{base}-{hashlib.sha1(example_id.encode()).hexdigest()[:8]}"


def write_atomic_netcdf(ds: xr.Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        ds.to_netcdf(tmp, engine="h5netcdf")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write_manifest(out: Path, exp: Experiment, provenance: dict[str, Any]) -> None:
    path = out / "experiment.json"
    doc = {"experiment": exp.to_dict(), "provenance": provenance}
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("experiment") != doc["experiment"]:
            raise SpecError(
                f"{out} holds results of a different experiment spec; use a new --out folder "
                "(results of two specs are never mixed)."
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def run_experiment(
    model: Any,
    processor: Any,
    adapter: Any,
    prompts: Iterable[SpokenPrompt],
    exp: Experiment,
    out: str | os.PathLike,
    *,
    provenance: dict[str, Any] | None = None,
    store: Any = None,
    progress: bool = True,
    plots: bool = True,
    executor: Any = None,
    shard_size: int | None = None,
) -> xr.Dataset:
    """Trace every prompt (skipping completed ones), aggregate, plot; returns the aggregate.

    executor: run the examples in shards on a ``lalm_interp.executors`` executor (e.g. a
    ``RayExecutor`` whose workers load the model themselves: ``model``/``processor``/``adapter`` may
    then be ``None``); default: the one set by ``executors.using``, else this process, in order.
    shard_size: examples per shard for an executor (default: about four shards per worker).
    """
    if executor is None:
        from ..executors import current

        executor = current()
    if adapter is not None:
        exp.validate(adapter)
    out = Path(out)
    _write_manifest(out, exp, provenance or {})
    prompts = list(prompts)
    if executor is not None:
        from ..executors.tracing import trace_sharded

        if getattr(executor, "name", "") == "local" and model is not None:
            executor = executor.with_state((model, processor, adapter))
        results, done = trace_sharded(executor, prompts, exp, out, shard_size=shard_size,
                                      store_root=str(store.root) if store is not None else None,
                                      provenance=provenance, progress=progress)
        return _finish(results, exp, out, done, plots)
    done = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts), desc=f"trace {exp.name}", unit="example")
    results: list[xr.Dataset] = []
    for index, ex in enumerate(prompts):
        path = out / "examples" / f"{_safe(ex.id)}.nc"
        if path.exists():
            ds = xr.load_dataset(path, engine="h5netcdf")
        else:
            ds = trace_example(model, processor, adapter, ex, exp)
            write_atomic_netcdf(ds, path)
            done += 1
        if store is not None and exp.reads:  # also after a resume: shards already complete are skipped
            write_reads(model, processor, adapter, ex, exp, store, provenance or {}, index=index)
        results.append(ds)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return _finish(results, exp, out, done, plots)


def _finish(results: list[xr.Dataset], exp: Experiment, out: Path, done: int, plots: bool) -> xr.Dataset:
    agg = aggregate(results, exp)
    agg.attrs["n_traced_now"] = done
    write_atomic_netcdf(agg, out / "aie.nc")
    if plots:
        from .plots import plot_aie, plot_heatmap

        plot_aie(agg, out / "figure2")
        for r in exp.restores:
            if r.positions == "each":
                plot_heatmap(results[0], r.label, out / f"heatmap_{r.label}")
    return agg


def write_reads(model: Any, processor: Any, adapter: Any, ex: SpokenPrompt, exp: Experiment, store: Any,
                provenance: dict[str, Any], *, index: int) -> None:
    """Record the ``Read`` sites of ``exp`` for ``ex`` (clean and corrupted runs) into ``store`` as
    shard ``index`` of experiment ``<exp.name>.<stage>`` (one experiment per time axis)."""
    from ..cache import Batch, Provenance

    runs_of: dict[Any, set[str]] = {}
    for rd in exp.reads:
        for s in adapter.expand(rd.at):
            runs_of.setdefault(s, set()).update(rd.runs)
    sites = list(runs_of)
    prov = Provenance(
        model=str(provenance.get("model", "unknown")),
        revision=str(provenance.get("revision", "")),
        dataset=str(provenance.get("dataset", "")),
        spec=exp.to_json(),
        n_layers={s: adapter.n_layers(s) for s in ("audio", "text") if s in adapter.streams},
        adapter_version=f"{adapter.name}@{adapter.spec.version}",
    )
    todo = []
    for k, run in enumerate(("clean", "corrupt")):
        for stage in sorted({adapter.stage(s) for s in sites}):
            group = [s for s in sites if adapter.stage(s) == stage and run in runs_of[s]]
            if group:
                w = store.writer(f"{exp.name}.{stage}", run=run, provenance=prov)
                if not w.is_complete(index):
                    todo.append((k, stage, group, w))
    if not todo:
        return
    prep = Prepared(model, processor, adapter, ex, exp)
    prep.compiled.base(reads=sites)
    for k, stage, group, w in todo:
        values = {str(s): prep.compiled.read_values[s][k : k + 1] for s in group}
        T = next(iter(values.values())).shape[1]
        pos = positions_for(prep, stage, T)
        w.write(index, Batch(examples=[ex.id], values=values, positions={str(s): pos for s in group}))


def positions_for(prep: Prepared, stage: str, T: int) -> Any:
    from ..cache import Positions

    import numpy as np

    if stage == "seq":
        ids = prep.inputs["input_ids"][0, :T].tolist()
        toks = prep.adapter.processor.tokenizer.convert_ids_to_tokens(ids)
        s0, s1 = prep.pm.span("subject", "seq")
        return Positions(token=[toks], is_subject=np.array([[s0 <= j < s1 for j in range(T)]]),
                         valid=np.array([[bool(m) for m in prep.inputs["attention_mask"][0, :T].tolist()]]))
    n = prep.pm.n_frames(stage)
    s0, s1 = prep.pm.span("subject", stage)
    times = [prep.adapter.rate_chain.frame_to_seconds(stage, j) for j in range(T)]
    return Positions(time_s=np.array([[(a + b) / 2 for a, b in times]]),
                     is_subject=np.array([[s0 <= j < s1 for j in range(T)]]),
                     valid=np.array([[j < n for j in range(T)]]))


def prompts_from_bench(bench: Any, *, forms: Sequence[str] = ("prompt",), limit: int | None = None,
                       fact_ids: Sequence[str] | None = None) -> list[SpokenPrompt]:
    """Spoken prompts (with subject spans) from a benchmark, in a stable order."""
    out = []
    wanted = set(fact_ids) if fact_ids is not None else None
    for item in bench:
        if item.form not in forms or item.subject_word_range is None:
            continue
        if wanted is not None and item.fact_id not in wanted:
            continue
        out.append(SpokenPrompt.from_item(item))
        if limit is not None and len(out) >= limit:
            break
    return out
