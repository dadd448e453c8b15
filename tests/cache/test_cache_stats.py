"""Streaming second moments vs batch NumPy; merge; null-space projector; cached key statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from lalm_interp.cache import CacheError, SecondMoment, Store, model_fingerprint, nullspace_projector


def _rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def _keys(n=500, d=12, seed=0, offset=3.0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + offset


def test_streaming_equals_batch_numpy():
    k = _keys()
    acc = SecondMoment()
    for chunk in np.array_split(k, [1, 7, 100, 333]):
        acc.update(chunk)
    assert acc.count == 500 and acc.dim == 12
    assert _rel(acc.mean, k.mean(0)) < 1e-8
    assert _rel(acc.covariance, np.cov(k, rowvar=False)) < 1e-8
    assert _rel(acc.covariance_ddof(0), np.cov(k, rowvar=False, bias=True)) < 1e-8
    assert _rel(acc.second_moment, k.T @ k / len(k)) < 1e-8
    assert _rel(acc.sum_outer, k.T @ k) < 1e-8


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 60),
    d=st.integers(1, 6),
    cuts=st.lists(st.integers(0, 60), max_size=5),
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
)
def test_any_split_merged_equals_whole(n, d, cuts, seed, scale):
    k = np.random.default_rng(seed).standard_normal((n, d)) * scale + scale
    parts = np.split(k, sorted(c for c in cuts if c < n))
    accs = [SecondMoment().update(p) for p in parts]
    merged = SecondMoment()
    for a in accs:
        merged.merge(a)
    whole = SecondMoment().update(k)
    assert merged.count == n
    assert _rel(merged.second_moment, whole.second_moment) < 1e-8
    assert _rel(merged.covariance, np.cov(k, rowvar=False).reshape(d, d)) < 1e-8


def test_merge_of_two_halves_and_add():
    k = _keys(seed=1)
    a, b = SecondMoment().update(k[:200]), SecondMoment().update(k[200:])
    both = a + b
    assert _rel(both.covariance, np.cov(k, rowvar=False)) < 1e-8
    assert a.count == 200  # + does not mutate
    assert _rel(a.merge(b).second_moment, k.T @ k / len(k)) < 1e-8


def test_torch_bfloat16_and_3d_inputs_and_errors():
    x = torch.randn(4, 5, 6, dtype=torch.bfloat16)
    acc = SecondMoment().update(x)
    ref = x.float().reshape(-1, 6).double().numpy()
    assert acc.count == 20 and _rel(acc.second_moment, ref.T @ ref / 20) < 1e-12
    with pytest.raises(CacheError, match="dimension 6"):
        acc.update(np.zeros((2, 7)))
    with pytest.raises(CacheError, match="at least 2"):
        SecondMoment().update(np.zeros((1, 3))).covariance
    with pytest.raises(CacheError, match="update"):
        SecondMoment().mean


def test_nullspace_projector_annihilates_preserved_keys():
    rng = np.random.default_rng(0)
    d, r = 16, 5
    basis = rng.standard_normal((d, r))
    k0 = (basis @ rng.standard_normal((r, 400))).T  # keys spanning an r-dim subspace
    acc = SecondMoment().update(k0)
    p = nullspace_projector(acc, threshold=1e-2)
    assert np.allclose(p, p.T, atol=1e-12)
    assert np.allclose(p @ p, p, atol=1e-10)
    assert np.linalg.matrix_rank(p) == d - r
    assert np.abs(p @ k0.T).max() < 1e-8 * np.abs(k0).max()
    # an update direction projected by P leaves preserved keys untouched
    delta = rng.standard_normal((3, d)) @ p
    assert np.abs(delta @ k0.T).max() < 1e-8 * np.abs(k0).max()
    # relative threshold and torch in/out
    pt = nullspace_projector(torch.from_numpy(acc.second_moment), threshold=1e-8, relative=True)
    assert isinstance(pt, torch.Tensor) and pt.dtype == torch.float64
    np.testing.assert_allclose(pt.numpy(), p, atol=1e-10)
    # nothing below threshold: P = 0; everything below: P = I
    assert np.allclose(nullspace_projector(np.eye(4), 0.5), 0)
    assert np.allclose(nullspace_projector(np.eye(4), 2.0), np.eye(4))


def test_key_stats_computed_once_then_loaded(tmp_path):
    store = Store(tmp_path)
    k = _keys(seed=3)
    calls = []

    def compute():
        calls.append(1)
        yield from np.array_split(k, 5)

    model = model_fingerprint("tiny/qwen2-audio", "r1", "sha256:abc")
    assert model == "tiny/qwen2-audio@r1#sha256:abc"
    site = "text.layers.8.mlp.down@in"
    first = store.key_stats(site, model=model, corpus="wiki:500", compute=compute)
    again = store.key_stats(site, model=model, corpus="wiki:500", compute=compute)
    assert len(calls) == 1
    np.testing.assert_array_equal(again.second_moment, first.second_moment)  # float64 bit-exact
    assert again.count == 500 and again.second_moment.dtype == np.float64
    store.key_stats(site, model=model, corpus="wiki:1000", compute=compute)
    store.key_stats("audio.layers.28.mlp.down@in", model=model, corpus="wiki:500", compute=compute)
    assert len(calls) == 3
    listed = store.stats()
    assert {(s["site"], s["corpus"]) for s in listed} == {
        (site, "wiki:500"), (site, "wiki:1000"), ("audio.layers.28.mlp.down@in", "wiki:500")
    }
    with pytest.raises(CacheError, match="no compute"):
        store.key_stats(site, model="other", corpus="wiki:500")
    with pytest.raises(CacheError, match="pattern"):
        store.key_stats("text.layers.*.mlp.down@in", model=model, corpus="c", compute=compute)
    # plain xarray opens a stats file
    (path,) = [s["path"] for s in listed if s["corpus"] == "wiki:1000"]
    ds = xr.open_dataset(path, engine="h5netcdf")
    assert ds["centred_scatter"].dims == ("hidden", "hidden_t") and int(ds["count"]) == 500


def test_put_stats_merges_shards_and_recompute(tmp_path):
    store = Store(tmp_path)
    k = _keys(seed=4)
    merged = SecondMoment().update(k[:100]).merge(SecondMoment().update(k[100:]))
    store.put_stats("text.layers.2.mlp.down@in", merged, model="m", corpus="c")
    got = store.key_stats("text.layers.2.mlp.down@in", model="m", corpus="c")
    assert _rel(got.covariance, np.cov(k, rowvar=False)) < 1e-8
    fresh = store.key_stats("text.layers.2.mlp.down@in", model="m", corpus="c", compute=lambda: [k[:10]], recompute=True)
    assert fresh.count == 10
    assert store.key_stats("text.layers.2.mlp.down@in", model="m", corpus="c").count == 10


def test_corrupt_stats_file_is_a_clear_error(tmp_path):
    store = Store(tmp_path)
    store.key_stats("text.layers.1.mlp.down@in", model="m", corpus="c", compute=lambda: [_keys(20, 3)])
    (path,) = (tmp_path / "stats").rglob("*.h5")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CacheError, match="cannot be read.*recompute"):
        store.key_stats("text.layers.1.mlp.down@in", model="m", corpus="c")
