"""Sharded evaluation (edit cases on an executor) on the organism: the merged records and edit
handles equal the in-process ``evaluation.run`` exactly — locally and on 2 Ray CPU workers — an
injected failure is retried without recomputing or duplicating the cases finished before it, a
restarted run computes nothing again, and accumulating (AlphaEdit-style) runs are one shard."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lalm_interp.evaluation.runs import CASES_DIR, evaluate
from lalm_interp.executors import FAULT_ENV, ExecutorError, LocalExecutor

N = 3  # edit cases
ROME = ("rome", "text.layers.4.mlp.down")  # single-layer: reset between cases
ALPHA = ("alphaedit", "text.layers.3:5.mlp.down")  # multi-layer: edits accumulate


@pytest.fixture(scope="module")
def cases(organism_bench):
    from lalm_interp.bench import Benchmark
    from lalm_interp.evaluation import cases_from_benchmark

    cs = cases_from_benchmark(Benchmark.open(organism_bench), word="last")
    assert len(cs) == N and all(c.paraphrases and c.neighbours for c in cs)
    return cs


@pytest.fixture(scope="module")
def setting(organism, organism_bench, tmp_path_factory):
    """The statistics corpus and the cache both runs share (sharded statistics equal single-process
    ones to 1e-8, not bitwise; with one cache the edits see the very same C and projectors)."""
    from lalm_interp.bench import Benchmark
    from lalm_interp.cache import Store
    from lalm_interp.editors import KeyCorpus

    rng = np.random.default_rng(0)
    clips = [it.audio for it in Benchmark.open(organism_bench)] + [
        (0.05 * rng.standard_normal(16000 + 4000 * k)).astype(np.float32) for k in range(3)]
    return Store(tmp_path_factory.mktemp("cache")), KeyCorpus("test-corpus", clips, batch_size=4, sample_rate=16000)


def plain_run(organism, setting, cases, method):
    """The ground truth: ``evaluation.run`` in this process."""
    from lalm_interp.editors import EditContext, make
    from lalm_interp.evaluation import run

    store, corpus = setting
    ctx = EditContext(*organism, store=store, corpus=corpus)
    return run(make(*method), ctx, cases)


@pytest.fixture(scope="module")
def reference(organism, setting, cases):
    return plain_run(organism, setting, cases, ROME)


def as_json(x):
    return json.loads(json.dumps(x))


def assert_same_result(got, want, out):
    """Same per-case records (every probability before and after) and edit handles, same metrics;
    exactly one result file per case and no temp files."""
    assert got.records == as_json(want.records)
    assert got.edits == as_json(want.edits)
    assert got.summary == want.summary and got.baseline == want.baseline
    assert got.accumulate == want.accumulate and got.method == want.method
    (folder,) = (out / CASES_DIR).iterdir()
    files = sorted(folder.iterdir())
    assert len(files) == N and not [p for p in files if p.name.startswith(".")]


def written_by(out):
    (folder,) = (out / CASES_DIR).iterdir()
    return {json.loads(p.read_text())["worker"] for p in folder.glob("*.json")}


# ---------------------------------------------------------------------------- local executor
def test_local_shards_equal_plain_run_retry_and_resume(organism, setting, cases, reference, tmp_path, monkeypatch):
    store, corpus = setting
    ex = LocalExecutor(state=organism, retries=1)
    monkeypatch.setenv(FAULT_ENV, f"shard=0,after=1,mode=raise,marker={tmp_path / 'fault'}")
    from lalm_interp.editors import make

    res = evaluate(ex, make(*ROME), cases, tmp_path / "out", store=store, corpus=corpus, shard_size=2)
    assert (tmp_path / "fault").exists()  # shard 0 failed after its first case; the retry skipped that case
    assert res.meta["n_computed_now"] == N - 1 and res.meta["shards"] == 2
    assert_same_result(res, reference, tmp_path / "out")
    monkeypatch.delenv(FAULT_ENV)
    again = evaluate(ex, make(*ROME), cases, tmp_path / "out", store=store, corpus=corpus)
    assert again.meta["n_computed_now"] == 0 and again.records == res.records  # a restart recomputes nothing
    (folder,) = (tmp_path / "out" / CASES_DIR).iterdir()
    doc = json.loads(next(folder.glob("*.json")).read_text())
    doc["record"]["request"]["target_new"] = "elsewhere"
    next(folder.glob("*.json")).write_text(json.dumps(doc))
    with pytest.raises(ExecutorError, match="written for another request.*scale-out.md"):
        evaluate(ex, make(*ROME), cases, tmp_path / "out", store=store, corpus=corpus)


def test_other_settings_do_not_reuse_case_files(organism, setting, cases, tmp_path):
    from lalm_interp.editors import make

    store, corpus = setting
    ex = LocalExecutor(state=organism)
    a = evaluate(ex, make(*ROME, steps=2), cases[:1], tmp_path, store=store, corpus=corpus)
    b = evaluate(ex, make(*ROME, steps=3), cases[:1], tmp_path, store=store, corpus=corpus)
    assert a.meta["n_computed_now"] == b.meta["n_computed_now"] == 1
    assert len(list((tmp_path / CASES_DIR).iterdir())) == 2  # one folder per run key
    assert a.records[0]["after"] != b.records[0]["after"]


def test_duplicate_case_ids_are_refused(organism, cases, tmp_path):
    from lalm_interp.editors import make

    with pytest.raises(ExecutorError, match="unique.*scale-out.md"):
        evaluate(LocalExecutor(state=organism), make(*ROME), [cases[0], cases[0]], tmp_path)


def test_known_filter_on_an_executor_matches_first_token_scores(organism, cases):
    from lalm_interp.evaluation.runs import known_filter
    from lalm_interp.known import first_token_scores

    prompts = [c.request.prompt for c in cases] * 3  # 9 prompts, shards of 8: the same batches of 2
    want = first_token_scores(*organism, prompts, target="target", batch_size=2).correct
    assert known_filter(LocalExecutor(state=organism), prompts, batch=2) == want
    assert any(want)  # the organism knows its own facts


# ---------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_ex(ray_cluster):
    from lalm_interp.executors import RayExecutor

    ex = RayExecutor("organism", workers=2, retries=2)
    try:
        yield ex.start()
    finally:
        ex.close()


def test_ray_shards_equal_plain_run(ray_ex, setting, cases, reference, tmp_path):
    from lalm_interp.editors import make

    store, corpus = setting
    res = evaluate(ray_ex, make(*ROME), cases, tmp_path, store=store, corpus=corpus, shard_size=1)
    assert res.meta["shards"] == N and res.meta["n_computed_now"] == N and res.meta["executor"] == "ray"
    assert_same_result(res, reference, tmp_path)
    assert written_by(tmp_path) == set(ray_ex.pids())  # both workers edited cases


def test_ray_failed_shard_is_retried_without_duplicates(ray_ex, setting, cases, reference, tmp_path, monkeypatch):
    from lalm_interp.editors import make

    store, corpus = setting
    monkeypatch.setenv(FAULT_ENV, f"shard=0,after=1,mode=raise,marker={tmp_path / 'fault'}")
    retried = ray_ex.stats["retried"]
    res = evaluate(ray_ex, make(*ROME), cases, tmp_path / "out", store=store, corpus=corpus, shard_size=2)
    assert (tmp_path / "fault").exists() and ray_ex.stats["retried"] == retried + 1
    assert res.meta["n_computed_now"] == N - 1  # the case finished before the failure was not edited again
    assert_same_result(res, reference, tmp_path / "out")


def test_ray_accumulating_mode_is_one_shard(ray_ex, organism, setting, cases, tmp_path):
    from lalm_interp.editors import make

    store, corpus = setting
    want = plain_run(organism, setting, cases, ALPHA)
    assert want.accumulate
    res = evaluate(ray_ex, make(*ALPHA), cases, tmp_path, store=store, corpus=corpus, shard_size=1)
    assert res.meta["shards"] == 1 and len(written_by(tmp_path)) == 1  # shard_size does not split it
    assert_same_result(res, want, tmp_path)
    assert [e["info"]["n_previous_edits"] for e in res.edits] == list(range(N))  # really sequential


def test_bad_site_fails_on_the_worker_before_any_shard(organism, cases, tmp_path):
    from lalm_interp.editors import EditorError, make

    with pytest.raises(EditorError, match="cannot edit site text.layers.4.attn"):
        evaluate(LocalExecutor(state=organism), make("rome", "text.layers.4.attn"), cases, tmp_path)
    assert not (tmp_path / CASES_DIR).exists()


def test_reproduce_editing_stage_on_ray(ray_ex, organism, organism_bench, setting, cases, tmp_path, monkeypatch):
    """``reproduce``'s editing rows on the Ray executor passed to them: key statistics and edit cases
    run on the workers (collecting keys in this process is an error here), and the rows equal the
    rows of the default (local) executor computed from the same statistics."""
    import shutil

    from lalm_interp.apps.reproduce import ReproduceConfig, edit_rows

    _, corpus = setting
    from types import SimpleNamespace

    utts = [SimpleNamespace(utt_id=f"test/{i}", text="", audio=c, sample_rate=16000) for i, c in enumerate(corpus.clips)]
    monkeypatch.setattr("lalm_interp.bench.corpus.protected_corpus", lambda *a, **k: utts)
    plan = [("Single-layer", "rome", ["text.layers.4.mlp.down"]),
            ("Multi-layer", "alphaedit", ["text.layers.3.mlp.down", "text.layers.4.mlp.down"])]
    ids = [c.case_id for c in cases]

    def no_keys_here(*a, **k):
        raise AssertionError("key statistics were collected in the driver, not on the workers")

    cfg = ReproduceConfig("table1", out=str(tmp_path / "ray"))
    with monkeypatch.context() as m:
        m.setattr("lalm_interp.editors.keys.corpus_keys", no_keys_here)
        on_ray = edit_rows(cfg, *organism, open_bench(organism_bench), ids, plan, "edits", executor=ray_ex)
    assert [d["meta"]["executor"] for d in on_ray] == ["ray", "ray"]
    assert [d["meta"]["shards"] for d in on_ray][1] == 1  # the accumulating row: one shard
    assert len(list((tmp_path / "ray" / "cache" / "stats").rglob("*.h5"))) == 2  # text.layers.3 and 4
    shutil.copytree(tmp_path / "ray" / "cache", tmp_path / "local" / "cache")  # the same statistics
    local = edit_rows(ReproduceConfig("table1", out=str(tmp_path / "local")), *organism,
                      open_bench(organism_bench), ids, plan, "edits")
    assert [d["meta"]["executor"] for d in local] == ["local", "local"]  # the default: this process
    for a, b in zip(on_ray, local):
        for key in ("cases", "edits", "summary", "baseline", "accumulate"):
            assert a[key] == as_json(b[key]), key


def open_bench(path):
    from lalm_interp.bench import Benchmark

    return Benchmark.open(path)
