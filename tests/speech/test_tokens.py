"""Event → token mapping and subject ranges (pure functions; property tests)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lalm_interp.speech import SpeechError
from lalm_interp.speech.tokens import (events_to_spans, subject_token_range, token_at,
                                       whitespace_tokens)

words = st.text(alphabet="abcdéüãÇ'.-0123456789", min_size=1, max_size=8)


@st.composite
def tokens_and_events(draw):
    toks = draw(st.lists(words, min_size=1, max_size=12))
    seps = draw(st.lists(st.sampled_from([" ", "  ", "\t"]), min_size=len(toks), max_size=len(toks)))
    text = "".join(s + t for s, t in zip(seps, toks))
    n = len(text)
    events = draw(st.lists(st.tuples(st.integers(0, n + 3),
                                     st.floats(0, 10, allow_nan=False, allow_infinity=False)),
                           min_size=1, max_size=20))
    end = draw(st.floats(0, 12, allow_nan=False, allow_infinity=False))
    return text, events, end


@settings(max_examples=300, deadline=None)
@given(tokens_and_events())
def test_spans_monotone_contiguous_and_cover_every_token(case):
    text, events, end = case
    toks = whitespace_tokens(text)
    spans, estimated = events_to_spans(toks, events, end)
    assert len(spans) == len(toks)
    for s, e in spans:
        assert s <= e
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert e0 == pytest.approx(s1)  # contiguous, hence non-overlapping
    # the first span starts at the earliest event of the first token that has any event
    k0 = min(token_at(toks, pos) for pos, _ in events)
    assert spans[0][0] == min(t for pos, t in events if token_at(toks, pos) == k0)
    assert spans[-1][1] >= spans[-1][0]
    assert spans[-1][1] == pytest.approx(max(end, spans[-1][0]))
    assert set(estimated) <= set(range(len(toks)))


def test_token_without_event_merges_into_previous_and_is_estimated():
    toks = whitespace_tokens("In 1990 Dr. Smith")
    # events: In@0, 1990@3 (twice: numbers emit several), Smith@12; "Dr." has none
    spans, est = events_to_spans(toks, [(0, 0.0), (3, 0.1), (4, 0.9), (12, 1.3)], 1.6)
    assert est == (2,)
    assert spans[1] == (0.1, pytest.approx(0.1 + 1.2 * 4 / 7))  # "1990" gets 4/7 of the group
    assert spans[2][1] == 1.3 and spans[3] == (1.3, 1.6)


def test_out_of_order_event_is_dropped():
    toks = whitespace_tokens("a b c")
    spans, est = events_to_spans(toks, [(0, 0.0), (2, 0.5), (4, 0.4)], 1.0)
    assert est == (2,) and spans[2][1] == 1.0 and spans[1][0] == 0.5


def test_position_in_whitespace_goes_to_next_token():
    toks = whitespace_tokens("ab  cd")
    assert [token_at(toks, i) for i in range(6)] == [0, 0, 1, 1, 1, 1]


def test_subject_ranges():
    assert subject_token_range("Metropolitan France's capital is", "Metropolitan France") == (0, 1)
    assert subject_token_range("The capital of Côte d'Ivoire is", "Côte d'Ivoire") == (3, 4)
    assert subject_token_range("Where São Paulo is", "São Paulo") == (1, 2)
    # prefers a token-initial match over an embedded one
    assert subject_token_range("Parisian Paris is", "Paris") == (1, 1)
    with pytest.raises(SpeechError, match="does not occur"):
        subject_token_range("The capital of France is", "Germany")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="abcXYZéüß'-.", min_size=1, max_size=6), min_size=1, max_size=10),
       st.data())
def test_match_words_places_every_token_it_was_given(toks, data):
    from lalm_interp.speech.aligners import match_words, normalise_word

    text = " ".join(toks)
    timed = [(t.upper(), float(i), i + 0.5) for i, t in enumerate(toks)]
    words = match_words(text, timed)
    assert [w for w, _, _ in words] == toks
    for i, (w, s, e) in enumerate(words):
        if normalise_word(w):  # punctuation-only tokens cannot be matched by content
            assert s is not None and e is not None and s <= e
    times = [s for _, s, _ in words if s is not None]
    assert times == sorted(times)


@given(st.sampled_from(["en-us", "en", "en-gb-x-rp", "en-029"]),
       st.one_of(st.none(), st.sampled_from(["m1", "f3", "klatt"])),
       st.integers(80, 450), st.integers(0, 99))
def test_rendition_string_round_trips(voice, variant, rate, pitch):
    from lalm_interp.speech import Rendition

    r = Rendition(voice, variant, rate, pitch)
    assert Rendition.parse(str(r)) == r
