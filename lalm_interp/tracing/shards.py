"""The tracing pipeline's shard function and what it needs per example (plan → **shard** → merge;
the plan and the merge are :func:`lalm_interp.tracing.run.run_experiment`).

A shard is a group of examples; every example's result is its own atomic file
(``OUT/examples/<safe id>.nc``, :mod:`lalm_interp.executors.resume`), so a shard that is retried —
or a job that is restarted — skips the examples already written and nothing is computed or
written twice. :func:`trace_sharded` sends each worker a shard (examples + the serialised
experiment) through any executor (this process by default, Ray workers with ``--executor ray``),
then opens every per-example file lazily (``interventions.results.read_example``) for the
aggregate.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import xarray as xr

from ..atomic import atomic_write
from ..cache import Batch, Positions, Provenance, Store
from ..editors.base import weights_fingerprint
from ..errors import AudioInputError, LalmInterpError, SpanError
from ..executors import chunks, fault_spec, maybe_fail, shard_size_for
from ..executors.resume import item_path, pending, remove_orphan_temps
from ..inputs import window_samples
from ..interventions.results import read_example, write_example
from ..specs import Experiment, SpecError
from .causal import Prepared, SpokenPrompt, trace_example

EXAMPLES = "examples"


# ---------------------------------------------------------------------------- per-example files
def example_path(out: "str | os.PathLike", example_id: str) -> Path:
    """``OUT/examples/<safe id>.nc``: where one example's result lives."""
    return item_path(Path(out) / EXAMPLES, example_id, ".nc")


def write_atomic_netcdf(ds: xr.Dataset, path: Path) -> None:
    """Write ``ds`` (a Dataset: the aggregate) to ``path`` atomically, with normal file permissions
    (``0o666 & ~umask``). One example's result: :func:`~lalm_interp.interventions.results.write_example`."""
    with atomic_write(path) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf")


def prompt_sha(ex: SpokenPrompt) -> str:
    """Content hash of one prompt (id, audio samples, word timings, subject, target, instruction)."""
    h = hashlib.sha256()
    x = np.ascontiguousarray(np.asarray(ex.audio, dtype=np.float32))
    words = [[str(w.text), float(w.start_s), float(w.end_s)] if hasattr(w, "start_s") else
             [str(w[0]), float(w[1]), float(w[2])] for w in ex.words]
    meta = [ex.id, words, list(ex.subject), ex.target, ex.instruction, getattr(ex, "sample_rate", None)]
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    h.update(x.tobytes())
    return h.hexdigest()[:16]


def annotate(ds: "xr.DataTree | xr.Dataset", ex: SpokenPrompt, key: dict[str, str],
             windows: dict[str, Any]) -> "xr.DataTree | xr.Dataset":
    """Stamp the run key, the prompt's content hash and the windows used into one example's result
    (its root ``attrs``)."""
    ds.attrs["run_key"] = json.dumps(key, sort_keys=True)
    ds.attrs["prompt_sha"] = prompt_sha(ex)
    ds.attrs["window_used"] = json.dumps({k: v["used"] for k, v in windows.items()}, sort_keys=True)
    return ds


def data_problem(err: BaseException) -> bool:
    """Whether ``err`` (raised while tracing one example) is about that example's data — skipped
    and recorded — rather than the spec or the model (which stops the run)."""
    if isinstance(err, (AudioInputError, SpanError)):
        return True
    return isinstance(err, SpecError) and isinstance(err.__cause__, (AudioInputError, SpanError))


def reason(err: BaseException) -> str:
    """The first line of an error: the reason recorded for a skipped example."""
    return str(err).split("\n")[0]


def model_info(model: Any, adapter: Any) -> dict[str, Any]:
    """What a run needs to know about a loaded model: its name/path, weights fingerprint, layers
    per stream and encoder window (the driver asks a worker for this: :func:`run_info`)."""
    cfg = getattr(model, "config", None)
    name, _, digest = weights_fingerprint(model).rpartition("#")
    return {
        "name_or_path": str(getattr(cfg, "_name_or_path", "") or type(model).__name__),
        # the hash of the weights under the checkpoint's folder name (not its full path, so a moved
        # installation still resumes); models over 50M parameters: the name and parameter count
        "weights": f"{Path(name).name or name}#{digest}",
        "n_layers": {s: int(adapter.n_layers(s)) for s in ("audio", "text") if s in adapter.streams},
        "window_samples": int(window_samples(adapter)),
        "sample_rate": int(adapter.rate_chain.sample_rate),
        "adapter": f"{adapter.name}@{adapter.spec.version}",
    }


# ---------------------------------------------------------------------------- shard functions
def run_info(state: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """Shard function: :func:`model_info` of the worker's model (name, weights fingerprint, layers
    per stream, encoder window); validates ``payload["experiment"]`` there first, so a bad spec
    fails before anything is scheduled."""
    model, _, adapter = state
    if payload.get("experiment"):
        Experiment.from_json(payload["experiment"]).validate(adapter)
    return model_info(model, adapter)


def trace_shard(state: Any, payload: dict[str, Any]) -> list[tuple[str, bool, str | None]]:
    """Shard function: trace each ``(index, prompt)`` of ``payload["items"]`` whose result file is
    missing, write it atomically, record ``Read`` sites into the cache (``store_root``) when the
    experiment has any. Returns ``[(example id, traced now?, why it was skipped or None)]``: an
    example whose data cannot run (a span or audio error) is skipped and reported, not fatal."""
    model, processor, adapter = state
    exp = Experiment.from_json(payload["experiment"])
    exp.validate(adapter)
    out = Path(payload["out"])
    ann = payload.get("annotate")
    store = Store(payload["store_root"]) if payload.get("store_root") and exp.reads else None
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
                done.append((ex.id, False, reason(err)))
                continue
            if ann is not None:
                annotate(ds, ex, ann["key"], ann["windows"])
            write_example(ds, path)
            traced = True
        if store is not None:
            write_reads(model, processor, adapter, ex, exp, store, payload.get("provenance") or {}, index=index)
        done.append((ex.id, traced, None))
    maybe_fail(payload.get("fault"), payload["shard"], len(payload["items"]))
    return done


# ---------------------------------------------------------------------------- plan and merge
def shard_payloads(items: Sequence[tuple[int, SpokenPrompt]], exp: Experiment, out: Path, *, shard_size: int,
                   store_root: str | None = None, provenance: dict[str, Any] | None = None,
                   annotate: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Payloads for :func:`trace_shard` over ``(index in the prompt list, prompt)`` pairs. Examples
    whose file exists are not shipped at all, unless ``Read`` specs are recorded (the cache is
    filled for every example, also after a resume; its complete shards are skipped)."""
    todo = list(items) if (store_root and exp.reads) else pending(items, lambda it: example_path(out, it[1].id))
    fault = fault_spec()
    return [{"shard": s, "items": [todo[j] for j in r], "experiment": exp.to_json(), "out": str(out),
             "store_root": store_root, "provenance": provenance or {}, "fault": fault, "annotate": annotate}
            for s, r in enumerate(chunks(len(todo), shard_size))]


def trace_sharded(executor: Any, items: Sequence[tuple[int, SpokenPrompt]], exp: Experiment,
                  out: "str | os.PathLike", *, shard_size: int | None = None, store_root: str | None = None,
                  provenance: dict[str, Any] | None = None, progress: bool = True,
                  annotate: dict[str, Any] | None = None) -> tuple[list[xr.DataTree], int, dict[str, str]]:
    """Trace ``items`` (``(index, prompt)`` pairs; a bare prompt list is numbered) on ``executor``;
    returns (per-example results opened lazily, in order; how many examples were traced now;
    {example id: why it was skipped} for examples whose data could not run). ``annotate``:
    ``{"key": run key, "windows": windows}`` written into each new per-example file's attrs."""
    out = Path(out)
    items = [it if isinstance(it, tuple) else (i, it) for i, it in enumerate(items)]
    (out / EXAMPLES).mkdir(parents=True, exist_ok=True)
    payloads = shard_payloads(items, exp, out, shard_size=shard_size_for(executor, len(items), shard_size),
                              store_root=store_root, provenance=provenance, annotate=annotate)
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
    remove_orphan_temps(out / EXAMPLES)
    rows = [row for shard in res for row in shard]
    n_now = sum(bool(row[1]) for row in rows)
    skipped = {row[0]: row[2] for row in rows if len(row) > 2 and row[2]}
    return open_examples(out, [ex.id for _, ex in items if ex.id not in skipped]), n_now, skipped


def open_examples(out: "str | os.PathLike", ids: Sequence[str]) -> list[xr.DataTree]:
    """Every example's result (``interventions.results.read_example``) opened lazily (dask-backed),
    in ``ids`` order."""
    out = Path(out)
    missing = [i for i in ids if not example_path(out, i).exists()]
    if missing:
        raise SpecError(f"{len(missing)} example result(s) missing under {out}/examples (e.g. {missing[0]!r}); "
                        "rerun the same command to trace them.")
    return [read_example(example_path(out, i), chunks={}) for i in ids]


# ---------------------------------------------------------------------------- Read specs
def write_reads(model: Any, processor: Any, adapter: Any, ex: SpokenPrompt, exp: Experiment, store: Any,
                provenance: dict[str, Any], *, index: int) -> None:
    """Record the ``Read`` sites of ``exp`` for ``ex`` (clean and corrupted runs) into ``store`` as
    shard ``index`` of experiment ``<exp.name>.<stage>`` (one experiment per time axis)."""
    runs_of: dict[Any, set[str]] = {}
    for rd in exp.reads:
        for s in adapter.expand(rd.at):
            runs_of.setdefault(s, set()).update(rd.runs)
    sites = list(runs_of)
    model_name = provenance.get("model") or str(getattr(getattr(model, "config", None), "_name_or_path", "") or "")
    prov = Provenance(
        model=str(model_name or "unknown"),
        revision=str(provenance.get("revision", "")),
        weights_hash=str(provenance.get("weights_hash", "")),
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
    """The ``Positions`` coordinates of one example's activations on time axis ``stage``."""
    if stage == "seq":
        ids = prep.inputs["input_ids"][0, :T].tolist()
        toks = prep.adapter.processor.tokenizer.convert_ids_to_tokens(ids)
        s0, s1 = prep.pm.span("subject", "seq")
        return Positions(token=[toks], is_subject=np.array([[s0 <= j < s1 for j in range(T)]]),
                         valid=np.array([[bool(m) for m in prep.inputs["attention_mask"][0, :T].tolist()]]))
    n = prep.pm.n_frames(stage)
    s0, s1 = prep.pm.span("subject", stage)
    chain = prep.adapter.rate_chain  # frame centres (docs/gotchas/frame-rates.md), padding frames too
    return Positions(time_s=np.array([[chain.centre_s(stage, j, prep.pm.n_mel) for j in range(T)]]),
                     is_subject=np.array([[s0 <= j < s1 for j in range(T)]]),
                     valid=np.array([[j < n for j in range(T)]]))
