"""Rate-chain and span arithmetic (hypothesis property tests)."""

import pytest
from hypothesis import given, strategies as st

from lalm_interp.adapters.qwen2_audio import qwen2_audio_rate_chain
from lalm_interp.errors import SpanError
from lalm_interp.spans import PositionMap, Word

CHAIN = qwen2_audio_rate_chain(None)


def test_qwen2_audio_counts():
    assert CHAIN.frames_per_second("mel") == 100
    assert CHAIN.frames_per_second("encoder") == 50
    assert CHAIN.frames_per_second("token") == 25
    assert CHAIN.valid("token", 300) == 75
    assert CHAIN.valid("token", 3000) == 750
    assert CHAIN.valid("encoder", 3000) == 1500
    assert CHAIN.mel_frames(48000) == 300


@given(st.integers(1, 3000))
def test_valid_count_formula(L):
    assert CHAIN.valid("token", L) == ((L - 1) // 2 + 1 - 2) // 2 + 1
    assert CHAIN.valid("encoder", L) == (L - 1) // 2 + 1


@given(st.sampled_from(["mel", "encoder", "token"]), st.integers(0, 2000))
def test_frame_to_seconds_round_trip(stage, j):
    t0, t1 = CHAIN.frame_to_seconds(stage, j)
    assert t1 > t0
    assert CHAIN.seconds_to_span(stage, t0, t1) == (j, j + 1)
    mid = (t0 + t1) / 2
    assert CHAIN.seconds_to_span(stage, mid, mid + 1e-6) == (j, j + 1)


@given(st.floats(0, 29.0), st.floats(0.001, 3.0), st.integers(1, 3000))
def test_spans_never_leave_valid_audio(t0, dur, n_mel):
    t1 = t0 + dur
    for stage in ("mel", "encoder", "token"):
        n = CHAIN.valid(stage, n_mel)
        try:
            a, b = CHAIN.seconds_to_span(stage, t0, t1, n_mel)
        except SpanError:
            assert t0 * CHAIN.frames_per_second(stage) >= n - 1e-6  # only when it starts in padding
            continue
        assert 0 <= a < b <= n
        # the span covers the interval's part inside the valid audio
        f0, _ = CHAIN.frame_to_seconds(stage, a)
        _, f1 = CHAIN.frame_to_seconds(stage, b - 1)
        assert f0 <= t0 + 1e-9 and (f1 >= min(t1, n / CHAIN.frames_per_second(stage)) - 1e-9)


@given(st.integers(0, 700), st.integers(1, 50))
def test_map_span_nests(a, width):
    b = a + width
    tok = CHAIN.map_span("encoder", (a, b), "token")
    enc_back = CHAIN.map_span("token", tok, "encoder")
    assert enc_back[0] <= a and enc_back[1] >= b  # coarse cells cover the fine span
    mel = CHAIN.map_span("encoder", (a, b), "mel")
    assert mel == (2 * a, 2 * b)


def _metropolitan():
    # espeak-ng timings of "Metropolitan France's capital is" (ms): 0, 765, 1270, 1785, end 1943
    words = [Word("Metropolitan", 0.0, 0.765), Word("France's", 0.765, 1.270), Word("capital", 1.270, 1.785),
             Word("is", 1.785, 1.943)]
    return PositionMap(CHAIN, n_mel=195, audio_start=40, last=99, words=tuple(words), subject=(0, 1))


def test_named_spans():
    pm = _metropolitan()
    assert pm.span("subject", "mel") == (0, 127)
    assert pm.span("subject", "encoder") == (0, 64)
    assert pm.span("first_subject_word", "token") == (0, 20)
    assert pm.span("last_subject_word", "token") == (19, 32)
    assert pm.span("subject", "seq") == (40, 72)
    assert pm.span("last_token", "seq") == (99, 100)
    n_tok = pm.n_frames("token")
    assert pm.span("last_word", "token")[1] == n_tok  # clipped to valid audio
    assert pm.span("after_subject", "token")[0] == 31
    assert pm.word_range("before_subject") is None
    labels = pm.word_of_frame("token")
    assert labels[0] == "Metropolitan" and labels[25] == "France's"
    assert len(pm.time_s("encoder")) == pm.n_frames("encoder") == 98


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(subject=(1, 5)), "outside the 4 words"),
        (dict(words=(Word("a", 0.5, 0.2),)), "not a valid interval"),
        (dict(words=(Word("a", 0.0, 0.5), Word("b", 0.3, 0.9))), "before the previous word ends"),
        (dict(words=(Word("a", 0.0, 0.5), Word("b", 2.5, 2.9))), "after the clip"),
        (dict(words=()), "no word timings"),
    ],
)
def test_span_errors(kwargs, needle):
    pm = _metropolitan()
    args = dict(chain=CHAIN, n_mel=pm.n_mel, audio_start=40, last=99, words=pm.words, subject=(0, 1))
    args.update(kwargs)
    if "words" in kwargs and "subject" not in kwargs:
        args["subject"] = (0, 0)
    with pytest.raises(SpanError, match=needle):
        PositionMap(**args)


def test_unknown_span_and_stage():
    pm = _metropolitan()
    with pytest.raises(SpanError, match="unknown span"):
        pm.span("object", "token")
    with pytest.raises(SpanError, match="unknown rate stage"):
        pm.span("subject", "window")
    with pytest.raises(SpanError, match="text position"):
        pm.span("last_token", "token")
