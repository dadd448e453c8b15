"""Write → reopen with plain xarray / plain h5py → identical values, dims and coordinates."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import xarray as xr
from cache_helpers import make_batch, provenance

from lalm_interp.cache import Batch, CacheError, Positions, Store


def _shard(store: Store, exp: str = "e", run: str = "clean", i: int = 0):
    return store.root / "experiments" / exp / "runs" / run / f"shard-{i:06d}.h5"


def test_plain_xarray_and_h5py_read_back_identical(store):
    batch = make_batch(0)
    store.writer("e", provenance=provenance()).write(0, batch)
    path = _shard(store)

    ds = xr.open_dataset(path, engine="h5netcdf", group="text.layers.2.mlp")
    want = batch.values["text.layers.2.mlp"]
    assert ds["activation"].dims == ("example", "position", "hidden")
    np.testing.assert_array_equal(ds["activation"].values, want)
    assert list(ds["example"].values) == list(batch.examples)
    np.testing.assert_array_equal(ds["token"].values, batch.positions["text"].token)
    assert ds["is_subject"].dtype == bool and ds["valid"].dtype == bool
    np.testing.assert_array_equal(ds["valid"].values, batch.positions["text"].valid)
    np.testing.assert_array_equal(ds["is_subject"].values, batch.positions["text"].is_subject)
    assert ds["activation"].attrs["original_dtype"] == "float32"

    audio = xr.open_dataset(path, engine="h5netcdf", group="audio.layers.1.mlp.down@in")
    np.testing.assert_array_equal(audio["time_s"].values, np.arange(5) * 0.04)
    assert audio["activation"].dtype == np.float16
    np.testing.assert_array_equal(audio["activation"].values, batch.values["audio.layers.1.mlp.down@in"])

    with h5py.File(path, "r") as f:
        assert f.attrs["model"] == "tiny/qwen2-audio" and f.attrs["dataset"] == "capitals"
        np.testing.assert_array_equal(f["text.layers.2.mlp/activation"][...], want)
        assert [s.decode() for s in f["text.layers.2.mlp/token"][0]] == list(batch.positions["text"].token[0])

    tree = xr.open_datatree(path, engine="h5netcdf")
    assert "text.layers.0.mlp" in tree.children


def test_store_get_equals_written_values_and_coords(store):
    w = store.writer("e", provenance=provenance())
    batches = [make_batch(i) for i in range(3)]
    for i, b in enumerate(batches):
        w.write(i, b)
    da = store.get("text.layers.1.mlp")
    assert da.dims == ("example", "position", "hidden")
    assert int(da.layer) == 1 and str(da.site.values) == "text.layers.1.mlp"
    n_pos = max(b.values["text.layers.1.mlp"].shape[1] for b in batches)
    assert da.sizes["position"] == n_pos
    for b in batches:
        for row, ex in enumerate(b.examples):
            got = da.sel(example=ex)
            arr = b.values["text.layers.1.mlp"][row]
            np.testing.assert_array_equal(got.values[: arr.shape[0]], arr)
            assert np.isnan(got.values[arr.shape[0] :]).all()  # padding
            np.testing.assert_array_equal(got.valid.values[: arr.shape[0]], b.positions["text"].valid[row])
            assert not got.valid.values[arr.shape[0] :].any()
            assert list(got.token.values[: arr.shape[0]]) == list(b.positions["text"].token[row])
    assert da.attrs["model"] == "tiny/qwen2-audio"
    assert da.attrs["original_dtype"] == "float32"


def test_bfloat16_stored_as_float32_with_original_dtype(store):
    x = torch.randn(2, 3, 4, dtype=torch.bfloat16)
    w = store.writer("bf", provenance=provenance())
    w.write(0, Batch(examples=["a", "b"], values={"text.layers.0.resid": x}))
    da = store.get("text.layers.0.resid", experiment="bf")
    assert da.dtype == np.float32
    assert da.attrs["original_dtype"] == "bfloat16"
    np.testing.assert_array_equal(da.values, x.float().numpy())  # bf16 → f32 is exact
    with h5py.File(_shard(store, "bf"), "r") as f:
        assert f["text.layers.0.resid/activation"].dtype == np.float32
        assert f["text.layers.0.resid/activation"].attrs["original_dtype"] == "bfloat16"


def test_bfloat16_to_float16_by_option_and_overflow_is_an_error(store):
    x = torch.randn(2, 3, 4, dtype=torch.bfloat16)
    store.writer("h", provenance=provenance(), dtype="float16").write(0, Batch(["a", "b"], {"text.layers.0.resid": x}))
    da = store.get("text.layers.0.resid", experiment="h")
    assert da.dtype == np.float16 and da.attrs["original_dtype"] == "bfloat16"
    np.testing.assert_allclose(da.values, x.float().numpy(), rtol=1e-3)

    big = torch.full((1, 2, 2), 1e6, dtype=torch.bfloat16)
    with pytest.raises(CacheError, match="65504"):
        store.writer("h2", provenance=provenance(), dtype="float16").write(0, Batch(["a"], {"text.layers.0.resid": big}))
    with pytest.raises(CacheError, match="bfloat16"):
        store.writer("h3", provenance=provenance(), dtype="bfloat16").write(0, Batch(["a"], {"text.layers.0.resid": big}))


def test_two_dimensional_keys_and_integer_values(store):
    w = store.writer("v", provenance=provenance())
    w.write(0, Batch(["a", "b"], {"text.layers.3.resid": np.ones((2, 5), np.float32)}))
    da = store.get("text.layers.3.resid")
    assert da.dims == ("example", "hidden") and da.shape == (2, 5)
    with pytest.raises(CacheError, match="floating"):
        w.write(1, Batch(["c"], {"text.layers.3.resid": np.ones((1, 5), np.int64)}))
    with pytest.raises(CacheError, match="pattern"):
        w.write(1, Batch(["c"], {"text.layers.*.resid": np.ones((1, 5), np.float32)}))
    with pytest.raises(CacheError, match="shape"):
        w.write(1, Batch(["c"], {"text.layers.3.resid": np.ones((2, 5), np.float32)}))
    with pytest.raises(CacheError, match="unique"):
        w.write(1, Batch(["c", "c"], {"text.layers.3.resid": np.ones((2, 5), np.float32)}))
    with pytest.raises(CacheError, match="coordinate 'token'"):
        w.write(1, Batch(["c"], {"text.layers.4.resid": np.ones((1, 3, 5), np.float32)},
                         {"text": Positions(token=np.array([["a", "b"]]))}))


def test_root_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("LALM_INTERP_CACHE", str(tmp_path / "env"))
    assert Store().root == tmp_path / "env"
    assert Store(tmp_path / "explicit").root == tmp_path / "explicit"
    monkeypatch.delenv("LALM_INTERP_CACHE")
    monkeypatch.chdir(tmp_path)
    assert Store().root == tmp_path / "cache"
