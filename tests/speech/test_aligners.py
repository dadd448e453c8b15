"""Manifest (CSV / JSON / TextGrid), WhisperX (absent), recordings backend, alignment checks."""

import builtins
import json

import numpy as np
import pytest
import soundfile as sf

from lalm_interp.speech import AlignerUnavailable, AlignmentError, Rendition, SpeechError, WordSpan
from lalm_interp.speech.aligners import (EventAligner, ManifestAligner, WhisperXAligner,
                                         check_alignment, match_words)
from lalm_interp.speech.audio import load_audio
from lalm_interp.speech.recordings import RecordingsBackend

TEXT = "Metropolitan France's capital is"
TIMES = [("metropolitan", 0.05, 0.70), ("france's", 0.70, 1.20), ("capital", 1.25, 1.70),
         ("is", 1.70, 1.90)]

TEXTGRID = """File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 2.0
tiers? <exists>
size = 2
item []:
    item [1]:
        class = "IntervalTier"
        name = "words"
        xmin = 0
        xmax = 2.0
        intervals: size = 6
        intervals [1]:
            xmin = 0
            xmax = 0.05
            text = ""
        intervals [2]:
            xmin = 0.05
            xmax = 0.70
            text = "metropolitan"
        intervals [3]:
            xmin = 0.70
            xmax = 1.20
            text = "france's"
        intervals [4]:
            xmin = 1.20
            xmax = 1.25
            text = ""
        intervals [5]:
            xmin = 1.25
            xmax = 1.70
            text = "capital"
        intervals [6]:
            xmin = 1.70
            xmax = 1.90
            text = "is"
    item [2]:
        class = "IntervalTier"
        name = "phones"
        xmin = 0
        xmax = 2.0
        intervals: size = 1
        intervals [1]:
            xmin = 0
            xmax = 2.0
            text = "m"
"""


def _expect(words):
    assert [w for w, _, _ in words] == TEXT.split()
    assert words[1] == WordSpan("France's", 0.70, 1.20)
    assert words[2].start_s == 1.25
    check_alignment(words, (0, 1), key="utt1", duration_s=2.0)


def test_csv_json_textgrid_agree(tmp_path):
    csv_path = tmp_path / "w.csv"
    csv_path.write_text("utt_id,word,start,end\n" +
                        "".join(f"utt1,{w},{s},{e}\n" for w, s, e in TIMES))
    json_path = tmp_path / "w.json"
    json_path.write_text(json.dumps({"utt1": [{"word": w, "start": s, "end": e}
                                              for w, s, e in TIMES]}))
    jsonl_path = tmp_path / "w.jsonl"
    jsonl_path.write_text(json.dumps({"key": "utt1", "words": TIMES}) + "\n")
    tg_dir = tmp_path / "tg"
    tg_dir.mkdir()
    (tg_dir / "utt1.TextGrid").write_text(TEXTGRID)
    for src in (csv_path, json_path, jsonl_path, tg_dir, tg_dir / "utt1.TextGrid"):
        al = ManifestAligner.load(src)
        _expect(al.align(TEXT, np.zeros(32000, np.float32), key="utt1"))
        # a path-like key resolves to its stem
        _expect(al.align(TEXT, np.zeros(32000, np.float32), key="/rec/utt1.flac"))


def test_missing_subject_word_rejects_with_reason():
    timed = [w for w in TIMES if w[0] != "france's"]
    words = match_words(TEXT, timed)
    assert words[1] == WordSpan("France's", None, None) and words[2].start_s == 1.25
    with pytest.raises(AlignmentError, match=r"item1.*subject word 1 \"France's\" has no span"):
        check_alignment(words, (0, 1), key="item1")
    check_alignment(words, None, key="item1")  # a non-subject gap alone is allowed


def test_split_words_and_fillers_are_matched():
    words = match_words("Côte d'Ivoire is", [("uh", 0.0, 0.1), ("côte", 0.1, 0.4),
                                               ("d", 0.4, 0.5), ("ivoire", 0.5, 0.9),
                                               ("is", 0.9, 1.0)])
    assert words == (WordSpan("Côte", 0.1, 0.4), WordSpan("d'Ivoire", 0.4, 0.9),
                     WordSpan("is", 0.9, 1.0))


def test_bad_times_are_rejected():
    with pytest.raises(AlignmentError, match="before"):
        check_alignment([WordSpan("a", 0.0, 0.5), WordSpan("b", 0.2, 0.6)], None, key="k")
    with pytest.raises(AlignmentError, match="outside the audio"):
        check_alignment([WordSpan("a", 0.0, 5.0)], None, key="k", duration_s=1.0)


def test_manifest_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,word,start\nx,a,0\n")
    with pytest.raises(AlignmentError, match="columns"):
        ManifestAligner.load(bad)
    nan = tmp_path / "nan.csv"
    nan.write_text("id,word,start,end\nx,a,zero,1\n")
    with pytest.raises(AlignmentError, match="line 2"):
        ManifestAligner.load(nan)
    with pytest.raises(AlignmentError, match="No word times for 'other'"):
        ManifestAligner({"x": []}).align("a", np.zeros(1, np.float32), key="other")
    tg = tmp_path / "t.TextGrid"
    tg.write_text(TEXTGRID)
    with pytest.raises(AlignmentError, match="no interval tier named 'word'"):
        ManifestAligner.from_textgrid(tg, tier="word")


def test_event_aligner_needs_events():
    with pytest.raises(AlignmentError, match="No TTS word events"):
        EventAligner().align("a", np.zeros(1, np.float32), key="k")


def test_whisperx_imports_lazily_and_explains_absence(monkeypatch, tmp_path):
    import sys

    assert "whisperx" not in sys.modules  # constructing nothing imported it
    al = WhisperXAligner(tmp_path)
    assert "whisperx" not in sys.modules
    real_import = builtins.__import__

    def no_whisperx(name, *a, **k):
        if name == "whisperx":
            raise ImportError("No module named 'whisperx'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_whisperx)
    with pytest.raises(AlignerUnavailable, match="pip install --no-deps whisperx") as exc:
        al.align(TEXT, np.zeros(16000, np.float32), key="k", sample_rate=16000)
    assert isinstance(exc.value, ImportError) and "docs/errors/speech.md" in str(exc.value)


def test_whisperx_needs_the_rate_of_raw_samples(tmp_path):
    """Raw samples given to the WhisperX aligner used to be taken as 16 kHz."""
    from lalm_interp.errors import AudioInputError

    with pytest.raises(AudioInputError, match="without sample_rate"):
        WhisperXAligner(tmp_path).align(TEXT, np.zeros(44100, np.float32), key="k")


def _write(path, rate=16000, seconds=2.0):
    sf.write(str(path), np.zeros(int(rate * seconds), np.float32) + 0.01, rate)


def test_recordings_backend_and_its_errors(tmp_path):
    _write(tmp_path / "utt1.wav")
    _write(tmp_path / "utt44k.wav", rate=44100)
    (tmp_path / "broken.flac").write_bytes(b"fLaC not really audio")
    (tmp_path / "w.csv").write_text("file,word,start,end\n" +
                                    "".join(f"utt1,{w},{s},{e}\n" for w, s, e in TIMES) +
                                    "utt44k,Paris,0.1,0.6\nutt44k,is,0.6,0.9\n")
    manifest = tmp_path / "recs.csv"
    manifest.write_text("text,audio\n"
                        f"{TEXT},utt1.wav\n"
                        "Paris is,utt44k.wav\n"
                        "Rome is,broken.flac\n"
                        "Oslo is,missing.wav\n")
    be = RecordingsBackend(manifest, ManifestAligner.load(tmp_path / "w.csv"))
    u = be.synthesize(TEXT, Rendition())
    assert u.duration_s == 2.0 and u.words[1].end_s == 1.20
    assert be.version.startswith("recordings ")
    u44 = be.synthesize("Paris is")  # a 44.1 kHz recording is resampled to 16 kHz, not refused
    assert u44.sample_rate == 16000 and len(u44.audio) == 32000 and u44.duration_s == 2.0
    with pytest.raises(SpeechError, match=r"(?s)Cannot read audio file .*broken.flac.*'broken'"):
        be.synthesize("Rome is")
    with pytest.raises(SpeechError, match="does not exist"):
        be.synthesize("Oslo is")
    with pytest.raises(SpeechError, match="No recording of 'Madrid is'"):
        be.synthesize("Madrid is")


def test_load_audio_downmixes_stereo(tmp_path):
    sf.write(str(tmp_path / "s.wav"), np.stack([np.full(100, 0.2), np.full(100, 0.4)], 1), 16000)
    a = load_audio(tmp_path / "s.wav")
    assert a.shape == (100,) and a.dtype == np.float32 and np.allclose(a, 0.3, atol=1e-4)


def test_a_crashing_third_party_backend_fails_one_item_only():
    from lalm_interp.speech.tts import synthesize_many

    class Flaky:
        name = "flaky"
        version = "1"

        def synthesize(self, text, rendition):
            if text == "boom":
                raise RuntimeError("engine crashed")
            raise SpeechError("bad request")

    out = dict(synthesize_many(Flaky(), [("boom", Rendition()), ("x", Rendition())]))
    assert isinstance(out[0], SpeechError) and "'flaky' failed for 'boom'" in str(out[0])
    assert "RuntimeError: engine crashed" in str(out[0])
    assert isinstance(out[1], SpeechError)
