"""Whitespace tokens of a text, and the mapping from TTS word events to per-token time spans.

A *token* is a maximal run of non-whitespace characters (``str.split()``); word timings in this
package are always one span per token, so ``"France's"`` and ``"d'Ivoire's"`` are one word each.
Character offsets are Python string indices (code points), never UTF-8 byte offsets.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Sequence

from .errors import SpeechError

_TOKEN = re.compile(r"\S+")


@dataclass(frozen=True)
class Token:
    """One whitespace token: ``text`` and its half-open character range ``[start, end)``."""

    text: str
    start: int
    end: int


def whitespace_tokens(text: str) -> tuple[Token, ...]:
    """The whitespace tokens of ``text`` with their character offsets."""
    return tuple(Token(m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text))


def token_at(tokens: Sequence[Token], char_index: int) -> int:
    """Index of the token containing ``char_index`` (0-based). A position in the whitespace between
    two tokens belongs to the next token; one before the first token to token 0, one after the last
    to the last token."""
    if not tokens:
        raise ValueError("no tokens")
    starts = [t.start for t in tokens]
    k = bisect.bisect_right(starts, char_index) - 1
    if k < 0:
        return 0
    if char_index >= tokens[k].end and k + 1 < len(tokens):
        return k + 1
    return k


def events_to_spans(
    tokens: Sequence[Token],
    events: Sequence[tuple[int, float]],
    end_s: float,
    *,
    phonemes: Sequence[tuple[float, str]] | None = None,
    counts: Sequence[int] | None = None,
) -> tuple[tuple[tuple[float, float], ...], tuple[int, ...]]:
    """Turn word events into one ``(start_s, end_s)`` span per token.

    ``events`` are ``(char_index, time_s)`` pairs (0-based character index into the text);
    ``phonemes`` the TTS's phoneme events ``(time_s, name)`` (names starting with ``_`` are pauses)
    and ``counts`` the number of phonemes of each token spoken alone. Rules:

    1. each event goes to the token that contains its position (:func:`token_at`); a token's onset
       is its earliest event (numbers emit several events; the first one counts);
    2. an onset not later than the previous token's onset is dropped (positions can shift after
       abbreviations), so onsets strictly increase;
    3. a token without an onset of its own belongs to the group of the previous token with one.
       espeak-ng speaks some word pairs as one word ("with the", "has to", "did not") and, after a
       ``?``, reports the next words' positions too early ("It is" → both events inside "It"), so
       such tokens are common. With ``phonemes`` and ``counts``, the group's phonemes (pauses left
       out) are split in token order by the tokens' own phoneme counts (scaled to the group's
       phoneme total when they differ), and each token starts at the phoneme event where its share
       begins — an event-derived time. A token with 0 phonemes (a dash espeak-ng does not speak)
       gets a zero-length span at the next spoken token's start. Only without phoneme information
       (or when the group has fewer phonemes than spoken tokens) is the group's interval split in
       proportion to the tokens' character lengths; those tokens are reported as *estimated*;
    4. a token ends where the next begins; the last ends at ``end_s`` (clamped to its onset).
       (Trailing silence is trimmed afterwards, on the audio: :mod:`.trim`.)

    Returns ``(spans, estimated_indices)``. Spans are monotone, non-overlapping and contiguous.
    """
    if not tokens:
        raise SpeechError("Cannot align an empty text: it has no whitespace tokens.\n"
                          "  expected: at least one word\n  fix: pass a non-empty text")
    onset: list[float | None] = [None] * len(tokens)
    for pos, t in events:
        k = token_at(tokens, pos)
        if onset[k] is None or t < onset[k]:
            onset[k] = float(t)
    last = None
    for k, t in enumerate(onset):
        if t is None:
            continue
        if last is not None and t <= last:
            onset[k] = None
        else:
            last = t
    anchors = [k for k, t in enumerate(onset) if t is not None]
    if not anchors:
        raise SpeechError(f"The TTS emitted no word events for {len(tokens)} token(s) "
                          f"(first: {tokens[0].text!r}).\n  expected: one event per spoken word\n"
                          "  fix: check that the text contains speakable words")
    end_s = max(float(end_s), onset[anchors[-1]])  # type: ignore[arg-type]
    if counts is not None and len(counts) != len(tokens):
        counts = None
    spans: list[tuple[float, float]] = []
    estimated: list[int] = []
    for i, a in enumerate(anchors):
        lo = 0 if i == 0 else a
        hi = anchors[i + 1] if i + 1 < len(anchors) else len(tokens)
        g0 = onset[a]
        g1 = onset[anchors[i + 1]] if i + 1 < len(anchors) else end_s
        members = list(range(lo, hi))
        if len(members) == 1:
            spans.append((g0, g1))  # type: ignore[arg-type]
            continue
        starts = None
        if lo == a and phonemes is not None and counts is not None:
            starts = _phoneme_starts([int(counts[m]) for m in members], phonemes, g0, g1)  # type: ignore[arg-type]
        if starts is not None:
            spoken_next = g1
            out = []
            for st in reversed(starts):  # zero-length tokens sit at the next spoken token's start
                if st is None:
                    out.append((spoken_next, spoken_next))
                else:
                    out.append((st, spoken_next))
                    spoken_next = st
            spans.extend(reversed(out))
            continue
        weights = [max(1, tokens[m].end - tokens[m].start) for m in members]
        total = float(sum(weights))
        t = g0
        for j, (m, w) in enumerate(zip(members, weights)):
            t_next = g1 if j == len(members) - 1 else t + (g1 - g0) * w / total
            spans.append((t, t_next))  # type: ignore[arg-type]
            if onset[m] is None:
                estimated.append(m)
            t = t_next
    return tuple(spans), tuple(estimated)


def _phoneme_starts(counts: Sequence[int], phonemes: Sequence[tuple[float, str]], g0: float,
                    g1: float) -> list[float | None] | None:
    """Start time of each token of a group from the group's phoneme events (``None`` for a token
    with no phonemes); ``None`` when the group's phonemes cannot be split that way."""
    times = [float(t) for t, name in phonemes
             if g0 - 1e-4 <= t < g1 - 1e-4 and name and not name.startswith("_")]
    if counts[0] <= 0 or not times:
        return None
    total = sum(c for c in counts if c > 0)
    n = len(times)
    out: list[float | None] = []
    cum, prev, last_t = 0, -1, g0
    for c in counts:
        if c <= 0:
            out.append(None)
            continue
        k = cum if total == n else int(round(cum * n / total))
        if k <= prev or k >= n:
            return None
        t = g0 if cum == 0 else times[k]
        if cum > 0 and not (last_t < t < g1):  # starts must strictly increase inside the group
            return None
        out.append(t)
        prev, last_t = k, t
        cum += c
    return out


def find_subject(text: str, subject: str) -> tuple[int, int]:
    """Character range ``[start, end)`` of the first occurrence of ``subject`` in ``text``,
    preferring a whole-word one (starts a token, not followed by a letter or digit, so that
    ``"Paris's"`` matches but ``"Parisian"`` does not), then one that starts a token. Raises :class:`SpeechError` when absent."""
    if not subject.strip():
        raise SpeechError(f"Empty subject for text {text!r}.\n  expected: a non-empty subject "
                          "string that occurs in the text\n  fix: check the dataset record")
    hits = [m.start() for m in re.finditer(re.escape(subject), text)]
    if not hits:
        raise SpeechError(f"Subject {subject!r} does not occur in text {text!r}.\n"
                          "  expected: the subject verbatim (case-sensitive) inside the text\n"
                          "  fix: fix the record, or build this form without a subject span")
    def starts(h: int) -> bool:
        return h == 0 or text[h - 1].isspace()

    def ends(h: int) -> bool:
        e = h + len(subject)
        return e == len(text) or not text[e].isalnum()

    best = next((h for h in hits if starts(h) and ends(h)), None)
    if best is None:
        best = next((h for h in hits if starts(h)), hits[0])
    return best, best + len(subject)


def subject_token_range(text: str, subject: str) -> tuple[int, int]:
    """``(first, last)`` token indices (inclusive) of the tokens that overlap ``subject`` in
    ``text``. E.g. ``("Metropolitan France's capital is", "Metropolitan France") -> (0, 1)``."""
    c0, c1 = find_subject(text, subject)
    idx = [i for i, t in enumerate(whitespace_tokens(text)) if t.start < c1 and t.end > c0]
    return idx[0], idx[-1]
