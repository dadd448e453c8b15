"""Issue 16 items 2-3: audio given to the toolkit — sample rates, bad samples, word timings, files,
manifests of a user's own recordings, and `bench build --max-seconds`.

Every bad-input case asserts the error type and what the message names (the problem, the fix, the
docs page). The positive cases check real behaviour: resampled length and frequency, the features
a 44.1 kHz clip makes, a benchmark imported from recordings that `trace run` reads.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import soundfile as sf

from lalm_interp.apps.cli import main
from lalm_interp.errors import AudioInputError
from lalm_interp.inputs import build_inputs
from lalm_interp.speech.audio import load_audio
from lalm_interp.speech.errors import SpeechError
from lalm_interp.tracing.causal import SpokenPrompt

PAGE = "docs/errors/audio-input.md"
WORDS = (("The", 0.0, 0.2), ("capital", 0.2, 0.7), ("is", 0.7, 0.9))


def sine(freq: float, seconds: float, sr: int, amp: float = 0.3) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(round(seconds * sr))) / sr)).astype(np.float32)


def peak_hz(x: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / sr)[int(spec.argmax())])


# ---------------------------------------------------------------- build_inputs: bad clips / rates
def _inf(v):
    x = np.zeros(16000, np.float32)
    x[4000] = v
    return x


def _nan():
    x = np.zeros(16000, np.float32)
    x[[800, 900]] = np.nan
    return x


BAD_CLIPS = [
    # (id, audio, sample_rate, needles)
    ("rate-zero", np.zeros(16000, np.float32), 0, ["sample_rate=0 is not a sample rate", "positive integer"]),
    ("rate-negative", np.zeros(16000, np.float32), -16000, ["sample_rate=-16000 is not a sample rate"]),
    ("rate-float", np.zeros(16000, np.float32), 16000.5, ["sample_rate=16000.5 is not a sample rate"]),
    ("rate-bool", np.zeros(16000, np.float32), True, ["sample_rate=True is not a sample rate"]),
    ("stereo-channels-first", np.zeros((2, 16000), np.float32), 16000, ["(2, 16000) is not mono", "load_audio"]),
    ("stereo-channels-last", np.zeros((16000, 3), np.float32), 16000, ["(16000, 3) is not mono"]),
    ("three-dims", np.zeros((1, 2, 16000), np.float32), 16000, ["not mono"]),
    ("empty", np.zeros(0, np.float32), 16000, ["audio is empty"]),
    ("int16-pcm", np.zeros(16000, np.int16), 16000, ["dtype int16 is not floating point", "32768"]),
    ("nan", _nan(), 16000, ["2 NaN sample(s) of 16000", "first at sample 800, 0.050 s", "nan_to_num"]),
    ("pos-inf", _inf(np.inf), 16000, ["1 infinite sample(s)", "0.250 s"]),
    ("neg-inf", _inf(-np.inf), 16000, ["1 infinite sample(s)"]),
    ("too-short", np.zeros(100, np.float32), 16000, ["shorter than one mel hop (160 samples = 10 ms)"]),
    ("too-short-after-resampling", np.zeros(70, np.float32), 8000, ["140 samples at 16000 Hz is shorter"]),
    ("too-long", np.zeros(16000 * 5, np.float32), 16000,
     ["the clip is 5.00 s long (80000 samples at 16000 Hz)", "encoder window of 4.00 s", "--max-seconds"]),
    # 2 s recorded at 44.1 kHz but stated as 16 kHz: 5.51 s of slowed-down audio — the real
    # length the user stated is what the error reports
    ("44k-stated-as-16k", sine(440, 2.0, 44100), 16000, ["the clip is 5.51 s long (88200 samples"]),
]


@pytest.mark.parametrize("audio,sr,needles", [c[1:] for c in BAD_CLIPS], ids=[c[0] for c in BAD_CLIPS])
def test_bad_clip_is_a_clear_error(tiny, audio, sr, needles):
    _, processor, a = tiny
    with pytest.raises(AudioInputError) as e:
        build_inputs(processor, a, [audio], sample_rate=sr, names=["clip-7"])
    msg = str(e.value)
    assert "clip-7" in msg and PAGE in msg
    for n in needles:
        assert n in msg


def test_rates_must_match_the_clips(tiny):
    _, processor, a = tiny
    with pytest.raises(AudioInputError, match="2 sample rates for 1 clips"):
        build_inputs(processor, a, [np.zeros(16000, np.float32)], sample_rate=[16000, 44100])


# ---------------------------------------------------------------- sample rates: resampled, not assumed
def test_resample_gives_the_right_length_and_frequency():
    from lalm_interp.speech.audio import resample

    x = sine(1000, 1.0, 44100)
    y = resample(x, 44100, 16000)
    assert y.dtype == np.float32 and len(y) == 16000
    assert abs(peak_hz(y, 16000) - 1000) <= 1.0
    assert abs(np.sqrt(np.mean(y[1000:-1000] ** 2)) - 0.3 / np.sqrt(2)) < 0.005  # amplitude kept
    # a 10 kHz tone cannot exist at 16 kHz (Nyquist 8 kHz): the anti-aliasing filter removes it
    # instead of folding it to 6 kHz
    hi = resample(sine(10000, 1.0, 44100), 44100, 16000)
    assert np.sqrt(np.mean(hi[1000:-1000] ** 2)) < 0.01


def test_a_44k_clip_with_its_rate_gives_the_features_of_the_16k_clip(tiny):
    from lalm_interp.speech.audio import resample

    _, processor, a = tiny
    x44 = sine(440, 2.0, 44100)
    b44 = build_inputs(processor, a, [x44], sample_rate=44100)
    b16 = build_inputs(processor, a, [resample(x44, 44100, 16000)], sample_rate=16000)
    assert b44.n_mel == [200]  # 2.0 s of audio, not 5.51 s
    assert np.array_equal(b44.input_features.numpy(), b16.input_features.numpy())
    # one rate per clip
    mixed = build_inputs(processor, a, [x44, sine(440, 1.0, 16000)], sample_rate=[44100, 16000])
    assert mixed.n_mel == [200, 100]


def test_arrays_beyond_one_pass_unchanged_and_without_a_warning(tiny):
    _, processor, a = tiny
    loud = 3.0 * sine(440, 1.0, 16000)  # peak 0.9: scaled by 3 → 2.7
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b = build_inputs(processor, a, [loud], sample_rate=16000)
        ex = SpokenPrompt("loud", loud, WORDS, (0, 1), "Paris", sample_rate=16000)
    assert b.n_mel == [100] and np.array_equal(ex.audio, loud)  # nothing clipped


def test_spoken_prompt_resamples_to_16k_and_keeps_word_times():
    ex = SpokenPrompt("e44", sine(300, 1.0, 44100), WORDS, (0, 1), "Paris", sample_rate=44100)
    assert ex.sample_rate == 16000 and len(ex.audio) == 16000 and ex.duration_s == 1.0
    assert abs(peak_hz(ex.audio, 16000) - 300) <= 1.0
    ex.check_words()  # words end at 0.9 s inside the 1.0 s clip
    # the stated rate is what counts: the same array stated as 16 kHz is 2.76 s long
    assert SpokenPrompt("e", sine(300, 1.0, 44100), WORDS, (0, 1), "Paris", sample_rate=16000).duration_s == 2.75625


BAD_PROMPTS = [
    ("nan", dict(audio=_nan()), ["example 'p'", "2 NaN sample(s)"]),
    ("inf", dict(audio=_inf(np.inf)), ["example 'p'", "1 infinite sample(s)"]),
    ("stereo", dict(audio=np.zeros((2, 16000), np.float32)), ["shape (2, 16000)", "1-D float array"]),
    ("int16", dict(audio=np.zeros(16000, np.int16)), ["dtype int16", "int16 / 32768"]),
    ("empty", dict(audio=np.zeros(0, np.float32)), ["shape (0,)", "non-empty"]),
    ("rate-zero", dict(sample_rate=0), ["sample_rate=0 is not a sample rate"]),
    ("rate-string", dict(sample_rate="44100"), ["sample_rate='44100' is not a sample rate"]),
]


@pytest.mark.parametrize("kw,needles", [c[1:] for c in BAD_PROMPTS], ids=[c[0] for c in BAD_PROMPTS])
def test_bad_spoken_prompt_is_a_clear_error(kw, needles):
    args = dict(id="p", audio=np.zeros(16000, np.float32), words=WORDS, subject=(0, 1), target="Paris",
                sample_rate=16000)
    args.update(kw)
    with pytest.raises(AudioInputError) as e:
        SpokenPrompt(**args)
    for n in needles:
        assert n in str(e.value)
    assert PAGE in str(e.value)


BAD_WORDS = [
    ("after-the-clip", (("The", 0.0, 0.2), ("capital", 0.2, 0.65)),
     ["word 1 'capital' ends at 0.650 s, after the clip ends (0.500 s: 8000 samples at 16000 Hz)"]),
    ("milliseconds", (("The", 0.0, 200.0),), ["word 0 'The' ends at 200.000 s", "seconds"]),
    ("negative-start", (("The", -0.5, 0.2),), ["word 0 'The' has times -0.500–0.200 s"]),
    ("end-before-start", (("The", 0.3, 0.1),), ["word 0 'The' has times 0.300–0.100 s"]),
    ("nan-end", (("The", 0.0, float("nan")),), ["word 0 'The' has times 0.000–nan s", "finite"]),
]


@pytest.mark.parametrize("words,needles", [c[1:] for c in BAD_WORDS], ids=[c[0] for c in BAD_WORDS])
def test_word_timings_outside_the_clip_are_a_clear_error(words, needles):
    ex = SpokenPrompt("p", np.zeros(8000, np.float32), words, (0, 0), "Paris", sample_rate=16000)
    with pytest.raises(AudioInputError) as e:
        ex.check_words()
    for n in needles:
        assert n in str(e.value)


def test_trace_example_checks_word_times_before_running(tiny):
    from lalm_interp.specs import Experiment
    from lalm_interp.tracing.causal import trace_example

    model, processor, a = tiny
    # a 44.1 kHz clip of 0.9 s whose words end at 0.9 s, wrongly stated as 8 kHz: 4.96 s long —
    # words fit; stated as 96 kHz it is 0.41 s long and the words do not: a clear error
    late = SpokenPrompt("p96", sine(200, 0.9, 44100), WORDS, (0, 1), "Paris", sample_rate=96000)
    with pytest.raises(AudioInputError, match=r"word 1 'capital' ends at 0.700 s, after the clip ends \(0.413 s"):
        trace_example(model, processor, a, late, Experiment("e"))


# ---------------------------------------------------------------- a raw array's rate is required, never assumed
RATE_NEEDLES = ["without sample_rate", "pass sample_rate=<the clip's rate in Hz>",
                "lalm_interp.load_audio(path) returns 16 kHz audio", "benchmark items carry their rate", PAGE]


@pytest.mark.parametrize("clips,rate,n_missing", [
    (1, None, 1), (3, None, 3), (2, [16000, None], 1), (2, [None, None], 2),
], ids=["one-clip", "three-clips", "one-of-two-rates-missing", "list-of-nones"])
def test_build_inputs_refuses_arrays_without_a_rate(tiny, clips, rate, n_missing):
    _, processor, a = tiny
    kw = {} if rate is None else {"sample_rate": rate}
    with pytest.raises(AudioInputError) as e:
        build_inputs(processor, a, [sine(440, 1.0, 16000)] * clips, **kw)
    msg = str(e.value)
    assert f"build_inputs: {n_missing} raw sample array(s) given without sample_rate" in msg
    for n in RATE_NEEDLES:
        assert n in msg


def test_check_audio_refuses_an_array_without_a_rate(tiny):
    from lalm_interp.inputs import check_audio

    _, _, a = tiny
    with pytest.raises(AudioInputError, match=r"clip-7: 1 raw sample array\(s\) given without sample_rate"):
        check_audio(sine(440, 1.0, 16000), None, a, name="clip-7")


def test_spoken_prompt_refuses_an_array_without_a_rate():
    for make in (lambda: SpokenPrompt("p", sine(300, 1.0, 44100), WORDS, (0, 1), "Paris"),  # 5 positional args
                 lambda: SpokenPrompt("p", sine(300, 1.0, 44100), WORDS, (0, 1), "Paris", "Say", None)):
        with pytest.raises(AudioInputError) as e:
            make()
        msg = str(e.value)
        assert "SpokenPrompt example 'p': 1 raw sample array(s) given without sample_rate" in msg
        for n in RATE_NEEDLES:
            assert n in msg


def test_spoken_prompt_from_item_takes_the_items_rate_and_refuses_an_object_without_one():
    from types import SimpleNamespace

    item = SimpleNamespace(item_id="f/prompt/0/0", audio=sine(300, 1.0, 44100), words=WORDS,
                           subject_word_range=(0, 1), target_true="Paris")
    with pytest.raises(AudioInputError) as e:
        SpokenPrompt.from_item(item)
    msg = str(e.value)
    assert "SimpleNamespace 'f/prompt/0/0' has no sample_rate" in msg and "without sample_rate" in msg
    assert "pass sample_rate=<the clip's rate in Hz>" in msg and PAGE in msg
    item.sample_rate = 44100  # the item states its rate: resampled to 16 kHz, 1.0 s long
    ex = SpokenPrompt.from_item(item)
    assert ex.sample_rate == 16000 and len(ex.audio) == 16000
    assert abs(peak_hz(ex.audio, 16000) - 300) <= 1.0


def test_benchmark_items_carry_their_rate(tmp_path):
    from lalm_interp.bench.builder import build
    from lalm_interp.bench.datasets import Fact
    from lalm_interp.speech.tts import Rendition

    fact = Fact(0, "Oslo", "Oslo is", "{} is", "t:0", "Norway")
    x = sine(220, 1.0, 16000)
    build([fact], tmp_path / "b", backend=ArrayBackend(x), renditions=[Rendition()], forms=("prompt",),
          progress=False)
    from lalm_interp.bench.store import Benchmark

    (item,) = list(Benchmark.open(tmp_path / "b"))
    assert item.sample_rate == 16000
    ex = SpokenPrompt.from_item(item)  # nothing more to say: the item carries its rate
    assert ex.sample_rate == 16000 and len(ex.audio) == item.n_samples


def test_trace_example_refuses_replace_audio_without_its_rate(tiny):
    from lalm_interp.specs import Corrupt, Experiment
    from lalm_interp.tracing.causal import trace_example

    model, processor, a = tiny
    ex = SpokenPrompt("p", sine(300, 1.0, 16000), WORDS, (0, 1), "Paris", sample_rate=16000)
    exp = Experiment("e", corrupt=Corrupt(noise="replace"))
    with pytest.raises(AudioInputError) as e:
        trace_example(model, processor, a, ex, exp, replace_audio=sine(500, 1.0, 44100))
    msg = str(e.value)
    assert "example 'p' replace_audio: 1 raw sample array(s) given without replace_sample_rate" in msg
    assert "pass replace_sample_rate=<the clip's rate in Hz>" in msg and PAGE in msg
    # with its rate it runs: the 44.1 kHz replacement clip is resampled to the model's rate
    ds = trace_example(model, processor, a, ex, exp, replace_audio=sine(500, 1.0, 44100), replace_sample_rate=44100)
    assert np.isfinite(float(ds["p_corrupt"])) and float(ds["p_clean"]) != float(ds["p_corrupt"])


def test_known_scores_refuse_items_without_a_rate(tiny):
    from types import SimpleNamespace

    from lalm_interp.known import first_token_scores

    model, processor, a = tiny
    ok = SpokenPrompt("p", sine(300, 1.0, 16000), WORDS, (0, 1), "Paris", sample_rate=16000)
    bare = SimpleNamespace(item_id="x", audio=sine(300, 1.0, 16000), target="Paris")
    with pytest.raises(AudioInputError, match=r"1 raw sample array\(s\) given without sample_rate"):
        first_token_scores(model, processor, a, [ok, bare], target="target")
    assert len(first_token_scores(model, processor, a, [ok], target="target").correct) == 1


# ---------------------------------------------------------------- load_audio: files
def test_load_audio_is_exported_at_the_top_level():
    import lalm_interp

    assert lalm_interp.load_audio is load_audio and "load_audio" in lalm_interp.__all__
    assert "sr" in load_audio.__doc__ and "resample" in load_audio.__doc__


@pytest.mark.parametrize("fmt,subtype,ext,tol_len", [
    ("WAV", "PCM_16", "wav", 0), ("WAV", "FLOAT", "wav", 0), ("FLAC", "PCM_24", "flac", 0),
    ("OGG", "VORBIS", "ogg", 0), ("MP3", "MPEG_LAYER_III", "mp3", 0.05),
])
def test_load_audio_reads_mixes_down_and_resamples(tmp_path, fmt, subtype, ext, tol_len):
    left, right = sine(440, 1.5, 44100, 0.4), sine(440, 1.5, 44100, 0.2)
    p = tmp_path / f"stereo44k.{ext}"
    sf.write(str(p), np.stack([left, right], 1), 44100, format=fmt, subtype=subtype)
    x = load_audio(p)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 24000) <= tol_len * 24000
    assert abs(peak_hz(x, 16000) - 440) <= 1.0
    mid = x[4000:20000]
    assert abs(np.abs(mid).max() - 0.3) < 0.03  # the mean of the two channels
    x8 = load_audio(p, sr=8000)
    assert abs(len(x8) - 12000) <= tol_len * 12000 and abs(peak_hz(x8, 8000) - 440) <= 1.0


def _float_wav(path, x, sr=16000):
    sf.write(str(path), np.asarray(x, np.float32), sr, subtype="FLOAT")
    return path


def test_float_wav_beyond_one_warns_with_count_and_peak_and_is_not_clipped(tmp_path):
    from lalm_interp.speech.audio import AudioClippingWarning

    x = np.zeros(16000, np.float32)
    x[:5] = [13.0, -2.0, 1.5, 0.5, 1.0]
    with pytest.warns(AudioClippingWarning, match=r"3 of 16000 samples exceed ±1 \(peak 13\)"):
        y = load_audio(_float_wav(tmp_path / "loud.wav", x))
    assert y.max() == 13.0 and y.min() == -2.0  # kept, not silently clipped to ±1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_audio(_float_wav(tmp_path / "ok.wav", x.clip(-1, 1)))  # in range: no warning


BAD_FILES = [
    ("missing", lambda d: d / "nope.wav", ["does not exist", "check the path"]),
    ("a-folder", lambda d: d, ["is a folder, not a file", "check the path"]),
    ("not-audio", lambda d: (d / "x.flac").write_bytes(b"fLaC not really audio") and d / "x.flac",
     ["Cannot read audio file", "x.flac", "re-export"]),
    ("text-file", lambda d: (d / "notes.wav").write_text("hello") and d / "notes.wav", ["Cannot read audio file"]),
    ("empty-wav", lambda d: _float_wav(d / "empty.wav", np.zeros(0)), ["is empty (0 samples)"]),
    ("nan-wav", lambda d: _float_wav(d / "nan.wav", _nan()), ["2 NaN sample(s)", "nan.wav"]),
    ("inf-wav", lambda d: _float_wav(d / "inf.wav", _inf(np.inf)), ["1 infinite sample(s)", "0.250 s"]),
]


@pytest.mark.parametrize("make,needles", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_audio_file_is_a_clear_error(tmp_path, make, needles):
    path = make(tmp_path)
    with pytest.raises(AudioInputError) as e:
        load_audio(path, key="utt-3")
    msg = str(e.value)
    for n in needles:
        assert n in msg
    assert "'utt-3'" in msg and PAGE in msg


@pytest.mark.parametrize("sr", [0, -1, 16000.0, None])
def test_load_audio_rejects_a_bad_target_rate(tmp_path, sr):
    p = _float_wav(tmp_path / "a.wav", np.zeros(1600))
    with pytest.raises(AudioInputError, match=f"sr={sr!r} is not a sample rate"):
        load_audio(p, sr=sr)


# ---------------------------------------------------------------- the benchmark store: no silent clipping
@pytest.mark.parametrize("name,samples,needle", [
    ("loud", [13.0, -2.0, 1.5], "3 of 16000 samples beyond ±1 (peak 13)"),
    ("inf", [np.inf], "1 infinite sample(s)"),
])
def test_bench_refuses_clips_it_would_clip(tmp_path, name, samples, needle):
    from lalm_interp.bench.builder import build
    from lalm_interp.bench.datasets import Fact
    from lalm_interp.speech.recordings import RecordingsBackend
    from lalm_interp.speech.tts import Rendition

    x = np.full(16000, 0.05, np.float32)
    x[: len(samples)] = samples
    _float_wav(tmp_path / f"{name}.wav", x)
    (tmp_path / "m.jsonl").write_text(json.dumps({"text": "Oslo is", "audio": f"{name}.wav",
                                                  "words": [["Oslo", 0.1, 0.5], ["is", 0.5, 0.9]]}) + "\n")
    fact = Fact(0, "Oslo", "Oslo is", "{} is", "t:0", "Norway")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = build([fact], tmp_path / "out", backend=RecordingsBackend(tmp_path / "m.jsonl"),
                       renditions=[Rendition()], forms=("prompt",), progress=False)
    assert report.n_items == 0
    (rej,) = report.rejected
    assert needle in rej.reason


class ArrayBackend:
    """A third-party TTS backend (the TTSBackend protocol) that returns the samples it is given."""

    name = "array"
    version = "array 1"

    def __init__(self, audio):
        self.audio = audio

    def synthesize(self, text, rendition):
        from lalm_interp.speech.tts import Utterance, WordSpan

        return Utterance(text=text, audio=self.audio, words=(WordSpan("Oslo", 0.1, 0.5), WordSpan("is", 0.5, 0.9)),
                         rendition=rendition, backend=self.version)


@pytest.mark.parametrize("samples,needle", [
    ([np.inf, 0.2], "1 NaN/infinite samples of 16000 (first at 0.000 s)"),
    ([0.1, np.nan, np.nan], "2 NaN/infinite samples of 16000 (first at 0.000 s)"),
    ([0.1, 0.2, 4.0, -1.25], "2 of 16000 samples beyond ±1 (peak 4)"),
])
def test_bench_store_refuses_bad_samples_from_any_backend(tmp_path, samples, needle):
    from lalm_interp.bench.builder import build
    from lalm_interp.bench.datasets import Fact
    from lalm_interp.speech.tts import Rendition

    x = np.full(16000, 0.05, np.float32)
    x[: len(samples)] = samples
    fact = Fact(0, "Oslo", "Oslo is", "{} is", "t:0", "Norway")
    report = build([fact], tmp_path / "out", backend=ArrayBackend(x), renditions=[Rendition()],
                   forms=("prompt",), progress=False)
    assert report.n_items == 0 and needle in report.rejected[0].reason
    assert not list((tmp_path / "out" / "clips").rglob("*.flac"))  # nothing stored, nothing clipped


# ---------------------------------------------------------------- bench import: the manifest
def _clip(path, seconds=1.0, sr=16000):
    sf.write(str(path), sine(220, seconds, sr), sr)
    return path.name


def _manifest(d, rows, name="m.csv"):
    p = d / name
    if name.endswith(".csv"):
        cols = list(rows[0].keys())
        import csv

        with open(p, "w", newline="") as fh:
            w = csv.DictWriter(fh, cols)
            w.writeheader()
            w.writerows(rows)
    else:
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _row(audio, text="Oslo is the capital of", subject="Oslo", target="Norway",
         words='[["Oslo", 0.1, 0.4], ["is", 0.4, 0.5], ["the", 0.5, 0.6], ["capital", 0.6, 0.8], ["of", 0.8, 0.9]]',
         **extra):
    r = {"audio": audio, "text": text, "subject": subject, "target": target, "words": words}
    r.update(extra)
    return r


MANIFEST_CASES = [
    ("missing-subject-column", lambda d: [{k: v for k, v in _row(_clip(d / "a.wav")).items() if k != "subject"}],
     "m.csv", ["no 'subject' column", "audio, text, subject, target"]),
    ("missing-audio-file", lambda d: [_row(_clip(d / "a.wav")), _row("gone.wav", text="Rome is in")],
     "m.csv", ["1 bad row(s)", "row 2: audio file", "gone.wav' does not exist"]),
    ("subject-not-in-transcript", lambda d: [_row(_clip(d / "a.wav"), subject="Rome")],
     "m.csv", ["row 1: subject 'Rome' is not in the transcript 'Oslo is the capital of'"]),
    ("path-escapes", lambda d: [_row("../outside.wav")],
     "m.csv", ["row 1: audio path '../outside.wav' leaves the manifest's folder"]),
    ("no-word-times", lambda d: [_row(_clip(d / "a.wav"), words="")],
     "m.csv", ["row 1: no word timings", "--words"]),
    ("repeated-transcript", lambda d: [_row(_clip(d / "a.wav")), _row(_clip(d / "b.wav"))],
     "m.csv", ["row 2: transcript 'Oslo is the capital of' repeats row 1"]),
    ("empty-cell", lambda d: [_row(_clip(d / "a.wav"), target="")], "m.csv", ["row 1: empty target"]),
    ("same-file-name", lambda d: [_row(_clip(d / "a.wav")), _row(_clip(d / "a.flac"), text="Rome is in", subject="Rome")],
     "m.csv", ["row 2: audio file name 'a' repeats row 1"]),
    ("words-not-json", lambda d: [_row(_clip(d / "a.wav"), words="Oslo 0.1 0.4")],
     "m.csv", ["row 1: the 'words' cell is not JSON"]),
    ("jsonl-broken", lambda d: None, "m.jsonl", ["is not JSONL: row 1"]),
    ("jsonl-not-object", lambda d: [["a.wav", "Oslo is"]], "m.jsonl", ["row 1 is list, not an object"]),
    ("unknown-format", lambda d: None, "m.txt", ["Unknown manifest format", ".csv or .jsonl"]),
    ("no-rows", lambda d: [], "m.jsonl", ["has no rows"]),
    ("missing-manifest", lambda d: None, "absent.csv", ["Cannot read recordings manifest"]),
]


@pytest.mark.parametrize("make,name,needles", [c[1:] for c in MANIFEST_CASES], ids=[c[0] for c in MANIFEST_CASES])
def test_bad_import_manifest_is_a_clear_error(tmp_path, make, name, needles):
    from lalm_interp.speech.recordings import read_import_manifest

    d = tmp_path / "recs"
    d.mkdir()
    rows = make(d)
    if name == "m.jsonl" and rows is None:
        (d / name).write_text('{"audio": "a.wav",\n')
    elif name == "m.txt":
        (d / name).write_text("audio,text\n")
    elif rows is not None:
        _manifest(d, rows, name) if rows else (d / name).write_text("")
    with pytest.raises(SpeechError) as e:
        read_import_manifest(d / name)
    for n in needles:
        assert n in str(e.value)
    assert "docs/errors/speech.md" in str(e.value)
    # the CLI says the same thing and exits 2, writing nothing
    assert main(["bench", "import", "--manifest", str(d / name), "--out", str(tmp_path / "b"),
                 "--no-progress"]) == 2
    assert not (tmp_path / "b" / "benchmark.json").exists()


def test_max_seconds_must_be_positive(tmp_path):
    from lalm_interp.bench.builder import build
    from lalm_interp.bench.errors import BenchmarkError

    with pytest.raises(BenchmarkError, match="max_seconds=0 is not a positive number"):
        build([], tmp_path / "b", max_seconds=0)


# ---------------------------------------------------------------- end to end: recordings → benchmark → trace
@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """Two espeak-ng clips written as a user's files: 44.1 kHz stereo WAV and 22.05 kHz FLAC,
    with a CSV manifest (inline word times) and a word-time CSV keyed by file stem."""
    from lalm_interp.speech.audio import resample
    from lalm_interp.speech.espeak import EspeakBackend
    from lalm_interp.speech.tts import Rendition

    d = tmp_path_factory.mktemp("recordings")
    be = EspeakBackend()
    specs = [("The Eiffel Tower is located in", "Eiffel Tower", "Paris", "Rome", "eiffel.wav", 44100),
             ("Toyota was founded in", "Toyota", "Japan", "Italy", "toyota.flac", 22050)]
    rows, times, utts = [], [], {}
    for text, subject, true, new, name, sr in specs:
        u = be.synthesize(text, Rendition())
        x = resample(u.audio, 16000, sr)
        sf.write(str(d / name), np.stack([x, x], 1) if name.endswith(".wav") else x, sr)
        words = [[w, round(s, 3), round(e, 3)] for w, s, e in u.words]
        rows.append(_row(name, text=text, subject=subject, target=true, target_new=new,
                         words=json.dumps(words)))
        times += [(name.split(".")[0], *w) for w in words]
        utts[name] = u
    _manifest(d, rows, "my.csv")
    (d / "times.csv").write_text("file,word,start,end\n" + "".join(f"{k},{w},{s},{e}\n" for k, w, s, e in times))
    no_words = [{k: v for k, v in r.items() if k != "words"} for r in rows]
    _manifest(d, no_words, "plain.csv")
    return d, utts


def test_bench_import_end_to_end(recordings, tmp_path, capsys):
    from lalm_interp.bench.store import Benchmark

    d, utts = recordings
    out = tmp_path / "bench"
    assert main(["bench", "import", "--manifest", str(d / "my.csv"), "--out", str(out), "--no-progress"]) == 0
    assert "2 items from 2 facts" in capsys.readouterr().out
    bench = Benchmark.open(out)
    assert len(bench) == 2 and bench.meta["source"] == "recordings:my.csv"
    by_text = {it.text: it for it in bench}
    eiffel = by_text["The Eiffel Tower is located in"]
    u = utts["eiffel.wav"]
    assert eiffel.subject_word_range == (1, 2) and eiffel.target_true == "Paris" and eiffel.target_new == "Rome"
    assert abs(eiffel.n_samples - len(u.audio)) <= 2  # 44.1 kHz stereo file back at 16 kHz mono
    assert np.corrcoef(eiffel.audio[: len(u.audio) - 2], u.audio[: len(u.audio) - 2])[0, 1] > 0.99
    assert eiffel.subject_span_s == (u.words[1].start_s, u.words[2].end_s) or \
        np.allclose(eiffel.subject_span_s, (u.words[1].start_s, u.words[2].end_s), atol=1e-3)
    # word times from a separate file (keyed by file stem) give the same items
    out2 = tmp_path / "bench2"
    assert main(["bench", "import", "--manifest", str(d / "plain.csv"), "--words", str(d / "times.csv"),
                 "--out", str(out2), "--no-progress"]) == 0
    assert [it.words for it in Benchmark.open(out2)] == [it.words for it in bench]


def test_bench_import_max_seconds_counts_what_it_leaves_out(recordings, tmp_path, capsys):
    from lalm_interp.bench.store import Benchmark

    d, utts = recordings
    shortest = min(len(u.audio) for u in utts.values()) / 16000
    out = tmp_path / "b"
    s = round(shortest + 0.01, 2)
    assert main(["bench", "import", "--manifest", str(d / "my.csv"), "--out", str(out), "--no-progress",
                 "--max-seconds", str(s)]) == 0
    text = capsys.readouterr().out
    assert "1 items from 2 facts" in text and f"1 rejected (1 of them longer than --max-seconds {s:g} s)" in text
    bench = Benchmark.open(out)
    assert len(bench) == 1 and bench.meta["n_too_long"] == 1 and bench.meta["max_seconds"] == s
    assert bench.rejected[0].reason.startswith("too long:")


def test_imported_benchmark_traces(recordings, tmp_path):
    from pathlib import Path

    d, _ = recordings
    out = tmp_path / "bench"
    assert main(["bench", "import", "--manifest", str(d / "my.csv"), "--out", str(out), "--no-progress"]) == 0
    spec = Path(__file__).resolve().parents[2] / "tracing_specs" / "layer_selection.py"
    assert main(["trace", "run", str(spec), "--model", "tiny-random", "--bench", str(out),
                 "--out", str(tmp_path / "trace"), "--no-progress"]) == 0
    assert (tmp_path / "trace" / "aie.nc").is_file()


def test_bench_build_max_seconds(tmp_path, capsys):
    from lalm_interp.bench.store import Benchmark

    out = tmp_path / "b"
    assert main(["bench", "build", "--source", "known1000", "--limit", "2", "--renditions", "1",
                 "--forms", "prompt,subject", "--out", str(out), "--no-progress", "--max-seconds", "1.0"]) == 0
    text = capsys.readouterr().out
    bench = Benchmark.open(out)
    long = [r for r in bench.rejected if r.reason.startswith("too long")]
    assert long and all(it.duration_s <= 1.0 for it in bench)
    assert len(bench) + len(long) == 4 and bench.meta["n_too_long"] == len(long)
    assert f"({len(long)} of them longer than --max-seconds 1 s)" in text
    assert "longer than --max-seconds 1 s" in long[0].reason


def test_a_key_corpus_of_raw_arrays_must_state_its_rate():
    """Statistics corpora used to take raw arrays as 16 kHz; their rate is now stated or refused."""
    from types import SimpleNamespace

    from lalm_interp.editors import EditorError, KeyCorpus

    with pytest.raises(EditorError) as e:
        KeyCorpus("raw", [np.zeros(160, dtype=np.float32)]).rate(0)
    assert "raw sample array" in str(e.value) and "sample_rate=<Hz>" in str(e.value)
    assert "docs/errors/editors.md" in str(e.value)
    with pytest.raises(EditorError, match="SimpleNamespace without a sample_rate"):
        KeyCorpus("obj", [SimpleNamespace(audio=np.zeros(160, dtype=np.float32))]).rate(0)
    assert KeyCorpus("raw44", [np.zeros(441, dtype=np.float32)], sample_rate=44100).rate(0) == 44100
    assert KeyCorpus("obj", [SimpleNamespace(audio=np.zeros(1), sample_rate=22050)]).rate(0) == 22050
