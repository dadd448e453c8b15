"""The real Qwen2-Audio-7B-Instruct architecture, built on the meta device from its config."""

import pytest
import torch

from lalm_interp import adapters
from lalm_interp.inputs import build_inputs


def test_layer_counts_and_widths(qwen7b_meta):
    model, _, a = qwen7b_meta
    assert a.n_layers("audio") == 32 and a.n_layers("text") == 32
    assert a.width("audio.layers.0.resid") == 1280
    assert a.width("text.layers.0.resid") == 4096
    assert a.width("text.layers.3.mlp.down@in") == 11008
    assert a.width("audio.layers.28.mlp.down@in") == 5120
    down = a.module(model, "text.layers.12.mlp.down")
    assert tuple(down.weight.shape) == (4096, 11008)
    fc2 = a.module(model, "audio.layers.28.mlp.down")
    assert tuple(fc2.weight.shape) == (1280, 5120)
    assert tuple(a.module(model, "audio.conv2").weight.shape) == (1280, 1280, 3)
    assert tuple(a.module(model, "proj").linear.weight.shape) == (4096, 1280)
    assert a.module(model, "text.logits").out_features == 156032


def test_every_site_resolves_with_declared_width(qwen7b_meta):
    model, _, a = qwen7b_meta
    sites = a.all_sites()
    assert len(sites) == 2 + 32 * 6 + 3 + 2 + 32 * 6 + 1  # conv1/2, per-layer x6, pool/norm/proj, embed/norm, logits
    for s in sites:
        mod = a.module(model, s)
        width = a.width(s)
        w = getattr(mod, "weight", None)
        if isinstance(mod, torch.nn.Linear):
            assert (mod.in_features if s.port == "in" else mod.out_features) == width, s
        elif isinstance(mod, torch.nn.Conv1d):
            assert mod.out_channels == width, s
        elif isinstance(mod, torch.nn.Embedding):
            assert mod.embedding_dim == width, s
        elif w is not None and w.ndim == 1:  # norms
            assert w.shape[0] == width, s
        else:  # layers, attention blocks, projector, pooler: check a parameter of the right width
            params = [p for p in mod.parameters()]
            if params:
                assert any(width in p.shape for p in params), s


def test_real_processor_builds_75_audio_tokens_for_3s(qwen7b_meta, clip):
    model, processor, a = qwen7b_meta
    batch = build_inputs(processor, a, [clip(3.0)], sample_rate=16000)
    assert batch.n_mel == [300]
    assert batch.n_audio == [75]
    assert batch.input_features.shape == (1, 128, 3000)
    ids = batch.input_ids[0]
    start = batch.audio_start[0]
    assert (ids[start : start + 75] == 151646).all()
    assert ids[start - 1] == processor.tokenizer.convert_tokens_to_ids("<|audio_bos|>")
    assert ids[start + 75] == processor.tokenizer.convert_tokens_to_ids("<|audio_eos|>")
    assert "<|im_start|>assistant\n" in batch.texts[0]
    assert processor.tokenizer(" Paris", add_special_tokens=False)["input_ids"] == [12095]


def test_thirty_seconds_fills_the_window(qwen7b_meta, clip):
    _, processor, a = qwen7b_meta
    batch = build_inputs(processor, a, [clip(30.0)], sample_rate=16000)
    assert batch.n_audio == [750]


def test_registry_resolves_and_plugs_in(qwen7b_meta):
    model, _, _ = qwen7b_meta
    assert adapters.for_model(model).name == "qwen2_audio"
    assert adapters.get("qwen2_audio") is adapters.QWEN2_AUDIO
    assert "qwen2_audio" in adapters.available()
    with pytest.raises(adapters.AdapterError if hasattr(adapters, "AdapterError") else Exception, match="no adapter"):
        adapters.get("salmonn_v9")
    from dataclasses import replace

    custom = replace(adapters.QWEN2_AUDIO, name="my_qwen_variant", model_types=("my_qwen",))
    adapters.register(custom)
    try:
        assert adapters.get("my_qwen") is custom
        with pytest.raises(Exception, match="already registered"):
            adapters.register(replace(custom))
    finally:
        adapters._REGISTRY.pop("my_qwen_variant")


def test_entry_point_declared():
    from importlib.metadata import entry_points

    names = {ep.name: ep.value for ep in entry_points(group="lalm_interp.adapters")}
    assert names.get("qwen2_audio") == "lalm_interp.adapters.qwen2_audio:ADAPTER"
