"""The editing pipeline (plan → shard → merge), always through an executor: the edit cases of one
editor, each finished case its own atomic file, in this process (``LocalExecutor``, the default)
or spread over workers that each hold the model (``RayExecutor``, ``--executor ray``).

Each shard runs :func:`lalm_interp.evaluation.run` on its cases (score before, edit, score after,
revert) and writes every finished case as its own atomic file
``OUT/cases/<run key>/<safe case id>.json`` (record, edit handle, edit seconds, the worker's
process id) — :mod:`lalm_interp.executors.resume`. Those files are the source of truth: a retried
shard or a restarted job skips the cases whose file exists, and the driver merges the files in case
order into the usual ``RunResult``, so the merged records equal one uninterrupted
``evaluation.run``'s exactly (same statistics cache → same probabilities). A damaged case file
(truncated, not JSON) is moved to ``quarantine/`` beside it and recomputed.

Modes that accumulate edits across cases (``accumulate=True``, the multi-layer editors' default)
cannot be split: case k's edit starts from the weights cases 0..k-1 left behind. They run as **one
shard** on one worker (all-or-nothing: its files are written once every edit has been scored and
reverted); their key statistics — the part worth spreading — are still sharded
(:mod:`lalm_interp.evaluation.stats`). The known filter (``--known-only``) is a pipeline of its own
(:func:`known_filter`). See ``docs/usage/scale-out.md`` and ``docs/usage/evaluation.md``.
"""

from __future__ import annotations

import collections
import json
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from ..atomic import atomic_write
from ..cache import Store
from ..editors.base import EditContext, weights_fingerprint
from ..executors import ExecutorError, LocalExecutor, chunks, fault_spec, maybe_fail, shard_size_for
from ..executors.resume import QUARANTINE, item_path, key_digest, remove_orphan_temps
from ..executors.resume import quarantine as _move_aside
from ..inputs import window_samples
from ..known import first_token_scores
from . import Probe, result, run
from .stats import key_sites, key_stats_sharded

CASES_DIR = "cases"
QUARANTINE_DIR = QUARANTINE
DOCS = "docs/usage/scale-out.md"
UNFINISHED = "_unfinished.run"
"""Written before the first edit of a run, removed when it returns: its presence on a rerun means
the earlier run was killed (said on the progress stream)."""


# ---------------------------------------------------------------------------- files
def case_path(folder: Path, case_id: str) -> Path:
    """``<folder>/<safe case id>.json``: where one finished case lives."""
    return item_path(folder, case_id, ".json")


def write_case(path: Path, doc: dict[str, Any]) -> None:
    """Write one finished case atomically (the file appears whole or not at all)."""
    with atomic_write(path) as tmp:
        tmp.write_bytes((json.dumps(doc, ensure_ascii=False, indent=1) + "\n").encode("utf-8"))


def run_key(editor: Any, accumulate: bool, fingerprint: str, corpus_id: str | None,
            case_ids: Sequence[str]) -> str:
    """What a case file depends on besides its own request: editor, sites, hyper-parameters,
    mode, model fingerprint, statistics corpus — and, when edits accumulate, every case in order."""
    d = editor.describe()
    return key_digest({"method": d["method"], "sites": [str(s) for s in d["sites"]], "hparams": d["hparams"],
                       "accumulate": accumulate, "model": fingerprint, "corpus": corpus_id,
                       "cases": list(case_ids) if accumulate else None})


def portable(case: Any) -> Any:
    """``case`` with every probe's audio read now (benchmark items read files lazily; a worker on
    another node gets the samples, not a path)."""

    def p(x: Any) -> Any:
        return x if x.item is None else Probe(x.id, x.target_true, audio_array=x.audio, instruction=x.instruction,
                                                    sample_rate=x.rate)

    return replace(case, paraphrases=tuple(map(p, case.paraphrases)), neighbours=tuple(map(p, case.neighbours)))


def quarantine(path: Path) -> Path:
    """Move a damaged case file aside (never deleted: ``<folder>/quarantine/<name>.<UTC time>``)."""
    return _move_aside(path, path.parent / QUARANTINE_DIR)


def _damage(doc: Any) -> str | None:
    """Why a parsed case file is not a finished case record (``None``: it is one)."""
    if not isinstance(doc, dict):
        return f"a JSON {type(doc).__name__}, not an object"
    missing = [k for k in ("record", "edit", "edit_seconds") if k not in doc]
    if missing:
        return f"no {missing} field(s)"
    if not isinstance(doc["record"], dict) or "request" not in doc["record"] or "before" not in doc["record"]:
        return "its record has no request or before-scores"
    return None


def check_case(path: Path, case: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(the stored result of ``case``, None) or (None, why the file is damaged: truncated, not
    JSON, fields missing). A file written for another request under the same id (the benchmark
    changed under the same ``--out``) is an error."""
    try:
        doc = json.loads(path.read_text("utf-8"))
        why = _damage(doc)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"{type(err).__name__}: {err}"
    if why is not None:
        return None, why
    want = json.loads(json.dumps(case.request.to_json()))
    if doc["record"]["request"] != want:
        raise ExecutorError(
            f"case file {path} was written for another request with id {case.case_id!r} (the benchmark "
            f"changed under the same --out). Delete {path.parent} or use a new --out. "
            f"Docs: {DOCS}#evaluation."
        )
    return doc, None


def read_case(path: Path, case: Any, damaged: list | None = None) -> dict[str, Any] | None:
    """The stored result of ``case`` (``None`` when missing). A damaged file is moved to
    ``quarantine/`` next to it and ``None`` returned, so the case is recomputed;
    ``(path, new path, reason)`` is appended to ``damaged``."""
    if not path.exists():
        return None
    doc, why = check_case(path, case)
    if why is not None:
        moved = quarantine(path)
        if damaged is not None:
            damaged.append((path, moved, why))
        return None
    return doc


def case_folder(out: "str | Path", editor: Any, accumulate: bool, fingerprint: str, corpus_id: str | None,
                case_ids: Sequence[str]) -> Path:
    """``OUT/cases/<run key>``: where the per-case files of this run live."""
    return Path(out).resolve() / CASES_DIR / run_key(editor, accumulate, fingerprint, corpus_id, case_ids)


def _unique(ids: Sequence[str]) -> None:
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ExecutorError(f"case ids must be unique to shard or resume an evaluation (each case is its own "
                            f"result file); {dup[:3]} repeat. Give cases distinct ids. Docs: {DOCS}#evaluation.")


def _done(folder: Path, cases: Sequence[Any], say: Callable[[str], None]) -> set[str]:
    """Ids of the cases whose file in ``folder`` holds a finished record (damaged files quarantined
    and reported; orphaned temp files of a killed run removed)."""
    folder.mkdir(parents=True, exist_ok=True)
    remove_orphan_temps(folder)
    damaged: list = []
    done = {c.case_id for c in cases if read_case(case_path(folder, c.case_id), c, damaged) is not None}
    for path, moved, why in damaged:
        say(f"case file {path.name} is damaged ({why}); moved it to {moved} and computing that case again")
    return done


def _merge(folder: Path, cases: Sequence[Any], editor: Any, acc: bool, t0: float,
           meta: dict[str, Any]) -> Any:
    """The ``RunResult`` read back from the per-case files, in case order."""
    docs = []
    for c in cases:
        d = read_case(case_path(folder, c.case_id), c)
        if d is None:
            raise ExecutorError(f"case {c.case_id!r} has no readable result file under {folder} after the run "
                                f"finished; rerun the same command to compute it. Docs: {DOCS}#evaluation.")
        docs.append(d)
    records = [d["record"] for d in docs]
    edits = [d["edit"] for d in docs if d["edit"] is not None]
    meta_out = {"n_cases": len(cases), "n_failed": sum("error" in r for r in records),
                "edit_seconds": sum(d["edit_seconds"] for d in docs), "total_seconds": time.time() - t0,
                "cases_dir": str(folder), **meta}
    return result(editor, acc, records, edits, meta_out)


# ---------------------------------------------------------------------------- shard functions
_CONTEXTS: "collections.OrderedDict[tuple, Any]" = collections.OrderedDict()


def _context(state: Any, store_root: str | None, corpus: Any, fingerprint: str) -> Any:
    """One ``EditContext`` per (model, cache, corpus, fingerprint) in this process (the last few
    kept), so a worker loads statistics and builds projectors once, not once per shard — as one
    uninterrupted run shares them across its cases."""
    model, processor, adapter = state
    key = (id(model), store_root, getattr(corpus, "id", None), fingerprint)
    if key not in _CONTEXTS:
        store = Store(store_root) if store_root else None
        _CONTEXTS[key] = EditContext(model, processor, adapter, store=store, corpus=corpus, fingerprint=fingerprint)
        while len(_CONTEXTS) > 4:
            _CONTEXTS.popitem(last=False)
    _CONTEXTS.move_to_end(key)
    return _CONTEXTS[key]


def worker_info(state: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """Shard function: the loaded model's weights fingerprint (unless ``payload["fingerprint"]`` is
    false), encoder window (samples), layers per
    stream and adapter name; ``payload["editor"]``'s sites and the sites it reads statistics at
    (``editor.stats_sites(adapter)``: editors declare them, nothing is inferred from names); the
    key sites of ``payload["sites"]`` resolved on its adapter (a bad site raises ``EditorError``
    here, before anything else is scheduled)."""
    model, _, adapter = state
    editor = payload.get("editor")
    return {"fingerprint": weights_fingerprint(model) if payload.get("fingerprint", True) else None,
            "window": window_samples(adapter),
            "adapter": adapter.name,
            "n_layers": {s: int(adapter.n_layers(s)) for s in ("audio", "text") if s in adapter.streams},
            "sites": [str(s) for s in editor.resolve_sites(adapter)] if editor is not None else [],
            "stats_sites": [str(s) for s in editor.stats_sites(adapter)] if editor is not None else [],
            "key_sites": [str(s) for s in key_sites(adapter, payload["sites"])] if payload.get("sites") else []}



def known_shard(state: Any, payload: dict[str, Any]) -> list[bool]:
    """Shard function: top-1 correctness of each prompt's true object (``--known-only``)."""
    model, processor, adapter = state
    return list(first_token_scores(model, processor, adapter, payload["prompts"], target="target",
                                   batch_size=payload.get("batch", 32)).correct)


def eval_shard(state: Any, payload: dict[str, Any]) -> list[tuple[str, bool]]:
    """Shard function: evaluate ``payload["items"]`` (``(index, case)`` pairs) with
    ``payload["editor"]``, writing each finished case atomically; cases whose file exists are
    skipped (all of them, or — accumulating — none). Returns ``[(case id, computed now?)]``."""
    folder = Path(payload["dir"])
    items = payload["items"]
    acc = payload["accumulate"]
    todo = [(i, c) for i, c in items if not case_path(folder, c.case_id).exists()]
    if acc and todo:
        todo = list(items)  # accumulated edits depend on every earlier case: all or nothing
    fault, shard = payload.get("fault"), payload["shard"]
    maybe_fail(fault, shard, 0)
    now: set[str] = set()
    if todo:
        ctx = _context(state, payload.get("store_root"), payload.get("corpus"), payload["fingerprint"])

        def write(k: int, record: dict[str, Any], edit: dict[str, Any] | None, seconds: float) -> None:
            index, case = todo[k]
            path = case_path(folder, case.case_id)
            if not path.exists():  # an accumulating rerun keeps the files a finished case (or lost attempt) wrote
                write_case(path, {"index": index, "case_id": case.case_id, "record": record,
                                  "edit": edit, "edit_seconds": seconds, "worker": os.getpid()})
                now.add(case.case_id)
            maybe_fail(fault, shard, len(now))

        run(payload["editor"], ctx, [c for _, c in todo], accumulate=acc, progress=payload.get("progress"),
            on_case=write)
    return [(c.case_id, c.case_id in now) for _, c in items]


# ---------------------------------------------------------------------------- drivers
def known_filter(executor: Any, prompts: Sequence[Any], *, batch: int = 32) -> list[bool]:
    """``first_token_scores(...).correct`` over ``prompts`` on the executor, in chunks of whole
    ``batch`` es (the same forward batches as one call, so the same decisions)."""
    parts = executor.map(known_shard, [{"prompts": [prompts[j] for j in r], "batch": batch}
                                       for r in chunks(len(prompts), 4 * batch)])
    return [ok for p in parts for ok in p]


def evaluate(executor: Any, editor: Any, cases: Sequence[Any], out: "str | Path", *,
             accumulate: bool | None = None, store: Any = None, corpus: Any = None,
             fingerprint: str | None = None, meta: dict[str, Any] | None = None,
             shard_size: int | None = None, progress: Callable[[str], None] | None = None) -> Any:
    """:func:`lalm_interp.evaluation.run` over ``cases`` on ``executor``, resumable; returns the
    same :class:`~lalm_interp.evaluation.RunResult` (records and edits equal one uninterrupted
    in-process run's given the same statistics cache; ``meta`` adds executor, workers, shards,
    ``n_computed_now``, ``n_resumed``, ``cases_dir``).

    store / corpus: the statistics cache and corpus. On an executor whose workers are other
    processes, an editor that reads key statistics has them computed first with
    :func:`~lalm_interp.evaluation.stats.key_stats_sharded` (spread over the workers), then every
    worker reads them from ``store``, which must be on a file system all workers see; in this
    process the editor computes them itself, as ``evaluation.run`` does. fingerprint: the model's
    (default: what a worker computes). shard_size: cases per shard (default ~4 shards per worker,
    at most 16); accumulating modes always run as one shard.

    Resume: every finished case is its own file under ``OUT/cases/<run key>/``; a rerun skips them.
    Accumulating modes cannot skip cases — case k's edit starts from the weights cases 0..k-1 left —
    so a killed accumulating run restarts from case 1 (said on ``progress``); a finished one is read
    back without editing anything. See docs/usage/evaluation.md#resuming-a-run.
    """
    say = progress or (lambda s: None)
    t0 = time.time()
    acc = editor.accumulates if accumulate is None else bool(accumulate)
    ids = [c.case_id for c in cases]
    _unique(ids)
    editor.reset()
    # resolves the sites on a worker: a bad site fails before anything is written
    info = executor.map(worker_info, [{"editor": editor, "fingerprint": fingerprint is None}])[0]
    fp = fingerprint or info["fingerprint"]
    in_process = bool(getattr(executor, "in_process", False))
    root = None
    if store is not None:
        root = str(Path(store.root).resolve())
        if corpus is not None and not in_process:
            for site in info["stats_sites"]:
                say(f"key statistics at {str(site).split('@')[0]}@in on {executor!r}")
                key_stats_sharded(executor, corpus, site, store=store, model=fp)
    folder = case_folder(out, editor, acc, fp, getattr(corpus, "id", None), ids)
    done = _done(folder, cases, say)
    todo = [(i, c) for i, c in enumerate(cases) if c.case_id not in done]
    marker = folder / UNFINISHED
    if acc and todo:
        if marker.exists() or done:
            say(f"an earlier accumulating run in {folder} did not finish; case k's edit depends on cases "
                f"1..k-1, so it cannot skip cases: editing all {len(cases)} cases again from case 1 "
                f"(docs/usage/evaluation.md#resuming-a-run)")
        todo = list(enumerate(cases))
        groups = [range(len(todo))]
        if not in_process:
            say(f"{len(cases)} cases accumulate their edits: one shard on one worker ({DOCS}#evaluation)")
    else:
        if done:
            say(f"resuming: {len(done)} of {len(cases)} cases finished already in {folder}; {len(todo)} to go")
        groups = chunks(len(todo), shard_size_for(executor, len(todo), shard_size))
    fault = fault_spec()
    ship = (lambda c: c) if in_process else portable
    payloads = [{"shard": s, "items": [(todo[j][0], ship(todo[j][1])) for j in r], "editor": editor,
                 "accumulate": acc, "dir": str(folder), "store_root": root, "corpus": corpus, "fingerprint": fp,
                 "fault": fault, "progress": progress if in_process else None} for s, r in enumerate(groups)]
    if payloads and not in_process:
        say(f"{len(done)} of {len(cases)} cases done already; {len(todo)} in {len(payloads)} shard(s) on {executor!r}")
    if payloads:
        with atomic_write(marker) as tmp:
            tmp.write_text(json.dumps({"pid": os.getpid(), "started": time.time(), "cases": len(todo)}))
    res = executor.map(eval_shard, payloads,
                       on_result=None if in_process else
                       (lambda i, r: say(f"shard {i + 1}/{len(payloads)}: {len(r)} case(s) done")))
    marker.unlink(missing_ok=True)
    remove_orphan_temps(folder)
    n_now = sum(now for shard in res for _, now in shard)
    return _merge(folder, cases, editor, acc, t0, {
        "executor": executor.name, "workers": executor.workers, "shards": len(payloads),
        "n_computed_now": n_now, "n_resumed": len(cases) - n_now, **(meta or {})})


def evaluate_resumable(editor: Any, ctx: Any, cases: Sequence[Any], out: "str | Path", *,
                       accumulate: bool | None = None, meta: dict[str, Any] | None = None,
                       progress: Callable[[str], None] | None = None) -> Any:
    """:func:`evaluate` in this process on the model, statistics cache and corpus of ``ctx`` (an
    ``EditContext``)."""
    ex = LocalExecutor(state=(ctx.model, ctx.processor, ctx.adapter))
    return evaluate(ex, editor, cases, out, accumulate=accumulate, store=ctx.store, corpus=ctx.corpus,
                    fingerprint=ctx.fingerprint, meta=meta, progress=progress)
