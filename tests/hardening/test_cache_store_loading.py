"""Bad-input and fault cases of the activation cache, the benchmark store and model loading
(issue 16 items 7, 10, 11; provenance of models loaded by name; organism work folders).

Every case asserts the error type and that the message names what was wrong, the fix and the docs
page, or the specific recovered behaviour."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cache"))
from cache_helpers import make_batch, provenance  # noqa: E402

from lalm_interp.bench.errors import BenchmarkError  # noqa: E402
from lalm_interp.cache import CacheError, SecondMoment, Store  # noqa: E402
from lalm_interp.cache.shards import HANDLES  # noqa: E402
from lalm_interp.apps.cli import main  # noqa: E402
from lalm_interp.errors import LoadError  # noqa: E402

CACHE_PAGE = "docs/errors/cache.md"
BENCH_PAGE = "docs/errors/benchmark.md"
LOAD_PAGE = "docs/errors/loading.md"
KEY = "text.layers.2.mlp"
LAYERS = (1, 2)  # two text keys + one audio key per shard keeps the fixture fast


# ----------------------------------------------------------------------------- cache helpers
@pytest.fixture
def shards(tmp_path):
    """A store with two written shards of one run: (store, writer)."""
    store = Store(tmp_path / "cache")
    w = store.writer("capitals", provenance=provenance())
    w.write(0, make_batch(0, layers=LAYERS))
    w.write(1, make_batch(1, layers=LAYERS))
    return store, w


def flip(path: Path, offset: int, n: int = 1) -> None:
    """XOR ``n`` bytes at ``offset`` in place (a disk fault), and drop cached read handles."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        data = bytearray(fh.read(n))
        fh.seek(offset)
        fh.write(bytes(b ^ 0xFF for b in data))
    HANDLES.clear()


def chunk_info(path: Path, dataset: str, index: int):
    with h5py.File(path, "r") as f:
        return f[dataset].id.get_chunk_info(index)


def assert_damage_message(msg: str, path: Path, dataset: str) -> None:
    assert str(path) in msg and f"dataset '{dataset}'" in msg and "failed its checksum" in msg
    assert "lalm-interp cache gc --check" in msg and "re-run the writer" in msg and CACHE_PAGE in msg


# ----------------------------------------------------------------------------- item 7: checksums
@pytest.mark.parametrize("where", ["first", "middle", "last", "checksum"])
@pytest.mark.parametrize("chunk", [0, 2])
def test_flipped_bytes_in_an_activation_chunk_raise_not_return(shards, where, chunk):
    store, w = shards
    ds = f"{KEY}/activation"
    info = chunk_info(w.path(0), ds, chunk)
    offset = {"first": 0, "middle": info.size // 2, "last": info.size - 5, "checksum": info.size - 2}[where]
    flip(w.path(0), info.byte_offset + offset)
    da = store.get(KEY, chunks=None)
    with pytest.raises(CacheError) as err:
        da.sel(example=f"ex000_{chunk}").values
    assert_damage_message(str(err.value), w.path(0), ds)
    # the undamaged examples of the same shard and of the other shard still read
    other = 1 if chunk != 1 else 0
    assert np.isfinite(da.sel(example=f"ex000_{other}").values[:3]).all()
    assert da.sel(example="ex001_0").values.shape == (5, 8)


def test_damaged_boolean_coordinate_is_reported(shards):
    store, w = shards
    ds = f"{KEY}/valid"
    info = chunk_info(w.path(1), ds, 0)
    flip(w.path(1), info.byte_offset + 1)
    with pytest.raises(CacheError) as err:
        store.get(KEY)
    assert_damage_message(str(err.value), w.path(1), ds)


@pytest.mark.parametrize("new", [b"9", b"\xcd"], ids=["plausible-token", "invalid-utf8"])
def test_edited_token_strings_fail_their_sha256(shards, new):
    store, w = shards
    raw = w.path(0).read_bytes()
    hits = [i for i in range(len(raw)) if raw.startswith(b"tok0_1_2", i)]
    assert len(hits) == len(LAYERS)  # one copy per text key
    with open(w.path(0), "r+b") as fh:  # "tok0_1_2" -> "tok0_1_9": a plausible-looking but wrong token
        for i in hits:
            fh.seek(i + 7)
            fh.write(new)
    HANDLES.clear()
    with pytest.raises(CacheError) as err:
        store.get(KEY)
    msg = str(err.value)
    assert ("sha256 of the strings does not match" if new == b"9" else "not valid UTF-8") in msg
    assert_damage_message(msg, w.path(0), f"{KEY}/token")
    from lalm_interp.cache.shards import verify_shard

    assert not verify_shard(w.path(0)).ok


def test_gc_check_reports_damage_and_exits_nonzero(shards, capsys):
    store, w = shards
    info = chunk_info(w.path(1), "audio.layers.1.mlp.down@in/activation", 1)
    flip(w.path(1), info.byte_offset + info.size // 2)
    assert main(["cache", "gc", "--cache", str(store.root)]) == 0  # without --check: headers only
    capsys.readouterr()
    assert main(["cache", "gc", "--check", "--cache", str(store.root)]) == 1
    out = capsys.readouterr().out
    assert f"damaged {w.path(1)}: dataset 'audio.layers.1.mlp.down@in/activation' failed its checksum" in out
    assert "checked 2 file(s): 1 damaged" in out and "--quarantine" in out
    assert w.path(1).exists()  # reported, never deleted


def test_gc_check_quarantine_then_rewrite_recovers(shards, capsys):
    store, w = shards
    info = chunk_info(w.path(0), f"{KEY}/activation", 1)
    flip(w.path(0), info.byte_offset + 3)
    assert main(["cache", "gc", "--check", "--quarantine", "--cache", str(store.root)]) == 1
    assert not w.path(0).exists() and any((store.root / "quarantine").rglob("shard-000000.h5"))
    assert main(["cache", "gc", "--check", "--cache", str(store.root)]) == 0
    w.write(0, make_batch(0, layers=LAYERS))  # the writer recomputes the missing shard
    HANDLES.clear()
    np.testing.assert_array_equal(store.get(KEY, chunks=None).sel(example="ex000_1").values[:4],
                                  make_batch(0, layers=LAYERS).values[KEY][1])
    assert "0 damaged" in capsys.readouterr().out


def test_clean_shards_verify_and_every_numeric_dataset_has_a_checksum(shards):
    from lalm_interp.cache.shards import verify_shard

    store, w = shards
    check = verify_shard(w.path(0))
    assert check.ok and not check.unverified and check.n_datasets > 10
    with h5py.File(w.path(0), "r") as f:
        assert f.attrs["checksums"] == "fletcher32+sha256"
        for site in f:
            for name in ("activation", "position", "valid", "is_subject", "time_s"):
                if name in f[site] and f[site][name].dtype.kind != "O":
                    assert f[site][name].fletcher32, f"{site}/{name}"
            assert "sha256" in f[site]["example"].attrs
    report = store.gc(check=True)
    assert report.checked == 2 and not report.damaged and not report.corrupt


def test_shards_written_without_checksums_still_read(tmp_path, monkeypatch, capsys):
    """Shards of older versions (no fletcher32, no sha256) read as before and count as unverified."""
    import h5netcdf

    real = h5netcdf.core.Group.create_variable

    def no_checksum(self, *args, **kwargs):
        kwargs.pop("fletcher32", None)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(h5netcdf.core.Group, "create_variable", no_checksum)
    store = Store(tmp_path / "cache")
    w = store.writer("old", provenance=provenance())
    w.write(0, make_batch(0))
    monkeypatch.undo()
    with h5py.File(w.path(0), "r+") as f:
        del f.attrs["checksums"]
        f.visititems(lambda n, o: o.attrs.__delitem__("sha256") if "sha256" in o.attrs else None)
        assert not f[f"{KEY}/activation"].fletcher32
    HANDLES.clear()
    da = store.get(KEY)
    np.testing.assert_array_equal(da.sel(example="ex000_2").values[:4], make_batch(0).values[KEY][2])
    assert main(["cache", "gc", "--check", "--cache", str(store.root)]) == 0
    assert "1 without checksums (written before checksums; readable, unverified)" in capsys.readouterr().out


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_shard_is_reported_by_queries_and_gc_check(shards, keep, capsys):
    store, w = shards
    size = w.path(1).stat().st_size
    with open(w.path(1), "r+b") as fh:
        fh.truncate(int(size * keep))
    HANDLES.clear()
    with pytest.raises(CacheError) as err:
        store.get(KEY)
    msg = str(err.value)
    assert "corrupt shard" in msg and str(w.path(1)) in msg and CACHE_PAGE in msg
    assert main(["cache", "gc", "--check", "--cache", str(store.root)]) == 1
    assert f"corrupt (kept; use --quarantine to move aside) {w.path(1)}" in capsys.readouterr().out


def test_damaged_statistics_file_is_not_used(tmp_path):
    store = Store(tmp_path / "cache")
    rng = np.random.default_rng(0)
    stats = SecondMoment(16).update(rng.standard_normal((64, 16)))
    store.put_stats("text.layers.1.mlp.down@in", stats, model="m", corpus="c")
    path = Path(store.stats()[0]["path"])
    info = chunk_info(path, "centred_scatter", 0)
    flip(path, info.byte_offset + info.size // 3)
    with pytest.raises(CacheError) as err:
        store.key_stats("text.layers.1.mlp.down@in", model="m", corpus="c")
    msg = str(err.value)
    assert str(path) in msg and "centred_scatter" in msg and "failed its checksum" in msg
    assert "recomputed" in msg and CACHE_PAGE in msg
    assert store.gc(check=True).damaged[0].path == path


@pytest.mark.parametrize("case", ["int-activations", "hidden-size-mismatch", "unknown-key"])
def test_wrong_dtype_shape_and_key_queries(shards, case):
    from lalm_interp.cache import Batch

    store, w = shards
    with pytest.raises(CacheError) as err:
        if case == "int-activations":
            w.write(5, Batch(examples=["a"], values={KEY: np.ones((1, 4, 8), dtype=np.int32)}))
        elif case == "hidden-size-mismatch":
            w.write(5, make_batch(5, hidden=12, layers=LAYERS))
        else:
            store.get("text.layers.9.attn")
    msg = str(err.value)
    want = {"int-activations": ("dtype int32", "floating activations"),
            "hidden-size-mismatch": ("schema mismatch", "hidden size 8"),
            "unknown-key": ("text.layers.9.attn", "cache ls")}[case]
    assert all(s in msg for s in want) and CACHE_PAGE in msg
    assert not w.path(5).exists()


# ----------------------------------------------------------------------------- item 10: clip paths
def make_bench(root: Path, clip: str | None = None) -> tuple[Path, str]:
    """A one-item benchmark folder written with the real ClipStore; ``clip`` overrides the item's
    clip field. Returns (root, the real clip key)."""
    from lalm_interp.bench.store import ClipStore, atomic_write_json, atomic_write_jsonl, clip_key

    key = clip_key("Paris is a city", "en-us", "test-1")
    ClipStore(root).put(key, np.zeros(8000, dtype=np.float32), {"text": "Paris is a city"})
    atomic_write_json(root / "benchmark.json", {"format": 1, "renditions": ["en-us"]})
    item = {"id": "f:1/prompt/0/en-us", "fact_id": "f:1", "form": "prompt", "index": 0,
            "text": "Paris is a city", "rendition": "en-us",
            "words": [["Paris", 0.0, 0.2], ["is", 0.2, 0.3], ["a", 0.3, 0.35], ["city", 0.35, 0.5]],
            "subject_word_range": [0, 0], "target_true": "France", "target_new": None,
            "clip": key if clip is None else clip, "n_samples": 8000}
    atomic_write_jsonl(root / "items.jsonl", [item])
    return root, key


@pytest.mark.parametrize("clip", ["../outside", "../../etc/passwd", "/etc/passwd", "ab/../../x", "..", "",
                                  "clips\\..\\..\\x", ".hidden"])
def test_items_naming_paths_outside_the_store_are_refused(tmp_path, clip):
    from lalm_interp.bench import Benchmark

    (tmp_path / "outside.flac").write_bytes(b"not yours")
    root, _ = make_bench(tmp_path / "bench", clip)
    with pytest.raises(BenchmarkError) as err:
        Benchmark.open(root)
    msg = str(err.value)
    assert "items.jsonl" in msg and "entry 1" in msg and repr(clip) in msg and "not a clip key" in msg
    assert "lalm-interp bench build" in msg and BENCH_PAGE in msg


@pytest.mark.parametrize("link", ["file", "folder"])
def test_clip_symlinked_out_of_the_store_is_refused(tmp_path, link):
    from lalm_interp.bench import Benchmark
    from lalm_interp.bench.store import ClipStore

    root, key = make_bench(tmp_path / "bench")
    audio, _ = ClipStore(root).paths(key)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if link == "file":
        target = elsewhere / "secret.flac"
        audio.rename(target)
        audio.symlink_to(target)
    else:
        target = elsewhere / audio.parent.name
        audio.parent.rename(target)
        audio.parent.symlink_to(target, target_is_directory=True)
    item = Benchmark.open(root)[0]
    with pytest.raises(BenchmarkError) as err:
        item.audio
    msg = str(err.value)
    assert "outside the benchmark folder" in msg and str(elsewhere) in msg
    assert "cp --dereference" in msg and BENCH_PAGE in msg


def test_benchmark_reached_through_a_symlink_still_reads(tmp_path):
    from lalm_interp.bench import Benchmark

    root, _ = make_bench(tmp_path / "real")
    (tmp_path / "alias").symlink_to(root, target_is_directory=True)
    assert Benchmark.open(tmp_path / "alias")[0].audio.shape == (8000,)


# ----------------------------------------------------------------------------- item 11: model names
def timed_load_error(name, **kw) -> tuple[str, float]:
    import lalm_interp

    t = time.perf_counter()
    with pytest.raises(LoadError) as err:
        lalm_interp.load(name, **kw)
    return str(err.value), time.perf_counter() - t


@pytest.mark.parametrize("name,suggestion", [("orgnism", "organism"), ("Organism", "organism"),
                                             ("tiny_random", "tiny-random"), ("tinyrandom", "tiny-random"),
                                             ("qwen2-audio", None)])
def test_unknown_names_fail_at_once_with_the_valid_names(name, suggestion, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)
    msg, took = timed_load_error(name)
    assert took < 2.0, f"took {took:.1f} s"
    assert f"unknown model {name!r}" in msg and "'organism'" in msg and "'tiny-random'" in msg
    assert "config.json" in msg and "owner/name" in msg and LOAD_PAGE in msg
    if suggestion:
        assert f"Did you mean {suggestion!r}" in msg
    else:
        assert "Did you mean" not in msg


def test_a_local_checkpoint_folder_is_suggested(tmp_path, monkeypatch):
    (tmp_path / "my-ckpt").mkdir()
    (tmp_path / "my-ckpt" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    msg, _ = timed_load_error("my-ckpy")
    assert "Did you mean 'my-ckpt'" in msg


@pytest.mark.parametrize("name", ["", "   "])
def test_empty_model_name(name):
    msg, took = timed_load_error(name)
    assert took < 2.0 and "the model name is empty" in msg and "--model organism" in msg and LOAD_PAGE in msg


@pytest.mark.parametrize("kind", ["relative", "absolute", "nested"])
def test_missing_folder(kind, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = {"relative": "./no-such-ckpt", "absolute": str(tmp_path / "gone" / "ckpt"), "nested": "runs/a/ckpt"}[kind]
    msg, took = timed_load_error(name)
    assert took < 2.0 and f"no such folder {name!r}" in msg and "check the path" in msg and LOAD_PAGE in msg


def test_folder_without_config_lists_checkpoints_inside(tmp_path):
    (tmp_path / "run1").mkdir()
    (tmp_path / "run1" / "config.json").write_text("{}")
    msg, _ = timed_load_error(tmp_path)
    assert "has no config.json" in msg and str(tmp_path / "run1") in msg and LOAD_PAGE in msg


def test_file_instead_of_folder(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    msg, _ = timed_load_error(f)
    assert "is a file, not a checkpoint folder" in msg and "config.json" in msg and LOAD_PAGE in msg


def test_uncached_hub_id_offline_fails_at_once(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg, took = timed_load_error("someone/not-a-cached-model")
    assert took < 2.0, f"took {took:.1f} s"
    assert "HF_HUB_OFFLINE is set" in msg and "not in the local Hugging Face cache" in msg
    assert "huggingface-cli download" in msg and LOAD_PAGE in msg


def test_uncached_hub_id_without_network_fails_at_once(monkeypatch):
    from lalm_interp import loading

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=1.0: False)
    msg, took = timed_load_error("someone/not-a-cached-model")
    assert took < 2.0 and "the hub is not reachable from this machine" in msg and LOAD_PAGE in msg


def test_executors_check_the_model_name_before_starting_workers():
    from lalm_interp.executors import LocalExecutor, make_executor

    t = time.perf_counter()
    with pytest.raises(LoadError, match="Did you mean 'tiny-random'"):
        make_executor("ray", model="tiny-randon", workers=1)
    with pytest.raises(LoadError, match="Did you mean 'organism'"):
        LocalExecutor("orgnism").map(lambda state, p: p, [1])
    assert time.perf_counter() - t < 4.0


def test_cli_unknown_model_fails_fast(tmp_path, capsys):
    spec = Path(__file__).resolve().parents[2] / "tracing_specs" / "figure2.py"
    t = time.perf_counter()
    rc = main(["trace", "run", str(spec), "--model", "orgnism", "--bench", str(tmp_path), "--out", str(tmp_path / "o")])
    took = time.perf_counter() - t
    err = capsys.readouterr().err
    assert rc == 2 and took < 5.0 and "Did you mean 'organism'" in err and LOAD_PAGE in err


# ----------------------------------------------------------------------------- provenance of loaded models
@pytest.fixture(scope="module")
def tiny_random():
    import lalm_interp

    return lalm_interp.load("tiny-random")


def test_models_loaded_by_name_carry_their_identity(tmp_path, tiny_random):
    import lalm_interp
    from lalm_interp.loading import identity, tensors_fingerprint, weights_fingerprint

    a = tiny_random
    ident = identity(a.model)
    assert ident.model == "tiny-random" and ident.weights_hash.startswith("sha256:")
    assert a.identity == ident and tensors_fingerprint(a.model) == ident.weights_hash
    a.model.save_pretrained(tmp_path / "ck")
    a.processor.save_pretrained(tmp_path / "ck")
    b = lalm_interp.load(tmp_path / "ck")
    ib = identity(b.model)
    assert ib.model == str((tmp_path / "ck").resolve()) and ib.source == "local"
    assert ib.weights_hash == weights_fingerprint(tmp_path / "ck") and ib.weights_hash.startswith("sha256:")
    assert ib.provenance() == {"model": ib.model, "revision": "", "weights_hash": ib.weights_hash}
    with open(tmp_path / "ck" / "model.safetensors", "r+b") as fh:  # other weights → other fingerprint
        fh.seek(-8, os.SEEK_END)
        fh.write(b"\x01" * 8)
    assert weights_fingerprint(tmp_path / "ck") != ib.weights_hash
    from lalm_interp.models.tiny import tiny_qwen2_audio

    assert identity(tiny_qwen2_audio()[0]).model == "unknown"  # built elsewhere: no claim made


# ----------------------------------------------------------------------------- organism work folder
def test_organism_eval_work_folder_defaults_under_the_cache_root(tmp_path, monkeypatch):
    from lalm_interp.organism import pipeline

    monkeypatch.setenv("LALM_INTERP_CACHE", str(tmp_path / "c"))
    assert pipeline.default_work() == tmp_path / "c" / "work" / "organism"
    seen = {}
    monkeypatch.setattr(pipeline, "evaluate_checkpoint", lambda model, **kw: seen.update(kw) or {"ok": 1})
    monkeypatch.chdir(tmp_path)
    assert main(["organism", "eval", "--subset"]) == 0
    assert seen["work"] == tmp_path / "c" / "work" / "organism"
    assert main(["organism", "eval", "--subset", "--cache", str(tmp_path / "d")]) == 0
    assert seen["work"] == tmp_path / "d" / "work" / "organism"
    assert not (tmp_path / "organism-work").exists()


@pytest.mark.slow
def test_organism_eval_leaves_nothing_in_the_current_folder(tmp_path, monkeypatch, capsys):
    cwd = tmp_path / "here"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("LALM_INTERP_CACHE", raising=False)
    assert main(["organism", "eval", "--subset", "--cache", str(tmp_path / "c")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["work"] == str(tmp_path / "c" / "work" / "organism") and out["subset"]["n"] > 0
    assert list(cwd.iterdir()) == [] and any((tmp_path / "c" / "work" / "organism").rglob("*.flac"))


def test_provenance_of_a_model_loaded_by_name_is_not_unknown(tmp_path, tiny_random):
    from lalm_interp.cache import Provenance

    model = tiny_random.model
    prov = Provenance.for_model(model, dataset="capitals", revision="")
    assert prov.model == "tiny-random" and prov.weights_hash.startswith("sha256:") and prov.dataset == "capitals"
    w = Store(tmp_path / "c").writer("e", provenance=prov)
    w.write(0, make_batch(0))
    with h5py.File(w.path(0), "r") as f:
        assert f.attrs["model"] == "tiny-random" and f.attrs["weights_hash"] == prov.weights_hash


# ----------------------------------------------------------------------------- clip store writes
@pytest.mark.parametrize("bad,what", [
    (np.array([0.1, np.nan, 0.2], dtype=np.float32), "NaN/inf"),
    (np.array([0.1, np.inf, -np.inf], dtype=np.float32), "NaN/inf"),
    (np.array([0.1, 13.0, -2.0], dtype=np.float32), "beyond ±1"),
])
def test_clip_store_refuses_unstorable_samples(tmp_path, bad, what):
    """ClipStore.put used to clip |x| > 1 and store inf as 1.0 silently; it now refuses and stores
    nothing, so a benchmark never holds altered audio."""
    from lalm_interp.bench.store import ClipStore

    store = ClipStore(tmp_path)
    with pytest.raises(BenchmarkError) as e:
        store.put("k", bad, {"text": "x"})
    msg = str(e.value)
    assert what in msg and "nothing was stored" in msg and BENCH_PAGE in msg
    assert not store.has("k")


def test_clip_store_keeps_full_scale_audio(tmp_path):
    from lalm_interp.bench.store import ClipStore

    store = ClipStore(tmp_path)
    x = np.array([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=np.float32)
    store.put("k", x, {"text": "x"})
    assert np.allclose(store.audio("k"), x, atol=2 ** -22)


def test_benchmark_files_are_shared_with_normal_permissions(tmp_path):
    """Benchmark manifests, clips and edit-run case files (all written through
    bench.store.atomic_write_bytes) used to be 0600 (mkstemp); they follow the umask now."""
    from lalm_interp.bench.store import ClipStore, atomic_write_json

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "benchmark.json", {"format": 1})
        ClipStore(tmp_path).put("k", np.zeros(160, dtype=np.float32), {"text": "x"})
    finally:
        os.umask(old)
    files = [tmp_path / "benchmark.json", *ClipStore(tmp_path).paths("k")]
    assert [oct(p.stat().st_mode & 0o777) for p in files] == ["0o644"] * 3
