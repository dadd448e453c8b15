"""Inputs, bad audio, and the no-op nnsight trace on a tiny random Qwen2-Audio."""

import numpy as np
import pytest
import torch

from lalm_interp.errors import AudioInputError
from lalm_interp.inputs import build_inputs
from lalm_interp.wrap import envoy, wrap


def test_noop_trace_equals_hf_forward(tiny, clip):
    model, processor, a = tiny
    batch = build_inputs(processor, a, [clip(2.5, 1), clip(1.2, 2)], instruction=["Complete the sentence.", "Say"], sample_rate=16000)
    with torch.no_grad():
        ref = model(**batch.model_inputs, use_cache=False).logits
        w = wrap(model)
        with w.trace(**batch.model_inputs, use_cache=False):
            out = w.output.save()
    assert torch.equal(out.logits, ref)


def test_site_values_have_declared_shapes(tiny, clip):
    model, processor, a = tiny
    batch = build_inputs(processor, a, [clip(2.0)], sample_rate=16000)
    sites = a.all_sites()
    saved = {}
    w = wrap(model)
    with torch.no_grad(), w.trace(**batch.model_inputs, use_cache=False):
        for s in sites:  # all_sites() is in forward order: no OutOfOrderError
            e = envoy(w, a, s)
            val = e.input if s.port == "in" else e.output
            if a.component(s).out == "tuple0" and s.port == "out":
                val = val[0]
            saved[s] = val.save()
    T_enc = 2 * a.config.audio_config.max_source_positions // 2
    seq = batch.input_ids.shape[1]
    for s, v in saved.items():
        x = a.to_btc(s, v)
        assert x.shape[0] == 1 and x.shape[2] == a.width(s), (s, tuple(v.shape))
        stage = a.stage(s)
        expect_t = {"mel": 2 * T_enc, "encoder": T_enc, "token": T_enc // 2, "seq": seq}[stage]
        assert x.shape[1] == expect_t, (s, tuple(v.shape))


def test_padding_invariance_of_position_ids(tiny, clip):
    model, processor, a = tiny
    long_instr = "Complete the sentence about the spoken fact please."
    both = build_inputs(processor, a, [clip(2.0, 3), clip(1.0, 4)], instruction=["Say", long_instr], sample_rate=16000)
    alone = build_inputs(processor, a, [clip(2.0, 3)], instruction="Say", sample_rate=16000)
    assert both.model_inputs["attention_mask"][0, 0] == 0  # the short prompt is left-padded
    with torch.no_grad():
        lb = model(**both.model_inputs, use_cache=False).logits[0, -1]
        la = model(**alone.model_inputs, use_cache=False).logits[0, -1]
    torch.testing.assert_close(lb, la, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "audio, sr, needle",
    [
        (np.zeros(16000, np.float32), 0, "sample_rate=0 is not a sample rate"),
        (np.zeros((2, 16000), np.float32), 16000, "not mono"),
        (np.zeros(0, np.float32), 16000, "empty"),
        (np.zeros(16000 * 5, np.float32), 16000, "longer than the encoder window"),
        (np.zeros(16000, np.int16), 16000, "not floating point"),
        (np.full(16000, np.nan, np.float32), 16000, "NaN"),
        (np.zeros(100, np.float32), 16000, "shorter than one mel hop"),
    ],
)
def test_bad_audio_is_a_clear_error(tiny, audio, sr, needle):
    _, processor, a = tiny
    with pytest.raises(AudioInputError) as e:
        build_inputs(processor, a, [audio], sample_rate=sr, names=["clip-7"])
    assert needle in str(e.value)
    assert "clip-7" in str(e.value)
    assert "docs/errors/audio-input.md" in str(e.value)


def test_mono_column_vector_is_accepted(tiny):
    _, processor, a = tiny
    batch = build_inputs(processor, a, [np.zeros((16000, 1), np.float32)], sample_rate=16000)
    assert batch.n_mel == [100] and batch.n_audio == [25]


def test_plain_style_prompt(tiny, clip):
    _, processor, a = tiny
    batch = build_inputs(processor, a, [clip(1.0)], style="plain", instruction="The capital is", sample_rate=16000)
    assert batch.texts[0].startswith("<|audio_bos|><|AUDIO|><|audio_eos|>")
    assert batch.n_audio == [25]
