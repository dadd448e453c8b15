"""Word spans → positions at every stage of the model (mel, encoder frames, LLM audio tokens, and
the LLM sequence), for one spoken prompt.

Named spans: ``subject``, ``first_subject_word``, ``last_subject_word``, ``last_word``,
``before_subject`` / ``after_subject`` (non-empty only when such words exist) and, on the LLM
sequence only, ``last_token``. A word range ``(i, j)`` (inclusive word indices) works too.
All spans are half-open ``(start, stop)`` and always inside the valid (unpadded) frames.

A word ``[start_s, end_s)`` covers the frames whose *centres* lie inside it (see
:meth:`~lalm_interp.rates.RateChain.seconds_to_span` and ``docs/gotchas/frame-rates.md``), so two
words that touch never share a frame, and a word shorter than one frame still gets the frame whose
cell holds its midpoint. A word with ``start_s == end_s`` is a token that is not spoken (a dash
espeak-ng skips): it is allowed in the word list but owns no frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

from .errors import SpanError
from .rates import RateChain
from .sites import suggest

SEQ = "seq"
NAMED_SPANS = (
    "subject",
    "first_subject_word",
    "last_subject_word",
    "last_word",
    "before_subject",
    "after_subject",
    "last_token",
)
SpanName = Union[str, tuple[int, int]]


@dataclass(frozen=True)
class Word:
    """One spoken word: its text and its start/end time in seconds within the clip
    (``start_s == end_s``: a token that is not spoken; it owns no frames)."""

    text: str
    start_s: float
    end_s: float

    def __iter__(self):  # unpacks like the speech module's WordSpan: ``text, start_s, end_s = w``
        return iter((self.text, self.start_s, self.end_s))

    def __getitem__(self, k):
        return (self.text, self.start_s, self.end_s)[k]


def as_words(words: Sequence) -> tuple[Word, ...]:
    """Accept ``Word`` s or ``(text, start_s, end_s)`` tuples."""
    out = []
    for k, w in enumerate(words):
        if isinstance(w, Word):
            out.append(w)
            continue
        if w[1] is None or w[2] is None:
            raise SpanError(f"word {k} {w[0]!r} has no timing (an aligner could not place it); re-align the clip.")
        out.append(Word(str(w[0]), float(w[1]), float(w[2])))
    return tuple(out)


@dataclass(frozen=True)
class PositionMap:
    """Where each word of one spoken prompt sits, at every stage.

    chain: the adapter's rate chain.
    n_mel: real mel frames of the clip.
    audio_start: first LLM sequence position of the audio.
    last: LLM position of the last text token.
    words: word timings of the clip.
    subject: inclusive word-index range ``(first, last)`` of the subject.
    """

    chain: RateChain
    n_mel: int
    audio_start: int
    last: int
    words: tuple[Word, ...]
    subject: tuple[int, int]

    def __post_init__(self) -> None:
        words = self.words
        if not words:
            raise SpanError("no word timings given; a spoken prompt needs at least one timed word.")
        dur = self.n_mel / self.chain.mel_rate
        prev = 0.0
        for k, w in enumerate(words):
            if not str(w.text).strip():
                raise SpanError(
                    f"word {k} has no text ({w.text!r}); expected one word per whitespace token of the prompt. "
                    "Build the words from the text's tokens (speech.tokens.whitespace_tokens) or the TTS's word spans."
                )
            if not (0 <= w.start_s <= w.end_s) or not math.isfinite(w.end_s):
                raise SpanError(
                    f"word {k} {w.text!r}: [{w.start_s}, {w.end_s}) s is not a valid interval; expected "
                    "0 <= start <= end (end == start only for a token that is not spoken)."
                )
            if w.start_s < prev - 1e-6:
                raise SpanError(f"word {k} {w.text!r} starts at {w.start_s:.3f} s, before the previous word ends.")
            if w.start_s > dur or (w.start_s == dur and w.end_s > w.start_s):
                raise SpanError(
                    f"word {k} {w.text!r} starts at {w.start_s:.3f} s, after the clip's {dur:.3f} s of real audio; "
                    "the timings do not belong to this clip."
                )
            prev = w.end_s
        a, b = self.subject
        if not (0 <= a <= b < len(words)):
            raise SpanError(
                f"subject word range {self.subject} is outside the {len(words)} words "
                f"({' '.join(w.text for w in words)!r}); expected 0 <= first <= last < {len(words)}."
            )

    # ------------------------------------------------------------------ words
    def word_range(self, name: SpanName) -> tuple[int, int] | None:
        """Inclusive word range of a named span (``None`` when the span has no words)."""
        if isinstance(name, tuple):
            i, j = name
            if not (0 <= i <= j < len(self.words)):
                raise SpanError(f"word range {name} is outside the {len(self.words)} words of this clip.")
            return (i, j)
        a, b = self.subject
        n = len(self.words)
        table = {
            "subject": (a, b),
            "first_subject_word": (a, a),
            "last_subject_word": (b, b),
            "last_word": (n - 1, n - 1),
            "before_subject": (0, a - 1) if a > 0 else None,
            "after_subject": (b + 1, n - 1) if b < n - 1 else None,
        }
        if name not in table:
            raise SpanError(f"unknown span {name!r}; named spans are {list(NAMED_SPANS)} or a word range "
                            f"(i, j).{suggest(name, NAMED_SPANS)}")
        return table[name]

    # ------------------------------------------------------------------ positions
    def n_frames(self, stage: str) -> int:
        return self.chain.valid(stage, self.n_mel)

    def span(self, name: SpanName, stage: str) -> tuple[int, int]:
        """Half-open frame span of a named span or word range at ``stage`` (``"seq"``: LLM positions)."""
        if name == "last_token":
            if stage != SEQ:
                raise SpanError("'last_token' is a text position; ask for it at stage 'seq'.")
            return (self.last, self.last + 1)
        rng = self.word_range(name)
        if rng is None:
            raise SpanError(f"span {name!r} has no words in {' '.join(w.text for w in self.words)!r}.")
        i, j = rng
        spoken = [w for w in self.words[i : j + 1] if w.end_s > w.start_s]
        if not spoken:
            raise SpanError(
                f"span {name!r} = words {i}..{j} ({' '.join(w.text for w in self.words[i : j + 1])!r}) has zero "
                "length: those tokens are not spoken (start == end), so they own no frames. Ask for a span "
                "with a spoken word."
            )
        t0, t1 = spoken[0].start_s, spoken[-1].end_s
        if stage == SEQ:
            a, b = self.chain.seconds_to_span(self.chain.llm_stage, t0, t1, self.n_mel)
            return (self.audio_start + a, self.audio_start + b)
        return self.chain.seconds_to_span(stage, t0, t1, self.n_mel)

    def time_s(self, stage: str) -> list[float]:
        """Centre time (s) of each valid frame of ``stage`` (coordinates for plots and caches)."""
        return self.chain.centres(stage, self.n_mel)

    def word_of_frame(self, stage: str) -> list[str]:
        """The word each valid frame of ``stage`` belongs to (``""`` for silence between words)."""
        labels = [""] * self.n_frames(stage)
        for w in self.words:
            if not w.end_s > w.start_s:
                continue
            try:
                a, b = self.chain.seconds_to_span(stage, w.start_s, w.end_s, self.n_mel)
            except SpanError:
                continue
            for k in range(a, b):
                labels[k] = labels[k] or w.text
        return labels


def position_map(adapter, batch, row: int, words: Sequence, subject: tuple[int, int]) -> PositionMap:
    """The :class:`PositionMap` of example ``row`` of a :class:`~lalm_interp.inputs.PromptBatch`."""
    return PositionMap(
        adapter.rate_chain, batch.n_mel[row], batch.audio_start[row], batch.last[row], as_words(words), tuple(subject)
    )
