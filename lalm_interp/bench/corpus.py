"""Protected-key corpus for null-space editors (AlphaEdit-style): generic speech whose keys an
edit must leave alone. The paper uses 5,000 LibriSpeech utterances (:data:`LIBRISPEECH_N`);
offline, :data:`SYNTH_N` sentences built from facts that are *not* being edited are synthesised
instead, in all eight default renditions, so an editor always has a corpus. The synthesised size
is where the protected subspace stops growing on held-out speech (measured in
``docs/editors/protected-corpus.md``).
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
from ..speech.espeak import DEFAULT_RENDITIONS, EspeakBackend

LIBRISPEECH_N = 5000
"""Utterances drawn from LibriSpeech for the protected corpus (the paper's 5,000)."""
SYNTH_N = 600
"""Sentences of the synthesised fallback corpus. Measured on the organism
(docs/editors/protected-corpus.md): the energy of held-out speech keys outside the corpus keys'
subspace stops falling at 200-400 clips that fit the encoder window; 600 sentences give ~430 such
clips on the organism's 3 s window (all 600 on Qwen2-Audio's 30 s) and synthesise in about a minute
on 2 cores."""


@dataclass(frozen=True)
class CorpusUtterance:
    """One protected-corpus utterance. ``audio`` reads the file as 16 kHz mono float32 (a file at
    another rate is resampled, see :func:`lalm_interp.load_audio`).

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
    def sample_rate(self) -> int:
        """The rate of :attr:`audio` in Hz (always 16 kHz: other files are resampled on reading)."""
        return SAMPLE_RATE

    @property
    def n_samples(self) -> int:
        """Length of :attr:`audio` in samples at 16 kHz (from the file header; no decoding)."""
        import soundfile as sf

        info = sf.info(str(self.path))
        return int(info.frames) if info.samplerate == SAMPLE_RATE else \
            -(-int(info.frames) * SAMPLE_RATE // int(info.samplerate))


def load_librispeech(root: str | Path, *, limit: int | None = 5000, seed: int = 0
                     ) -> list[CorpusUtterance]:
    """Utterances of a LibriSpeech-style folder: ``**/*.trans.txt`` files whose lines are
    ``<id> <TRANSCRIPT>``, next to ``<id>.flac``. With more than ``limit`` utterances, ``limit``
    are drawn with ``seed`` (default: 5,000 as in the paper, seed 0). Sorted by id. Audio is read
    on access (LibriSpeech is 16 kHz; other rates are resampled to 16 kHz)."""
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


def synthesise_corpus(out: str | Path, *, n: int = SYNTH_N, facts: Sequence[Fact] | None = None,
                      exclude: Sequence[str] = (), backend: TTSBackend | None = None,
                      renditions: Sequence[Rendition] | None = None, workers: int = 2,
                      seed: int = 0) -> list[CorpusUtterance]:
    """Synthesise ``n`` generic utterances (:func:`generic_sentences`; default facts: the shipped
    CounterFact and Known-1000 subsets) into ``out``, cycling through ``renditions`` (default: all
    eight default renditions — more speakers, accents and rates than the first three gave the
    audio keys a slightly larger span on held-out speech, docs/editors/protected-corpus.md). When
    there are fewer than ``n`` distinct sentences, sentence i is spoken again in the next
    rendition(s) (distinct (sentence, rendition) pairs) until ``n`` utterances exist. Clips are
    content-addressed and reused like a benchmark's; ``out/corpus.jsonl`` lists the utterances.
    Sentences that fail to synthesise are skipped."""

    backend = backend or EspeakBackend()
    rends = tuple(renditions or DEFAULT_RENDITIONS)
    facts = list(facts) if facts is not None else (load_facts("counterfact")
                                                   + load_facts("known1000"))
    texts = generic_sentences(facts, exclude=exclude, n=n, seed=seed)
    if len(texts) * len(rends) < n:
        raise BenchmarkError(f"Only {len(texts)} distinct sentences x {len(rends)} renditions for a corpus of "
                             f"{n}.\n  expected: enough non-edited facts\n  fix: pass more facts (e.g. the "
                             "full CounterFact via load_facts(..., path=)), more renditions, or lower n")
    root = Path(out)
    store = ClipStore(root)
    reqs = [(texts[i % len(texts)], rends[(i % len(texts) + i // len(texts)) % len(rends)]) for i in range(n)]
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


def corpus_id(utts: Sequence[CorpusUtterance], source: str = "synth") -> str:
    """A statistics-cache name for ``utts``: ``<source>:<n>:<hash of the ids and texts>`` — two
    corpora share cached statistics only when they hold the same utterances."""
    import hashlib

    h = hashlib.sha256("\n".join(f"{u.utt_id}\t{u.text}" for u in utts).encode()).hexdigest()[:10]
    return f"{source}:{len(utts)}:{h}"


def protected_corpus(librispeech: str | Path | None = None, *, n: int | None = None,
                     fallback_dir: str | Path | None = None, **synth_kwargs
                     ) -> list[CorpusUtterance]:
    """LibriSpeech (``n`` utterances, default :data:`LIBRISPEECH_N` = 5,000 as in the paper) when
    ``librispeech`` is given, else the synthetic fallback in ``fallback_dir`` (``n`` utterances,
    default :data:`SYNTH_N`; extra keyword arguments go to :func:`synthesise_corpus`)."""
    if librispeech is not None:
        return load_librispeech(librispeech, limit=LIBRISPEECH_N if n is None else n)
    if fallback_dir is None:
        raise BenchmarkError("No LibriSpeech folder and no fallback_dir.\n  expected: one of "
                             "them\n  fix: protected_corpus(fallback_dir='protected_corpus')")
    return synthesise_corpus(fallback_dir, n=SYNTH_N if n is None else n, **synth_kwargs)
