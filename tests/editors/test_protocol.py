"""The editor protocol above the algebra: editors declare the key statistics they read
(``stats_sites``, replacing the executors' name checks), take the model handle where they took the
context, and print helpfully. Tiny random Qwen2-Audio (6 audio + 6 text layers)."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lalm_interp.cache import Store
from lalm_interp.editors import (EditContext, Editor, EditorError, EditRequest, FineTuneHParams, KeyCorpus, RomeHParams,
                                 available, make, presets, register)
from lalm_interp.editors.base import REGISTRY, normalise_site, weights_fingerprint
from lalm_interp.errors import SiteError
from lalm_interp.prompts import SpokenPrompt
from lalm_interp.sites import parse

WORDS = (("Metropolitan", 0.0, 0.765), ("France's", 0.765, 1.270), ("capital", 1.270, 1.785), ("is", 1.785, 1.943))


def noise(seconds, seed):
    return (0.3 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(np.float32)


def request(seed=0, new="Seattle"):
    return EditRequest(SpokenPrompt(f"ex{seed}", noise(1.95, seed), WORDS, (0, 1), "Paris", sample_rate=16000), new,
                       "first")


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(model, snap):
    return all(torch.equal(v, snap[k]) for k, v in model.state_dict().items())


CORPUS = KeyCorpus("noise:3", [noise(2.5, 200 + i) for i in range(3)], sample_rate=16000)


# ---------------------------------------------------------------------------- the old decision
def old_needs_stats(editor):
    """``lalm_interp.executors.evaluation.needs_stats`` as it was (a name check), verbatim."""
    hp = editor.hparams
    covs = [getattr(h, "cov", None) for h in (hp, getattr(hp, "audio", None), getattr(hp, "text", None)) if h is not None]
    return editor.name in ("alphaedit", "crossmodal-alphaedit") or "second_moment" in covs


def old_key_sites(adapter, specs):
    """``lalm_interp.executors.stats.key_sites`` as it was, verbatim."""
    specs = [specs] if isinstance(specs, str) else list(specs)
    try:
        sites = adapter.expand([normalise_site(s) for s in specs])
    except SiteError as err:
        raise EditorError(f"key statistics: {str(err).splitlines()[0]}") from err
    bad = [str(s) for s in sites if not adapter.component(s).has_input]
    if bad:
        raise EditorError(f"key statistics: {bad} have no key input (@in)")
    return [s.with_port("in") for s in sites]


def old_decision(editor, adapter):
    """What the executors computed before an edit run: every resolved site's key input when the
    editor needed statistics (``evaluate_sharded``: ``model_info`` sites → ``key_stats_sharded``)."""
    if not old_needs_stats(editor):
        return []
    return old_key_sites(adapter, [str(s) for s in editor.resolve_sites(adapter)])


SITES = {
    "rome": ["audio.layers.1", "text.layers.4.mlp.down", "text.layers.0.mlp"],
    "alphaedit": ["text.layers.1:4", "audio.layers.0:3.mlp.down", "audio.layers.5"],
    "crossmodal": [["audio.layers.1", "text.layers.4"], ["audio.layers.5.mlp.down", "text.layers.0"]],
    "crossmodal-alphaedit": [["audio.layers.1:3", "text.layers.1:3"], ["audio.layers.0", "text.layers.2:6"]],
    "finetune": [["audio.layers.1", "text.layers.4"], "audio.conv2", "text.layers.2.mlp.down"],
}
OVERRIDES = {  # variants that change the decision: ROME with C = I, cross-modal ROME with both stages C = I
    "rome": [{}, {"cov": "identity"}],
    "crossmodal": [{}, {"audio": "identity", "text": "identity"}],
}


def build(name, sites, preset, override):
    ed = make(name, sites, preset=preset)
    if not override:
        return ed
    hp = ed.hparams
    if "cov" in override:
        hp = dataclasses.replace(hp, cov=override["cov"])
    else:
        hp = dataclasses.replace(hp, audio=dataclasses.replace(hp.audio, cov=override["audio"]),
                                 text=dataclasses.replace(hp.text, cov=override["text"]))
    out = type(ed)(sites, hp)
    out.preset = preset
    return out


def cases():
    for name in ("rome", "alphaedit", "crossmodal", "crossmodal-alphaedit", "finetune"):
        for preset in [None, *presets.available(name)]:
            for sites in SITES[name]:
                for ov in OVERRIDES.get(name, [{}]):
                    yield name, preset, sites, ov


def test_every_registered_editor_is_covered():
    assert set(SITES) == {n for n, c in available().items() if c.__module__.startswith("lalm_interp.")}
    assert all(presets.available(n) == ["organism", "paper"] for n in SITES)


@pytest.mark.parametrize("name,preset,sites,override", list(cases()))
def test_stats_sites_equal_the_old_executor_decision(tiny_deep, name, preset, sites, override):
    adapter = tiny_deep[2]
    ed = build(name, sites, preset, override)
    got = ed.stats_sites(adapter)
    assert got == old_decision(ed, adapter)
    assert all(s.port == "in" and not s.is_pattern for s in got)
    assert bool(got) == old_needs_stats(ed)  # also whether a run needs a corpus at all


def test_crossmodal_with_one_identity_stage_declares_only_the_stage_that_reads_statistics(tiny_deep):
    """The one deliberate difference to the old name check: a cross-modal ROME whose audio stage uses
    C = I reads no audio statistics (``Rome.covariance`` returns ``None``), so it declares only the
    text stage's key site; the old check asked for both (the audio ones were computed, never read)."""
    adapter = tiny_deep[2]
    ed = make("crossmodal", ["audio.layers.1", "text.layers.4"], audio=RomeHParams(cov="identity"))
    assert [str(s) for s in ed.stats_sites(adapter)] == ["text.layers.4.mlp.down@in"]
    assert [str(s) for s in old_decision(ed, adapter)] == ["audio.layers.1.mlp.down@in", "text.layers.4.mlp.down@in"]


def test_a_bad_site_fails_in_stats_sites_as_in_apply(tiny_deep):
    with pytest.raises(EditorError, match="mlp.down"):
        make("alphaedit", "text.layers.1.attn").stats_sites(tiny_deep[2])


def test_third_party_editors_declare_their_own_statistics(tiny_deep, monkeypatch):
    class Plain(Editor):
        name = "test-plain-stats"
        HParams = FineTuneHParams

        def check_sites(self, adapter, sites):
            pass

    class Reads(Plain):
        name = "test-reads-stats"

        def stats_sites(self, adapter):
            return [s.with_port("in") for s in self.resolve_sites(adapter)]

    monkeypatch.setattr(REGISTRY, "items", dict(REGISTRY.items))  # registered for this test only
    register(Plain)
    register(Reads)
    adapter = tiny_deep[2]
    assert make("test-plain-stats", "text.layers.2").stats_sites(adapter) == []
    assert [str(s) for s in make("test-reads-stats", "text.layers.2:4").stats_sites(adapter)] == [
        "text.layers.2.mlp.down@in", "text.layers.3.mlp.down@in"]


DECLARED = [
    ("rome", "text.layers.3.mlp.down", {"cov": "second_moment", "steps": 2}),
    ("rome", "text.layers.3.mlp.down", {"cov": "identity", "steps": 2}),
    ("alphaedit", "text.layers.1:3", {"steps": 2}),
    ("crossmodal", ["audio.layers.2", "text.layers.2"], {"audio": {"cov": "identity", "steps": 2}}),
    ("crossmodal-alphaedit", ["audio.layers.1:3", "text.layers.1:3"], {}),
    ("finetune", ["audio.layers.2", "text.layers.2"], {"steps": 2}),
]


@pytest.mark.parametrize("name,sites,kw", DECLARED, ids=[f"{n}-{k}" for n, _, k in DECLARED])
def test_declared_statistics_are_exactly_the_ones_an_edit_reads(tiny_deep, tmp_path, name, sites, kw):
    """Run the edit on an empty statistics cache: the files it leaves are the declared sites."""
    model, processor, adapter = tiny_deep
    snap = snapshot(model)
    if name == "crossmodal":
        ed = make(name, sites, preset="organism")
        ed = type(ed)(sites, dataclasses.replace(ed.hparams, audio=dataclasses.replace(ed.hparams.audio, **kw["audio"]),
                                                 refine_steps=2))
    else:
        ed = make(name, sites, preset="organism", **kw)
    store = Store(tmp_path / "cache")
    h = ed.apply(EditContext(model, processor, adapter, store=store, corpus=CORPUS), request(3))
    h.revert()
    assert same(model, snap)
    read = sorted(s["site"] for s in store.stats())
    assert read == sorted(str(s) for s in ed.stats_sites(adapter))


# ---------------------------------------------------------------------------- the model handle
def handle_of(tiny):
    model, processor, adapter = tiny
    return SimpleNamespace(model=model, processor=processor, adapter=adapter, name="tiny",
                           fingerprint="tiny#sha256:0123456789abcdef")


def test_edit_context_from_a_handle_has_the_parts(tiny_deep, tmp_path):
    model, processor, adapter = tiny_deep
    lm = handle_of(tiny_deep)
    store = Store(tmp_path / "c")
    for ctx in (EditContext(lm, store=store, corpus=CORPUS), EditContext.from_lm(lm, store=store, corpus=CORPUS)):
        assert ctx.model is model and ctx.processor is processor and ctx.adapter is adapter and ctx.lm is lm
        assert ctx.tokenizer is processor.tokenizer and ctx.store is store and ctx.corpus is CORPUS
    # the statistics are named by the weights as they are now, exactly as for the parts (the
    # handle's own fingerprint names the files it loaded, which an edit in memory does not change)
    parts = EditContext(model, processor, adapter, store=store, corpus=CORPUS)
    assert EditContext(lm).fingerprint == parts.fingerprint == weights_fingerprint(model)
    assert EditContext(lm, store=store, corpus=CORPUS) == parts and parts.lm is None
    assert EditContext(lm, fingerprint="given").fingerprint == "given"


def test_edit_context_from_the_loaded_handle_equals_the_parts():
    import lalm_interp

    lm = lalm_interp.load("tiny-random")
    model, processor, adapter = lm
    ctx = EditContext(lm)
    assert ctx.model is model and ctx.processor is processor and ctx.adapter is adapter and ctx.lm is lm
    assert ctx == EditContext(model, processor, adapter) == EditContext.from_lm(lm)


def test_edit_context_without_processor_and_adapter_says_what_to_pass(tiny_deep):
    with pytest.raises(EditorError, match=r"(?s)without its processor and adapter.*EditContext\(lm.*errors/editors.md"):
        EditContext(tiny_deep[0])
    with pytest.raises(EditorError, match=r"(?s)from_lm needs a model handle.*errors/editors.md"):
        EditContext.from_lm(tiny_deep[0])


@pytest.mark.parametrize("form", ["handle", "tuple"])
def test_apply_on_the_handle_equals_apply_on_the_context(tiny_deep, tmp_path, form):
    """Same edit, bit for bit, whether the editor gets the handle, a tuple or an EditContext."""
    model, processor, adapter = tiny_deep
    snap = snapshot(model)
    ed = make("rome", "text.layers.3.mlp.down", preset="organism", steps=3)
    h = ed.apply(EditContext(model, processor, adapter, store=Store(tmp_path / "a"), corpus=CORPUS), request(4))
    via_ctx = snapshot(model)
    h.revert()
    target = handle_of(tiny_deep) if form == "handle" else tiny_deep
    h2 = ed.apply(target, request(4), store=Store(tmp_path / "b"), corpus=CORPUS)
    assert same(model, via_ctx) and not same(model, snap)
    assert h2.info["dW_rel"] == h.info["dW_rel"]
    h2.revert()
    assert same(model, snap)


def test_apply_rejects_what_it_cannot_edit(tiny_deep):
    ctx = EditContext(*tiny_deep, corpus=CORPUS)
    ed = make("rome", "text.layers.3.mlp.down", cov="identity")
    with pytest.raises(EditorError, match=r"(?s)store= / corpus= were given together with an EditContext"):
        ed.apply(ctx, request(1), corpus=CORPUS)
    with pytest.raises(EditorError, match=r"(?s)edits a model handle .* got a str"):
        ed.apply("organism", request(1))


# ---------------------------------------------------------------------------- reprs
def test_editor_reprs_name_sites_preset_and_key_settings():
    r = repr(make("rome", "audio.layers.1", preset="organism"))
    assert r.startswith("Rome('audio.layers.1', preset='organism'") and "cov='second_moment'" in r
    assert "keys='mean'" in r and "steps=30" in r and "value_mode='edit'" in r
    r = repr(make("alphaedit", "text.layers.1:4", l2=3.0))
    assert r.startswith("AlphaEdit('text.layers.1:4'") and "l2=3.0" in r and "preset" not in r
    r = repr(make("crossmodal", ["audio.layers.1", "text.layers.4"], preset="paper"))
    assert r.startswith("CrossModal(['audio.layers.1', 'text.layers.4'], preset='paper', drive=True")
    assert "audio=(cov='second_moment'" in r and "text=(" in r and "key_span='word'" in r
    assert "norm_constraint=None" in repr(make("finetune", "audio.conv2"))


def test_edit_handle_and_context_reprs_say_what_happened(tiny_deep):
    ctx = EditContext(*tiny_deep)
    r = repr(ctx)
    assert r.startswith("EditContext(model=") and "fingerprint=" in r and "store=None" in r and len(r) < 300
    ed = make("alphaedit", "text.layers.1:3", preset="organism", steps=2, leak_sample=0)
    snap = snapshot(ctx.model)
    ctx.corpus = CORPUS
    h = ed.apply(ctx, request(5))
    r = repr(h)
    assert r.startswith(f"EditHandle #{h.number} ('alphaedit', sites=['text.layers.1.mlp.down', 'text.layers.2.mlp.down'], "
                        "applied, dW_rel={")
    path = tiny_deep[2].module_path(parse(normalise_site("text.layers.1")))
    assert f"'{path}.weight': {h.info['dW_rel'][path + '.weight']:.3g}" in r
    assert "edits since reset()=1" in repr(ed)
    h.revert()
    assert "reverted" in repr(h) and "applied" not in repr(h)
    assert "edits since reset()" not in repr(ed)
    assert same(ctx.model, snap)
