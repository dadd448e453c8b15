"""Rate-chain and span arithmetic (hypothesis property tests)."""

import pytest
from hypothesis import given, settings, strategies as st

from lalm_interp.adapters.blocks import whisper_rate_chain
from lalm_interp.adapters.qwen2_audio import qwen2_audio_rate_chain
from lalm_interp.rates import Stage
from lalm_interp.errors import SpanError
from lalm_interp.spans import PositionMap, Word

CHAIN = qwen2_audio_rate_chain(None)
VOXTRAL = whisper_rate_chain(None, Stage("token", stride=4, kernel=4, partial=True), window_mel=3000)
SALMONN = whisper_rate_chain(None, Stage("token", stride=17, kernel=17, partial=True), window_mel=3000)


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


@settings(deadline=None)
@given(st.sampled_from(["CHAIN", "VOXTRAL", "SALMONN"]), st.floats(0, 29.0), st.floats(0.001, 3.0),
       st.integers(1, 3000))
def test_spans_never_leave_valid_audio(name, t0, dur, n_mel):
    chain = {"CHAIN": CHAIN, "VOXTRAL": VOXTRAL, "SALMONN": SALMONN}[name]
    t1 = t0 + dur
    for stage in chain.names:
        n = chain.valid(stage, n_mel)
        try:
            a, b = chain.seconds_to_span(stage, t0, t1, n_mel)
        except SpanError:
            assert t0 >= chain.valid_end_s(stage, n_mel) - 1e-6  # only when it starts in padding
            continue
        assert 0 <= a < b <= n
        centres = chain.centres(stage, n_mel)
        inside = [j for j, c in enumerate(centres) if t0 - 1e-9 <= c < t1 - 1e-9]
        if inside:  # the centre rule: exactly the valid frames whose centre lies in [t0, t1)
            assert (a, b) == (inside[0], inside[-1] + 1)
        else:  # no centre inside: one frame, the one nearest the midpoint
            assert b == a + 1
            mid = (t0 + t1) / 2
            best = min(abs(c - mid) for c in centres)
            assert abs(centres[a] - mid) <= best + 1e-9 or a == n - 1


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
    assert pm.span("first_subject_word", "token") == (0, 19)  # token 19 is centred at 0.77 s > 0.765
    assert pm.span("last_subject_word", "token") == (19, 32)
    assert pm.span("subject", "seq") == (40, 72)
    assert pm.span("last_token", "seq") == (99, 100)
    n_tok = pm.n_frames("token")
    assert pm.span("last_word", "token")[1] == n_tok  # clipped to valid audio
    assert pm.span("after_subject", "token")[0] == 32  # adjacent words never share a frame
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


# ------------------------------------------------------------------ frame centres (issue 14 item 5a)


@given(st.integers(0, 1499))
def test_frame_centres_follow_each_stages_stride_and_kernel(j):
    # centred STFT (hop 10 ms): mel i at 10 i ms; conv2 (k3 s2 p1) reads mel 2j-1..2j+1 → 20 j ms;
    # avg-pool (k2 s2) averages encoder 2k, 2k+1 → 40 k + 10 ms; Voxtral's 4-frame group 4k..4k+3
    # → 80 k + 30 ms; SALMONN's 17-frame window → 340 k + 160 ms
    assert CHAIN.frame_centre_s("mel", j) == pytest.approx(0.01 * j, abs=1e-12)
    assert CHAIN.frame_centre_s("encoder", j) == pytest.approx(0.02 * j, abs=1e-12)
    assert CHAIN.frame_centre_s("token", j) == pytest.approx(0.04 * j + 0.01, abs=1e-12)
    assert VOXTRAL.frame_centre_s("token", j) == pytest.approx(0.08 * j + 0.03, abs=1e-12)
    assert SALMONN.frame_centre_s("token", j) == pytest.approx(0.34 * j + 0.16, abs=1e-12)
    for chain in (CHAIN, VOXTRAL, SALMONN):
        for stage in chain.names:
            f0, f1 = chain.frame_to_seconds(stage, j)
            c = chain.frame_centre_s(stage, j)
            w = chain.cell(stage) / chain.mel_rate
            assert f1 == pytest.approx(c + w / 2) and f0 == pytest.approx(max(0.0, c - w / 2))
            # the coarse frame's centre is the mean of the centres of the encoder frames it owns
            if stage == "token":
                e0, e1 = chain.map_span("token", (j, j + 1), "encoder")
                owned = [chain.frame_centre_s("encoder", i) for i in range(e0, e1)]
                assert c == pytest.approx(sum(owned) / len(owned))


def test_encoder_frame_before_the_word_is_not_in_its_span():
    # the case: a word starting at 0.775 s. Encoder frame 38 is centred at 0.76 s and covers
    # [0.75, 0.77) — entirely before the word; the old stride-cell rule ([0.76, 0.78)) took it.
    assert CHAIN.seconds_to_span("encoder", 0.775, 1.2) == (39, 60)
    assert CHAIN.seconds_to_span("encoder", 0.760, 1.2) == (38, 60)  # a word starting on a centre
    assert CHAIN.seconds_to_span("token", 0.775, 1.2) == (20, 30)  # token 19 at 0.77 s: before it


@given(st.sampled_from(["CHAIN", "VOXTRAL", "SALMONN"]), st.lists(st.floats(0.0, 0.6), min_size=2, max_size=8),
       st.integers(1, 3000))
def test_adjacent_words_get_disjoint_nonempty_spans(name, gaps, n_mel):
    chain = {"CHAIN": CHAIN, "VOXTRAL": VOXTRAL, "SALMONN": SALMONN}[name]
    times = [0.0]
    for g in gaps:
        times.append(times[-1] + max(g, 0.001))
    for stage in chain.names:
        spans = []
        for t0, t1 in zip(times, times[1:]):
            try:
                spans.append(chain.seconds_to_span(stage, t0, t1, n_mel))
            except SpanError:
                assert t0 >= chain.valid_end_s(stage, n_mel) - 1e-6
        for (a0, b0), (a1, b1) in zip(spans, spans[1:]):
            assert a0 < b0 and a1 < b1  # never empty
            # words that touch share no frame, except where a word shorter than a frame fell back
            # to the frame holding its midpoint
            assert b0 <= a1 or b0 - a0 == 1 or b1 - a1 == 1


@given(st.floats(0.0, 5.0), st.floats(0.0005, 0.05))
def test_a_word_shorter_than_a_frame_gets_the_frame_holding_its_midpoint(t0, dur):
    for chain in (CHAIN, VOXTRAL, SALMONN):
        for stage in chain.names:
            a, b = chain.seconds_to_span(stage, t0, t0 + dur)
            assert b > a
            if b - a == 1:
                f0, f1 = chain.frame_to_seconds(stage, a)
                c = chain.frame_centre_s(stage, a)
                assert (t0 <= c < t0 + dur) or (f0 - 1e-9 <= t0 + dur / 2 < f1 + 1e-9)
