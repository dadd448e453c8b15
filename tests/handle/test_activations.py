"""Activations from run_with_cache are labelled (plain dims, integer positions, time / token / word
coordinates), patterns expand over the sites held, and the Store writes them and reads back an
identical object."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import lalm_interp
from lalm_interp.cache.activations import stack
from lalm_interp.cache.errors import CacheError
from lalm_interp.cache.store import Store
from lalm_interp.prompts import SpokenPrompt

from handle_helpers import hooked, noise

pytestmark = pytest.mark.usefixtures("one_thread")
SITES = ["audio.conv2", "audio.layers.*.resid", "proj", "text.layers.0.mlp.down@in", "text.layers.1.attn",
         "text.layers.*.mlp"]


@pytest.fixture(scope="module")
def lm():
    return lalm_interp.load("organism")


@pytest.fixture(scope="module")
def prompt():
    return SpokenPrompt("ex1", noise(1.2, 0), (("The", 0.0, 0.2), ("cat", 0.25, 0.6), ("is", 0.7, 1.0)), (1, 1),
                        "Paris", sample_rate=16000)


@pytest.fixture(scope="module")
def acts(lm, prompt):
    return lm.run_with_cache(prompt, sites=SITES)


def test_arrays_have_plain_dims_and_position_coordinates(lm, acts, prompt):
    chain, batch = lm.adapter.rate_chain, lm.inputs(prompt)
    conv2 = acts["audio.conv2"]
    assert conv2.dims == ("position", "hidden") and conv2.position.values.tolist() == list(range(conv2.sizes["position"]))
    assert np.allclose(conv2.time_s.values, 0.02 * np.arange(conv2.sizes["position"]))  # encoder frames: 50/s
    assert int(conv2.valid.sum()) == chain.valid(lm.adapter.stage("audio.conv2"), batch.n_mel[0])
    words = conv2.word.values[conv2.valid.values]
    assert set(words) == {"The", "cat", "is", ""} and conv2.is_subject.values.sum() > 0
    assert set(conv2.word.values[conv2.is_subject.values]) == {"cat"}
    text = acts["text.layers.3.mlp"]
    ids = batch.input_ids[0].tolist()
    assert text.token.values.tolist() == lm.processor.tokenizer.convert_ids_to_tokens(ids)
    a0, n = batch.audio_start[0], batch.n_audio[0]
    audio_pos = ~np.isnan(text.time_s.values)
    assert audio_pos.nonzero()[0].tolist() == list(range(a0, a0 + n))
    assert text.site.item() == "text.layers.3.mlp" and text.layer.item() == 3
    assert "layer" not in acts["proj"].coords


def test_indexing_and_patterns(acts, lm):
    stacked = acts["text.layers.*.mlp"]
    assert stacked.dims == ("layer", "position", "hidden")
    assert stacked.layer.values.tolist() == list(range(lm.n_layers["text"]))
    xr.testing.assert_identical(stacked.sel(layer=4).drop_vars("layer").rename("text.layers.4.mlp"),
                                acts["text.layers.4.mlp"].drop_vars("layer"))
    assert acts["text.layers.2:4.mlp"].layer.values.tolist() == [2, 3]
    assert acts["text.layers.-1.mlp"].identical(acts[f"text.layers.{lm.n_layers['text'] - 1}.mlp"])
    assert "text.layers.0.mlp.down@in" in acts and "text.layers.0.attn" not in acts
    mixed = acts["text.layers.1.*"]  # two components of one layer: stacked along site
    assert mixed.dims == ("site", "position", "hidden") and mixed.site.values.tolist() == ["text.layers.1.attn",
                                                                                          "text.layers.1.mlp"]
    with pytest.raises(CacheError, match="not among") as err:
        acts["text.layers.0.attn"]
    assert "docs/errors/cache.md" in str(err.value)
    with pytest.raises(CacheError, match="matches none"):
        acts["text.layers.*.resid"]
    with pytest.raises(CacheError, match="different shapes"):
        stack([acts["audio.conv2"], acts["text.layers.1.mlp"]], "mixed")
    text = repr(acts)
    assert "Activations(" in text and "text.layers.0.mlp.down@in" in text and "(position: " in text


def test_store_round_trip_is_exact(tmp_path, lm, acts):
    store = Store(tmp_path)
    assert store.put(acts, "demo") == 0
    other = lm.run_with_cache(noise(0.8, 3), sample_rate=16000, sites=["audio.conv2", "text.layers.1.mlp"],
                              example="ex2")
    assert store.put(other, "demo") == 1
    back = store.activations("demo", "ex1")
    assert back.identical(acts) and back == acts and back.sites == acts.sites and back.attrs == acts.attrs
    for s in acts:
        xr.testing.assert_identical(back[s], acts[s])
        assert back[s].dtype == acts[s].dtype
    assert store.activations("demo", "ex2").identical(other)
    assert not store.activations("demo", "ex2").identical(acts)
    # the shard is an ordinary cache shard: Store.get reads it with the model's provenance
    da = store.get("text.layers.1.mlp", experiment="demo")
    assert da.sizes["example"] == 2 and da.attrs["model"] == "organism"
    with pytest.raises(CacheError, match="Did you mean 'ex2'"):
        store.activations("demo", "ex3")
    with pytest.raises(CacheError, match="no shards of experiment 'nope'"):
        store.activations("nope")


@pytest.mark.parametrize("name", ["tiny-audioflamingo3", "tiny-salmonn"])
def test_every_site_of_other_families_caches_and_round_trips(name, tmp_path):
    """Every concrete site of another adapter family (AudioFlamingo3; SALMONN's windowed Q-Former
    and BEATs stack) reads the same values as torch hooks, and the store round trip is exact."""
    lm = lalm_interp.load(name)
    clip = noise(1.5, 7)
    sites = lm.adapter.all_sites()
    acts = lm.run_with_cache(clip, sample_rate=16000, sites=sites)
    ref = hooked(lm.model, lm.adapter, lm.inputs(clip, 16000).model_inputs, sites)
    assert acts.sites == [str(s) for s in sites]
    for s in sites:
        assert np.array_equal(acts[str(s)].values, ref[s][0].numpy()), s
        assert acts[str(s)].valid.dtype == bool and "time_s" in acts[str(s)].coords
    store = Store(tmp_path)
    store.put(acts, "all")
    assert store.activations("all").identical(acts)
