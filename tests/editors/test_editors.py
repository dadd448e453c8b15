"""Every editor on a tiny random Qwen2-Audio (6 audio + 6 text layers, random weights — it knows no
facts, so these tests check that edits move P(target_new) up, revert bitwise, and fail cleanly)."""

import warnings

import numpy as np
import pytest
import torch

from lalm_interp.cache import Store
from lalm_interp.editors import (EditContext, Editor, EditorError, EditorWarning, EditRequest, KeyCorpus, available,
                                 make, register)
from lalm_interp.editors import alphaedit as alphaedit_mod
from lalm_interp.inputs import build_inputs
from lalm_interp.scoring import score_objects
from lalm_interp.tracing import SpokenPrompt

WORDS = (("Metropolitan", 0.0, 0.765), ("France's", 0.765, 1.270), ("capital", 1.270, 1.785), ("is", 1.785, 1.943))


def noise(seconds, seed):
    return (0.3 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(np.float32)


def request(seed=0, new="Seattle", true="Paris", word="first", subject=(0, 1)):
    return EditRequest(SpokenPrompt(f"ex{seed}", noise(1.95, seed), WORDS, subject, true, sample_rate=16000), new, word)


@pytest.fixture(scope="module")
def ctx(tiny_deep, tmp_path_factory):
    model, processor, adapter = tiny_deep
    clips = [noise(2.5, 100 + i) for i in range(4)]
    store = Store(tmp_path_factory.mktemp("cache"))
    return EditContext(model, processor, adapter, store=store, corpus=KeyCorpus("noise:4", clips, sample_rate=16000))


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(model, snap):
    return all(torch.equal(v, snap[k]) for k, v in model.state_dict().items())


def p_new(ctx, req):
    b = build_inputs(ctx.processor, ctx.adapter, [req.prompt.audio], sample_rate=16000)
    return float(score_objects(ctx.model, ctx.adapter, b, [req.target_new]).total[0].exp())


def no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


EDITS = [
    ("rome", "audio.layers.2.mlp.down"),
    ("rome", "text.layers.2.mlp.down"),
    ("crossmodal", ["audio.layers.2", "text.layers.2"]),
    ("alphaedit", "text.layers.1:4.mlp.down"),
    ("alphaedit", "audio.layers.1:4"),
    ("crossmodal-alphaedit", ["audio.layers.1:3", "text.layers.1:3"]),
    ("finetune", "text.layers.2.mlp.down"),
]


@pytest.mark.parametrize("method,site", EDITS, ids=[f"{m}-{s}" for m, s in EDITS])
def test_edit_raises_p_new_and_reverts_bitwise(ctx, method, site):
    model = ctx.model
    req = request()
    snap, flags = snapshot(model), [p.requires_grad for p in model.parameters()]
    before = p_new(ctx, req)
    # the organism preset: the paper's 10 steps / clamp 4 do not close the gap on a random tiny model
    handle = make(method, site, preset="organism").apply(ctx, req)
    after = p_new(ctx, req)
    assert after > before, (before, after)
    assert not same(model, snap)
    assert handle.changes and all(c["delta_fro"] > 0 for c in handle.changes)
    if method in ("rome", "crossmodal", "alphaedit", "crossmodal-alphaedit"):
        # one request, the default keys="mean": one pooled key, so rank one per layer
        assert all(c["delta_rank"] == 1 for c in handle.changes), handle.changes
    assert handle.to_json()["hparams"]
    handle.revert()
    assert same(model, snap)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert no_hooks(model)
    assert all(p.grad is None for p in model.parameters())


def test_rome_update_satisfies_w_k_equals_v_star(ctx):
    snap = snapshot(ctx.model)
    for cov in ("second_moment", "identity"):
        h = make("rome", "text.layers.3.mlp.down", cov=cov).apply(ctx, request(1))
        assert h.info["requests"][0]["rel_error_Wk_v"] < 1e-5
        h.revert()
    assert same(ctx.model, snap)


def test_sequential_crossmodal_alphaedit_reverts_bitwise(ctx):
    snap = snapshot(ctx.model)
    ed = make("crossmodal-alphaedit", ["audio.layers.2:4", "text.layers.2:4"], drive=False)
    handles = [ed.apply(ctx, request(s, new=n)) for s, n in ((12, "Seattle"), (13, "guitar"))]
    assert handles[1].info["text"]["n_previous_edits"] == 1 and handles[1].info["audio"]["n_previous_edits"] == 1
    for h in reversed(handles):
        h.revert()
    assert same(ctx.model, snap)


def test_sequential_alphaedit_accumulates_and_reverts_bitwise(ctx):
    model = ctx.model
    snap = snapshot(model)
    ed = make("alphaedit", "text.layers.2:4.mlp.down")
    handles = [ed.apply(ctx, request(s, new=n)) for s, n in ((2, "Seattle"), (3, "guitar"), (4, "French"))]
    assert ed.n_edited == 3 and set(ed.kp) == {"text.layers.2.mlp.down", "text.layers.3.mlp.down"}
    assert handles[2].info["n_previous_edits"] == 2
    # the second edit's keys are protected by the third edit (K_p): edit 2's key moves little
    for h in reversed(handles):
        h.revert()
    assert same(model, snap)
    ed.reset()
    assert ed.kp == {} and ed.n_edited == 0


def test_failure_mid_edit_leaves_model_and_state_untouched(ctx, monkeypatch):
    snap = snapshot(ctx.model)
    ed = make("alphaedit", "text.layers.1:4.mlp.down")
    real, calls = alphaedit_mod.null_space_update, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(*a, **k)

    monkeypatch.setattr(alphaedit_mod, "null_space_update", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        ed.apply(ctx, request(5))
    assert same(ctx.model, snap)
    assert ed.kp == {} and ed.n_edited == 0
    assert no_hooks(ctx.model)


@pytest.mark.parametrize("bad,match", [
    (dict(new="Paris"), "equals target_true"),
    (dict(new="   "), "cannot be scored"),
    (dict(word="middle"), "word="),
    (dict(subject=(2, 7)), "subject word range"),
])
def test_bad_requests_are_clear_errors_and_touch_nothing(ctx, bad, match):
    snap = snapshot(ctx.model)
    with pytest.raises(EditorError, match=match) as e:
        make("rome", "text.layers.1.mlp.down").apply(ctx, request(6, **bad))
    assert "docs/errors/editors.md" in str(e.value)
    assert same(ctx.model, snap)


def test_word_outside_the_audio_is_a_clear_error(ctx):
    snap = snapshot(ctx.model)
    # timings of a longer clip: the subject word "is" (1.785 s) lies after the 1.2 s of audio
    req = EditRequest(SpokenPrompt("short", noise(1.2, 7), WORDS, (3, 3), "Paris", sample_rate=16000), "Seattle", "last")
    with pytest.raises(EditorError, match="span"):
        make("rome", "audio.layers.1.mlp.down").apply(ctx, req)
    assert same(ctx.model, snap)


@pytest.mark.parametrize("method,site", [("rome", "text.layers.1.attn"), ("alphaedit", "audio.layers.1.resid"),
                                         ("rome", "text.layers.0:2.mlp.down"), ("crossmodal", "audio.layers.1"),
                                         ("finetune", "text.layers.1.attn"), ("rome", "text.layers.99.mlp.down")])
def test_sites_an_editor_cannot_edit(ctx, method, site):
    snap = snapshot(ctx.model)
    with pytest.raises(EditorError):
        make(method, site).apply(ctx, request(8))
    assert same(ctx.model, snap)


def test_singular_second_moment_warns_and_still_edits(tiny_deep):
    model, processor, adapter = tiny_deep
    snap = snapshot(model)
    one = EditContext(model, processor, adapter, corpus=KeyCorpus("one-short-clip", [noise(0.3, 9)], sample_rate=16000))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        h = make("rome", "audio.layers.3.mlp.down", keys="mean").apply(one, request(9))
    assert any(issubclass(x.category, EditorWarning) for x in w)
    assert h.info["requests"][0]["rel_error_Wk_v"] < 1e-5
    h.revert()
    assert same(model, snap)


def test_audio_keys_mean_is_rank_one_and_frames_is_the_multi_key_update(ctx):
    """keys="mean" is ROME's rank-one update (W' k* = v*); keys="frames" (the audio default) takes one key
    per encoder frame of the word, and the edited model's P(target_new) is the one its residuals were
    optimised for (they are applied as the update applies them)."""
    from lalm_interp.editors.keys import frames, prepare, span

    snap = snapshot(ctx.model)
    req = request(15)
    site = "audio.layers.2.mlp.down"
    h = make("rome", site, keys="mean", steps=3).apply(ctx, req)
    rec = h.info["requests"][0]
    assert rec["keys"] == "mean" and rec["n_keys"] == 1 and rec["rel_error_Wk_v"] < 1e-6
    assert h.changes[0]["delta_rank"] == 1
    h.revert()
    ed = make("rome", site, preset="organism", keys="auto", steps=3)  # "auto" = frames on audio sites
    h = ed.apply(ctx, req)
    rec = h.info["requests"][0]
    from lalm_interp.sites import parse

    s = parse(site)
    a, b = span(ctx, prepare(ctx, req), s, req.span_name)
    assert rec["keys"] == "frames" and rec["n_keys"] == b - a > 1
    assert 1 < h.changes[0]["delta_rank"] <= rec["n_keys"]
    assert p_new(ctx, req) == pytest.approx(rec["p_new_at_v_star"], rel=1e-3)
    # the update is the multi-key solve over the word's frame keys (W0 K + R = V*, up to the ridge)
    from lalm_interp.editors import multi_key_update
    from lalm_interp.editors.rome import multi_key_mix

    path = h.modules[0]
    W0 = h.original(path).double()
    dW = ctx.model.get_submodule(path).weight.detach().double() - W0
    h.revert()
    K = frames(ctx, prepare(ctx, req), s.with_port("in"), req.span_name).T
    C = ed.covariance(ctx, s)
    R = dW @ K @ torch.linalg.pinv(multi_key_mix(K, C, ed.hparams.frames_reg) @ K)  # the residuals
    err = (multi_key_update(W0, K, W0 @ K + R, C, ed.hparams.frames_reg) - dW).norm() / dW.norm()
    assert err < 1e-4, err  # float32 weights
    assert same(ctx.model, snap)


def test_alphaedit_audio_keys_frames_and_mean(ctx):
    snap = snapshot(ctx.model)
    req = request(16)
    for keys, many in (("mean", False), ("frames", True), ("auto", True)):
        ed = make("alphaedit", "audio.layers.1:3", preset="organism", keys=keys, steps=2)
        h = ed.apply(ctx, req)
        assert (h.info["n_keys"] > 1) == many and h.info["keys"] == ("frames" if many else "mean")
        assert all((c["delta_rank"] > 1) == many for c in h.changes)
        assert all(torch.linalg.matrix_rank(kp) == h.info["n_keys"] or many for kp in ed.kp.values())
        h.revert()
        assert same(ctx.model, snap)
    h = make("alphaedit", "text.layers.1:3", steps=2).apply(ctx, req)  # text: the last token, one key
    assert h.info["keys"] == "mean" and h.info["n_keys"] == 1
    h.revert()
    assert same(ctx.model, snap)


def test_hparams_are_validated():
    with pytest.raises(EditorError, match="unknown hyper-parameter"):
        make("rome", "text.layers.1.mlp.down", stepz=3)
    with pytest.raises(EditorError, match="cov"):
        make("rome", "text.layers.1.mlp.down", cov="diag")
    with pytest.raises(EditorError, match="keys"):
        make("rome", "audio.layers.1.mlp.down", keys="pooled")
    with pytest.raises(EditorError, match="value_mode='edit'"):
        make("rome", "audio.layers.1.mlp.down", keys="frames", value_mode="span")
    with pytest.raises(EditorError, match="frames_reg"):
        make("rome", "audio.layers.1.mlp.down", frames_reg=-1.0)
    with pytest.raises(EditorError, match="keys"):
        make("alphaedit", "audio.layers.1:3", keys="all")


def test_statistics_are_cached_in_the_store(ctx):
    site = "text.layers.4.mlp.down@in"
    h = make("rome", "text.layers.4.mlp.down").apply(ctx, request(10))
    h.revert()
    assert any(s["site"] == site for s in ctx.store.stats())

    class Boom(list):
        def __getitem__(self, i):
            raise AssertionError("statistics were recomputed instead of read from the cache")

    fresh = EditContext(ctx.model, ctx.processor, ctx.adapter, store=ctx.store,
                        corpus=KeyCorpus("noise:4", Boom([0]), sample_rate=16000), fingerprint=ctx.fingerprint)
    from lalm_interp.editors.keys import key_stats

    a, b = key_stats(fresh, site), key_stats(ctx, site)
    assert a.count == b.count and np.allclose(a.second_moment, b.second_moment)


def test_registry_takes_third_party_editors(ctx):
    class Noop(Editor):
        name = "noop-test"
        HParams = type("H", (), {})

        def check_sites(self, adapter, sites):
            pass

        def _edit(self, ctx, requests, sites, handle):
            handle.info["n"] = len(requests)

    register(Noop)
    assert available()["noop-test"] is Noop
    assert make("noop-test", "text.layers.0.mlp.down").apply(ctx, request(11)).info["n"] == 1
    with pytest.raises(EditorError, match="no editor named"):
        make("nope", "text.layers.0")


def test_corpus_clips_longer_than_the_window_are_skipped(tiny_deep):
    model, processor, adapter = tiny_deep
    snap = snapshot(model)
    too_long = EditContext(model, processor, adapter, corpus=KeyCorpus("long", [noise(5.0, 1)], sample_rate=16000))
    with pytest.raises(EditorError, match="fits the"):
        make("rome", "text.layers.1.mlp.down").apply(too_long, request(14))
    assert same(model, snap)
    from lalm_interp.editors.keys import key_stats

    mixed = EditContext(model, processor, adapter, corpus=KeyCorpus("mixed", [noise(5.0, 1), noise(2.0, 2)], sample_rate=16000))
    only_short = EditContext(model, processor, adapter, corpus=KeyCorpus("short", [noise(2.0, 2)], sample_rate=16000))
    site = "text.layers.1.mlp.down@in"
    assert np.array_equal(key_stats(mixed, site).second_moment, key_stats(only_short, site).second_moment)


def test_key_span_places_the_key(ctx):
    from lalm_interp.editors.keys import key_span_name
    from lalm_interp.sites import parse

    req = request(word="last")
    text, audio = parse("text.layers.1.mlp.down"), parse("audio.layers.1.mlp.down")
    assert key_span_name(req, text, "auto") == "last_token"
    assert key_span_name(req, audio, "auto") == "last_subject_word"
    assert key_span_name(req, text, "word") == "last_subject_word"
    with pytest.raises(EditorError, match="text position"):
        key_span_name(req, audio, "last_token")
    with pytest.raises(EditorError, match="key_span"):
        make("rome", "text.layers.1.mlp.down", key_span="middle")
    snap = snapshot(ctx.model)
    h = make("rome", "text.layers.2.mlp.down", key_span="word", steps=2).apply(ctx, req)
    assert h.info["requests"][0]["rel_error_Wk_v"] < 1e-6
    h.revert()
    assert same(ctx.model, snap)


def test_shared_baseline_equals_rescoring(ctx):
    from lalm_interp.evaluation import EditCase, run, score_before

    cases = [EditCase(request(seed=s)) for s in (0, 1)]
    before = score_before(ctx, cases)
    a = run(make("rome", "text.layers.2.mlp.down", steps=2), ctx, cases)
    b = run(make("rome", "text.layers.2.mlp.down", steps=2), ctx, cases, before=before)
    assert [r["before"] for r in a.records] == [r["before"] for r in b.records]
    assert a.baseline == b.baseline and a.summary == b.summary
    with pytest.raises(EditorError, match="before="):
        run(make("rome", "text.layers.2.mlp.down", steps=2), ctx, cases, before=before[:1])


def test_an_edit_that_cannot_reach_the_prediction_warns(ctx):
    """At the last text layer, a value change at the subject word's positions never reaches the
    last token's logits (the gradient is exactly 0): the edit used to do nothing, silently."""
    n = ctx.adapter.n_layers("text")
    with pytest.warns(EditorWarning, match="gradient is exactly 0"):
        h = make("rome", f"text.layers.{n - 1}.mlp.down", cov="identity", steps=2,
                 key_span="word").apply(ctx, request(21))
    h.revert()
    with warnings.catch_warnings():
        warnings.simplefilter("error", EditorWarning)
        make("rome", f"text.layers.{n - 1}.mlp.down", cov="identity", steps=2,
             key_span="last_token").apply(ctx, request(21)).revert()


def test_alphaedit_forgets_the_keys_of_a_reverted_edit(ctx):
    """A reverted edit's keys used to stay in K_p: the next edit was solved against keys of an edit
    that no longer existed (and reported n_previous_edits=1)."""
    fresh = make("alphaedit", "text.layers.1:3", preset="organism", steps=2)
    ref = fresh.apply(ctx, request(31))
    ref_w = {path: module.weight.detach().clone() for path, (module, _) in ref._orig.items()}
    ref.revert()
    ed = make("alphaedit", "text.layers.1:3", preset="organism", steps=2)
    ed.apply(ctx, request(32)).revert()
    assert ed.kp == {} and ed.n_edited == 0
    h = ed.apply(ctx, request(31))
    assert h.info["n_previous_edits"] == 0
    got = {path: module.weight.detach() for path, (module, _) in h._orig.items()}
    assert all(torch.equal(got[m], ref_w[m]) for m in ref_w)  # exactly the edit of a fresh editor
    h2 = ed.apply(ctx, request(33))
    assert h2.info["n_previous_edits"] == 1
    ed.reset()
    h2.revert()  # a revert after reset() leaves the fresh state alone
    h.revert()
    assert ed.kp == {} and ed.n_edited == 0
