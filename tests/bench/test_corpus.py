"""Protected-key corpus: LibriSpeech-style folders and the synthetic fallback."""

import numpy as np
import pytest
import soundfile as sf

from lalm_interp.bench import BenchmarkError, load_facts
from lalm_interp.bench.corpus import (generic_sentences, load_librispeech, open_corpus,
                                      protected_corpus, synthesise_corpus)


def _libri(root, n=6, rate=16000):
    d = root / "84" / "121123"
    d.mkdir(parents=True)
    lines = []
    for i in range(n):
        uid = f"84-121123-{i:04d}"
        sf.write(str(d / f"{uid}.flac"), np.full(1600 + i, 0.1, np.float32), rate)
        lines.append(f"{uid} SENTENCE NUMBER {i}")
    (d / "84-121123.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def test_librispeech_loader(tmp_path):
    root = _libri(tmp_path / "ls")
    utts = load_librispeech(root, limit=4, seed=0)
    assert len(utts) == 4 and utts == sorted(utts, key=lambda u: u.utt_id)
    assert utts == load_librispeech(root, limit=4, seed=0)
    u = utts[0]
    assert u.text.startswith("SENTENCE NUMBER") and u.audio.dtype == np.float32
    assert len(u.audio) == u.n_samples
    assert len(protected_corpus(root, n=10)) == 6
    with pytest.raises(BenchmarkError, match="does not exist"):
        load_librispeech(tmp_path / "nope")
    bad = _libri(tmp_path / "ls8k", n=1, rate=8000)
    (u8,) = load_librispeech(bad)  # 8 kHz files are resampled to 16 kHz on access, not refused
    assert len(u8.audio) == u8.n_samples == 2 * sf.info(str(u8.path)).frames


def test_synthetic_fallback(tmp_path):
    facts = load_facts("counterfact", limit=6)
    excluded = [facts[0].fact_id]
    sents = generic_sentences(facts, exclude=excluded, n=8)
    assert len(sents) == 8 and not any(s.startswith(facts[0].prompt + " ") for s in sents)
    utts = synthesise_corpus(tmp_path, n=8, facts=facts, exclude=excluded)
    assert len(utts) == 8 and {u.text for u in utts} == set(sents)
    assert all(len(u.audio) > 8000 for u in utts)
    again = open_corpus(tmp_path)
    assert [u.utt_id for u in again] == [u.utt_id for u in utts]
    with pytest.raises(BenchmarkError, match="Only"):
        synthesise_corpus(tmp_path, n=10_000, facts=facts)
