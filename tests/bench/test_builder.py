"""Benchmark build → reopen round trip, reuse, resume, and rejection of bad items."""

from pathlib import Path

import numpy as np
import pytest

from lalm_interp.bench import Benchmark, BenchmarkError, Fact, build, relation_text
from lalm_interp.bench.builder import parse_item_id, plan
from lalm_interp.bench.datasets import load_facts
from lalm_interp.bench.store import FORMS, clip_key
from lalm_interp.speech import Rendition


def test_round_trip_spans_and_lengths_agree(built20):
    out, facts, report = built20
    assert report.n_items == 20 and not report.rejected
    bench = Benchmark.open(out)
    assert len(bench) == 20 and set(bench.facts) == {f.fact_id for f in facts}
    assert {it.form for it in bench} == set(FORMS)
    for it in bench:
        audio = it.audio
        assert audio.dtype == np.float32 and len(audio) == it.n_samples
        assert [w for w, _, _ in it.words] == it.text.split()
        assert it.words[-1].end_s == pytest.approx(it.duration_s, abs=1e-3)
        starts = [s for _, s, _ in it.words]
        assert starts == sorted(starts)
        fact = bench.fact(it)
        if it.form in ("prompt", "subject", "paraphrase"):
            a, b = it.subject_word_range
            assert " ".join(w for w, _, _ in it.words[a:b + 1]).startswith(fact.subject)
            s0, s1 = it.subject_span_s
            assert 0 <= s0 < s1 <= it.duration_s + 1e-3
        else:
            assert it.subject_word_range is None
        if it.form == "neighbourhood":
            assert it.target_new is None and it.target_true == fact.neighbourhood[0][1]
        else:
            assert (it.target_true, it.target_new) == (fact.target_true, fact.target_new)
    it = bench.select(form="prompt")[0]
    assert bench[it.item_id] == it
    assert parse_item_id(it.item_id)["form"] == "prompt"
    # the store holds what a fresh synthesis gives (FLAC 24-bit: within 2^-23)
    from lalm_interp.speech.espeak import EspeakBackend

    fresh = EspeakBackend().synthesize(it.text, it.rendition)
    assert len(fresh.audio) == it.n_samples
    assert np.abs(fresh.audio - it.audio).max() < 2.0 ** -22
    assert tuple(fresh.words) == it.words


def test_rebuild_reuses_every_clip(built20, counting_backend):
    out, facts, first = built20
    clips = sorted(Path(out, "clips").rglob("*.flac"))
    mtimes = [p.stat().st_mtime_ns for p in clips]
    again = build(facts, out, backend=counting_backend, renditions=1, progress=False)
    assert counting_backend.calls == 0
    assert (again.synthesised, again.reused) == (0, first.n_clips)
    assert [p.stat().st_mtime_ns for p in clips] == mtimes
    assert again.n_items == 20


def test_interrupted_build_resumes(tmp_path, counting_backend):
    facts = load_facts("counterfact", limit=3)

    def stop_after_4(done, total):
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(facts, tmp_path, backend=counting_backend, renditions=1, progress=False,
              on_clip=stop_after_4)
    with pytest.raises(BenchmarkError, match="not a built benchmark"):
        Benchmark.open(tmp_path)
    assert not list(tmp_path.rglob("*.tmp"))  # no half-written files
    assert len(list(tmp_path.rglob("*.json"))) == 4
    counting_backend.calls = 0
    report = build(facts, tmp_path, backend=counting_backend, renditions=1, progress=False)
    assert report.reused == 4 and report.synthesised == report.n_clips - 4
    assert counting_backend.calls == report.n_clips - 4
    assert len(Benchmark.open(tmp_path)) == 15


def _fact(case_id, subject, prompt, **kw):
    return Fact(case_id=case_id, subject=subject, prompt=prompt,
                relation_template=prompt.replace(subject, "{}", 1), relation_id="P0",
                target_true="Paris", **kw)


def test_failing_items_are_rejected_with_reasons_and_never_abort(tmp_path):
    facts = [
        _fact(1, "Metropolitan France", "Metropolitan France's capital is",
              paraphrases=("The capital of France is",)),             # subject not in paraphrase
        _fact(2, "Москва", "The capital of Москва is"),              # unsupported characters
        _fact(3, "Zürich", "Zürich is a city in"),
    ]
    rends = [Rendition("en-us"), Rendition("xx-nope")]              # a voice that does not exist
    report = build(facts, tmp_path, renditions=rends, forms=("prompt", "paraphrase"),
                   progress=False)
    bench = Benchmark.open(tmp_path)
    ok = {it.item_id for it in bench}
    assert ok == {"counterfact:1/prompt/0/en-us:r175:p50", "counterfact:3/prompt/0/en-us:r175:p50"}
    reasons = {r.item_id: r.reason for r in bench.rejected}
    assert len(reasons) == 6 and len(report.rejected) == 6
    assert "does not occur" in reasons["counterfact:1/paraphrase/0/en-us:r175:p50"]
    assert "non-Latin letter" in reasons["counterfact:2/prompt/0/en-us:r175:p50"]
    assert "no voice 'xx-nope'" in reasons["counterfact:3/prompt/0/xx-nope:r175:p50"]
    for item_id, reason in reasons.items():
        assert item_id in reason  # every reason names its item
    z = bench["counterfact:3/prompt/0/en-us:r175:p50"]
    assert z.subject_word_range == (0, 0) and z.words[0].word == "Zürich"


def test_relation_text_and_plan():
    f = _fact(1, "Metropolitan France", "Metropolitan France's capital is")
    assert relation_text(f) == "capital is"
    g = _fact(2, "Danielle Darrieux", "The mother tongue of Danielle Darrieux is")
    assert relation_text(g) == "The mother tongue of is"
    specs = plan([f], [Rendition(), Rendition("en")], forms=("prompt", "subject"))
    assert [s.item_id for s in specs] == [
        "counterfact:1/prompt/0/en-us:r175:p50", "counterfact:1/prompt/0/en:r175:p50",
        "counterfact:1/subject/0/en-us:r175:p50", "counterfact:1/subject/0/en:r175:p50"]
    with pytest.raises(BenchmarkError, match="Unknown item form"):
        plan([f], [Rendition()], forms=("prompts",))


def test_clip_key_is_content_address():
    r = Rendition()
    assert clip_key("a b", r, "v1") == clip_key("a b", Rendition(), "v1")
    assert len({clip_key("a b", r, "v1"), clip_key("a c", r, "v1"),
                clip_key("a b", Rendition("en"), "v1"), clip_key("a b", r, "v2")}) == 4


def test_aligner_missing_a_subject_word_rejects_only_that_item(tmp_path):
    from lalm_interp.speech.aligners import ManifestAligner

    f = _fact(1, "Metropolitan France", "Metropolitan France's capital is")
    r = Rendition()
    good = f"counterfact:1/prompt/0/{r}"
    times = {good: [("Metropolitan", 0.0, 0.7), ("France's", 0.7, 1.2), ("capital", 1.2, 1.7),
                    ("is", 1.7, 1.9)],
             f"counterfact:1/subject/0/{r}": [("Metropolitan", 0.0, 0.7)],  # no "France"
             f"counterfact:1/relation/0/{r}": [("capital", 0.0, 0.5)]}     # "is" missing: fine
    report = build([f], tmp_path, renditions=[r], forms=("prompt", "subject", "relation"),
                   aligner=ManifestAligner(times), progress=False)
    bench = Benchmark.open(tmp_path)
    assert {it.form for it in bench} == {"prompt", "relation"}
    assert bench[good].words[1] == ("France's", 0.7, 1.2)
    assert bench.select(form="relation")[0].words[1] == ("is", None, None)
    (rej,) = report.rejected
    assert rej.form == "subject" and "subject word 1 'France' has no span" in rej.reason
    assert bench.meta["aligner"] == "manifest"


def test_recordings_with_bad_files_are_rejected_per_item(tmp_path):
    import soundfile as sf

    from lalm_interp.speech.recordings import RecordingsBackend

    rec = tmp_path / "rec"
    rec.mkdir()
    sf.write(str(rec / "a.wav"), np.full(16000, 0.05, np.float32), 16000)
    bad = np.full(22050, 0.05, np.float32)
    bad[100:103] = np.nan  # a 22.05 kHz float WAV with NaN samples: refused (the rate alone is fine)
    sf.write(str(rec / "b.wav"), bad, 22050, subtype="FLOAT")
    (rec / "c.flac").write_bytes(b"\x00" * 64)
    rows = [("Oslo is", "a.wav", [["Oslo", 0.1, 0.5], ["is", 0.5, 0.9]]),
            ("Rome is", "b.wav", [["Rome", 0.1, 0.5], ["is", 0.5, 0.9]]),
            ("Bern is", "c.flac", [["Bern", 0.1, 0.5], ["is", 0.5, 0.9]])]
    import json

    (rec / "m.jsonl").write_text("".join(json.dumps({"text": t, "audio": a, "words": w}) + "\n"
                                         for t, a, w in rows))
    facts = [_fact(i, t.split()[0], t) for i, (t, _, _) in enumerate(rows)]
    report = build(facts, tmp_path / "out", backend=RecordingsBackend(rec / "m.jsonl"),
                   renditions=[Rendition("en-us")], forms=("prompt",), progress=False)
    assert report.n_items == 1
    reasons = {r.item_id.split("/")[0]: r.reason for r in report.rejected}
    assert "3 NaN sample(s)" in reasons["counterfact:1"] and "counterfact:1/prompt" in reasons["counterfact:1"]
    assert "Cannot read audio file" in reasons["counterfact:2"]
    (it,) = Benchmark.open(tmp_path / "out")
    assert it.n_samples == 16000 and it.subject_span_s == (0.1, 0.5)
