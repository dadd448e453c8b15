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


# ---------------------------------------------------------------- phoneme-derived starts (issue 14 item 5c)
# espeak-ng 1.52, en-us, "Italy is affiliated with the church": one WORD event for "with the"
# (at 957 ms) and its phonemes w I D | D @2; "with" alone is 3 phonemes, "the" 2.
WITH_THE = [(0.957, "w"), (1.038, "I"), (1.073, "D"), (1.131, "D"), (1.178, "@2"), (1.223, "tS")]


def test_word_spoken_with_its_neighbour_starts_at_its_first_phoneme():
    toks = whitespace_tokens("with the church")
    spans, est = events_to_spans(toks, [(0, 0.957), (9, 1.223)], 1.7, phonemes=WITH_THE, counts=[3, 2, 3])
    assert est == ()
    assert spans[0] == (0.957, 1.131) and spans[1] == (1.131, 1.223) and spans[2] == (1.223, 1.7)
    # without phoneme information the old character-length split is the fallback, and says so
    spans, est = events_to_spans(toks, [(0, 0.957), (9, 1.223)], 1.7)
    assert est == (1,) and spans[1][0] == pytest.approx(0.957 + 0.266 * 4 / 7)


def test_mispositioned_event_after_a_question_mark_is_recovered_from_phonemes():
    # "...city? It is": espeak-ng puts the WORD event of "is" at character 19, inside "It"
    toks = whitespace_tokens("city? It is")
    ph = [(0.47, "s"), (0.54, "'I"), (0.68, "t#"), (0.73, "i"), (0.83, "_:"), (1.128, "_"), (1.128, "I"),
          (1.194, "t#"), (1.273, "'I"), (1.473, "z"), (1.573, "_:")]
    spans, est = events_to_spans(toks, [(0, 0.46), (6, 1.128), (7, 1.273)], 1.6, phonemes=ph, counts=[4, 2, 2])
    assert est == () and spans[2][0] == 1.273  # the start of its own phoneme 'I, not a share of "It is"
    assert spans[1] == (1.128, 1.273)


def test_phoneme_counts_that_differ_are_scaled_and_unspoken_tokens_get_zero_length():
    toks = whitespace_tokens("Award – best")
    ph = [(0.0, "a#"), (0.1, "w"), (0.2, "'O@"), (0.3, "d"), (0.4, "_"), (0.5, "b")]
    # "–" has no phonemes: it is not spoken; "Award" alone counts 4 phonemes
    spans, est = events_to_spans(toks, [(0, 0.0), (8, 0.5)], 0.9, phonemes=ph, counts=[4, 0, 3])
    assert est == () and spans[1] == (0.5, 0.5) and spans[0] == (0.0, 0.5)
    toks = whitespace_tokens("has to go")
    ph = [(0.0, "h"), (0.1, "'a"), (0.2, "s"), (0.3, "t"), (0.4, "@"), (0.5, "g")]
    # counted alone: has = 3, to = 3 (t u: plus a stress mark in some voices) → 6 for 5 phonemes:
    # "to" starts at round(3 * 5 / 6) = phoneme 2
    spans, est = events_to_spans(toks, [(0, 0.0), (7, 0.5)], 0.9, phonemes=ph, counts=[3, 3, 2])
    assert est == () and spans[1][0] == 0.2
    # fewer phonemes than spoken tokens: cannot split by phonemes → estimated
    spans, est = events_to_spans(toks, [(0, 0.0), (7, 0.5)], 0.9, phonemes=ph[:1], counts=[3, 3, 2])
    assert est == (1,)


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


@settings(max_examples=300, deadline=None)
@given(tokens_and_events(),
       st.lists(st.tuples(st.floats(0, 12, allow_nan=False), st.sampled_from(["a", "'I", "_", "t#"])), max_size=40),
       st.data())
def test_phoneme_split_keeps_spans_ordered_and_contiguous(case, phonemes, data):
    text, events, end = case
    toks = whitespace_tokens(text)
    counts = data.draw(st.lists(st.integers(0, 5), min_size=len(toks), max_size=len(toks)))
    spans, estimated = events_to_spans(toks, events, end, phonemes=sorted(phonemes), counts=counts)
    assert len(spans) == len(toks)
    for s, e in spans:
        assert s <= e
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert e0 == pytest.approx(s1)
    assert spans[-1][1] == pytest.approx(max(end, spans[-1][0]))
    assert set(estimated) <= set(range(len(toks)))
