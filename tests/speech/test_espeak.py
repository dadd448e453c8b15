"""espeak-ng through ctypes: real audio, no mocks."""

import time

import numpy as np
import pytest

from lalm_interp.speech import SAMPLE_RATE, Rendition, SpeechError
from lalm_interp.speech.espeak import DEFAULT_RENDITIONS, EspeakBackend
from lalm_interp.speech.tokens import subject_token_range

PROMPT = "Metropolitan France's capital is"


def test_word_timings_monotone_cover_utterance_and_subject_span(espeak):
    u = espeak.synthesize(PROMPT)
    assert u.audio.dtype == np.float32 and u.audio.ndim == 1 and u.sample_rate == SAMPLE_RATE
    assert [w for w, _, _ in u.words] == PROMPT.split()
    # words start at their WORD events (trimmed to the speech: "Metropolitan" at 0 ms + the
    # leading silence) and end where their speech ends (issue 14 item 5: spans hold no pauses)
    raw = EspeakBackend(word_floor_db=None).synthesize(PROMPT)
    assert raw.words[0].start_s == 0.0 and 0.0 <= u.words[0].start_s < 0.02
    assert raw.words[-1].end_s == pytest.approx(u.duration_s)  # untrimmed: last word ends at the end
    assert u.duration_s - 0.02 <= u.words[-1].end_s <= u.duration_s
    for (_, s0, e0), (_, s1, _) in zip(u.words, u.words[1:]):
        assert s0 < e0 <= s1
    for (_, s0, e0), (_, s1, e1) in zip(raw.words, u.words):
        assert s0 <= s1 < e1 <= e0  # trimming only shrinks a word
    first, last = subject_token_range(PROMPT, "Metropolitan France")
    assert (first, last) == (0, 1)
    capital = u.words[2]
    assert u.words[last].end_s <= capital.start_s
    assert 0.5 < capital.start_s < 1.6  # measured 1.27 s at 175 wpm
    assert 1.5 < u.duration_s < 2.5
    assert u.estimated == ()


def test_trailing_silence_is_trimmed(espeak):
    u = espeak.synthesize(PROMPT)
    loud = np.flatnonzero(np.abs(u.audio) > espeak.trim_threshold)
    floor = int(np.ceil((u.words[-1].start_s + espeak.min_last_word_s) * SAMPLE_RATE))
    # the audio ends at its last non-silent sample (or at the 50 ms floor after the last onset)
    assert len(u.audio) == max(loud[-1] + 1, floor)
    untrimmed = EspeakBackend(trim_threshold=-1.0).synthesize(PROMPT)
    assert len(untrimmed.audio) > len(u.audio)
    assert np.array_equal(untrimmed.audio[: len(u.audio)], u.audio)


@pytest.mark.parametrize("text,subject", [
    ("Côte d'Ivoire's capital is", "Côte d'Ivoire"),
    ("The mayor of São Paulo is", "São Paulo"),
    ("Zürich is located in", "Zürich"),
])
def test_non_ascii_subjects_map_to_their_words(espeak, text, subject):
    u = espeak.synthesize(text)
    a, b = subject_token_range(text, subject)
    assert [w for w, _, _ in u.words[a:b + 1]] == subject.split() or \
        u.words[b].word.startswith(subject.split()[-1])
    assert u.estimated == ()  # every token got its own WORD event
    for _, s, e in u.words:
        assert e - s > 0.05


def test_character_positions_not_bytes(espeak):
    # Many 2-byte characters before short words: byte offsets would shift events onto the
    # wrong tokens and leave some token without an event.
    text = "São Paulo and Zürich and Côte d'Ivoire and Málaga and it"
    u = espeak.synthesize(text)
    assert u.estimated == ()
    assert all(e - s > 0.05 for _, s, e in u.words)


def test_same_text_and_rendition_is_bit_identical(espeak):
    r = Rendition("en-gb-x-rp", variant="m2", pitch=40)
    a, b = espeak.synthesize(PROMPT, r), espeak.synthesize(PROMPT, r)
    assert np.array_equal(a.audio, b.audio)
    assert a.words == b.words


def test_batch_synthesis_matches_single_and_renditions_differ(espeak):
    reqs = [(PROMPT, r) for r in DEFAULT_RENDITIONS[:4]]
    out = dict(espeak.synthesize_many(reqs, workers=2))
    single = espeak.synthesize(PROMPT, DEFAULT_RENDITIONS[2])
    assert np.array_equal(out[2].audio, single.audio)
    audios = [out[i].audio for i in range(4)]
    for i in range(4):
        for j in range(i + 1, 4):
            assert len(audios[i]) != len(audios[j]) or not np.array_equal(audios[i], audios[j])
    slow = espeak.synthesize(PROMPT, Rendition(rate=120))
    fast = espeak.synthesize(PROMPT, Rendition(rate=260))
    assert slow.duration_s > 1.5 * fast.duration_s


def test_empty_text_is_refused(espeak):
    with pytest.raises(SpeechError, match="Empty text"):
        espeak.synthesize("   ")


@pytest.mark.parametrize("text,what", [("Москва is", "non-Latin letter"),
                                       ("Paris 🗼 is", "symbol"),
                                       ("Paris\nis", "line break")])
def test_unsupported_characters_are_named(espeak, text, what):
    with pytest.raises(SpeechError, match=what) as exc:
        espeak.synthesize(text)
    assert "docs/errors/speech.md" in str(exc.value)


def test_unknown_voice_and_variant(espeak):
    with pytest.raises(SpeechError, match="no voice 'en-gb'.*'en'"):
        espeak.synthesize("hello", Rendition("en-gb"))
    with pytest.raises(SpeechError, match="no voice variant 'zz9'"):
        espeak.synthesize("hello", Rendition("en-us", variant="zz9"))
    out = dict(espeak.synthesize_many([("hello", Rendition("xx-nope")), ("hello", Rendition())]))
    assert isinstance(out[0], SpeechError) and out[1].duration_s > 0.2


def test_rendition_round_trip_and_validation():
    for r in DEFAULT_RENDITIONS:
        assert Rendition.parse(str(r)) == r
    assert Rendition.parse("en-us+f2:r150") == Rendition("en-us", "f2", 150)
    with pytest.raises(SpeechError):
        Rendition(rate=10)
    with pytest.raises(SpeechError):
        Rendition("en-us+m3")


def test_forked_output_is_reproducible_across_processes_and_in_process_drifts():
    """Run in a separate interpreter: in-process synthesis would taint this test process."""
    import subprocess
    import sys

    script = (
        "import hashlib\n"
        "from lalm_interp.speech.espeak import EspeakBackend\n"
        "b = EspeakBackend(); t = \"Metropolitan France's capital is\"\n"
        "h = lambda u: hashlib.sha256(u.audio.tobytes()).hexdigest()[:16]\n"
        "f1, f2 = h(b.synthesize(t)), h(b.synthesize(t))\n"
        "i1, i2 = b.synthesize_in_process(t), b.synthesize_in_process(t)\n"
        "print(f1, f2, h(i1), h(i2))\n"
    )
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           check=True).stdout.split() for _ in range(2)]
    (f1, f2, i1, i2), (g1, g2, _, _) = runs
    assert f1 == f2 == g1 == g2  # forked: bit-exact within and across processes
    assert i1 == f1  # the first synthesis in a fresh process equals the forked one
    assert i2 != i1  # the second in-process synthesis drifts (docs/gotchas/tts-determinism.md)


@pytest.mark.parametrize("rendition", ["en-us+f2:r165:p60", "en-us+f5:r180:p50"])
def test_breath_noise_voices_are_bit_exact_across_runs(rendition):
    """Variants with breath noise (f2 is a training voice of the organism and one of the protected
    corpus's eight) draw from espeak-ng's own random generator, which espeak-ng seeds with
    time(NULL): before the seed was fixed every run, and every second, gave other audio (75 of a
    600-clip protected corpus differed between two runs; ROME/AlphaEdit statistics with it)."""
    import subprocess
    import sys

    script = (
        "import hashlib\n"
        "from lalm_interp.speech import Rendition\n"
        "from lalm_interp.speech.espeak import EspeakBackend\n"
        f"b = EspeakBackend(); r = Rendition.parse({rendition!r})\n"
        "h = lambda u: hashlib.sha256(u.audio.tobytes()).hexdigest()[:16]\n"
        "print(h(b.synthesize('The twin city of Beirut is', r)), h(b.synthesize('The twin city of Beirut is', r)))\n"
    )
    runs = []
    for _ in range(2):
        runs.append(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                   check=True).stdout.split())
        time.sleep(1.1)  # espeak-ng's own seed is time(NULL), in seconds
    (a1, a2), (b1, b2) = runs
    assert a1 == a2 == b1 == b2
