"""Run a tracing experiment over many spoken prompts: resumable, one result shard per example.

Layout of an output folder::

    OUT/experiment.json           the spec (Experiment.to_json), the run key, provenance, the windows
                                  used, skipped prompts (with reasons) and one record per invocation
    OUT/examples/<id>.nc          one per-example result (interventions.results: an xr.DataTree, one
                                  group per family; written atomically: temp file + rename)
    OUT/aie.nc                    the aggregate (example × family × span × layer) and its mean
    OUT/figure2.png|pdf           AIE-vs-layer curves per stream × kind (span-mode families)
    OUT/heatmap_<family>.png|pdf  layer × position heatmap of the first example (each-mode families)
    OUT/quarantine/               damaged or foreign files moved aside (never deleted), timestamped

An interrupted run resumes by skipping examples whose shard exists and reads back. The *run key*
(model name, weights fingerprint, benchmark identity, spec hash) is stored in ``experiment.json``
and in every per-example file: a run with another key in the same folder is refused (results of two
models are never averaged), unless ``new_run=True`` (``trace run --new-run``) moves the old run
aside. Prompts that cannot run on the model (a clip longer than the encoder window, word timings
past the clip's end, …) are checked up front, skipped and recorded with their reason; the rest is
traced. ``Read`` specs write the clean and corrupted activations into the activation cache
(``lalm_interp.cache.Store``). See ``docs/usage/tracing.md``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import xarray as xr

from ..atomic import atomic_write, remove_orphan_temps
from ..executors import LocalExecutor
from ..executors.resume import QUARANTINE, key_digest, scan, utc_stamp
from ..executors.resume import quarantine as _move_aside
from ..interventions.results import FORMAT, families, read_example
from ..loading import NAMED, is_model_handle, model_parts
from ..specs import Experiment, SpecError
from .causal import SpokenPrompt, aggregate
from .plots import plot_aie, plot_heatmap
from .shards import example_path, prompt_sha, run_info, trace_sharded, write_atomic_netcdf

MANIFEST = "experiment.json"
KEY_FIELDS = ("model", "weights", "benchmark", "spec")


def _write_json(path: Path, doc: Any) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")


def _our_output(name: str) -> bool:
    """File names a run writes at the top of its folder (whose temp files it may clean up)."""
    return name in (MANIFEST, "aie.nc") or (name.startswith(("figure2.", "heatmap_"))
                                              and name.endswith((".png", ".pdf")))


def _say(msg: str) -> None:
    print(f"lalm-interp: {msg}", file=sys.stderr, flush=True)


def _now() -> str:
    import datetime as _dt

    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------- identity
def model_name(name_or_path: str) -> str:
    """The name a model was loaded by: a registered short name (``organism``) for its checkpoint
    folder, else the path or hub id as given."""
    for name, path in NAMED.items():
        try:
            if Path(name_or_path).resolve() == Path(path).resolve():
                return name
        except (OSError, TypeError):  # pragma: no cover - a registry entry that is not a path
            pass
    return name_or_path


def run_key(exp: Experiment, info: dict[str, Any], provenance: dict[str, Any]) -> dict[str, str]:
    """The resume key: results in one folder share all four fields."""
    return {
        "model": str(provenance.get("model") or model_name(info["name_or_path"])),
        "weights": str(info["weights"]),
        "benchmark": str(provenance.get("benchmark") or provenance.get("dataset") or ""),
        "spec": key_digest(exp.to_json()),
    }


def benchmark_id(root: "str | os.PathLike") -> str:
    """Identity of a built benchmark folder: a hash of its ``benchmark.json`` and ``items.jsonl``."""
    import hashlib

    h = hashlib.sha256()
    for name in ("benchmark.json", "items.jsonl"):
        p = Path(root) / name
        if p.exists():
            h.update(p.read_bytes())
    return f"bench#{h.hexdigest()[:16]}"


# ---------------------------------------------------------------------------- up-front checks
def prompt_problem(ex: SpokenPrompt, info: dict[str, Any]) -> str | None:
    """Why ``ex`` cannot run on the model described by ``info`` (``tracing.shards.model_info``), or ``None``."""
    x = np.asarray(ex.audio)
    if x.ndim != 1 or x.size == 0:
        return f"audio of shape {tuple(x.shape)} is not a non-empty mono clip"
    if not np.issubdtype(x.dtype, np.floating):
        return f"audio dtype {x.dtype} is not floating point"
    bad = int(np.size(x) - np.isfinite(x).sum())
    if bad:
        return f"audio has {bad} NaN or infinite samples"
    sr = int(getattr(ex, "sample_rate", None) or info["sample_rate"])
    dur = x.size / sr
    window_s = info["window_samples"] / info["sample_rate"]
    if x.size * info["sample_rate"] > info["window_samples"] * sr:
        return (f"audio is {dur:.2f} s, longer than the model's {window_s:.2f} s encoder window "
                "(keep such clips out with `bench build --max-seconds`)")
    n = len(ex.words)
    a, b = (int(v) for v in ex.subject)
    if not (0 <= a <= b < n):
        return f"subject word range ({a}, {b}) is outside the {n} words of the clip"
    for w in ex.words:
        text, start, end = (w.text, w.start_s, w.end_s) if hasattr(w, "start_s") else (w[0], w[1], w[2])
        if float(end) > dur + 0.02 or float(start) < 0 or float(end) < float(start):
            return (f"word {str(text)!r} is timed {float(start):.2f}-{float(end):.2f} s, outside the "
                    f"{dur:.2f} s clip; re-align it")
    return None


# ---------------------------------------------------------------------------- quarantine
def quarantine(out: Path, path: Path, reason: str, log: list[dict[str, str]]) -> Path:
    """Move ``path`` to ``OUT/quarantine/<name>.<timestamp>`` (never delete a user's file), say so
    on stderr and in ``log`` (which goes to the manifest)."""
    dest = _move_aside(path, out / QUARANTINE)
    log.append({"file": str(path.relative_to(out)), "moved_to": str(dest.relative_to(out)), "reason": reason})
    _say(f"{path} {reason}; moved to {dest} (not deleted) and it will be recomputed.")
    return dest


def _read_manifest(out: Path, log: list[dict[str, str]]) -> dict[str, Any] | None:
    path = out / MANIFEST
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text("utf-8"))
        if not isinstance(doc, dict) or not isinstance(doc.get("experiment"), dict):
            raise ValueError("it has no \"experiment\" object")
        if not isinstance(doc.get("key", {}), dict) or not isinstance(doc.get("runs", []), list):
            raise ValueError("its \"key\" or \"runs\" has the wrong type")
        return doc
    except (ValueError, UnicodeDecodeError) as err:
        quarantine(out, path, f"is damaged (truncated or not a run manifest: {str(err)[:120]})", log)
        return None


def _mismatch(out: Path, old: dict[str, Any], exp: Experiment, key: dict[str, str]) -> str | None:
    if old.get("experiment") != exp.to_dict():
        return "a different experiment spec"
    old_key = old.get("key")
    if old_key is None:  # written by lalm-interp < 0.2: only the spec and provenance were recorded
        m = (old.get("provenance") or {}).get("model")
        return f"model {m!r} (this run: {key['model']!r})" if m and m != key["model"] else None
    diffs = [f"{k} {old_key.get(k)!r} (this run: {key[k]!r})" for k in KEY_FIELDS if old_key.get(k) != key[k]]
    return ", ".join(diffs) or None


def _move_previous_run(out: Path, log: list[dict[str, str]]) -> None:
    """``new_run``: move every result of the previous run into ``OUT/quarantine/previous-run.<ts>/``."""
    dest = out / QUARANTINE / f"previous-run.{utc_stamp()}"
    moved = []
    for p in sorted(out.iterdir()):
        if p.name == QUARANTINE or not (p.name in (MANIFEST, "examples", "aie.nc") or p.name.startswith(
                ("figure2.", "heatmap_"))):
            continue
        dest.mkdir(parents=True, exist_ok=True)
        os.replace(p, dest / p.name)
        moved.append(p.name)
    if moved:
        log.append({"file": ", ".join(moved), "moved_to": str(dest.relative_to(out)), "reason": "new run requested"})
        _say(f"--new-run: moved the previous run's {', '.join(moved)} to {dest} (not deleted).")


def check_example_file(path: Path, ex: SpokenPrompt, exp: Experiment, key: dict[str, str],
                       legacy_ok: bool) -> tuple[xr.DataTree | None, str | None]:
    """(the example's stored result, None) or (None, why it must be recomputed)."""
    try:
        tree = read_example(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is damaged
        return None, f"is damaged ({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''})"
    have = set(families(tree))
    missing = [v for v in ("p_clean", "p_corrupt") if v not in tree.ds] + \
        [r.label for r in exp.restores if r.label not in have]
    if missing:
        return None, f"is incomplete (no {missing[0]!r})"
    stored = tree.attrs.get("run_key")
    if stored is None:
        return (tree, None) if legacy_ok else (None, "has no run key, so it cannot be matched to this run")
    try:
        stored = json.loads(stored)
    except ValueError:
        return None, "has a damaged run key"
    if stored != key:
        return None, f"belongs to another run ({stored.get('model')!r}, weights {stored.get('weights')!r})"
    if tree.attrs.get("prompt_sha") not in (None, prompt_sha(ex)):
        return None, f"was traced from other audio or words for example {ex.id!r} (the benchmark changed)"
    return tree, None


# ---------------------------------------------------------------------------- the run
def run_experiment(
    model: Any,
    processor: Any = None,
    adapter: Any = None,
    prompts: Iterable[SpokenPrompt] | None = None,
    exp: Experiment | None = None,
    out: str | os.PathLike | None = None,
    *,
    provenance: dict[str, Any] | None = None,
    store: Any = None,
    progress: bool = True,
    plots: bool = True,
    executor: Any = None,
    shard_size: int | None = None,
    new_run: bool = False,
) -> xr.Dataset:
    """Trace every prompt (skipping completed ones), aggregate, plot; returns the aggregate.

    Plan → shard → merge, always through an executor: the driver checks the prompts and the files
    already in ``out`` (the done-set; damaged or foreign files quarantined), ships the rest in
    shards to ``executor`` (:func:`lalm_interp.tracing.shards.trace_shard` writes one atomic file per
    example), then aggregates every example's file.

    provenance: ``model`` (name as loaded, e.g. ``organism``; default the checkpoint path),
        ``benchmark`` (identity, e.g. :func:`benchmark_id`) / ``dataset``, ``revision``.
    executor: where the shards run (``lalm_interp.executors``): default a ``LocalExecutor`` on
        ``model``/``processor``/``adapter`` in this process; a ``RayExecutor`` whose workers load
        the model themselves (``model``/``processor``/``adapter`` may then be ``None``).
    shard_size: examples per shard (default: about four shards per worker, at most 16).
    new_run: ``out`` holds another run (other model, weights, benchmark or spec): move its files to
        ``OUT/quarantine/previous-run.<timestamp>/`` and start afresh, instead of refusing.

    Prompts that cannot run (checked up front: too long for the encoder window, word timings past
    the clip, non-finite audio; or a span error while tracing) are skipped and recorded in
    ``experiment.json`` and ``aie.nc`` (``skipped``) with the reason. The aggregate's attrs carry
    ``n_traced_now`` (examples traced by this call), ``n_examples``, ``n_skipped``, ``window_used``
    (JSON ``{family: layers}``; also the ``window_used`` coordinate over ``family``), the run key.

    Two calling forms: ``run_experiment(lm, prompts, exp, out)`` with a model handle (its name is the
    provenance's ``model`` unless given), or ``run_experiment(model, processor, adapter, prompts, exp, out)``.
    """
    if is_model_handle(model) and getattr(model, "name", None):
        provenance = {"model": model.name, **(provenance or {})}
    model, processor, adapter, prompts, exp, out = model_parts(model, processor, adapter, prompts, exp, out,
                                                               what="run_experiment")
    if prompts is None or exp is None or out is None:
        raise SpecError("run_experiment needs prompts, an experiment and an output folder: "
                        "run_experiment(lm, prompts, exp, out) or run_experiment(model, processor, adapter, "
                        "prompts, exp, out).")
    if executor is None:
        if model is None or adapter is None:
            raise SpecError("run_experiment needs a model and adapter, or an executor whose workers load one.")
        executor = LocalExecutor()
    if model is not None:
        executor = executor.bind((model, processor, adapter))
    provenance = dict(provenance or {})
    if adapter is not None:
        exp.validate(adapter)  # a bad spec fails before anything is scheduled
    info = executor.map(run_info, [{"experiment": exp.to_json()}])[0]
    key = run_key(exp, info, provenance)
    provenance.setdefault("model", key["model"])
    provenance.setdefault("weights_hash", key["weights"])
    windows = exp.windows(info["n_layers"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"started": _now(), "quarantined": [], "orphan_temps_removed": []}
    for folder, ours in ((out, _our_output), (out / "examples", lambda n: n.endswith(".nc"))):
        record["orphan_temps_removed"] += [str(p.relative_to(out)) for p in remove_orphan_temps(folder, final=ours)]
    if record["orphan_temps_removed"]:
        _say(f"removed {len(record['orphan_temps_removed'])} temp file(s) an interrupted run left in {out}.")
    log = record["quarantined"]
    if new_run:
        _move_previous_run(out, log)
    old = _read_manifest(out, log)
    if old is not None:
        why = _mismatch(out, old, exp, key)
        if why is not None:
            raise SpecError(
                f"{out} holds results of another run: {why}. Results of two models, weights, benchmarks or "
                "specs are never mixed, and nothing was changed. Fix: give a new --out folder, or pass "
                "--new-run (run_experiment(..., new_run=True)) to move the old results to "
                f"{out / QUARANTINE}/previous-run.<time>/ and start afresh."
            )
    legacy_ok = old is not None  # files of a matching manifest written before run keys existed
    prompts = list(prompts)
    ids = [ex.id for ex in prompts]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise SpecError(f"prompt id {dup!r} occurs more than once; example ids must be unique "
                        "(they name result files).")
    skipped: dict[str, str] = {}
    runnable: list[tuple[int, SpokenPrompt]] = []  # (index in prompts: the cache shard of Read specs, prompt)
    for index, ex in enumerate(prompts):
        why = prompt_problem(ex, info)
        if why is None:
            runnable.append((index, ex))
        else:
            skipped[ex.id] = why
    # the done-set: files that read back and belong to this run; the others are moved aside
    scan([ex for _, ex in runnable], lambda ex: ex.id, lambda ex: example_path(out, ex.id),
         lambda path, ex: check_example_file(path, ex, exp, key, legacy_ok),
         lambda path, why: quarantine(out, path, why, log))
    doc = {
        "format": FORMAT,
        "experiment": exp.to_dict(),
        "key": key,
        "provenance": provenance,
        "model": {k: info[k] for k in ("name_or_path", "n_layers", "adapter") if k in info},
        "windows": windows,
        "runs": list((old or {}).get("runs", [])) + [dict(record, status="running")],
    }
    _write_json(out / MANIFEST, doc)

    results, done, late = trace_sharded(executor, runnable, exp, out, shard_size=shard_size,
                                        store_root=str(store.root) if store is not None else None,
                                        provenance=provenance, progress=progress,
                                        annotate={"key": key, "windows": windows})
    skipped.update(late)
    skipped_list = [{"id": i, "reason": skipped[i]} for i in ids if i in skipped]
    if skipped_list:
        _say(f"skipped {len(skipped_list)} of {len(prompts)} prompt(s) that cannot run on {key['model']} "
             f"(reasons in {out / MANIFEST}); e.g. {skipped_list[0]['id']}: {skipped_list[0]['reason']}")
    record.update(finished=_now(), n_traced_now=done, n_skipped=len(skipped_list), status="complete")
    doc["runs"][-1] = record
    doc["skipped"] = skipped_list
    doc["n_examples"] = len(results)
    if not results:
        doc["runs"][-1]["status"] = "nothing to trace"
        _write_json(out / MANIFEST, doc)
        raise SpecError(
            f"none of the {len(prompts)} prompt(s) can be traced"
            + (f"; e.g. {skipped_list[0]['id']}: {skipped_list[0]['reason']}" if skipped_list else
               " (the prompt list is empty: check --forms, --facts and --limit)")
            + ". Fix the inputs (e.g. `bench build --max-seconds`) and rerun."
        )
    agg = _finish(results, exp, out, done, plots, key=key, windows=windows, skipped=skipped_list)
    _write_json(out / MANIFEST, doc)
    return agg


def _finish(results: list[xr.DataTree], exp: Experiment, out: Path, done: int, plots: bool, *,
            key: dict[str, str] | None = None, windows: dict[str, Any] | None = None,
            skipped: Sequence[dict[str, str]] = ()) -> xr.Dataset:
    agg = aggregate(results, exp)
    agg.attrs["n_traced_now"] = done
    agg.attrs["n_examples"] = len(results)
    agg.attrs["n_skipped"] = len(skipped)
    agg.attrs["skipped"] = json.dumps(list(skipped))
    if key is not None:
        agg.attrs["run_key"] = json.dumps(key, sort_keys=True)
        agg.attrs["model"] = key["model"]
        agg.attrs["weights"] = key["weights"]
    if windows is not None:
        fams = [str(f) for f in agg["family"].values]
        agg = agg.assign_coords(window=("family", [windows[f]["requested"] for f in fams]),
                                window_used=("family", [windows[f]["used"] for f in fams]))
        agg.attrs["window_used"] = json.dumps({f: windows[f]["used"] for f in fams}, sort_keys=True)
    write_atomic_netcdf(agg, out / "aie.nc")
    if plots:
        plot_aie(agg, out / "figure2")
        for r in exp.restores:
            if r.positions == "each":
                plot_heatmap(results[0], r.label, out / f"heatmap_{r.label}")
    return agg


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
