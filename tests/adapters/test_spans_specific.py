"""Adapter-specific position mapping: Voxtral's 4-frame groups, SALMONN's 17-frame Q-Former windows
(two audio streams, corruption at either conv front end), AudioFlamingo3's mask key, and editing a
LoRA-wrapped weight."""

from __future__ import annotations

import pytest
import torch
from adapter_helpers import SUBJECT, WORDS, audio

from lalm_interp.errors import SiteError
from lalm_interp.inputs import build_inputs
from lalm_interp.spans import SEQ, position_map
from lalm_interp.specs import Corrupt, Experiment
from lalm_interp.tracing.causal import Prepared, SpokenPrompt


def _prep(built, name, at):
    model, proc, a = built(name)
    ex = SpokenPrompt("ex0", audio(0), WORDS, SUBJECT, "Paris", sample_rate=16000)
    return Prepared(model, proc, a, ex, Experiment("t", corrupt=Corrupt(at=at, scale=30.0))), a


# ------------------------------------------------------------------------------------- Voxtral
def test_voxtral_groups_four_encoder_frames_per_token(built):
    model, proc, a = built("voxtral")
    chain = a.rate_chain
    assert chain.frames_per_second("token") == 12.5 and chain.cell("token") == 8
    batch = build_inputs(proc, a, [audio(0)], sample_rate=16000)
    assert "feature_attention_mask" not in batch.model_inputs  # Voxtral takes no mel mask
    assert batch.n_mel == [195] and batch.n_audio == [50]  # 4 s window: 200 frames / 4, padding included
    pm = position_map(a, batch, 0, WORDS, SUBJECT)
    assert pm.n_frames("encoder") == 98 and pm.n_frames("token") == 25  # ceil(98 / 4): the last group is real
    assert pm.span("subject", "encoder") == (0, 64) and pm.span("subject", "token") == (0, 16)
    # 1.785-1.943 s → groups 22 (centred at 1.79 s), 23 (1.87 s) and 24, which holds the 2 real
    # encoder frames 96, 97 (+2 of padding) and is centred on them (1.93 s)
    assert pm.span("last_word", "token") == (22, 25)
    assert pm.time_s("token")[-1] == pytest.approx(1.93)
    assert pm.span("subject", "token") == (0, 16)  # group 15 is centred at 1.23 s < 1.27; 16 at 1.31
    assert pm.span("subject", SEQ) == (batch.audio_start[0], batch.audio_start[0] + 16)


def test_voxtral_token_j_reads_encoder_frames_4j_to_4j_plus_3(built):
    prep, a = _prep(built, "voxtral", "audio.norm")  # after the encoder: no leakage through attention
    assert (prep.corruption.start, prep.corruption.stop) == (0, 64)
    proj = a.one("proj")
    prep.compiled.base(reads=[proj])
    x = prep.compiled.read_values[proj]  # (2, 50, D)
    changed = (x[0] != x[1]).any(-1)
    assert changed[:16].all() and not changed[16:].any()


# ------------------------------------------------------------------------------------- SALMONN
def test_salmonn_windows_map_words_to_the_windows_they_centre(built):
    model, proc, a = built("salmonn")
    chain = a.rate_chain
    assert chain.cell("token") == 34 and chain.frames_per_second("token") == pytest.approx(50 / 17)
    assert chain.valid("token", 3000) == 11  # 4 s window: (200 - 17) // 17 + 1
    from dataclasses import replace

    big = replace(chain, window_mel=3000)  # a 30 s window: 1500 frames → 88 windows, 4 frames dropped
    assert big.valid("token", 3000) == 88 and big.valid("token", 2990) == 88
    batch = build_inputs(proc, a, [audio(0)], sample_rate=16000)
    assert a.audio_token_id is None and batch.n_audio == [11]
    pm = position_map(a, batch, 0, WORDS, SUBJECT)
    assert pm.n_frames("token") == 6  # 98 real frames touch windows 0..5
    # window w holds encoder frames 17w..17w+16 and is centred on them: 0.34 w + 0.16 s. A word
    # covers the windows whose centres it holds (docs/gotchas/frame-rates.md)
    assert pm.time_s("token")[:5] == pytest.approx([0.16, 0.50, 0.84, 1.18, 1.52])
    assert pm.span("first_subject_word", "token") == (0, 2)  # 0-0.765 s: windows centred at .16, .50
    assert pm.span("subject", "token") == (0, 4)  # to 1.27 s → window 3 (centred at 1.18 s)
    assert pm.span("last_word", "token") == (5, 6)  # window 5 holds real frames 85..97: centred at 1.82 s
    assert pm.span((1, 2), "token") == (2, 5)  # 0.765-1.785 s holds the centres of windows 2..4
    assert pm.word_of_frame("token")[:4] == ["Metropolitan"] * 2 + ["France's"] * 2
    ids = batch.input_ids[0]
    s, n = a.audio_slots(ids)
    assert (s, n) == (batch.audio_start[0], 11)
    assert ids[s - len(model.config.speech_open_ids) : s].tolist() == model.config.speech_open_ids


def test_salmonn_window_w_reads_only_its_17_frames(built):
    prep, a = _prep(built, "salmonn", "audio.ln_speech")
    assert (prep.corruption.start, prep.corruption.stop) == (0, 64)  # frames of 'Metropolitan France's'
    reads = [a.one("proj.layers.0.attn"), a.one("proj")]
    prep.compiled.base(reads=reads)
    for s in reads:
        x = prep.compiled.read_values[s]  # (2, 11, C)
        # windows are rows of one batched matmul: untouched windows agree to float rounding, not bitwise
        changed = (x[0] - x[1]).abs().amax(-1) > 1e-4 * x[0].abs().amax()
        assert changed[:4].all() and not changed[4:].any(), s  # frames 0..63 lie in windows 0..3


@pytest.mark.parametrize("front", ["audio.conv2", "audio.beats_conv"])
def test_salmonn_corrupts_either_encoders_conv_front_end(built, front):
    prep, a = _prep(built, "salmonn", front)
    whisper, beats = a.one("audio.ln_speech"), a.one("audio.beats_norm")
    base = prep.compiled.base(reads=[whisper, beats])
    assert base[0, 0] != base[1, 0]
    xw, xb = prep.compiled.read_values[whisper], prep.compiled.read_values[beats]
    hit, other = (xw, xb) if front == "audio.conv2" else (xb, xw)
    assert not torch.equal(hit[0], hit[1]) and torch.equal(other[0], other[1])  # the streams are separate


def test_salmonn_beats_stack_is_addressed_through_a_component_path(built):
    _, _, a = built("salmonn")
    assert a.n_layers("audio") == 2 and a.n_layers("proj") == 2
    got = [str(s) for s in a.expand("audio.beats.layers.*.resid")]
    assert got == ["audio.beats.layers.0.resid", "audio.beats.layers.1.resid"]
    assert [str(s) for s in a.expand("audio.layers.*.resid")] == ["audio.layers.0.resid", "audio.layers.1.resid"]
    order = [str(s) for s in a.all_sites()]
    assert order.index("audio.norm") < order.index("audio.beats_conv") < order.index("audio.beats_norm") \
        < order.index("proj.layers.0.attn") < order.index("proj") < order.index("text.embed")
    with pytest.raises(SiteError):
        a.expand("audio.beats.layers.0:1.resid")  # no ranges on the second stack (documented)


def test_salmonn_edit_base_weight_under_lora(built):
    model, proc, a = built("salmonn")
    attn = a.module(model, "text.layers.0.attn")
    q = attn.q_proj
    W = q.base_layer.weight
    snap = W.detach().clone()
    x = torch.randn(3, W.shape[1], generator=torch.Generator().manual_seed(0))
    u, v = torch.randn(W.shape[0]), torch.randn(W.shape[1])
    with torch.no_grad():
        y0 = q(x)
        W += torch.outer(u, v)  # the LoRA delta is additive: W_eff = (W + u vᵀ) + s·B A
        y1 = q(x)
        torch.testing.assert_close(y1 - y0, x @ torch.outer(u, v).T, atol=1e-5, rtol=1e-4)
        W.copy_(snap)
        assert torch.equal(q(x), y0)
    if hasattr(model.llama_model, "merge_adapter"):  # peft: merging folds s·B A into the base weight
        with torch.no_grad():
            lora_out = q(x)
            model.llama_model.merge_adapter()
            try:
                torch.testing.assert_close(q(x), lora_out, atol=1e-5, rtol=1e-4)
                assert not torch.equal(q.base_layer.weight, snap)
            finally:
                model.llama_model.unmerge_adapter()
                q.base_layer.weight.copy_(snap)  # unmerge is not bitwise: restore the snapshot


# ------------------------------------------------------------------------------------- AF3
def test_audioflamingo3_uses_its_mask_key_and_25_tokens_per_second(built):
    _, proc, a = built("audioflamingo3")
    batch = build_inputs(proc, a, [audio(0)], sample_rate=16000)
    assert "input_features_mask" in batch.model_inputs and "feature_attention_mask" not in batch.model_inputs
    assert batch.n_mel == [195] and batch.n_audio == [49]  # ((195-1)//2 + 1 - 2)//2 + 1 = 49
    assert a.rate_chain.frames_per_second("token") == 25.0
