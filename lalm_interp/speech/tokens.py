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
) -> tuple[tuple[tuple[float, float], ...], tuple[int, ...]]:
    """Turn word events into one ``(start_s, end_s)`` span per token.

    ``events`` are ``(char_index, time_s)`` pairs (0-based character index into the text). Rules:

    1. each event goes to the token that contains its position (:func:`token_at`); a token's onset
       is its earliest event (numbers emit several events; the first one counts);
    2. an onset not later than the previous token's onset is dropped (positions can shift after
       abbreviations), so onsets strictly increase;
    3. a token without an onset merges into the previous token (tokens before the first onset merge
       into the first one): the merged group's interval is split among its tokens in proportion to
       their character lengths, and those tokens are reported as *estimated*;
    4. a token ends where the next begins; the last ends at ``end_s`` (clamped to its onset).

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
    groups: list[tuple[list[int], float, float]] = []
    for i, a in enumerate(anchors):
        lo = 0 if i == 0 else a
        hi = anchors[i + 1] if i + 1 < len(anchors) else len(tokens)
        g_end = onset[anchors[i + 1]] if i + 1 < len(anchors) else end_s
        groups.append((list(range(lo, hi)), onset[a], g_end))  # type: ignore[arg-type]
    spans: list[tuple[float, float]] = []
    estimated: list[int] = []
    for members, g0, g1 in groups:
        if len(members) == 1:
            spans.append((g0, g1))
            continue
        weights = [max(1, tokens[m].end - tokens[m].start) for m in members]
        total = float(sum(weights))
        t = g0
        for j, (m, w) in enumerate(zip(members, weights)):
            t_next = g1 if j == len(members) - 1 else t + (g1 - g0) * w / total
            spans.append((t, t_next))
            if onset[m] is None:
                estimated.append(m)
            t = t_next
    return tuple(spans), tuple(estimated)


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
