"""Bad-input cases of the cross-modal editors' drive settings and of the protected corpus (issue 14
items 1 and 3): each names what was wrong, the fix and the docs page. No model is loaded."""

from __future__ import annotations

import dataclasses
import math

import pytest

from lalm_interp.bench.corpus import CorpusUtterance, corpus_id, protected_corpus, synthesise_corpus
from lalm_interp.bench.datasets import load_facts
from lalm_interp.bench.errors import BenchmarkError
from lalm_interp.editors import (AlphaEditHParams, CrossModalAlphaEditHParams, CrossModalHParams, EditorError,
                                 RomeHParams, make, presets)

SITES = {"crossmodal": ["audio.layers.1.mlp.down", "text.layers.1.mlp.down"],
         "crossmodal-alphaedit": ["audio.layers.0:2", "text.layers.0:2"]}
HP = {"crossmodal": (CrossModalHParams, RomeHParams), "crossmodal-alphaedit": (CrossModalAlphaEditHParams, AlphaEditHParams)}

BAD = [
    ({"text_key_span": "last_token"}, r"drive=True needs text.key_span='word' \(got 'last_token'\).*drive=False"),
    ({"text_key_span": "auto"}, r"drive=True needs text.key_span='word' \(got 'auto'\)"),
    ({"refine_steps": -1}, r"refine_steps=-1; expected an integer >= 0"),
    ({"refine_steps": 2.5}, r"refine_steps=2.5; expected an integer >= 0"),
    ({"drive_scale": math.nan}, r"drive_scale=nan; expected a finite number"),
    ({"drive_scale": math.inf}, r"drive_scale=inf; expected a finite number"),
    ({"drive_scale": "1"}, r"drive_scale='1'; expected a finite number"),
    ({"drive_at": "encoder"}, r"drive_at='encoder'; expected one of \['layer', 'projector'\]"),
    ({"drive": 1}, r"drive=1; expected True or False"),
]


@pytest.mark.parametrize("method", sorted(SITES))
@pytest.mark.parametrize("kw,match", BAD, ids=[m.split(";")[0][:30] for _, m in BAD])
def test_bad_drive_settings(method, kw, match):
    cls, inner = HP[method]
    kw = dict(kw)
    hp = cls()
    if "text_key_span" in kw:
        hp = dataclasses.replace(hp, text=inner(key_span=kw.pop("text_key_span")))
    with pytest.raises(EditorError, match=match) as err:
        make(method, SITES[method], hp, **kw)
    assert "docs/editors/crossmodal.md" in str(err.value)


@pytest.mark.parametrize("method", sorted(SITES))
def test_undriven_may_key_the_text_stage_anywhere_and_presets_load(method):
    cls, inner = HP[method]
    ed = make(method, SITES[method], dataclasses.replace(cls(), text=inner(key_span="last_token"), drive=False))
    assert ed.hparams.drive is False
    for name in ("paper", "organism"):
        hp = presets.load(method, name)
        assert hp.drive is True and hp.text.key_span == "word"
    assert presets.load(method, "paper") == cls()  # the paper preset is the dataclass defaults


def test_too_few_sentences_even_in_every_rendition_is_a_clear_error(tmp_path):
    facts = load_facts("counterfact", limit=2)
    with pytest.raises(BenchmarkError, match=r"(?s)distinct sentences x 8 renditions.*fix: pass more facts.*benchmark.md"):
        synthesise_corpus(tmp_path, n=100_000, facts=facts)


def test_no_corpus_source_is_a_clear_error():
    with pytest.raises(BenchmarkError, match="fallback_dir"):
        protected_corpus(None)


def test_corpus_ids_name_their_contents(tmp_path):
    a = [CorpusUtterance("synth/0/en-us", "One.", tmp_path / "a.wav"), CorpusUtterance("synth/1/en", "Two.", tmp_path / "b.wav")]
    b = [a[0], CorpusUtterance("synth/1/en", "Three.", tmp_path / "b.wav")]
    assert corpus_id(a) == corpus_id(list(a)) and corpus_id(a) != corpus_id(b)
    assert corpus_id(a).startswith("synth:2:") and corpus_id(a, "librispeech:x").startswith("librispeech:x:2:")


@pytest.mark.parametrize("method,inner", [("crossmodal", "rome"), ("crossmodal-alphaedit", "alphaedit")])
@pytest.mark.parametrize("name", ["paper", "organism"])
def test_crossmodal_presets_use_the_single_editors_presets(method, inner, name):
    """A cross-modal preset's stages are the single-stream editor's preset (text keyed at the word):
    when rome/alphaedit presets change, regenerate the cross-modal ones (docs/editors/crossmodal.md)."""
    hp, single = presets.load(method, name), presets.load(inner, name)
    assert hp.audio == single
    assert hp.text == dataclasses.replace(single, key_span="word")
