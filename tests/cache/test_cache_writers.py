"""Atomic shards: killed writers leave a readable store and resume; concurrent writers; gc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from cache_helpers import make_batch, provenance

from lalm_interp.cache import CacheError, Store
from lalm_interp.atomic import temp_path

SCRIPT = Path(__file__).parent / "writer_script.py"
N_SHARDS = 6


def _run(root, exp, first=0, last=N_SHARDS, step=1, delay=0.0, **kw) -> subprocess.Popen:
    args = [sys.executable, str(SCRIPT), str(root), exp, str(first), str(last), str(step)]
    if delay:
        args.append(str(delay))
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _wait_for_line(proc: subprocess.Popen, prefix: str, count: int, timeout: float = 60) -> list[str]:
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
        if sum(l.startswith(prefix) for l in lines) >= count:
            return lines
    raise AssertionError(f"writer did not print {count} x {prefix!r}: {lines} {proc.stderr.read() if proc.poll() is not None else ''}")


def _tmp_files(root: Path) -> list[Path]:
    return sorted(root.rglob(".*.tmp"))


def test_killed_writer_leaves_readable_store_and_resumes_to_same_result(tmp_path):
    root = tmp_path / "killed"
    proc = _run(root, "exp", delay=30.0)  # pauses before publishing each shard
    _wait_for_line(proc, "publishing", 1)  # shard 0 fully written to its temp file, not yet published
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = Store(root)
    assert _tmp_files(root), "the killed writer should have left its temp file"
    with pytest.raises(CacheError, match="filters|matches nothing"):
        store.get("text.layers.0.mlp")  # nothing complete yet: no half-written shard visible

    proc = _run(root, "exp", delay=0.0)
    # let it finish 2 shards, then kill it between shards
    _wait_for_line(proc, "wrote", 2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    complete = sorted(p.name for p in (root / "experiments/exp/runs/clean").glob("shard-*.h5"))
    assert len(complete) >= 2
    partial = store.get("text.layers.*.mlp").load()  # readable, complete shards intact
    assert partial.sizes["example"] == 3 * len(complete)
    for i in range(len(complete)):
        b = make_batch(i)
        got = partial.sel(example=b.examples[0], layer=3).values
        want = b.values["text.layers.3.mlp"][0]
        np.testing.assert_array_equal(got[: want.shape[0]], want)

    out, err = _run(root, "exp").communicate(timeout=120)
    wrote = [int(l.split()[1]) for l in out.split("\n") if l.startswith("wrote")]
    assert wrote == list(range(len(complete), N_SHARDS)), err  # resumed: complete shards skipped

    ref_root = tmp_path / "ref"
    assert _run(ref_root, "exp").wait(timeout=120) == 0
    resumed = Store(root).get("text.layers.*.mlp").load()
    reference = Store(ref_root).get("text.layers.*.mlp").load()
    xr.testing.assert_identical(resumed, reference)

    report = store.gc()
    assert len(report.removed) >= 1 and not _tmp_files(root)
    xr.testing.assert_identical(Store(root).get("text.layers.*.mlp").load(), reference)


def test_two_concurrent_writers_of_different_shards(tmp_path):
    root = tmp_path / "conc"
    procs = [_run(root, "exp", first=k, last=2 * N_SHARDS, step=2) for k in (0, 1)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    store = Store(root)
    cat = store.catalog()
    assert [s.index for s in cat.shards] == list(range(2 * N_SHARDS)) and not cat.corrupt
    (exp,) = store.experiments()
    assert exp.n_shards == 2 * N_SHARDS and exp.n_examples == 3 * 2 * N_SHARDS
    da = store.get("audio.layers.1.mlp.down@in")
    for i in (0, 7, 11):
        b = make_batch(i)
        np.testing.assert_array_equal(da.sel(example=b.examples[2]).values, b.values["audio.layers.1.mlp.down@in"][2])
    assert not _tmp_files(root)


def test_shards_are_immutable_and_provenance_must_agree(store):
    w = store.writer("e", provenance=provenance())
    w.write(0, make_batch(0))
    with pytest.raises(CacheError, match="already complete"):
        w.write(0, make_batch(1))
    assert w.write(0, make_batch(1), exist_ok=True) is False
    np.testing.assert_array_equal(
        store.get("text.layers.0.mlp").values[:, :4], make_batch(0).values["text.layers.0.mlp"]
    )
    assert w.complete() == {0} and w.missing(range(3)) == [1, 2]
    with pytest.raises(CacheError, match="different provenance.*revision"):
        store.writer("e", provenance=provenance(revision="r2"))
    with pytest.raises(CacheError, match="directory name"):
        store.writer("../escape", provenance=provenance())


def test_gc_keeps_live_temp_files_and_complete_shards(store):
    w = store.writer("e", provenance=provenance())
    w.write(0, make_batch(0))
    live = temp_path(w.path(1))  # this process is alive
    live.write_bytes(b"partial")
    dead = live.with_name(live.name.replace(f".{os.getpid()}.", ".999999999."))
    dead.write_bytes(b"partial")
    report = store.gc(dry_run=True)
    assert report.removed == (dead,) and dead.exists()
    report = store.gc()
    assert report.removed == (dead,) and report.kept_live == (live,)
    assert not dead.exists() and live.exists() and w.path(0).exists()
    assert store.get("text.layers.0.mlp").sizes["example"] == 3  # temp files never visible


def test_gc_quarantines_corrupt_shards_only_on_request(store):
    w = store.writer("e", provenance=provenance())
    w.write(0, make_batch(0))
    w.write(1, make_batch(1))
    w.path(1).write_bytes(b"not hdf5")
    report = store.gc()
    assert report.corrupt == (w.path(1),) and w.path(1).exists()
    report = store.gc(quarantine=True)
    assert not w.path(1).exists() and report.quarantined[0].read_bytes() == b"not hdf5"
    assert store.get("text.layers.0.mlp").sizes["example"] == 3
    w.write(1, make_batch(1))  # rewrite after quarantine
    assert store.get("text.layers.0.mlp").sizes["example"] == 6
