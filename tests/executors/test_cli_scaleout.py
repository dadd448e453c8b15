"""The scale-out commands end to end on the organism: ``stats run`` caches the key statistics a
later ``edit run`` reads without recomputing them (locally; on 2 Ray workers equal to 1e-8), and
``edit run --executor ray`` through the CLI writes the same result as the in-process command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lalm_interp.apps.cli import main

SITE = "text.layers.4"
CORPUS_N = "24"  # 3 batches of 8 clips: 3 statistics chunks on 2 workers


def run_cli(args: list[str], ray_cluster) -> str:
    """``lalm-interp ARGS --executor ray --workers 2 --address <the test cluster>`` in a subprocess."""
    address = ray_cluster.get_runtime_context().gcs_address
    r = subprocess.run([sys.executable, "-m", "lalm_interp", *args, "--executor", "ray", "--workers", "2",
                        "--address", address], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def stats_json(stdout: str) -> dict:
    return json.loads(stdout[stdout.index('{\n  "model"'):])  # Ray may log lines before it


@pytest.fixture(scope="module")
def local_stats(organism_bench, tmp_path_factory):
    """``stats run`` in this process; returns (cache dir, its JSON summary)."""
    import torch

    cache = tmp_path_factory.mktemp("cache")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = _main_json(["stats", "run", "--model", "organism", "--site", SITE, "--bench", str(organism_bench),
                          "--cache", str(cache), "--corpus-n", CORPUS_N, "--quiet"])
    finally:
        torch.set_num_threads(n)
    return cache, out


def _main_json(argv: list[str]) -> dict:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    return json.loads(buf.getvalue())


def test_stats_run_caches_what_edit_run_reads(local_stats, organism_bench, tmp_path, monkeypatch):
    cache, out = local_stats
    (row,) = out["stats"]
    assert row["site"] == "text.layers.4.mlp.down@in" and row["dim"] == 128 and row["keys"] > 0
    assert not row["cached_already"] and Path(row["path"]).is_file()
    mtime = Path(row["path"]).stat().st_mtime_ns

    def no_recompute(*a, **k):
        raise AssertionError("edit run collected corpus keys: it did not find the cached statistics")

    monkeypatch.setattr("lalm_interp.editors.keys.corpus_keys", no_recompute)
    assert main(["edit", "run", "--model", "organism", "--bench", str(organism_bench), "--method", "rome",
                 "--site", SITE, "--out", str(tmp_path / "run"), "--cache", str(cache), "--corpus-n", CORPUS_N,
                 "--limit", "1", "--hparam", "steps=3", "--threads", "1", "--quiet"]) == 0
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert res["meta"]["corpus"] == out["corpus"] and res["meta"]["fingerprint"] == out["fingerprint"]
    assert res["edits"][0]["changes"][0]["delta_fro"] > 0
    assert Path(row["path"]).stat().st_mtime_ns == mtime
    again = _main_json(["stats", "run", "--model", "organism", "--site", SITE, "--bench", str(organism_bench),
                        "--cache", str(cache), "--corpus-n", CORPUS_N, "--quiet"])
    assert again["stats"][0]["cached_already"] and Path(row["path"]).stat().st_mtime_ns == mtime


def test_stats_run_on_ray_equals_local(local_stats, organism_bench, ray_cluster, tmp_path):
    from lalm_interp.cache import SecondMoment

    cache, out = local_stats
    corpus = next(cache.glob("protected_corpus-*"))  # the same clips, not synthesised again
    got = stats_json(run_cli(["stats", "run", "--model", "organism", "--site", SITE, "--bench", str(organism_bench),
                              "--cache", str(tmp_path / "cache"), "--corpus", str(corpus), "--corpus-n", CORPUS_N,
                              "--quiet"], ray_cluster))
    assert (got["corpus"], got["fingerprint"]) == (out["corpus"], out["fingerprint"])
    a, b = SecondMoment.load(got["stats"][0]["path"]), SecondMoment.load(out["stats"][0]["path"])
    assert a.count == b.count
    for attr in ("mean", "second_moment", "covariance"):
        g, w = getattr(a, attr), getattr(b, attr)
        assert np.abs(g - w).max() <= 1e-8 * np.abs(w).max(), attr
    assert not any((tmp_path / "cache" / "stats-partial").rglob("*.h5"))  # chunks merged and removed


def test_cli_edit_run_on_ray_equals_local(local_stats, organism_bench, ray_cluster, tmp_path):
    """``edit run --executor ray``: 3 cases in 3 shards on 2 workers, statistics read from the
    cache both runs share; the result equals the in-process command's case for case."""
    cache, _ = local_stats
    args = ["edit", "run", "--model", "organism", "--bench", str(organism_bench), "--method", "rome", "--site", SITE,
            "--cache", str(cache), "--corpus-n", CORPUS_N, "--hparam", "steps=5", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "local"), "--threads", "1"]) == 0
    run_cli([*args, "--out", str(tmp_path / "ray"), "--shard-size", "1"], ray_cluster)
    want = json.loads((tmp_path / "local" / "result.json").read_text())
    got = json.loads((tmp_path / "ray" / "result.json").read_text())
    assert len(got["cases"]) == 3 and all("after" in c for c in got["cases"])
    for key in ("cases", "edits", "summary", "baseline", "hparams", "sites", "accumulate"):
        assert got[key] == want[key], key
    assert got["meta"]["executor"] == "ray" and got["meta"]["shards"] == 3 and got["meta"]["n_computed_now"] == 3
    for key in ("fingerprint", "corpus", "model_source"):
        assert got["meta"][key] == want["meta"][key], key
