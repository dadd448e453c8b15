"""Word spans are frame-exact (issue 14 item 5): on sentences that are NOT in our data, synthesised
with the repo's espeak-ng backend, every word span starts and ends where its speech does — checked
against an independent, sample-level energy estimate — no span holds a pause, no word start is
estimated, and at the encoder stage no frame of a span lies entirely before its word.

The independent estimate (not the rule in ``speech/trim.py``): a sample is *silent* when
``|x| <= 10**(-70/20) * max|x|`` (sample amplitude, no window, a different floor). Tolerance for an
edge: 20 ms = one encoder frame.
"""

from __future__ import annotations

import numpy as np
import pytest

from lalm_interp.adapters.qwen2_audio import qwen2_audio_rate_chain
from lalm_interp.speech import SAMPLE_RATE, Rendition
from lalm_interp.speech.espeak import EspeakBackend
from lalm_interp.speech.tokens import subject_token_range
from lalm_interp.spans import PositionMap, as_words

TOL_S = 0.020  # one encoder frame
LONG_SILENCE_S = 0.080  # longer than any stop closure inside a word (measured max 55 ms on 1,796 words)
CHAIN = qwen2_audio_rate_chain(None)

# (text, subject): multi-word and sentence-initial subjects, numbers, abbreviations, non-ASCII names,
# hyphenated words, and the word pairs espeak-ng speaks as one word ("with the", "has to", "did not")
# or mis-positions after a question mark ("... ? It is").
SENTENCES = [
    ("Dr. Zoë Ørsted was born in São Paulo in 1890.", "Zoë Ørsted"),
    ("The U.S. Supreme Court meets in Washington.", "U.S. Supreme Court"),
    ("Jean-Luc Godard directed films in Paris.", "Jean-Luc Godard"),
    ("São Paulo is the largest city of Brazil.", "São Paulo"),
    ("Mount Kilimanjaro rises above the plains of Tanzania.", "Mount Kilimanjaro"),
    ("In 1969, Neil Armstrong walked on the Moon.", "Neil Armstrong"),
    ("The capital of Côte d'Ivoire is Yamoussoukro.", "Côte d'Ivoire"),
    ("Dr. Martin Luther King Jr. spoke in Memphis.", "Martin Luther King Jr."),
    ("Björk Guðmundsdóttir sings in Icelandic.", "Björk Guðmundsdóttir"),
    ("The well-known author Gabriel García Márquez wrote novels.", "Gabriel García Márquez"),
    ("The St. Lawrence River flows into the Atlantic.", "St. Lawrence River"),
    ("About 3,500 people live in Tórshavn today.", "Tórshavn"),
    ("Mr. Smith works with the U.N. in Geneva.", "Mr. Smith"),
    ("What is the currency of Japan? It is the yen.", "Japan"),
    ("Łódź is a city in central Poland.", "Łódź"),
    ("The twenty-first century began in 2001.", "twenty-first century"),
    ("Antoni Gaudí designed the Sagrada Família in Barcelona.", "Sagrada Família"),
    ("François Hollande was president of France from 2012 to 2017.", "François Hollande"),
    ("Nikola Tesla did not live in Zagreb; he lived in New York.", "Nikola Tesla"),
    ("Queen Elizabeth II has to open Parliament each year.", "Queen Elizabeth II"),
    ("The Rhône and the Saône meet in Lyon.", "Rhône"),
    ("Dr. Ana Müller-Schmidt teaches at the E.T.H. in Zürich.", "Ana Müller-Schmidt"),
    ("Ho Chi Minh City was formerly called Saigon.", "Ho Chi Minh City"),
    ("Where was Leonhard Euler born? He was born in Basel.", "Leonhard Euler"),
]
RENDITIONS = (Rendition("en-us"), Rendition("en-gb-scotland", rate=160))


@pytest.fixture(scope="module")
def clips():
    """{(sentence index, rendition index): (trimmed utterance, untrimmed utterance)}."""
    reqs = [(t, r) for t, _ in SENTENCES for r in RENDITIONS]
    trimmed = dict(EspeakBackend().synthesize_many(reqs, workers=1))
    raw = dict(EspeakBackend(word_floor_db=None).synthesize_many(reqs, workers=1))
    out = {}
    for i in range(len(reqs)):
        assert not isinstance(trimmed[i], Exception), trimmed[i]
        out[(i // len(RENDITIONS), i % len(RENDITIONS))] = (trimmed[i], raw[i])
    return out


def _silent(audio: np.ndarray) -> np.ndarray:
    return np.abs(audio) <= 10 ** (-70 / 20) * np.abs(audio).max()


def _longest_run(mask: np.ndarray) -> int:
    best = cur = 0
    for v in mask:
        cur = cur + 1 if v else 0
        best = max(best, cur)
    return best


CASES = [(i, r) for i in range(len(SENTENCES)) for r in range(len(RENDITIONS))]


def _id(case):
    i, r = case
    return f"{SENTENCES[i][0][:24]}|{RENDITIONS[r]}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_every_word_has_its_own_event_derived_start(clips, case):
    u, raw = clips[case]
    assert u.estimated == () and raw.estimated == ()
    assert [w.word for w in u.words] == u.text.split()
    starts = [w.start_s for w in raw.words]
    assert all(b > a for a, b in zip(starts, starts[1:])), starts  # no two words share an onset


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_word_edges_match_an_independent_energy_estimate(clips, case):
    u, raw = clips[case]
    x, sr = u.audio, SAMPLE_RATE
    silent = _silent(x)
    for (w, s, e), (_, s0, e0) in zip(u.words, raw.words):
        assert s0 - 1e-9 <= s < e <= e0 + 1e-9, (w, s, e, s0, e0)  # trimmed inside the event interval
        a, b = int(round(s * sr)), min(len(x), int(round(e * sr)))
        loud = np.flatnonzero(~silent[a:b])
        assert loud.size, f"{w!r} has no speech in {s:.3f}-{e:.3f} s"
        # speech starts and ends within one encoder frame of the span's edges ...
        assert loud[0] / sr <= TOL_S, (w, s, a / sr + loud[0] / sr)
        assert (b - a - loud[-1] - 1) / sr <= TOL_S, (w, e, (a + loud[-1] + 1) / sr)
        # ... and what was trimmed off is silence (at most one frame's worth of a neighbour's decay)
        cut = np.concatenate([~silent[int(round(s0 * sr)):a], ~silent[b:int(round(e0 * sr))]])
        assert cut.sum() / sr <= TOL_S, (w, s0, s, e, e0, cut.sum() / sr)


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_no_span_holds_a_pause(clips, case):
    u, raw = clips[case]
    x, sr = u.audio, SAMPLE_RATE
    silent = _silent(x)
    longest_raw = 0
    for (w, s, e), (_, s0, e0) in zip(u.words, raw.words):
        run = _longest_run(silent[int(round(s * sr)):int(round(e * sr))]) / sr
        assert run <= LONG_SILENCE_S, f"{w!r} [{s:.3f}, {e:.3f}) s holds {run * 1e3:.0f} ms of silence"
        longest_raw = max(longest_raw, _longest_run(silent[int(round(s0 * sr)):int(round(e0 * sr))]) / sr)
    if "? " in u.text or "; " in u.text:  # a clause break: espeak-ng pauses 200-350 ms
        assert longest_raw > LONG_SILENCE_S  # the untrimmed spans did hold the pause: the check can fail


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_subject_frames_start_at_the_subject(clips, case):
    u, _ = clips[case]
    text, subject = SENTENCES[case[0]]
    first, last = subject_token_range(text, subject)
    n_mel = CHAIN.mel_frames(len(u.audio))
    pm = PositionMap(CHAIN, n_mel=n_mel, audio_start=0, last=0, words=as_words(u.words), subject=(first, last))
    t0, t1 = u.words[first].start_s, u.words[last].end_s
    silent = _silent(u.audio)
    for stage in ("mel", "encoder", "token"):
        a, b = pm.span("subject", stage)
        assert b > a
        # no frame entirely before the subject's first word, none entirely after its last
        assert CHAIN.frame_to_seconds(stage, a)[1] > t0 and CHAIN.frame_to_seconds(stage, b - 1)[0] < t1
        assert CHAIN.frame_centre_s(stage, a) >= t0 - 1e-9
    # a pause *between* two subject words stays inside the (contiguous) span ("U.S." is followed by
    # a 300 ms sentence break); frames centred inside the subject's words are speech, and so are
    # the span's first and last frames
    a, b = pm.span("subject", "encoder")

    def is_silent(j):
        f0, f1 = CHAIN.frame_to_seconds("encoder", j)
        return bool(silent[int(round(f0 * SAMPLE_RATE)):int(round(f1 * SAMPLE_RATE))].all())

    assert not is_silent(a) and not is_silent(b - 1)
    in_words = [j for j in range(a, b)
                if any(s <= CHAIN.frame_centre_s("encoder", j) < e for _, s, e in u.words[first:last + 1])]
    quiet = sum(is_silent(j) for j in in_words)
    assert quiet <= max(2, 0.1 * len(in_words)), f"{quiet} of {len(in_words)} subject encoder frames are silence"
