"""Issue 16 / issue 14 item 5: bad and edge-case word timings for spans, the rate chain, the event →
word mapping and the energy trim. Every error case asserts the error type and what the message
names (what was wrong, the fix, the docs page); the edge cases assert the recovered behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lalm_interp.adapters.qwen2_audio import qwen2_audio_rate_chain
from lalm_interp.errors import SpanError
from lalm_interp.spans import PositionMap, Word, as_words
from lalm_interp.speech.errors import SpeechError
from lalm_interp.speech.tokens import events_to_spans, whitespace_tokens
from lalm_interp.speech.trim import trim_word_spans

CHAIN = qwen2_audio_rate_chain(None)
SPANS_PAGE = "docs/errors/spans.md"
SPEECH_PAGE = "docs/errors/speech.md"
OK = (Word("Metropolitan", 0.0, 0.765), Word("France's", 0.765, 1.270), Word("capital", 1.270, 1.785),
      Word("is", 1.785, 1.943))


def pm(words=OK, subject=(0, 1), n_mel=194):
    return PositionMap(CHAIN, n_mel=n_mel, audio_start=10, last=80, words=tuple(words), subject=subject)


# ------------------------------------------------------------------ PositionMap: bad word timings
BAD_WORDS = [
    ("no-words", (), (0, 0), ["no word timings"]),
    ("empty-text", (Word("", 0.0, 0.5),), (0, 0), ["word 0 has no text", "whitespace token"]),
    ("blank-text", (Word("a", 0.0, 0.4), Word("  ", 0.4, 0.6)), (0, 0), ["word 1 has no text"]),
    ("negative-start", (Word("a", -0.1, 0.5),), (0, 0), ["not a valid interval", "0 <= start <= end"]),
    ("end-before-start", (Word("a", 0.5, 0.2),), (0, 0), ["not a valid interval"]),
    ("nan-end", (Word("a", 0.0, math.nan),), (0, 0), ["not a valid interval"]),
    ("nan-start", (Word("a", math.nan, 0.5),), (0, 0), ["not a valid interval"]),
    ("inf-end", (Word("a", 0.0, math.inf),), (0, 0), ["not a valid interval"]),
    ("overlap", (Word("a", 0.0, 0.5), Word("b", 0.3, 0.9)), (0, 0), ["before the previous word ends"]),
    ("beyond-clip", (Word("a", 0.0, 0.5), Word("b", 2.5, 2.9)), (0, 0),
     ["after the clip", "do not belong to this clip"]),
    ("ms-not-s", (Word("a", 0.0, 765.0), Word("b", 765.0, 1270.0)), (0, 0), ["after the clip"]),
    ("zero-length-beyond-clip", (Word("a", 0.0, 0.5), Word("–", 2.5, 2.5)), (0, 0), ["after the clip"]),
    ("subject-past-words", OK, (1, 5), ["outside the 4 words", "0 <= first <= last < 4"]),
    ("subject-reversed", OK, (2, 1), ["outside the 4 words"]),
    ("subject-negative", OK, (-1, 0), ["outside the 4 words"]),
]


@pytest.mark.parametrize("words, subject, needles", [c[1:] for c in BAD_WORDS], ids=[c[0] for c in BAD_WORDS])
def test_bad_word_timings_are_refused(words, subject, needles):
    with pytest.raises(SpanError) as err:
        pm(words, subject)
    for n in needles + [SPANS_PAGE]:
        assert n in str(err.value), (n, str(err.value))


def test_untimed_word_from_an_aligner_is_refused():
    with pytest.raises(SpanError, match="no timing") as err:
        as_words([("a", 0.0, 0.5), ("b", None, None)])
    assert "re-align the clip" in str(err.value) and SPANS_PAGE in str(err.value)


# ------------------------------------------------------------------ spans: bad requests
BAD_SPANS = [
    ("unknown-span", "object", "token", ["unknown span 'object'"]),
    ("span-typo-suggests", "last_subjct_word", "token", ["unknown span", "Did you mean 'last_subject_word'"]),
    ("last-token-at-audio", "last_token", "token", ["text position", "stage 'seq'"]),
    ("unknown-stage", "subject", "window", ["unknown rate stage 'window'"]),
    ("range-past-words", (2, 9), "token", ["outside the 4 words"]),
    ("empty-before-subject", "before_subject", "encoder", ["has no words"]),
]


@pytest.mark.parametrize("name, stage, needles", [c[1:] for c in BAD_SPANS], ids=[c[0] for c in BAD_SPANS])
def test_bad_span_requests(name, stage, needles):
    with pytest.raises(SpanError) as err:
        pm().span(name, stage)
    for n in needles + [SPANS_PAGE]:
        assert n in str(err.value)


def test_a_span_of_only_unspoken_tokens_is_refused_but_the_clip_is_usable():
    words = (Word("Award", 0.0, 0.5), Word("–", 0.5, 0.5), Word("best", 0.6, 0.9))
    p = pm(words, (1, 1), n_mel=100)
    with pytest.raises(SpanError) as err:
        p.span("subject", "encoder")
    assert "zero length" in str(err.value) and "not spoken" in str(err.value) and SPANS_PAGE in str(err.value)
    # the other words map as usual; the range over the dash covers its spoken neighbours
    assert p.span((0, 0), "encoder") == (0, 25) and p.span((2, 2), "encoder") == (30, 45)
    assert p.span((0, 2), "encoder") == (0, 45)
    assert "–" not in p.word_of_frame("encoder")


# ------------------------------------------------------------------ rate chain: bad intervals
BAD_INTERVALS = [
    ("reversed", ("encoder", 1.0, 0.5, None), ["not a valid interval"]),
    ("empty", ("encoder", 1.0, 1.0, None), ["not a valid interval"]),
    ("negative", ("token", -0.2, 0.5, None), ["not a valid interval"]),
    ("infinite", ("mel", 0.0, math.inf, None), ["not a valid interval"]),
    ("in-padding", ("token", 2.1, 2.3, 194), ["falls outside the 48 valid token frames", "padding"]),
    ("in-dropped-tail", ("token", 1.92, 1.94, 194), ["falls outside the 48 valid token frames"]),
]


@pytest.mark.parametrize("args, needles", [c[1:] for c in BAD_INTERVALS], ids=[c[0] for c in BAD_INTERVALS])
def test_bad_intervals(args, needles):
    with pytest.raises(SpanError) as err:
        CHAIN.seconds_to_span(*args)
    for n in needles + [SPANS_PAGE]:
        assert n in str(err.value)


def test_empty_frame_span_cannot_be_mapped():
    with pytest.raises(SpanError, match="is empty") as err:
        CHAIN.map_span("encoder", (5, 5), "token")
    assert SPANS_PAGE in str(err.value)


# ------------------------------------------------------------------ edge cases that must work
def test_a_word_shorter_than_a_frame_still_gets_one_frame_at_every_stage():
    words = (Word("a", 0.0, 0.40), Word("I", 0.405, 0.412), Word("b", 0.412, 0.9))
    p = pm(words, (1, 1), n_mel=100)
    for stage, want in (("mel", (41, 42)), ("encoder", (20, 21)), ("token", (10, 11))):
        assert p.span("subject", stage) == want  # the frame whose cell holds 0.4085 s


def test_word_running_past_the_clip_is_clipped_to_the_valid_frames():
    words = OK[:3] + (Word("is", 1.785, 2.5),)  # ends after the 1.94 s clip
    p = pm(words, (3, 3))
    assert p.span("subject", "token") == (45, 48) and p.span("subject", "encoder") == (90, 97)


def test_word_partly_in_the_dropped_tail_keeps_its_last_valid_frame():
    # 194 mel frames → 48 tokens whose cells end at 1.91 s; a word at 1.90-1.94 s holds no token
    # centre (token 47 is centred at 1.89 s) but starts inside token 47's cell
    words = OK[:3] + (Word("is", 1.90, 1.94),)
    assert pm(words, (3, 3)).span("subject", "token") == (47, 48)


def test_trailing_unspoken_token_at_the_end_of_the_clip_is_accepted():
    words = OK[:3] + (Word("is", 1.785, 1.94), Word("–", 1.94, 1.94))  # 194 mel frames: 1.94 s
    p = pm(words, (0, 1))
    assert p.span((3, 4), "token") == (45, 48)  # "is –" is "is"
    with pytest.raises(SpanError, match="zero length"):
        p.span("last_word", "token")


# ------------------------------------------------------------------ events → spans: bad input
def test_no_tokens_is_a_speech_error():
    with pytest.raises(SpeechError) as err:
        events_to_spans((), [(0, 0.0)], 1.0)
    assert "empty text" in str(err.value) and SPEECH_PAGE in str(err.value)


def test_no_events_is_a_speech_error():
    with pytest.raises(SpeechError) as err:
        events_to_spans(whitespace_tokens("a b"), [], 1.0)
    assert "no word events" in str(err.value) and "speakable words" in str(err.value)


def test_phoneme_counts_of_the_wrong_length_fall_back_to_the_estimate():
    toks = whitespace_tokens("with the church")
    spans, est = events_to_spans(toks, [(0, 0.0), (9, 0.3)], 0.6, phonemes=[(0.0, "w"), (0.2, "D")], counts=[3])
    assert est == (1,)


# ------------------------------------------------------------------ energy trim: edge cases
SR = 16000


def tone(seconds, amp=0.3):
    return (amp * np.sin(2 * np.pi * 200 * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


def test_trim_on_silent_audio_keeps_the_spans():
    x = np.zeros(SR, np.float32)
    assert trim_word_spans(x, [(0.0, 0.5), (0.5, 1.0)], SR) == ((0.0, 0.5), (0.5, 1.0))


def test_trim_of_no_spans_and_zero_length_spans():
    x = np.concatenate([np.zeros(1600, np.float32), tone(0.5), np.zeros(3200, np.float32)])
    assert trim_word_spans(x, [], SR) == ()
    assert trim_word_spans(x, [(0.3, 0.3)], SR) == ((0.3, 0.3),)


def test_trim_cuts_leading_and_trailing_silence_only():
    x = np.concatenate([np.zeros(1600, np.float32), tone(0.2), np.zeros(800, np.float32), tone(0.2),
                        np.zeros(3200, np.float32)])
    (s, e), = trim_word_spans(x, [(0.0, len(x) / SR)], SR)
    assert abs(s - 0.1) <= 0.006 and abs(e - 0.55) <= 0.006  # the inner 50 ms gap stays inside


def test_trim_ignores_a_span_running_past_the_audio():
    x = np.concatenate([tone(0.3), np.zeros(1600, np.float32)])
    (s, e), = trim_word_spans(x, [(0.0, 5.0)], SR)
    assert s == 0.0 and abs(e - 0.3) <= 0.006
