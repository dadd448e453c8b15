"""The AudioLM handle on the organism: it unpacks as before, rebuilds from its spec, scores several
candidates per prompt, and its nnsight trace and run_with_cache read the same numbers as plain
torch hooks on the real modules."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import lalm_interp
from lalm_interp.errors import LoadError, ScoringError
from lalm_interp.handle import AudioLM
from lalm_interp.prompts import SpokenPrompt
from lalm_interp.scoring import score_objects

from handle_helpers import hooked, noise

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm():
    return lalm_interp.load("organism")


def test_load_gives_a_handle_that_unpacks_like_before(lm):
    assert isinstance(lm, AudioLM)
    model, processor, adapter = lm
    assert model is lm.model and processor is lm.processor and adapter is lm.adapter
    assert lm.name == "organism" and lm.identity == lalm_interp.loading.identity(model)
    assert lm.fingerprint == f"organism#{lm.identity.weights_hash}" and lm.identity.weights_hash.startswith("sha256:")
    assert lm.n_layers == {"audio": adapter.n_layers("audio"), "text": adapter.n_layers("text")}
    from lalm_interp.cache.provenance import Provenance

    prov = Provenance.for_model(lm)  # engines take the handle where they took the model
    assert (prov.model, prov.weights_hash, prov.fingerprint) == ("organism", lm.identity.weights_hash, lm.fingerprint)
    text = repr(lm)
    for part in ("'organism'", "Qwen2AudioForConditionalGeneration", "'qwen2_audio'", f"text {lm.n_layers['text']}",
                 "float32 on cpu", lm.identity.weights_hash[:16]):
        assert part in text, (part, text)


def test_from_spec_rebuilds_the_same_model(lm):
    spec = json.loads(json.dumps(lm.spec))  # what a worker receives
    again = AudioLM.from_spec(spec)
    assert again.fingerprint == lm.fingerprint and again.spec == lm.spec
    assert all(torch.equal(a, b) for a, b in zip(lm.model.state_dict().values(), again.model.state_dict().values()))


def test_a_handle_around_an_unnamed_model_has_no_spec(tiny):
    model, processor, _ = tiny
    h = AudioLM(model, processor)
    assert h.adapter.name == "qwen2_audio"
    with pytest.raises(LoadError, match="not loaded by name") as err:
        h.spec
    assert "docs/errors/loading.md" in str(err.value)


def test_score_several_candidates_per_prompt(lm):
    clips = [noise(1.0, 0), noise(1.3, 1)]
    cands = ["Paris", "Rome", "Prague"]
    table = lm.score(clips, cands, sample_rate=16000)
    assert table.dims == ("prompt", "candidate") and list(table.candidate.values) == cands
    assert list(table.prompt.values) == ["audio[0]", "audio[1]"] and table.attrs["measure"] == "first"
    # each cell is what score_objects gives for that (prompt, object) alone
    for b, c in enumerate(clips):
        batch = lm.inputs(c, 16000)
        for k, obj in enumerate(cands):
            ref = score_objects(lm.model, lm.adapter, batch, [obj]).first[0].item()
            assert table.isel(prompt=b).sel(candidate=obj).item() == pytest.approx(ref, abs=1e-5)
    assert table.isel(prompt=0).values.tolist() != table.isel(prompt=1).values.tolist()  # prompts differ
    # one list per prompt: the integer candidate axis with the strings as a 2-D coordinate
    per = lm.score(clips, [["Rome", "Paris"], ["Prague", "Rome"]], sample_rate=16000, measure="total")
    assert per.candidate.values.tolist() == [0, 1] and per.object.values.tolist() == [["Rome", "Paris"], ["Prague", "Rome"]]
    total = lm.score(clips, cands, sample_rate=16000, measure="total")
    assert per.values[0, 1] == pytest.approx(total.sel(candidate="Paris").values[0], abs=1e-5)
    with pytest.raises(ScoringError, match="same number"):
        lm.score(clips, [["Rome"], ["Prague", "Rome"]], sample_rate=16000)
    with pytest.raises(ScoringError, match="measure 'all'"):
        lm.score(clips, cands, sample_rate=16000, measure="all")


def test_prompt_objects_bring_their_rate_and_instruction(lm):
    sp = SpokenPrompt("q1", noise(1.0, 2), (("a", 0.0, 0.4), ("b", 0.5, 0.9)), (0, 0), "Paris",
                      instruction="Say it.", sample_rate=16000)
    batch = lm.inputs(sp)
    assert batch.instruction == "Say it." and "Say it." in batch.texts[0]
    assert lm.score([sp], ["Paris"]).prompt.values.tolist() == ["q1"]
    with pytest.raises(Exception, match="sample_rate"):
        lm.inputs(noise(1.0, 0))  # a raw array needs its rate


def test_trace_and_site_read_the_real_modules(lm):
    batch = lm.inputs([noise(1.0, 3), noise(1.2, 4)], 16000)
    ref = hooked(lm.model, lm.adapter, batch.model_inputs, [lm.adapter.one("text.layers.1.mlp")])
    with torch.no_grad(), lm.trace(batch):
        out = lm.site("text.layers.1.mlp").output.save()
        logits = lm.wrapped.output.logits.save()
    assert torch.equal(out, next(iter(ref.values())))
    assert torch.allclose(logits, lm.model(**batch.model_inputs, use_cache=False).logits)
    with pytest.raises(Exception, match="text.layers.99.mlp|99"):
        lm.site("text.layers.99.mlp")


def test_run_with_cache_equals_hooks_on_every_site(lm):
    sp = SpokenPrompt("q2", noise(1.1, 5), (("one", 0.0, 0.3), ("two", 0.35, 0.7), ("three", 0.75, 1.05)), (1, 1),
                      "Paris", sample_rate=16000)
    acts = lm.run_with_cache(sp, sites=["audio.conv2", "audio.layers.*.resid", "proj", "text.layers.0.mlp.down@in",
                                        "text.layers.*.attn", "text.layers.*.mlp"])
    sites = lm.adapter.expand(acts.sites)
    ref = hooked(lm.model, lm.adapter, lm.inputs(sp).model_inputs, sites)
    assert acts.sites == [str(s) for s in sites]  # forward order
    for s in sites:
        assert np.array_equal(acts[str(s)].values, ref[s][0].numpy()), s
    assert acts.example == "q2" and acts.attrs["model"] == "organism"
