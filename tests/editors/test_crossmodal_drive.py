"""The cross-modal editors are driven by the audio edit (paper §3.2, docs/editors/crossmodal.md):
the text stage keys at the subject word's audio tokens and its target is v* = v₁ + Δ, Δ the
change the audio edit causes there (after the edited text layer by default, or at the projector
output). Tiny random Qwen2-Audio (6 + 6 layers)."""

import numpy as np
import pytest

from lalm_interp.editors import EditContext, EditorError, EditRequest, KeyCorpus, make
from lalm_interp.editors.keys import pooled, prepare
from lalm_interp.tracing import SpokenPrompt

WORDS = (("Metropolitan", 0.0, 0.765), ("France's", 0.765, 1.270), ("capital", 1.270, 1.785), ("is", 1.785, 1.943))
SITES = ["audio.layers.2.mlp.down", "text.layers.2.mlp.down"]


def noise(seconds, seed):
    return (0.2 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(np.float32)


def request(seed=0, new="Seattle"):
    return EditRequest(SpokenPrompt(f"ex{seed}", noise(1.95, seed), WORDS, (0, 1), "Paris", sample_rate=16000), new, "first")


@pytest.fixture(scope="module")
def ctx(tiny_deep):
    model, processor, adapter = tiny_deep
    return EditContext(model, processor, adapter, corpus=KeyCorpus("noise:4", [noise(2.5, 100 + i) for i in range(4)], sample_rate=16000))


def subject_mean(ctx, req, site):
    """``site``'s value at the subject word's audio tokens, mean-pooled."""
    return pooled(ctx, prepare(ctx, req), ctx.adapter.one(site), req.span_name)


def text_change_at_key(ctx, handle, req, site="text.layers.2.mlp.down"):
    """ΔW_text k*, k* the text key at the subject's audio tokens on the edited model."""
    s = ctx.adapter.one(site)
    path = ctx.adapter.module_path(s)
    W = ctx.adapter.module(ctx.model, s).weight.detach().double()
    k = pooled(ctx, prepare(ctx, req), s.with_port("in"), req.span_name)
    return (W - handle.original(path).double()) @ k


@pytest.mark.parametrize("drive_at,where", [("layer", "text.layers.2.resid"), ("projector", "proj")])
def test_default_text_target_is_the_projected_audio_residual(ctx, drive_at, where):
    req = request(1)
    e0 = subject_mean(ctx, req, where)
    alone = make("rome", SITES[0]).apply(ctx, req)  # the cross-modal editor's audio stage (same hparams), alone
    de = subject_mean(ctx, req, where) - e0  # Δ, measured independently on the audio-edited model
    alone.revert()
    assert float(de.norm()) > 0
    kw = {} if drive_at == "layer" else {"drive_at": drive_at}
    h = make("crossmodal", SITES, **kw).apply(ctx, req)
    try:
        assert h.info["drive_used"] is True and h.info["drive"] is True
        assert h.info["drive_norm"][0] == pytest.approx(float(de.norm()), rel=1e-4)
        got = text_change_at_key(ctx, h, req)
        # the text layer writes exactly Δ at the subject's (mean) key: (W + ΔW) k* = W k* + Δ
        assert float((got - de).norm()) < 1e-4 * float(de.norm())
        assert len(h.info["text"]["requests"][0]["nll"]) == 1  # no refinement in the default
    finally:
        h.revert()


def test_undriven_and_refined_differ_from_the_driven_target(ctx):
    req = request(2)
    where = "text.layers.2.resid"
    e0 = subject_mean(ctx, req, where)
    alone = make("rome", SITES[0]).apply(ctx, req)
    de = subject_mean(ctx, req, where) - e0
    alone.revert()
    h = make("crossmodal", SITES, drive=False).apply(ctx, req)
    try:
        got = text_change_at_key(ctx, h, req)
        assert h.info["drive_used"] is False
        assert float((got - de).norm()) > 0.1 * float(de.norm())  # its own NLL-optimised δ, not Δe
    finally:
        h.revert()
    drv = make("crossmodal", SITES).apply(ctx, req)
    n0 = drv.info["text"]["requests"][0]["nll"][0]
    drv.revert()
    ref = make("crossmodal", SITES, refine_steps=3).apply(ctx, req)
    try:
        nll = ref.info["text"]["requests"][0]["nll"]
        assert ref.info["drive_used"] is True and 1 < len(nll) <= 4
        assert nll[0] == pytest.approx(n0, rel=1e-5)  # refinement starts from the driven target
        assert nll[-1] < nll[0]
    finally:
        ref.revert()


def test_multi_layer_text_target_is_the_residual_plus_the_drive(ctx):
    req = request(3)
    ed = make("crossmodal-alphaedit", ["audio.layers.1:3", "text.layers.1:3"])
    h = ed.apply(ctx, req)
    try:
        assert h.info["drive_used"] is True
        t = h.info["text"]["targets"][0]
        assert len(t["nll"]) == 1
        assert t["delta_norm"] == pytest.approx(h.info["drive_norm"][0], rel=1e-4)  # z = h + Δe
    finally:
        h.revert()
        ed.reset()


@pytest.mark.parametrize("kw,match", [
    ({"text": {"key_span": "last_token"}}, "drive=True needs text.key_span='word'"),
    ({"text": {"key_span": "auto"}}, "drive=True needs text.key_span='word'"),
    ({"refine_steps": -1}, "refine_steps=-1"),
    ({"drive_scale": float("nan")}, "drive_scale=nan"),
    ({"drive": "yes"}, "drive='yes'"),
    ({"drive_at": "encoder"}, "drive_at='encoder'"),
])
def test_bad_drive_settings_are_clear_errors(kw, match):
    from dataclasses import replace

    from lalm_interp.editors import CrossModalHParams, RomeHParams

    hp = CrossModalHParams()
    if "text" in kw:
        hp = replace(hp, text=RomeHParams(**kw.pop("text")))
    with pytest.raises(EditorError, match=match) as err:
        make("crossmodal", SITES, hp, **kw)
    assert "crossmodal.md" in str(err.value)


def test_undriven_text_stage_may_key_anywhere(ctx):
    from lalm_interp.editors import CrossModalHParams, RomeHParams

    hp = CrossModalHParams(text=RomeHParams(key_span="last_token"), drive=False)
    h = make("crossmodal", SITES, hp).apply(ctx, request(4))
    assert h.info["drive_used"] is False
    h.revert()
