"""Key statistics never go stale (issue 14 item 2, docs/editors/crossmodal.md#statistics): every
stage of a cross-modal edit reads the *unedited* model's statistics, fetched before the audio stage
edits anything, and statistics are stored under the fingerprint of exactly the weights they were
computed from — so a later run on the same Store, a fresh Store and the sharded executor agree."""

import numpy as np
import pytest
import torch

from lalm_interp.cache import Store
from lalm_interp.editors import EditContext, EditorWarning, EditRequest, KeyCorpus, make
from lalm_interp.editors.keys import key_stats
from lalm_interp.tracing import SpokenPrompt

WORDS = (("Metropolitan", 0.0, 0.765), ("France's", 0.765, 1.270), ("capital", 1.270, 1.785), ("is", 1.785, 1.943))
CROSS = {"crossmodal": ["audio.layers.2.mlp.down", "text.layers.2.mlp.down"],
         "crossmodal-alphaedit": ["audio.layers.1:3", "text.layers.1:3"]}
TEXT_ONLY = {"crossmodal": ("rome", "text.layers.2.mlp.down"), "crossmodal-alphaedit": ("alphaedit", "text.layers.1:3")}


def noise(seconds, seed):
    return (0.2 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(np.float32)


def request(seed=0, new="Seattle"):
    return EditRequest(SpokenPrompt(f"ex{seed}", noise(1.95, seed), WORDS, (0, 1), "Paris", sample_rate=16000), new, "first")


CORPUS = KeyCorpus("noise:4", [noise(2.5, 100 + i) for i in range(4)], sample_rate=16000)


def context(tiny_deep, root):
    model, processor, adapter = tiny_deep
    return EditContext(model, processor, adapter, store=Store(root), corpus=CORPUS)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def editor(method, sites):
    """``method`` with 2 value-optimisation steps per stage (the statistics are what is tested)."""
    from lalm_interp.editors import AlphaEditHParams, RomeHParams, get

    hp = get(method).HParams()
    if method in CROSS:
        inner = RomeHParams if method == "crossmodal" else AlphaEditHParams
        return make(method, sites, hp, audio=inner(steps=2), text=inner(steps=2, key_span="word"))
    return make(method, sites, steps=2)


def edit_delta(ctx, method, sites, req):
    """The weight change of one edit (then reverted), per changed tensor."""
    before = weights(ctx.model)
    h = editor(method, sites).apply(ctx, req)
    after = weights(ctx.model)
    h.revert()
    assert all(torch.equal(v, before[k]) for k, v in ctx.model.state_dict().items())
    return {k: after[k] - before[k] for k in before if not torch.equal(after[k], before[k])}


@pytest.mark.parametrize("method", sorted(CROSS))
def test_crossmodal_then_text_only_on_one_store_equals_a_fresh_store(tiny_deep, tmp_path, method):
    shared = context(tiny_deep, tmp_path / "shared")
    edit_delta(shared, method, CROSS[method], request(1))  # fills the shared Store
    later = context(tiny_deep, tmp_path / "shared")  # a later text-only run on the same Store
    fresh = context(tiny_deep, tmp_path / "fresh")
    name, site = TEXT_ONLY[method]
    got, want = edit_delta(later, name, site, request(2)), edit_delta(fresh, name, site, request(2))
    assert got.keys() == want.keys() and got
    for k in want:
        assert float((got[k] - want[k]).abs().max()) <= 1e-6 * float(want[k].abs().max()), k
    for s in make(name, site).resolve_sites(later.adapter):  # the stored statistics are the unedited model's
        a, b = key_stats(later, s).second_moment, key_stats(fresh, s).second_moment
        assert np.allclose(a, b, rtol=1e-10, atol=0), s


@pytest.mark.parametrize("method", sorted(CROSS))
def test_crossmodal_edit_uses_the_statistics_of_the_unedited_model(tiny_deep, tmp_path, method):
    """Whatever the Store held before: the same edit from an empty Store and from a Store that
    already has every statistic (computed on the unedited model, as the sharded executor does)."""
    model = tiny_deep[0]
    pre = context(tiny_deep, tmp_path / "pre")
    for s in make(method, CROSS[method]).resolve_sites(pre.adapter):
        key_stats(pre, s)
    before = weights(model)
    lazy = edit_delta(context(tiny_deep, tmp_path / "lazy"), method, CROSS[method], request(3))
    warm = edit_delta(context(tiny_deep, tmp_path / "pre"), method, CROSS[method], request(3))
    assert lazy.keys() == warm.keys()
    for k in lazy:
        assert float((lazy[k] - warm[k]).abs().max()) <= 1e-6 * float(warm[k].abs().max()), k
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_crossmodal_in_process_equals_sharded(tiny_deep, tmp_path):
    from lalm_interp.evaluation import EditCase, Probe, run
    from lalm_interp.evaluation.runs import evaluate
    from lalm_interp.evaluation.stats import key_stats_sharded
    from lalm_interp.executors import LocalExecutor

    cases = [EditCase(request(10 + i, new=n), paraphrases=(Probe(f"p{i}", "Paris", audio_array=noise(1.9, 40 + i), sample_rate=16000),),
                      neighbours=(Probe(f"n{i}", "London", audio_array=noise(1.9, 50 + i), sample_rate=16000),))
             for i, n in enumerate(("Seattle", "guitar"))]
    ed = lambda: editor("crossmodal", CROSS["crossmodal"])  # noqa: E731
    inproc = run(ed(), context(tiny_deep, tmp_path / "a"), cases)
    ctx = context(tiny_deep, tmp_path / "b")
    ex = LocalExecutor(state=tiny_deep)
    # what a run on workers in other processes does first: the declared statistics, computed on the
    # unedited model on the executor and stored, then read by every worker's editor
    sites = ed().stats_sites(tiny_deep[2])
    assert [str(s) for s in sites] == ["audio.layers.2.mlp.down@in", "text.layers.2.mlp.down@in"]
    for site in sites:
        key_stats_sharded(ex, CORPUS, site, store=ctx.store, model=ctx.fingerprint, chunk_batches=1)
    sharded = evaluate(ex, ed(), cases, tmp_path / "out", store=ctx.store, corpus=CORPUS,
                       fingerprint=ctx.fingerprint, shard_size=1)
    a = [r["after"] for r in inproc.records]
    b = [r["after"] for r in sharded.records]
    assert a and np.allclose(np.asarray(_flat(a)), np.asarray(_flat(b)), rtol=1e-6, atol=1e-9)


def _flat(x):
    if isinstance(x, dict):
        return [v for k in sorted(x) for v in _flat(x[k])]
    if isinstance(x, (list, tuple)):
        return [v for y in x for v in _flat(y)]
    return [float(x)] if isinstance(x, (int, float)) and not isinstance(x, bool) else []


def test_statistics_of_edited_weights_are_stored_under_their_own_fingerprint(tiny_deep, tmp_path):
    from lalm_interp.editors.keys import stats_fingerprint

    ctx = context(tiny_deep, tmp_path / "s")
    site = "text.layers.3.mlp.down@in"
    clean = key_stats(ctx, site).second_moment
    assert stats_fingerprint(ctx) == ctx.fingerprint
    h = make("rome", "audio.layers.1.mlp.down", cov="identity", steps=2).apply(ctx, request(5))
    try:
        fp = stats_fingerprint(ctx)
        assert fp.startswith(ctx.fingerprint + "+edited:")
        with pytest.warns(EditorWarning, match="edited weights"):
            edited = key_stats(ctx, site).second_moment
        assert not np.allclose(edited, clean)
    finally:
        h.revert()
    assert stats_fingerprint(ctx) == ctx.fingerprint  # a bitwise revert is the unedited model again
    assert np.array_equal(key_stats(ctx, site).second_moment, clean)
    fresh = context(tiny_deep, tmp_path / "s")  # the unedited entry in the Store was never overwritten
    assert np.allclose(key_stats(fresh, site).second_moment, clean, rtol=1e-12, atol=0)


def test_a_context_made_before_an_unreverted_edit_does_not_store_under_the_unedited_name(tiny_deep, tmp_path):
    from lalm_interp.editors.keys import stats_fingerprint

    ctx = context(tiny_deep, tmp_path / "s")  # fingerprint = hash of the unedited weights
    h = make("rome", "audio.layers.1.mlp.down", cov="identity", steps=2).apply(ctx, request(6))
    try:  # the context's first statistics are requested while the edit is applied
        assert stats_fingerprint(ctx).startswith(ctx.fingerprint + "+edited:")
    finally:
        h.revert()
    assert stats_fingerprint(ctx) == ctx.fingerprint
