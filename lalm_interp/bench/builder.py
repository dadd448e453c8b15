"""Build a spoken knowledge benchmark: facts → items (five forms × N renditions) → audio clips,
word timings and subject spans on disk (layout in :mod:`.store`).

A rebuild reuses every clip that exists (content-addressed), so an interrupted build resumes by
rerunning it. A failing item (unspeakable text, subject not in its prompt, unknown voice, an
aligner that misses a subject word) is recorded in ``rejected.jsonl`` with its reason and never
stops or corrupts the rest.
"""

from __future__ import annotations

import contextlib
import datetime
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import LalmInterpError
from ..speech.aligners import Aligner, check_alignment, EventAligner, ManifestAligner
from ..speech.tokens import subject_token_range, whitespace_tokens
from ..speech.tts import SAMPLE_RATE, Rendition, TTSBackend, WordSpan, check_text, synthesize_many
from .datasets import Fact, template_relation_id
from .errors import BenchmarkError
from .store import (FORMAT_VERSION, FORMS, ClipStore, Item, Rejection, atomic_write_json,
                    atomic_write_jsonl, clip_key)
from ..speech.espeak import DEFAULT_RENDITIONS, EspeakBackend
from ..speech.recordings import RecordingsBackend, read_import_manifest


@dataclass(frozen=True)
class ItemSpec:
    """An item before synthesis. ``subject`` is the string whose words form the subject span
    (``None`` for the relation and neighbourhood forms)."""

    item_id: str
    fact_id: str
    form: str
    index: int
    text: str
    subject: str | None
    rendition: Rendition
    target_true: str
    target_new: str | None


@dataclass(frozen=True)
class BuildReport:
    """What a build did. ``synthesised + reused`` clips back the ``n_items`` items written."""

    out: Path
    n_facts: int
    n_items: int
    n_clips: int
    synthesised: int
    reused: int
    rejected: tuple[Rejection, ...]
    max_seconds: float | None = None
    too_long: int = 0

    def summary(self) -> str:
        long = (f" ({self.too_long} of them longer than --max-seconds {self.max_seconds:g} s)"
                if self.max_seconds is not None else "")
        return (f"{self.n_items} items from {self.n_facts} facts in {self.out} ({self.n_clips} "
                f"clips: {self.synthesised} synthesised, {self.reused} reused); "
                f"{len(self.rejected)} rejected{long}")


TOO_LONG = "too long"
"""How a rejection reason for a clip over ``max_seconds`` starts (``rejected.jsonl``)."""


def bad_samples(audio: np.ndarray) -> str | None:
    """Why ``audio`` cannot be stored as a 24-bit FLAC clip without changing it, or ``None``:
    NaN / infinite samples, or samples beyond ±1 (the store would clip them). With counts."""
    x = np.asarray(audio)
    finite = np.isfinite(x)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        return (f"the clip has {int(x.size - finite.sum())} NaN/infinite samples of {x.size} "
                f"(first at {first / SAMPLE_RATE:.3f} s).\n  expected: finite samples\n  fix: "
                "re-export the recording")
    over = np.abs(x) > 1.0
    if over.any():
        return (f"the clip has {int(over.sum())} of {x.size} samples beyond ±1 (peak "
                f"{float(np.abs(x).max()):.3g}); storing it would clip them.\n  expected: samples "
                "in [-1, 1]\n  fix: normalise the recording, e.g. `sox in.wav out.wav gain -n -1`")
    return None


def relation_text(fact: Fact) -> str:
    """The prompt without its subject: ``"{}'s capital is"`` → ``"capital is"``, ``"The mother
    tongue of {} is"`` → ``"The mother tongue of is"``. A possessive ``'s`` left at the subject's
    place goes with it."""
    t = fact.relation_template.replace("{}'s", "{}").replace("{}\u2019s", "{}").replace("{}", " ")
    return " ".join(t.split())


def plan(facts: Sequence[Fact], renditions: Sequence[Rendition], *, forms: Sequence[str] = FORMS,
         max_paraphrases: int | None = None, max_neighbours: int | None = None) -> list[ItemSpec]:
    """Every item a build makes: for each fact, each form in ``forms`` (paraphrases and
    neighbourhood prompts capped by ``max_*``), each rendition."""
    bad = [f for f in forms if f not in FORMS]
    if bad:
        raise BenchmarkError(f"Unknown item form(s) {bad}.\n  expected: some of {', '.join(FORMS)}"
                             "\n  fix: correct forms=")
    specs: list[ItemSpec] = []
    for fact in facts:
        texts: list[tuple[str, int, str, str | None, str, str | None]] = []
        if "prompt" in forms:
            texts.append(("prompt", 0, fact.prompt, fact.subject, fact.target_true, fact.target_new))
        if "subject" in forms:
            texts.append(("subject", 0, fact.subject, fact.subject, fact.target_true,
                          fact.target_new))
        if "relation" in forms:
            texts.append(("relation", 0, relation_text(fact), None, fact.target_true,
                          fact.target_new))
        if "paraphrase" in forms:
            for i, p in enumerate(fact.paraphrases[:max_paraphrases]):
                texts.append(("paraphrase", i, p, fact.subject, fact.target_true, fact.target_new))
        if "neighbourhood" in forms:
            for i, (p, obj) in enumerate(fact.neighbourhood[:max_neighbours]):
                texts.append(("neighbourhood", i, p, None, obj, None))
        for form, i, text, subj, true, new in texts:
            for r in renditions:
                specs.append(ItemSpec(f"{fact.fact_id}/{form}/{i}/{r}", fact.fact_id, form, i,
                                      text, subj, r, true, new))
    return specs


def resolve_renditions(renditions: int | Sequence[Rendition | str]) -> tuple[Rendition, ...]:
    """``3`` → the first three of :data:`~lalm_interp.speech.espeak.DEFAULT_RENDITIONS`; a list of
    renditions or rendition strings is taken as is."""

    if isinstance(renditions, int):
        if not 1 <= renditions <= len(DEFAULT_RENDITIONS):
            raise BenchmarkError(f"renditions={renditions} is out of range.\n  expected: 1–"
                                 f"{len(DEFAULT_RENDITIONS)} default renditions, or an explicit "
                                 "list\n  fix: pass renditions=[Rendition(...), ...] for more")
        return DEFAULT_RENDITIONS[:renditions]
    out = tuple(r if isinstance(r, Rendition) else Rendition.parse(r) for r in renditions)
    if not out or len(set(map(str, out))) != len(out):
        raise BenchmarkError(f"Renditions {list(map(str, out))} are empty or repeat.\n  expected: "
                             "distinct renditions\n  fix: remove duplicates")
    return out


def build(
    facts: Sequence[Fact],
    out: str | Path,
    *,
    backend: TTSBackend | None = None,
    renditions: int | Sequence[Rendition | str] = 3,
    forms: Sequence[str] = FORMS,
    aligner: Aligner | None = None,
    workers: int = 2,
    max_paraphrases: int | None = None,
    max_neighbours: int | None = None,
    source: str = "",
    progress: bool = True,
    on_clip: Callable[[int, int], None] | None = None,
    max_seconds: float | None = None,
) -> BuildReport:
    """Synthesise, align and store a benchmark in ``out`` (created if needed).

    Args:
        facts: the facts to speak.
        out: the benchmark folder; existing clips in it are reused.
        backend: TTS backend. Default: :class:`~lalm_interp.speech.espeak.EspeakBackend`.
        renditions: a count (first N default renditions) or an explicit list. Default 3.
        forms: which item forms to build. Default all of :data:`~.store.FORMS`.
        aligner: word timing source. Default: the TTS's own events (:class:`EventAligner`).
        workers: parallel synthesis workers (forked processes for espeak-ng). Default 2.
        max_paraphrases / max_neighbours: caps per fact. Default: no cap.
        source: recorded in ``benchmark.json``.
        progress: show a tqdm progress bar on stderr. Default True.
        on_clip: called as ``on_clip(done, total)`` after each new clip is stored.
        max_seconds: leave out items whose clip is longer than this many seconds (e.g. the
            model's encoder window: 30 s for Qwen2-Audio, 3 s for the organism); each is recorded
            in ``rejected.jsonl`` with a reason starting ``"too long"`` and counted in
            ``BuildReport.too_long``. Default ``None``: no limit.

    A clip whose samples are NaN / infinite or beyond ±1 is not stored (the FLAC store would
    change it): its items are rejected with the count and the peak.
    """
    if max_seconds is not None and not (isinstance(max_seconds, (int, float)) and max_seconds > 0):
        raise BenchmarkError(f"max_seconds={max_seconds!r} is not a positive number of seconds.\n"
                             "  expected: e.g. 3.0 (the organism's window) or 30 (Qwen2-Audio's)"
                             "\n  fix: pass a positive number, or None for no limit")
    from tqdm import tqdm

    if backend is None:

        backend = EspeakBackend()
    aligner = aligner or EventAligner()
    rends = resolve_renditions(renditions)
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    store = ClipStore(root)
    specs = plan(facts, rends, forms=forms, max_paraphrases=max_paraphrases,
                 max_neighbours=max_neighbours)
    version = backend.version
    rejected: dict[str, Rejection] = {}

    def reject(spec: ItemSpec, err: Exception | str) -> None:
        rejected[spec.item_id] = Rejection(spec.item_id, spec.fact_id, spec.form, spec.text,
                                           str(spec.rendition), str(err))

    # 1. per-item checks that need no audio: speakable text, subject inside the text
    ranges: dict[str, tuple[int, int] | None] = {}
    for spec in specs:
        try:
            check_text(spec.text)
            ranges[spec.item_id] = (None if spec.subject is None
                                    else subject_token_range(spec.text, spec.subject))
        except LalmInterpError as err:
            reject(spec, f"item {spec.item_id!r}: {err}")
    live = [s for s in specs if s.item_id not in rejected]

    # 2. synthesise the clips that are not on disk yet (deduplicated by content key)
    keys = {s.item_id: clip_key(s.text, s.rendition, version) for s in live}
    wanted: dict[str, tuple[str, Rendition]] = {}
    for s in live:
        wanted.setdefault(keys[s.item_id], (s.text, s.rendition))
    missing = [k for k in wanted if not store.has(k)]
    reused = len(wanted) - len(missing)
    failed: dict[str, str] = {}
    synthesised = 0
    bar = tqdm(total=len(missing), desc="synthesising", unit="clip", disable=not progress,
               dynamic_ncols=True)
    requests = [wanted[k] for k in missing]
    try:
        with contextlib.closing(synthesize_many(backend, requests, workers=workers)) as results:
            for i, res in results:
                key = missing[i]
                if isinstance(res, Exception):
                    failed[key] = str(res)
                elif bad_samples(res.audio) is not None:
                    failed[key] = bad_samples(res.audio)  # type: ignore[assignment]
                else:
                    store.put(key, res.audio, {
                        "text": res.text, "rendition": str(wanted[key][1]), "backend": version,
                        "n_samples": int(len(res.audio)), "sample_rate": res.sample_rate,
                        "words": [list(w) for w in res.words], "estimated": list(res.estimated)})
                    synthesised += 1
                bar.update(1)
                if on_clip is not None:
                    on_clip(synthesised + len(failed), len(missing))
    finally:
        bar.close()

    # 3. align each item and check its subject span (and its length)
    items: list[Item] = []
    too_long = 0
    for s in live:
        key = keys[s.item_id]
        if key in failed:
            reject(s, f"item {s.item_id!r}: {failed[key]}")
            continue
        try:
            meta = store.meta(key)
            dur = meta["n_samples"] / meta["sample_rate"]
            if max_seconds is not None and dur > max_seconds:
                reject(s, f"{TOO_LONG}: item {s.item_id!r}: the clip is {dur:.2f} s, longer than "
                          f"--max-seconds {max_seconds:g} s.\n  expected: clips that fit the "
                          "model's window\n  fix: raise --max-seconds, or shorten the text")
                too_long += 1
                continue
            events = tuple(WordSpan(w, a, b) for w, a, b in meta["words"])
            if isinstance(aligner, EventAligner):
                words = aligner.align(s.text, None, key=s.item_id, events=events)  # type: ignore
            else:
                words = aligner.align(s.text, store.audio(key), key=s.item_id, events=events,
                                      sample_rate=SAMPLE_RATE)
            if len(words) != len(whitespace_tokens(s.text)):
                raise BenchmarkError(f"aligner {aligner.name!r} returned {len(words)} spans for "
                                     f"{len(whitespace_tokens(s.text))} words.\n  expected: one "
                                     "per whitespace token\n  fix: fix the aligner")
            check_alignment(words, ranges[s.item_id], key=s.item_id,
                            duration_s=meta["n_samples"] / meta["sample_rate"])
        except LalmInterpError as err:
            reject(s, f"item {s.item_id!r}: {err}")
            continue
        items.append(Item(s.item_id, s.fact_id, s.form, s.index, s.text, s.rendition, words,
                          ranges[s.item_id], s.target_true, s.target_new, key,
                          int(meta["n_samples"]), root))

    # 4. manifests, each written atomically; benchmark.json last marks the build complete
    atomic_write_jsonl(root / "facts.jsonl", (f.to_json() for f in facts))
    atomic_write_jsonl(root / "items.jsonl", (it.to_json() for it in items))
    atomic_write_jsonl(root / "rejected.jsonl", (r.to_json() for r in rejected.values()))
    counts: dict[str, int] = {}
    for it in items:
        counts[it.form] = counts.get(it.form, 0) + 1
    atomic_write_json(root / "benchmark.json", {
        "format": FORMAT_VERSION, "source": source, "backend": version,
        "aligner": aligner.name, "renditions": [str(r) for r in rends], "forms": list(forms),
        "max_paraphrases": max_paraphrases, "max_neighbours": max_neighbours,
        "max_seconds": max_seconds, "n_too_long": too_long,
        "n_facts": len(facts), "n_items": len(items), "n_rejected": len(rejected),
        "items_per_form": counts, "n_clips": len(wanted) - len(failed),
        "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })
    return BuildReport(root, len(facts), len(items), len(wanted) - len(failed), synthesised,
                       reused, tuple(rejected.values()), max_seconds, too_long)


_ID = re.compile(r"^(?P<fact>[^/]+)/(?P<form>[a-z]+)/(?P<index>\d+)/(?P<rendition>.+)$")


def parse_item_id(item_id: str) -> dict[str, str]:
    """Split ``"counterfact:70/prompt/0/en-us:r175:p50"`` into its four parts."""
    m = _ID.match(item_id)
    if not m:
        raise BenchmarkError(f"Malformed item id {item_id!r}.\n  expected: "
                             "'<fact_id>/<form>/<index>/<rendition>'\n  fix: copy the id from "
                             "items.jsonl")
    return m.groupdict()


def import_recordings(
    manifest: str | Path,
    out: str | Path,
    *,
    words: str | Path | Aligner | None = None,
    max_seconds: float | None = None,
    progress: bool = True,
) -> BuildReport:
    """Build a benchmark folder from a user's own recordings (``lalm-interp bench import``).

    Args:
        manifest: CSV or JSONL with ``audio`` (path), ``text`` (the transcript: the prompt without
            its object), ``subject`` (verbatim in ``text``), ``target`` (the true object) and
            optionally ``target_new`` (an edit target) and ``words`` (inline word times). Each
            transcript appears once.
            See docs/usage/recordings.md.
        out: the benchmark folder (same layout as ``bench build``; ``trace run`` / ``edit run``
            read it).
        words: word times from a file (CSV / JSON / TextGrid, keyed by the audio file's stem; see
            :class:`~lalm_interp.speech.aligners.ManifestAligner`) or any
            :class:`~lalm_interp.speech.aligners.Aligner` (e.g. WhisperX). Default: the
            manifest's inline ``words``.
        max_seconds: leave out (and count) clips longer than this. Default: no limit.

    Each row becomes one fact (``recordings:<row>``) with one ``prompt`` item. Audio at any rate
    and channel count is resampled to 16 kHz mono. Rows that cannot be used are listed in one
    :class:`~lalm_interp.speech.errors.SpeechError` before anything is written; a clip whose
    audio or word times are bad is rejected with its reason (``rejected.jsonl``), like in
    ``bench build``.
    """

    if isinstance(words, (str, Path)):
        aligner: Aligner | None = ManifestAligner.load(words)
    else:
        aligner = words
    rows = read_import_manifest(manifest, need_words=aligner is None)
    facts = []
    for r in rows:
        a, b = subject_token_range(r.text, r.subject)
        toks = whitespace_tokens(r.text)
        template = " ".join([t.text for t in toks[:a]] + ["{}"] + [t.text for t in toks[b + 1:]])
        facts.append(Fact(case_id=r.row, subject=r.subject, prompt=r.text,
                          relation_template=template, relation_id=template_relation_id(template),
                          target_true=r.target, target_new=r.target_new, source="recordings"))
    backend = RecordingsBackend(manifest, aligner)
    return build(facts, out, backend=backend, renditions=[Rendition()], forms=("prompt",),
                 workers=1, source=f"recordings:{Path(manifest).name}", progress=progress,
                 max_seconds=max_seconds)
