"""Resumable tracing runs over a real (espeak-ng) spoken benchmark, plots, the CLI and Read → cache."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from lalm_interp.specs import Corrupt, Experiment, Read, Restore, SpecError
from lalm_interp.tracing.run import prompts_from_bench, run_experiment

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from lalm_interp.bench.builder import build
    from lalm_interp.bench.datasets import load_facts
    from lalm_interp.bench.store import Benchmark

    out = tmp_path_factory.mktemp("bench")
    build(load_facts("known1000", limit=2), out, renditions=1, forms=("prompt",), progress=False)
    return out, Benchmark.open(out)


EXP = Experiment(
    "small",
    corrupt=Corrupt(scale=3.0),
    restores=(
        Restore("audio.layers.*.mlp", window=3, positions=("first_subject_word", "last_word")),
        Restore("text.layers.*.resid", window=1, positions=("last_subject_word", "last_token")),
        Restore("audio.layers.4:6.resid", window=1, positions="each", name="audio.resid.each"),
    ),
)


def test_run_resumes_and_plots(tiny_deep, bench, tmp_path):
    model, processor, a = tiny_deep
    bdir, b = bench
    prompts = prompts_from_bench(b)
    assert len(prompts) == 2
    agg = run_experiment(model, processor, a, prompts, EXP, tmp_path, progress=False)
    assert agg.attrs["n_traced_now"] == 2
    shards = sorted((tmp_path / "examples").glob("*.nc"))
    assert len(shards) == 2
    assert (tmp_path / "figure2.png").stat().st_size > 10_000
    assert (tmp_path / "heatmap_audio.resid.each.png").exists()
    assert set(agg["family"].values) == {"audio.mlp", "text.resid", "audio.resid.each"}
    # the each-mode family is not in the curves; the span-mode ones are finite on their streams' layers
    assert np.isfinite(agg["aie"].sel(family="audio.mlp", span="first_subject_word").values).all()
    assert np.isnan(agg["aie"].sel(family="audio.mlp", span="last_token").values).all()
    # interrupt: drop one shard, rerun → only that one is traced again, result identical
    shards[0].unlink()
    again = run_experiment(model, processor, a, prompts, EXP, tmp_path, progress=False, plots=False)
    assert again.attrs["n_traced_now"] == 1
    xr.testing.assert_allclose(again["aie"], agg["aie"])
    # a result file opens with plain xarray
    reopened = xr.open_dataset(tmp_path / "aie.nc", engine="h5netcdf")
    assert reopened["ie"].dims == ("example", "family", "span", "layer")
    # a different spec in the same folder is refused, nothing overwritten
    before = (tmp_path / "experiment.json").read_text()
    with pytest.raises(SpecError, match="different experiment"):
        run_experiment(model, processor, a, prompts, Experiment("other", restores=EXP.restores[:1]), tmp_path,
                       progress=False)
    assert (tmp_path / "experiment.json").read_text() == before


def test_reads_go_to_the_cache(tiny_deep, bench, tmp_path):
    from lalm_interp.cache import Store

    model, processor, a = tiny_deep
    _, b = bench
    exp = Experiment("reads", restores=(Restore("text.layers.*.mlp", window=1, positions=("last_token",)),),
                     reads=(Read("text.layers.2:4.mlp.down@in", runs=("clean", "corrupt")), Read("audio.conv2")))
    store = Store(tmp_path / "cache")
    run_experiment(model, processor, a, prompts_from_bench(b), exp, tmp_path / "out", store=store, progress=False,
                   plots=False, provenance={"model": "tiny-random", "dataset": "known1000-2"})
    da = store.get("text.layers.2:4.mlp.down@in", run="corrupt")
    assert da.sizes["example"] == 2 and da.sizes["layer"] == 2 and da.sizes["hidden"] == a.width("text.layers.2.mlp.down@in")
    conv = store.get("audio.conv2", run="clean")
    assert conv.sizes["hidden"] == a.width("audio.conv2")
    with pytest.raises(Exception):  # Read("audio.conv2") asked for the clean run only
        store.get("audio.conv2", run="corrupt")
    assert "time_s" in conv.coords or any("time" in str(c) for c in conv.coords)


def test_cli_trace_run(bench, tmp_path):
    bdir, _ = bench
    out = tmp_path / "cli"
    r = subprocess.run(
        [sys.executable, "-m", "lalm_interp", "trace", "run", str(ROOT / "tracing_specs" / "mlp_text.py"),
         "--model", "tiny-random", "--bench", str(bdir), "--out", str(out), "--limit", "1", "--max-window", "3",
         "--no-progress"],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout)
    assert summary["examples"] == 1 and "text.mlp/last_token" in summary["peak_layer"]
    assert (out / "aie.nc").exists() and (out / "figure2.pdf").exists()
    # the spec's window=10 on the 6-layer model, without --max-window: clipped with a note (ROME's rule)
    clipped = subprocess.run(
        [sys.executable, "-m", "lalm_interp", "trace", "run", str(ROOT / "tracing_specs" / "mlp_text.py"),
         "--model", "tiny-random", "--bench", str(bdir), "--out", str(tmp_path / "clipped"), "--limit", "1",
         "--no-progress"],
        capture_output=True, text=True,
    )
    assert clipped.returncode == 0, clipped.stderr[-2000:]
    assert "window=10 is longer than the 6 text layers" in clipped.stderr and "clipped" in clipped.stderr
    assert json.loads(clipped.stdout)["window_used"] == {"text.mlp": 6}


def test_every_shipped_spec_loads_and_validates(tiny_deep):
    from dataclasses import replace

    from lalm_interp.specs import experiment_from_file

    _, _, a = tiny_deep
    files = sorted((ROOT / "tracing_specs").glob("*.py"))
    assert len(files) >= 9
    for f in files:
        exp = experiment_from_file(f)
        capped = replace(exp, restores=tuple(replace(r, window=min(r.window, 3)) for r in exp.restores))
        capped.validate(a)
        assert Experiment.from_json(exp.to_json()) == exp
