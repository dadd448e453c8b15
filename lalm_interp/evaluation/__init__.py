"""Editing evaluation on spoken prompts (paper §4, ROME's CounterFact protocol).

* Efficacy (ES): % of edits where P(target_new) > P(target_true) on the edit prompt.
* Paraphrase (PS): the same on the case's paraphrase prompts (per case: the fraction of its
  paraphrases; then the mean over cases).
* Neighbourhood (NS): % of neighbourhood prompts (other subjects, same relation and true object)
  where P(true) > P(new) still holds (per case fraction, then mean over cases).
* Score: the harmonic mean of ES, PS and NS.
* Reached: % of edits after which target_new is the model's top-1 continuation of the edit prompt
  at every one of its tokens (greedy decoding says target_new) — stricter than ES, which only
  compares target_new with target_true.

Every summary also says what was measured: ``n_cases``, ``n_paraphrase`` / ``n_neighbourhood``
(prompts actually scored) and ``n_paraphrase_skipped`` / ``n_neighbourhood_skipped`` (longer than
the encoder window: never truncated, left out), and the edit size ``dW_rel_median`` /
``dW_rel_max`` (‖ΔW‖_F/‖W‖_F over every edited weight of every case; see :func:`edit_sizes`).

P(object) is the teacher-forced probability of the object's tokens, compared per token (mean
log-probability, as ROME does), so multi-token objects of different lengths compare fairly.
Single-layer modes reset the weights after every case (paper); multi-layer modes accumulate the
edits and are scored once all are applied (``accumulate=``). Result files keep every case's
probabilities before and after. See ``docs/usage/evaluation.md``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..bench.store import atomic_write_json
from ..editors.base import EditContext, Editor, EditorError, EditRequest
from ..errors import LalmInterpError
from ..inputs import DEFAULT_INSTRUCTION, build_inputs, place, window_samples
from ..scoring import (
    object_prefix,
    object_token_ids,
    score_objects,
    teacher_forced_inputs,
)

RESULT_FILE = "result.json"
FORMAT = 1


# ---------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Probe:
    """A prompt that is only scored: ``audio`` (or an ``item`` whose ``.audio`` is read on use),
    its true object, and the instruction."""

    id: str
    target_true: str
    audio_array: Any = None
    item: Any = None
    instruction: str = DEFAULT_INSTRUCTION
    sample_rate: int | None = None

    @property
    def audio(self):
        return self.audio_array if self.audio_array is not None else self.item.audio

    @property
    def rate(self) -> int | None:
        """The audio's rate in Hz: ``sample_rate`` if given, else the item's ``sample_rate``."""
        return self.sample_rate or getattr(self.item, "sample_rate", None)


def probe_rate(probe: Any) -> int | None:
    """The sample rate of a probe (a :class:`Probe` or a ``SpokenPrompt``), or ``None`` if it has none."""
    r = getattr(probe, "rate", None)
    return r if isinstance(r, int) else getattr(probe, "sample_rate", None)


def _build(ctx: EditContext, probes: Sequence[Any]):
    """``build_inputs`` for probes, each at its own stated sample rate (never a guessed one)."""
    return build_inputs(ctx.processor, ctx.adapter, [p.audio for p in probes],
                        instruction=[p.instruction for p in probes],
                        sample_rate=[probe_rate(p) for p in probes])


@dataclass(frozen=True)
class EditCase:
    """One CounterFact-style case: the edit request, its paraphrase probes (true object =
    the request's) and its neighbourhood probes (their own true object, which must survive)."""

    request: EditRequest
    paraphrases: tuple[Probe, ...] = ()
    neighbours: tuple[Probe, ...] = ()

    @property
    def case_id(self) -> str:
        return self.request.id


def cases_from_benchmark(bench: Any, *, word: str = "last", rendition: str | None = None,
                         limit: int | None = None, fact_ids: Sequence[str] | None = None,
                         instruction: str = DEFAULT_INSTRUCTION) -> list[EditCase]:
    """One case per fact with a ``prompt`` item in ``rendition`` (default: the benchmark's first)
    and a target_new. Paraphrases and neighbourhood prompts: all renditions."""
    rend = rendition or (str(bench.renditions[0]) if bench.renditions else None)
    by_fact: dict[str, dict[str, list]] = {}
    for it in bench:
        by_fact.setdefault(it.fact_id, {}).setdefault(it.form, []).append(it)
    wanted = list(fact_ids) if fact_ids is not None else list(by_fact)
    cases = []
    for fid in wanted:
        forms = by_fact.get(fid, {})
        prompts = [it for it in forms.get("prompt", []) if rend is None or str(it.rendition) == rend]
        if not prompts or not prompts[0].target_new:
            continue
        p = prompts[0]
        kl = [it for it in forms.get("subject", []) if str(it.rendition) == str(p.rendition)]
        req = EditRequest.from_item(p, word=word, kl_items=kl[:1], instruction=instruction)
        para = tuple(Probe(it.item_id, it.target_true, item=it, instruction=instruction) for it in forms.get("paraphrase", []))
        neigh = tuple(Probe(it.item_id, it.target_true, item=it, instruction=instruction)
                      for it in forms.get("neighbourhood", []))
        cases.append(EditCase(req, para, neigh))
        if limit is not None and len(cases) >= limit:
            break
    return cases


def with_produced_targets(cases: Sequence[EditCase], objects: Sequence[str] | None = None) -> list[EditCase]:
    """The cases whose target_new the model demonstrably produces: it is the true object of one of
    ``objects`` (default: of ``cases`` themselves — call this on *known* cases, so every kept
    target is the model's own answer to some other spoken prompt).

    Why: an edit at an audio layer can only change what the decoder hears. A target_new that the
    decoder never produces from any audio cannot be reached from the audio side at all — measured
    on the organism (docs/usage/evaluation.md#targets-the-model-produces). Text-side editors do
    not need this; real 7B decoders produce almost any object, so the filter keeps almost
    everything there. Order is kept."""
    pool = {c.request.target_true for c in cases} if objects is None else set(objects)
    return [c for c in cases if c.request.target_new in pool]


# ---------------------------------------------------------------------------- scoring
def score_pairs(ctx: EditContext, probes: Sequence[Any], new: Sequence[str], true: Sequence[str], *,
                batch_size: int = 16) -> list[tuple[float, float]]:
    """(mean-token log P(new), mean-token log P(true)) for each probe (anything with ``.audio`` and
    ``.instruction``), ``batch_size`` probes per forward; ``None`` for a probe whose audio is longer
    than the encoder window (it cannot be scored without truncation)."""
    window = window_samples(ctx.adapter)
    audios = [p.audio for p in probes]
    fits = [i for i, a in enumerate(audios) if len(a) <= window]
    out: list[tuple[float, float] | None] = [None] * len(probes)
    for s0 in range(0, len(fits), batch_size):
        part = fits[s0:s0 + batch_size]
        batch = _build(ctx, [probes[i] for i in part])
        rows = [r for r in range(len(part)) for _ in (0, 1)]
        objs = [o for i in part for o in (new[i], true[i])]
        s = score_objects(ctx.model, ctx.adapter, batch.select(rows), objs)
        mean = [float(t) / len(ids) for t, ids in zip(s.total, s.token_ids)]
        for j, i in enumerate(part):
            out[i] = (mean[2 * j], mean[2 * j + 1])
    return out


def top1_reached(ctx: EditContext, probe: Any, obj: "str | Sequence[int]") -> bool | None:
    """Whether ``obj`` (an object string, or its token ids) is the model's top-1 continuation of
    ``probe`` at every one of its tokens (teacher-forced argmax = greedy decoding emits ``obj``);
    ``None`` if the audio is longer than the encoder window."""
    import torch

    if len(probe.audio) > window_samples(ctx.adapter):
        return None
    batch = _build(ctx, [probe])
    ids = object_token_ids(ctx.tokenizer, obj, object_prefix(ctx.adapter, batch)) if isinstance(obj, str) else list(obj)
    inputs, L = teacher_forced_inputs(batch, [ids], ctx.tokenizer.pad_token_id or 0)
    with torch.no_grad():
        logits = ctx.model(**place(inputs, ctx.model), use_cache=False).logits
    top = logits[0, L - 1: L - 1 + len(ids)].argmax(-1).tolist()
    return top == list(ids)


def score_case(ctx: EditContext, case: EditCase) -> dict[str, Any]:
    """Probabilities (mean-token log-probs and P) of new and true objects on every prompt of a case,
    and on the edit prompt whether target_new is the top-1 continuation (``reached``)."""
    r = case.request
    probes = [r.prompt, *case.paraphrases, *case.neighbours]
    new = [r.target_new] * len(probes)
    true = [r.target_true] * (1 + len(case.paraphrases)) + [n.target_true for n in case.neighbours]
    lp = score_pairs(ctx, probes, new, true)

    def rec(i: int) -> dict[str, Any]:
        if lp[i] is None:
            return {"id": probes[i].id, "skipped": "audio longer than the encoder window"}
        return {"id": probes[i].id, "logp_new": lp[i][0], "logp_true": lp[i][1],
                "p_new": math.exp(lp[i][0]), "p_true": math.exp(lp[i][1])}

    k = 1 + len(case.paraphrases)
    edit = rec(0)
    if "logp_new" in edit:
        edit["reached"] = top1_reached(ctx, r.prompt, r.target_new)
    return {"edit": edit, "paraphrase": [rec(i) for i in range(1, k)],
            "neighbourhood": [rec(i) for i in range(k, len(probes))]}


# ---------------------------------------------------------------------------- metrics
def harmonic_mean(*xs: float) -> float:
    """Harmonic mean (0 if any value is 0)."""
    if any(x <= 0 for x in xs):
        return 0.0
    return len(xs) / sum(1.0 / x for x in xs)


def case_success(scores: dict[str, Any]) -> dict[str, float | None]:
    """Per-case ES (0/1), PS and NS (fractions; ``None`` when the case has no such (scorable) prompts),
    ``reached`` (0/1: target_new top-1 on the edit prompt; ``None`` when not recorded)."""
    e = scores["edit"]
    es = float(e["logp_new"] > e["logp_true"]) if "logp_new" in e else None
    para = [p for p in scores["paraphrase"] if "logp_new" in p]
    neigh = [n for n in scores["neighbourhood"] if "logp_new" in n]
    ps = sum(p["logp_new"] > p["logp_true"] for p in para) / len(para) if para else None
    ns = sum(n["logp_true"] > n["logp_new"] for n in neigh) / len(neigh) if neigh else None
    reached = float(e["reached"]) if e.get("reached") is not None else None
    return {"es": es, "ps": ps, "ns": ns, "reached": reached}


SUMMARY_FIELDS = ("ES", "PS", "NS", "Score", "reached", "n_cases", "n_paraphrase", "n_paraphrase_skipped",
                  "n_neighbourhood", "n_neighbourhood_skipped")
"""Keys of :func:`summarise`; a run's ``summary`` adds :func:`edit_sizes`' keys."""


def summarise(records: Sequence[dict[str, Any]], when: str = "after") -> dict[str, Any]:
    """ES, PS, NS, reached (percent, mean over cases that have such prompts), Score = HM(ES, PS, NS),
    and what was scored: ``n_cases``, ``n_paraphrase`` / ``n_neighbourhood`` (prompts scored over
    those cases) and ``n_paraphrase_skipped`` / ``n_neighbourhood_skipped`` (longer than the window)."""
    ok = [r for r in records if when in r]
    succ = [case_success(r[when]) for r in ok]

    def mean(key: str) -> float | None:
        vals = [s[key] for s in succ if s[key] is not None]
        return 100.0 * sum(vals) / len(vals) if vals else None

    def count(form: str, scored: bool) -> int:
        return sum(("logp_new" in p) == scored for r in ok for p in r[when][form])

    es, ps, ns = mean("es"), mean("ps"), mean("ns")
    parts = [x for x in (es, ps, ns) if x is not None]
    score = harmonic_mean(*parts) if parts else None
    return {"ES": es, "PS": ps, "NS": ns, "Score": score, "reached": mean("reached"), "n_cases": len(ok),
            "n_paraphrase": count("paraphrase", True), "n_paraphrase_skipped": count("paraphrase", False),
            "n_neighbourhood": count("neighbourhood", True),
            "n_neighbourhood_skipped": count("neighbourhood", False)}


def edit_rel_sizes(edit: dict[str, Any]) -> dict[str, float]:
    """weight path → ‖ΔW‖_F/‖W‖_F of one edit record (``EditHandle.to_json()``): ``info["dW_rel"]``
    when the handle records it, else its ``changes``' ``delta_rel``."""
    rel = (edit.get("info") or {}).get("dW_rel")
    if isinstance(rel, dict) and rel:
        return {str(k): float(v) for k, v in rel.items()}
    return {c["module"]: float(c["delta_rel"]) for c in edit.get("changes", []) if "delta_rel" in c}


def edit_sizes(edits: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``dW_rel_median`` / ``dW_rel_max``: median and max of ‖ΔW‖/‖W‖ over every edited weight of
    every edit (``None`` without edits); ``leak_max``: the largest AlphaEdit protected-key leak
    max|ΔW K₀|/max|W K₀| accumulated since the first edit (``info["leak_total"]``, also inside
    cross-modal records), when recorded."""
    import statistics

    rel = [v for e in edits for v in edit_rel_sizes(e).values()]
    leaks = [v for e in edits for k, v in _walk(e.get("info") or {}) if k == "leak_total" and isinstance(v, (int, float))]
    return {"dW_rel_median": statistics.median(rel) if rel else None, "dW_rel_max": max(rel) if rel else None,
            "leak_max": max(leaks) if leaks else None}


def _walk(d: Any):
    if isinstance(d, dict):
        for k, v in d.items():
            yield k, v
            yield from _walk(v)
    elif isinstance(d, list):
        for v in d:
            yield from _walk(v)


# ---------------------------------------------------------------------------- runs
@dataclass
class RunResult:
    """What :func:`run` produced; ``save(dir)`` writes ``dir/result.json``."""

    method: str
    label: str
    sites: list[str]
    hparams: dict[str, Any]
    accumulate: bool
    records: list[dict[str, Any]]
    edits: list[dict[str, Any]]
    summary: dict[str, Any]
    baseline: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def mod(self) -> str:
        return modality(self.sites)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "method": self.method, "label": self.label, "mod": self.mod,
                "sites": self.sites, "hparams": self.hparams, "accumulate": self.accumulate,
                "summary": self.summary, "baseline": self.baseline, "meta": self.meta,
                "cases": self.records, "edits": self.edits}

    def save(self, out: "str | Path") -> Path:
        path = Path(out) / RESULT_FILE
        atomic_write_json(path, self.to_json())
        return path


def modality(sites: Sequence[str]) -> str:
    streams = {s.split(".")[0] for s in sites}
    if streams == {"audio"}:
        return "Audio"
    if streams == {"text"}:
        return "Text"
    return "Multi"  # the paper's Table-1 "Mod." for audio-then-text (cross-modal) edits


def score_before(ctx: EditContext, cases: Sequence[EditCase]) -> list[dict[str, Any]]:
    """The unedited scores of every case (:func:`score_case`), to share between several :func:`run`
    calls on the same model (``run(..., before=...)``): the baseline is then scored once, not per editor."""
    return [score_case(ctx, c) for c in cases]


def run(editor: Editor, ctx: EditContext, cases: Sequence[EditCase], *, accumulate: bool | None = None,
        meta: dict[str, Any] | None = None, progress: Callable[[str], None] | None = None,
        before: Sequence[dict[str, Any]] | None = None,
        on_case: Callable[[int, dict[str, Any], dict[str, Any] | None, float], None] | None = None) -> RunResult:
    """Score every case before editing, edit, score after. ``accumulate=False``: edit, score and
    revert case by case; ``True``: apply all edits in order (no reset), score all, then revert all.
    Default: the editor's own mode (single-layer reset, multi-layer accumulate). A case whose edit
    raises a :class:`~lalm_interp.errors.LalmInterpError` (e.g. :class:`EditorError`) is recorded
    with its error and left out of the metrics. ``before``: the unedited scores from
    :func:`score_before` on the same (unedited) model and cases, reused instead of rescored.
    ``on_case(i, record, edit, edit_seconds)`` is called once case ``i``'s record is final (reset:
    right after its edit is reverted; accumulate: once every edit is reverted), e.g. to write it
    to a file (``lalm_interp.evaluation.runs.eval_shard`` does)."""
    acc = editor.accumulates if accumulate is None else bool(accumulate)
    say = progress or (lambda s: None)
    editor.reset()
    records: list[dict[str, Any]] = []
    edits: list[dict[str, Any]] = []
    case_edit: list[dict[str, Any] | None] = [None] * len(cases)
    case_seconds = [0.0] * len(cases)
    handles = []
    t0 = time.time()
    if before is not None and len(before) != len(cases):
        raise EditorError(f"before= has {len(before)} score records for {len(cases)} cases; use score_before(ctx, cases).")
    for i, case in enumerate(cases):
        b = before[i] if before is not None else score_case(ctx, case)
        records.append({"case_id": case.case_id, "request": case.request.to_json(), "before": b})

    def final(i: int) -> None:
        _add_success(records[i])
        if on_case is not None:
            on_case(i, records[i], case_edit[i], case_seconds[i])

    try:
        for i, (case, rec) in enumerate(zip(cases, records)):
            t = time.time()
            try:
                h = editor.apply(ctx, case.request)
            except LalmInterpError as err:  # EditorError, or e.g. an edit prompt too long for the window
                rec["error"] = str(err)
                say(f"[{i + 1}/{len(cases)}] {case.case_id}: edit failed: {str(err).splitlines()[0]}")
                if not acc:
                    final(i)
                continue
            case_seconds[i] = time.time() - t
            edits.append({"case_id": case.case_id, **h.to_json()})
            case_edit[i] = edits[-1]
            if acc:
                handles.append(h)
            else:
                try:
                    rec["after"] = score_case(ctx, case)
                finally:
                    h.revert()
                edits[-1]["reverted"] = True
                ok = {k: (None if v is None else round(v, 3)) for k, v in case_success(rec['after']).items()}
                say(f"[{i + 1}/{len(cases)}] {case.case_id}: {ok}")  # rounded for reading
                final(i)
        if acc:
            for case, rec in zip(cases, records):
                if "error" not in rec:
                    rec["after"] = score_case(ctx, case)
    finally:
        for h in reversed(handles):
            h.revert()
    if acc:
        for i in range(len(cases)):
            final(i)
    info = {"n_cases": len(cases), "n_failed": sum("error" in r for r in records),
            "edit_seconds": sum(case_seconds), "total_seconds": time.time() - t0, **(meta or {})}
    return result(editor, acc, records, edits, info)


def _add_success(rec: dict[str, Any]) -> None:
    for when in ("before", "after"):
        if when in rec:
            rec[f"success_{when}"] = case_success(rec[when])


def result(editor: Editor, accumulate: bool, records: list[dict[str, Any]], edits: list[dict[str, Any]],
           info: dict[str, Any]) -> RunResult:
    """The :class:`RunResult` of ``editor`` over finished per-case ``records`` (and the ``edits``
    of the cases that were edited): summary after, baseline before, ``info`` as ``meta``."""
    d = editor.describe()
    preset = getattr(editor, "preset", None)
    if preset is not None and "preset" not in info:
        info = {**info, "preset": preset}
    return RunResult(editor.name, editor.label, [str(s) for s in d["sites"]], d["hparams"], accumulate,
                     records, edits, {**summarise(records, "after"), **edit_sizes(edits)},
                     summarise(records, "before"), info)


# ---------------------------------------------------------------------------- table
def load_result(path: "str | Path") -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / RESULT_FILE
    if not p.is_file():
        raise EditorError(f"no result file at {p}; expected a folder written by `lalm-interp edit run --out DIR`.")
    try:
        return json.loads(p.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise EditorError(f"cannot read result file {p}: {err}. Rerun `lalm-interp edit run` to rewrite it.") from err


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def _fmt_n(x: Any) -> str:
    return "–" if x is None else str(x)


def _fmt_rel(x: float | None) -> str:
    return "–" if x is None else f"{x:.3g}"


TABLE_HEADER = "| Mod. | Method | Score | ES | PS | NS | reached | n cases | n para | n neigh | median ‖ΔW‖/‖W‖ |"


def _counts(s: dict[str, Any]) -> str:
    def n(key: str) -> str:
        skipped = s.get(f"{key}_skipped")
        return _fmt_n(s.get(key)) + (f" (+{skipped} skipped)" if skipped else "")

    return f"{_fmt_n(s.get('n_cases'))} | {n('n_paraphrase')} | {n('n_neighbourhood')}"


def table(results: Sequence[dict[str, Any]]) -> str:
    """A Markdown table in the paper's Table-1 shape (Mod., Method, Score, ES, PS, NS), then what
    each row measured: the reached rate (target_new top-1), the number of cases, paraphrase and
    neighbourhood prompts scored (skipped ones — longer than the encoder window — in brackets) and
    the median ‖ΔW‖/‖W‖. One "Unedited" row per distinct (model, benchmark) first."""
    lines = [TABLE_HEADER, "|---|---|---|---|---|---|---|---|---|---|---|"]
    seen = set()
    for r in results:
        key = (r.get("meta", {}).get("model"), r.get("meta", {}).get("bench"))
        if key in seen:
            continue
        seen.add(key)
        b = r["baseline"]
        lines.append(f"| – | Unedited | {_fmt(b['Score'])} | {_fmt(b['ES'])} | {_fmt(b['PS'])} | {_fmt(b['NS'])} | "
                     f"{_fmt(b.get('reached'))} | {_counts(b)} | – |")
    for r in results:
        s = r["summary"]
        lines.append(f"| {r['mod']} | {r['label']} | {_fmt(s['Score'])} | {_fmt(s['ES'])} | {_fmt(s['PS'])} | "
                     f"{_fmt(s['NS'])} | {_fmt(s.get('reached'))} | {_counts(s)} | {_fmt_rel(s.get('dW_rel_median'))} |")
    return "\n".join(lines)
