"""Scale-out executors: sharded tracing (local and Ray) equals the plain run exactly, survives an
injected failure and a killed worker without recomputing or duplicating shards, and sharded key
statistics equal the single-process ones. Ray tests use a local 2-CPU Ray instance."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from lalm_interp.evaluation.stats import key_stats_sharded
from lalm_interp.executors import FAULT_ENV, ExecutorError, LocalExecutor
from lalm_interp.specs import Corrupt, Experiment, Restore
from lalm_interp.tracing.run import prompts_from_bench, run_experiment

ROOT = Path(__file__).resolve().parents[2]
EXP = Experiment(
    "shards",
    corrupt=Corrupt(scale=3.0),
    restores=(
        Restore("audio.layers.*.mlp", window=3, positions=("first_subject_word",)),
        Restore("text.layers.*.resid", window=1, positions=("last_subject_word", "last_token")),
    ),
)
N = 4  # examples


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from lalm_interp.bench.builder import build
    from lalm_interp.bench.datasets import load_facts
    from lalm_interp.bench.store import Benchmark

    out = tmp_path_factory.mktemp("bench")
    build(load_facts("known1000", limit=N), out, renditions=1, forms=("prompt",), progress=False)
    b = Benchmark.open(out)
    prompts = prompts_from_bench(b)
    assert len(prompts) == N
    return out, prompts


@pytest.fixture(scope="module")
def reference(tiny_deep, bench, tmp_path_factory):
    """The plain in-process run (no executor): the ground truth."""
    model, processor, a = tiny_deep
    out = tmp_path_factory.mktemp("ref")
    agg = run_experiment(model, processor, a, bench[1], EXP, out, progress=False, plots=False)
    return out, agg


def example_files(out: Path) -> dict[str, xr.DataTree]:
    from lalm_interp.interventions.results import read_example

    return {p.name: read_example(p) for p in sorted((out / "examples").glob("*.nc"))}


RUN_ATTRS = ("run_key", "model")  # who ran it (a CLI run names the model and benchmark; the API reference does not)


def assert_same_run(out: Path, ref_out: Path, *, same_key: bool = True) -> None:
    """Every per-example file and the aggregate are identical (values, coords, attrs) to the reference;
    no temp files, no extra files. ``same_key=False``: ignore the run-key attrs."""
    got, want = example_files(out), example_files(ref_out)
    assert sorted(got) == sorted(want) and len(got) == N
    for name in want:
        if not same_key:
            for ds in (got[name], want[name]):
                ds.attrs.pop("run_key", None)
        xr.testing.assert_identical(got[name], want[name])
    assert not [p for p in (out / "examples").iterdir() if p.name.startswith(".")]
    a = xr.load_dataset(out / "aie.nc", engine="h5netcdf")
    b = xr.load_dataset(ref_out / "aie.nc", engine="h5netcdf")
    a.attrs.pop("n_traced_now"), b.attrs.pop("n_traced_now")
    if not same_key:
        for ds in (a, b):
            for k in RUN_ATTRS:
                ds.attrs.pop(k, None)
    xr.testing.assert_identical(a, b)


# ---------------------------------------------------------------------------- local (no Ray)
def test_default_path_never_imports_ray():
    code = ("import sys, lalm_interp.executors, lalm_interp.tracing.run, lalm_interp.apps.cli; "
            "lalm_interp.apps.cli.build_parser(); assert 'ray' not in sys.modules, 'ray imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-1500:]


def test_local_executor_shards_equal_plain_run_and_retry(tiny_deep, bench, reference, tmp_path, monkeypatch):
    model, processor, a = tiny_deep
    monkeypatch.setenv(FAULT_ENV, f"shard=1,after=1,mode=raise,marker={tmp_path / 'fault'}")
    agg = run_experiment(model, processor, a, bench[1], EXP, tmp_path / "out", progress=False, plots=False,
                         executor=LocalExecutor(retries=1), shard_size=2)
    assert (tmp_path / "fault").exists()  # the failure did happen, and the retry skipped its finished example
    assert agg.attrs["n_traced_now"] == N - 1
    assert_same_run(tmp_path / "out", reference[0])
    # without retries the injected failure propagates; completed examples stay (the run resumes)
    monkeypatch.setenv(FAULT_ENV, f"shard=0,after=1,mode=raise,marker={tmp_path / 'fault2'}")
    with pytest.raises(RuntimeError, match="injected failure in shard 0"):
        run_experiment(model, processor, a, bench[1], EXP, tmp_path / "out2", progress=False, plots=False,
                       executor=LocalExecutor(), shard_size=2)
    assert len(list((tmp_path / "out2" / "examples").glob("*.nc"))) == 1
    again = run_experiment(model, processor, a, bench[1], EXP, tmp_path / "out2", progress=False, plots=False,
                           executor=LocalExecutor(), shard_size=2)
    assert again.attrs["n_traced_now"] == N - 1
    assert_same_run(tmp_path / "out2", reference[0])


def stats_corpus(bench):
    from lalm_interp.editors import KeyCorpus

    rng = np.random.default_rng(0)
    clips = [p.audio for p in bench[1]] + [(0.05 * rng.standard_normal(16000 + 3000 * k)).astype(np.float32)
                                           for k in range(4)]
    return KeyCorpus("test-corpus:8", clips, batch_size=2, sample_rate=16000)


def single_process_stats(tiny_deep, corpus, site):
    from lalm_interp.editors import EditContext
    from lalm_interp.editors.keys import key_stats

    model, processor, a = tiny_deep
    return key_stats(EditContext(model, processor, a, corpus=corpus, fingerprint="fp"), site)


def assert_stats_close(got, want):
    assert got.count == want.count
    for attr in ("mean", "second_moment", "covariance"):
        g, w = getattr(got, attr), getattr(want, attr)
        assert np.abs(g - w).max() <= 1e-8 * np.abs(w).max(), attr


@pytest.mark.parametrize("site", ["text.layers.2.mlp.down", "audio.layers.1.mlp.down"])
def test_local_sharded_stats_equal_single_process(tiny_deep, bench, site, tmp_path):
    from lalm_interp.cache import Store

    corpus = stats_corpus(bench)
    want = single_process_stats(tiny_deep, corpus, site)
    store = Store(tmp_path / "cache")
    got = key_stats_sharded(LocalExecutor(state=tiny_deep), corpus, site, store=store, model="fp", chunk_batches=1)
    assert_stats_close(got, want)
    cached = store.key_stats(f"{site}@in", model="fp", corpus=corpus.id)  # where editors look
    assert_stats_close(cached, want)
    assert not (tmp_path / "cache" / "stats-partial").exists() or not any((tmp_path / "cache" / "stats-partial").rglob("*.h5"))


# ---------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_ex(ray_cluster):
    from lalm_interp.executors import RayExecutor

    ex = RayExecutor("tiny-random", workers=2, retries=2)
    try:
        yield ex.start()
    finally:
        ex.close()


def test_ray_sharded_run_equals_local_run(ray_ex, bench, reference, tmp_path):
    agg = run_experiment(None, None, None, bench[1], EXP, tmp_path, progress=False, plots=False,
                         executor=ray_ex, shard_size=1)
    assert agg.attrs["n_traced_now"] == N
    assert_same_run(tmp_path, reference[0])
    xr.testing.assert_identical(agg["aie"], reference[1]["aie"])
    # resume: a lost example is the only one traced again
    next((tmp_path / "examples").glob("*.nc")).unlink()
    again = run_experiment(None, None, None, bench[1], EXP, tmp_path, progress=False, plots=False,
                           executor=ray_ex, shard_size=1)
    assert again.attrs["n_traced_now"] == 1
    assert_same_run(tmp_path, reference[0])


@pytest.mark.parametrize("mode", ["raise", "exit"])
def test_ray_failed_or_killed_worker_still_completes(ray_ex, bench, reference, tmp_path, monkeypatch, mode):
    """``raise``: the shard's task fails once; ``exit``: the worker process dies mid-run (as when
    killed or pre-empted). Both: retried, identical results, the example finished before the failure
    is not traced again, no duplicate or temp files."""
    monkeypatch.setenv(FAULT_ENV, f"shard=1,after=1,mode={mode},marker={tmp_path / 'fault'}")
    retried = ray_ex.stats["retried"]
    pids = set(ray_ex.pids())
    agg = run_experiment(None, None, None, bench[1], EXP, tmp_path / "out", progress=False, plots=False,
                         executor=ray_ex, shard_size=2)
    assert (tmp_path / "fault").exists()
    assert ray_ex.stats["retried"] == retried + 1
    assert agg.attrs["n_traced_now"] == N - 1
    assert_same_run(tmp_path / "out", reference[0])
    if mode == "exit":
        dead = int((tmp_path / "fault").read_text())
        assert dead in pids and dead not in set(ray_ex.pids())  # that worker really died and was replaced


def test_ray_sharded_stats_equal_single_process(ray_ex, tiny_deep, bench, tmp_path, monkeypatch):
    from lalm_interp.cache import Store

    site = "text.layers.2.mlp.down"
    corpus = stats_corpus(bench)
    want = single_process_stats(tiny_deep, corpus, site)
    monkeypatch.setenv(FAULT_ENV, f"shard=2,after=0,mode=raise,marker={tmp_path / 'fault'}")
    got = key_stats_sharded(ray_ex, corpus, site, store=Store(tmp_path / "cache"), model="fp", chunk_batches=1)
    assert (tmp_path / "fault").exists()
    assert_stats_close(got, want)


def test_ray_spec_errors_are_not_retried(ray_ex, bench, tmp_path):
    from lalm_interp.specs import SpecError

    bad = Experiment("bad", restores=(Restore("text.layers.*.ffn", window=1, positions=("last_token",)),))
    attempts = ray_ex.stats["attempts"]
    with pytest.raises(SpecError, match="matches nothing"):
        run_experiment(None, None, None, bench[1], bad, tmp_path, progress=False, plots=False,
                       executor=ray_ex, shard_size=N)
    assert ray_ex.stats["attempts"] == attempts + 1


def test_cli_trace_run_on_ray(ray_ex, ray_cluster, bench, reference, tmp_path):
    """``trace run --executor ray --address`` joins the running cluster (this test's module
    executor is closed first: the 2-CPU cluster fits two workers at a time)."""
    ray_ex.close()
    spec = tmp_path / "spec.py"
    spec.write_text("from lalm_interp.specs import *\n"
                    f"EXPERIMENT = Experiment.from_json({EXP.to_json()!r})\n")
    r = subprocess.run(
        [sys.executable, "-m", "lalm_interp", "trace", "run", str(spec), "--model", "tiny-random",
         "--bench", str(bench[0]), "--out", str(tmp_path / "out"), "--no-progress",
         "--executor", "ray", "--workers", "2", "--address", ray_cluster.get_runtime_context().gcs_address],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout[r.stdout.rindex('{\n  "examples"'):])  # Ray may log lines before it
    assert summary["examples"] == N
    assert_same_run(tmp_path / "out", reference[0], same_key=False)


def test_bad_options_explain_themselves():
    from lalm_interp.executors import make_executor

    with pytest.raises(ExecutorError, match="expected 'local' or 'ray'"):
        make_executor("dask", model="x")
    with pytest.raises(ExecutorError, match="needs a model spec"):
        make_executor("ray")
