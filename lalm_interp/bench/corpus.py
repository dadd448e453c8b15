"""Protected-key corpus for null-space editors (AlphaEdit-style): generic speech whose keys an
edit must leave alone. The paper uses 5,000 LibriSpeech utterances; offline, sentences built from
facts that are *not* being edited are synthesised instead, so an editor always has a corpus.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..speech.audio import load_audio
from ..speech.tts import SAMPLE_RATE, Rendition, TTSBackend, synthesize_many
from .datasets import Fact, load_facts
from .errors import BenchmarkError
from .store import ClipStore, _read_jsonl, atomic_write_jsonl, clip_key


@dataclass(frozen=True)
class CorpusUtterance:
    """One protected-corpus utterance. ``audio`` reads the file (16 kHz mono float32).

    Fields:
        utt_id: LibriSpeech id (``"84-121123-0000"``) or ``"synth/<n>/<rendition>"``.
        text: its transcript.
        path: the audio file.
    """

    utt_id: str
    text: str
    path: Path
    _clip_store: ClipStore | None = field(default=None, repr=False, compare=False)

    @property
    def audio(self) -> np.ndarray:
        if self._clip_store is not None:
            return self._clip_store.audio(self.path.stem)
        return load_audio(self.path, key=self.utt_id)

    @property
    def n_samples(self) -> int:
        import soundfile as sf

        return int(sf.info(str(self.path)).frames)


def load_librispeech(root: str | Path, *, limit: int | None = 5000, seed: int = 0
                     ) -> list[CorpusUtterance]:
    """Utterances of a LibriSpeech-style folder: ``**/*.trans.txt`` files whose lines are
    ``<id> <TRANSCRIPT>``, next to ``<id>.flac``. With more than ``limit`` utterances, ``limit``
    are drawn with ``seed`` (default: 5,000 as in the paper, seed 0). Sorted by id. Audio is read
    on access and must be 16 kHz (LibriSpeech is)."""
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkError(f"LibriSpeech folder {str(root)!r} does not exist.\n  expected: e.g. "
                             "LibriSpeech/train-clean-100 with <spk>/<chapter>/*.trans.txt\n  fix: "
                             "pass the right folder, or use synthesise_corpus() offline")
    utts: list[CorpusUtterance] = []
    for trans in sorted(root.rglob("*.trans.txt")):
        for line in trans.read_text("utf-8").splitlines():
            uid, _, text = line.strip().partition(" ")
            if not uid:
                continue
            flac = trans.parent / f"{uid}.flac"
            if not flac.is_file():
                raise BenchmarkError(f"LibriSpeech transcript {str(trans)!r} lists {uid!r} but "
                                     f"{flac.name} is missing.\n  expected: one .flac per line\n"
                                     "  fix: re-extract the archive")
            utts.append(CorpusUtterance(uid, text.strip(), flac))
    if not utts:
        raise BenchmarkError(f"No *.trans.txt transcripts under {str(root)!r}.\n  expected: a "
                             "LibriSpeech-style tree\n  fix: pass the split folder (e.g. "
                             "train-clean-100)")
    if limit is not None and len(utts) > limit:
        utts = sorted(random.Random(seed).sample(utts, limit), key=lambda u: u.utt_id)
    return utts


def generic_sentences(facts: Sequence[Fact], *, exclude: Sequence[str] = (), n: int = 500,
                      seed: int = 0) -> list[str]:
    """``n`` distinct sentences stating facts not in ``exclude`` (fact ids): each fact's prompt
    completed with its true object, then its paraphrases and neighbourhood prompts likewise."""
    skip = set(exclude)
    out: list[str] = []
    seen: set[str] = set()
    for f in facts:
        if f.fact_id in skip:
            continue
        for s in [f"{f.prompt} {f.target_true}."] + \
                 [f"{p} {f.target_true}." for p in f.paraphrases] + \
                 [f"{p} {o}." for p, o in f.neighbourhood]:
            if s not in seen:
                seen.add(s)
                out.append(s)
    random.Random(seed).shuffle(out)
    return out[:n]


def synthesise_corpus(out: str | Path, *, n: int = 500, facts: Sequence[Fact] | None = None,
                      exclude: Sequence[str] = (), backend: TTSBackend | None = None,
                      renditions: Sequence[Rendition] | None = None, workers: int = 2,
                      seed: int = 0) -> list[CorpusUtterance]:
    """Synthesise ``n`` generic sentences (:func:`generic_sentences`; default facts: the shipped
    CounterFact and Known-1000 subsets) into ``out``, cycling through ``renditions`` (default:
    the first three default renditions). Clips are content-addressed and reused like a benchmark's;
    ``out/corpus.jsonl`` lists the utterances. Sentences that fail to synthesise are skipped."""
    from ..speech.espeak import DEFAULT_RENDITIONS, EspeakBackend

    backend = backend or EspeakBackend()
    rends = tuple(renditions or DEFAULT_RENDITIONS[:3])
    facts = list(facts) if facts is not None else (load_facts("counterfact")
                                                   + load_facts("known1000"))
    texts = generic_sentences(facts, exclude=exclude, n=n, seed=seed)
    if len(texts) < n:
        raise BenchmarkError(f"Only {len(texts)} distinct sentences for a corpus of {n}.\n  "
                             "expected: enough non-edited facts\n  fix: pass more facts (e.g. the "
                             "full CounterFact via load_facts(..., path=)) or lower n")
    root = Path(out)
    store = ClipStore(root)
    reqs = [(t, rends[i % len(rends)]) for i, t in enumerate(texts)]
    keys = [clip_key(t, r, backend.version) for t, r in reqs]
    todo = [i for i, k in enumerate(keys) if not store.has(k)]
    ok = set(range(len(reqs))) - set(todo)
    for j, res in synthesize_many(backend, [reqs[i] for i in todo], workers=workers):
        i = todo[j]
        if not isinstance(res, Exception):
            store.put(keys[i], res.audio, {"text": res.text, "rendition": str(reqs[i][1]),
                                           "backend": backend.version,
                                           "n_samples": len(res.audio), "sample_rate": SAMPLE_RATE,
                                           "words": [list(w) for w in res.words]})
            ok.add(i)
    utts = [CorpusUtterance(f"synth/{i}/{reqs[i][1]}", reqs[i][0], store.paths(keys[i])[0], store)
            for i in sorted(ok)]
    atomic_write_jsonl(root / "corpus.jsonl", ({"id": u.utt_id, "text": u.text,
                                                "audio": str(u.path.relative_to(root))}
                                               for u in utts))
    return utts


def open_corpus(out: str | Path) -> list[CorpusUtterance]:
    """Reopen a corpus written by :func:`synthesise_corpus`."""
    root = Path(out)
    rows = _read_jsonl(root / "corpus.jsonl")
    if not rows:
        raise BenchmarkError(f"No corpus.jsonl in {str(root)!r}.\n  expected: a folder written by "
                             "synthesise_corpus\n  fix: synthesise it first")
    store = ClipStore(root)
    return [CorpusUtterance(r["id"], r["text"], root / r["audio"], store) for r in rows]


def protected_corpus(librispeech: str | Path | None = None, *, n: int = 5000,
                     fallback_dir: str | Path | None = None, **synth_kwargs
                     ) -> list[CorpusUtterance]:
    """LibriSpeech (``n`` utterances) when ``librispeech`` is given, else the synthetic fallback
    in ``fallback_dir`` (``n`` sentences; extra keyword arguments go to
    :func:`synthesise_corpus`)."""
    if librispeech is not None:
        return load_librispeech(librispeech, limit=n)
    if fallback_dir is None:
        raise BenchmarkError("No LibriSpeech folder and no fallback_dir.\n  expected: one of "
                             "them\n  fix: protected_corpus(fallback_dir='protected_corpus')")
    return synthesise_corpus(fallback_dir, n=n, **synth_kwargs)
