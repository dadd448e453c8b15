"""Pattern queries resolved against stored keys, across shards and experiments; lazy reads; errors."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from cache_helpers import HIDDEN, N_LAYERS, make_batch, provenance
from hypothesis import given, settings
from hypothesis import strategies as st

from lalm_interp import sites
from lalm_interp.cache import Batch, CacheError, Store
from lalm_interp.cache.query import resolve


@pytest.fixture
def filled(store):
    w = store.writer("e1", provenance=provenance())
    for i in range(3):
        w.write(i, make_batch(i))
    return store


def test_layer_range_stacks_along_layer(filled):
    da = filled.get("text.layers.1:3.mlp", run="clean")
    assert da.dims == ("example", "layer", "position", "hidden")
    assert list(da.layer.values) == [1, 2]
    assert list(da.site.values) == ["text.layers.1.mlp", "text.layers.2.mlp"]
    b = make_batch(2)
    got = da.sel(example=b.examples[1], layer=2).values
    want = b.values["text.layers.2.mlp"][1]
    np.testing.assert_array_equal(got[: want.shape[0]], want)


def test_star_and_negative_layers_resolve_from_recorded_n_layers(filled):
    assert list(filled.get("text.layers.*.mlp").layer.values) == list(range(N_LAYERS))
    assert list(filled.get("text.layers.-2:.mlp").layer.values) == [N_LAYERS - 2, N_LAYERS - 1]
    single = filled.get("text.layers.-1.mlp")
    assert single.dims == ("example", "position", "hidden") and int(single.layer) == N_LAYERS - 1


def test_non_layer_pattern_stacks_along_site(store):
    w = store.writer("s", provenance=provenance())
    w.write(0, Batch(["a"], {"text.layers.0.attn": np.zeros((1, 2, 3), np.float32), "text.layers.0.resid": np.ones((1, 2, 3), np.float32)}))
    da = store.get("text.layers.0.*")
    assert da.dims == ("example", "site", "position", "hidden")
    assert list(da.site.values) == ["text.layers.0.attn", "text.layers.0.resid"]  # forward order
    np.testing.assert_array_equal(da.sel(site="text.layers.0.resid").values, np.ones((1, 2, 3)))


def test_across_experiments_and_filters(store):
    store.writer("e1", provenance=provenance()).write(0, make_batch(0, prefix="a"))
    store.writer("e2", provenance=provenance()).write(0, make_batch(1, prefix="b"))
    store.writer("e3", provenance=provenance(model="other/model")).write(0, make_batch(2, prefix="c"))
    store.writer("e1", run="corrupt", provenance=provenance()).write(0, make_batch(3, prefix="d"))
    da = store.get("text.layers.0.mlp", run="clean", model="tiny/qwen2-audio")
    assert sorted(set(da.experiment.values)) == ["e1", "e2"]
    assert da.sizes["example"] == 6 and set(da.run.values) == {"clean"}
    assert store.get("text.layers.0.mlp", run="corrupt").sizes["example"] == 3
    assert store.get("text.layers.0.mlp", model="other/model").sizes["example"] == 3
    assert store.get("text.layers.0.mlp", model="tiny/qwen2-audio@r1").sizes["example"] == 9  # fingerprint
    assert {(e.experiment, e.run) for e in store.experiments()} == {("e1", "clean"), ("e1", "corrupt"), ("e2", "clean"), ("e3", "clean")}
    keys = store.ls("text.layers.*.mlp", experiment="e1", run="clean")
    assert [k.site for k in keys] == [f"text.layers.{l}.mlp" for l in range(N_LAYERS)]
    assert keys[0].shape == (3, 4, HIDDEN)


def test_unknown_key_is_a_clear_error(filled):
    with pytest.raises(CacheError, match="matches nothing.*text.layers.0.mlp"):
        filled.get("text.layers.9.resid")
    with pytest.raises(CacheError, match="filters"):
        filled.get("text.layers.0.mlp", run="nope")


def test_schema_mismatch_at_write_and_at_read(store):
    w = store.writer("e", provenance=provenance())
    w.write(0, make_batch(0))
    with pytest.raises(CacheError, match="hidden size 8"):
        w.write(1, make_batch(1, hidden=16))
    store.writer("wide", provenance=provenance()).write(0, make_batch(0, hidden=16, prefix="w"))
    with pytest.raises(CacheError, match="schema mismatch.*hidden size"):
        store.get("text.layers.0.mlp")
    assert store.get("text.layers.0.mlp", experiment="wide").sizes["hidden"] == 16


def test_shard_missing_a_key_is_an_error_not_a_silent_gap(store):
    w = store.writer("e", provenance=provenance())
    w.write(0, make_batch(0))
    w.write(1, make_batch(1, layers=[0]))
    with pytest.raises(CacheError, match="lacks"):
        store.get("text.layers.1.mlp")


def test_corrupt_and_truncated_shards_are_reported(filled):
    path = filled.root / "experiments/e1/runs/clean/shard-000001.h5"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # truncated
    with pytest.raises(CacheError, match="corrupt shard.*shard-000001"):
        filled.get("text.layers.0.mlp")
    assert [c.path for c in filled.catalog().corrupt] == [path]
    path.write_bytes(b"\x00" * 4096)  # garbage
    with pytest.raises(CacheError, match="truncated or corrupt"):
        filled.get("text.layers.0.mlp")
    # other experiments are still queryable
    filled.writer("ok", provenance=provenance()).write(0, make_batch(0, prefix="ok"))
    assert filled.get("text.layers.0.mlp", experiment="ok").sizes["example"] == 3


@pytest.mark.parametrize("chunks", [None, "shards"])
def test_lazy_query_reads_only_the_selected_slice(filled, chunks):
    filled.io.reset()
    da = filled.get("text.layers.*.mlp", chunks=chunks)
    assert (da.chunks is None) == (chunks is None)
    assert filled.io.bytes_read == 0  # nothing read to build the array
    one = da.sel(layer=2).isel(example=4).values
    itemsize = np.dtype(np.float32).itemsize
    if chunks is None:  # lazily indexed: exactly the HDF5 chunk holding the selection
        assert filled.io.bytes_read <= one.size * itemsize
        assert filled.io.reads == 1
    else:  # dask: the one (shard, key) block holding it
        assert filled.io.bytes_read <= 3 * one.size * itemsize
    full = int(da.nbytes)
    assert filled.io.bytes_read * 10 < full


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 12),
    present=st.sets(st.integers(0, 11), min_size=1),
    a=st.one_of(st.none(), st.integers(-12, 12)),
    b=st.one_of(st.none(), st.integers(-12, 12)),
)
def test_range_resolution_matches_python_slicing(n, present, a, b):
    from lalm_interp.cache.provenance import Provenance
    from lalm_interp.cache.shards import KeySchema, ShardInfo

    present = {i for i in present if i < n}
    if not present:
        return
    keys = {f"text.layers.{i}.mlp": KeySchema(f"text.layers.{i}.mlp", ("example", "hidden"), (1, 2), "float32", "float32", (1, 2)) for i in present}
    info = ShardInfo(path=None, experiment="e", run="r", index=0, n_examples=1, provenance=Provenance(model="m", n_layers={"text": n}), keys=keys)
    pattern = f"text.layers.{'' if a is None else a}:{'' if b is None else b}.mlp"
    want = [i for i in list(range(n))[slice(a, b)] if i in present]
    if not want:
        with pytest.raises(CacheError):
            resolve(pattern, [info])
    else:
        assert [sites.parse(k).layer for k in resolve(pattern, [info])] == want


def _dense(store, pattern):
    """Reference: the full array assembled eagerly in NumPy from the written batches."""
    da = store.get(pattern, chunks=None)
    return da, da.values


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_outer_indexing_equals_numpy_on_the_dense_array(tmp_path_factory, data):
    store = _filled_once(tmp_path_factory)
    da, dense = _dense(store, "text.layers.*.mlp")
    indexers = {}
    for dim, n in da.sizes.items():
        kind = data.draw(st.sampled_from(["all", "int", "slice", "list"]), label=dim)
        if kind == "int":
            indexers[dim] = data.draw(st.integers(-n, n - 1))
        elif kind == "slice":
            a, b = data.draw(st.integers(0, n)), data.draw(st.integers(0, n))
            step = data.draw(st.integers(1, 3))
            indexers[dim] = slice(min(a, b), max(a, b), step)
        elif kind == "list":
            indexers[dim] = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=4))
    want = xr.DataArray(dense, dims=da.dims).isel(indexers).values
    for chunks in (None, "shards"):
        got = store.get("text.layers.*.mlp", chunks=chunks).isel(indexers).values
        np.testing.assert_array_equal(got, want)


_FILLED: dict = {}


def _filled_once(factory) -> Store:
    if "store" not in _FILLED:
        store = Store(factory.mktemp("dense") / "cache")
        w = store.writer("e1", provenance=provenance())
        for i in range(3):
            w.write(i, make_batch(i))
        _FILLED["store"] = store
    return _FILLED["store"]


def test_dense_reference_matches_written_batches(tmp_path_factory):
    store = _filled_once(tmp_path_factory)
    da, dense = _dense(store, "text.layers.*.mlp")
    row = 0
    for i in range(3):
        b = make_batch(i)
        for e in range(3):
            for layer in range(N_LAYERS):
                v = b.values[f"text.layers.{layer}.mlp"][e]
                np.testing.assert_array_equal(dense[row, layer, : v.shape[0]], v)
                assert np.isnan(dense[row, layer, v.shape[0] :]).all()
            row += 1
    np.testing.assert_array_equal(store.get("text.layers.*.mlp", chunks={"example": 2}).values, dense)
