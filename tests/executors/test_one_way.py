"""One way to run (issue 17 point 4): the executors package is generic machinery that knows no
pipeline; every pipeline runs through an executor passed explicitly (the local one by default,
whose shard functions run on the very model the caller holds); the one resume mechanism
(``executors.resume``) keeps the file layouts and run keys the pipelines had; statistics on the
local executor are bitwise the editors' own."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np

from lalm_interp.executors import LocalExecutor, from_cli, make_executor
from lalm_interp.executors.resume import item_path, key_digest, pending, quarantine, scan


# ---------------------------------------------------------------------------- the layer
def test_executors_import_no_pipeline_and_no_ray():
    code = ("import sys, lalm_interp.executors, lalm_interp.executors.resume, lalm_interp.executors.faults; "
            "bad = sorted(m for m in sys.modules if m.startswith(('lalm_interp.tracing', 'lalm_interp.evaluation', "
            "'lalm_interp.apps', 'lalm_interp.organism', 'ray')) or m == 'ray'); "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-1500:]


def test_the_ambient_executor_is_gone():
    import lalm_interp.executors as ex

    assert not hasattr(ex, "current") and not hasattr(ex, "using")


# ---------------------------------------------------------------------------- executors from options
def test_from_cli_always_gives_an_executor():
    args = SimpleNamespace(executor="local", workers=None, address=None, shard_size=3)
    with from_cli(args, "tiny-random") as ex:
        assert isinstance(ex, LocalExecutor) and ex.model == "tiny-random" and ex.shard_size == 3
        assert ex.in_process and ex.device == "cpu"  # the commands' local model is on the CPU, as before


def test_bind_runs_on_the_callers_model():
    state = ("model", "processor", "adapter")
    bound = LocalExecutor("tiny-random", retries=2).bind(state)
    assert bound.state is state and bound.retries == 2 and bound.model == "tiny-random"
    assert bound.map(lambda s, p: (s is state, p), [1, 2]) == [(True, 1), (True, 2)]
    assert bound.bind(("other",)) is bound  # a loaded executor keeps its model
    ray = make_executor("ray", model="tiny-random", workers=1)  # nothing started yet: Ray not imported
    assert ray.bind(state) is ray and not ray.in_process


# ---------------------------------------------------------------------------- the resume mechanism
def test_key_digest_keeps_the_run_keys_of_before():
    """The tracing spec hash and the edit-case folder name are what they were (old folders resume)."""
    text = '{"name": "x"}'
    assert key_digest(text) == hashlib.sha256(text.encode()).hexdigest()[:16]
    doc = {"b": 1, "a": [1, 2]}
    assert key_digest(doc) == hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def test_item_files_scan_and_quarantine(tmp_path):
    from lalm_interp.atomic import safe_name

    ids = ["a/1", "b 2", "c"]
    path = lambda i: item_path(tmp_path, i, ".json")  # noqa: E731
    assert path("a/1") == tmp_path / f"{safe_name('a/1')}.json"
    path("a/1").write_text('{"ok": 1}')
    path("b 2").write_text("{trunc")
    moved = []

    def check(p, i):
        try:
            return json.loads(p.read_text()), None
        except ValueError as err:
            return None, f"damaged ({err})"

    done = scan(ids, lambda i: i, path, check, lambda p, why: moved.append(quarantine(p, tmp_path / "quarantine")))
    assert done == {"a/1": {"ok": 1}}
    assert pending(ids, path) == ["b 2", "c"]  # the damaged file is out of the way: recomputed
    (q,) = moved
    assert q.parent == tmp_path / "quarantine" and q.name.startswith(path("b 2").name + ".") and q.read_text() == "{trunc"
    path("b 2").write_text("{again")  # the same name twice in one timestamp never overwrites
    q2 = quarantine(path("b 2"), tmp_path / "quarantine")
    assert q2 != q and q.read_text() == "{trunc" and q2.read_text() == "{again"


# ---------------------------------------------------------------------------- the default path
def test_run_experiment_runs_its_shards_on_the_given_model(tiny_deep, tmp_path, monkeypatch):
    """No executor: the local executor runs trace_shard in this process on the caller's model."""
    from lalm_interp.specs import Experiment, Restore
    from lalm_interp.tracing import shards
    from lalm_interp.tracing.run import run_experiment

    seen = []
    real = shards.trace_shard

    def spy(state, payload):
        seen.append((state[0] is tiny_deep[0], len(payload["items"])))
        return real(state, payload)

    monkeypatch.setattr(shards, "trace_shard", spy)
    rng = np.random.default_rng(0)
    from lalm_interp.prompts import SpokenPrompt

    words = (("Metropolitan", 0.0, 0.765), ("France's", 0.765, 1.270), ("capital", 1.270, 1.785), ("is", 1.785, 1.943))
    prompts = [SpokenPrompt(f"p{i}", (0.1 * rng.standard_normal(31200)).astype(np.float32), words, (0, 1), "Paris",
                            sample_rate=16000) for i in range(3)]
    exp = Experiment("one-way", restores=(Restore("text.layers.*.resid", window=1, positions=("last_token",)),))
    agg = run_experiment(*tiny_deep, prompts, exp, tmp_path, progress=False, plots=False, shard_size=2)
    assert seen == [(True, 2), (True, 1)] and agg.attrs["n_traced_now"] == 3
    assert sorted(p.name for p in (tmp_path / "examples").iterdir()) == sorted(
        shards.example_path(tmp_path, p.id).name for p in prompts)


def test_local_statistics_are_the_editors_own_bitwise(tiny_deep):
    """``key_stats_sharded`` on the local executor (default chunking: one chunk) runs
    ``editors.keys.key_stats`` itself: bitwise what an edit run computes (several chunks equal it
    only to float64 rounding)."""
    from lalm_interp.editors import EditContext, KeyCorpus
    from lalm_interp.editors.keys import key_stats
    from lalm_interp.evaluation.stats import key_stats_sharded

    rng = np.random.default_rng(1)
    corpus = KeyCorpus("bits", [(0.05 * rng.standard_normal(12000 + 2000 * k)).astype(np.float32) for k in range(5)],
                       batch_size=2, sample_rate=16000)
    site = "text.layers.2.mlp.down"
    want = key_stats(EditContext(*tiny_deep, corpus=corpus, fingerprint="fp"), site)
    got = key_stats_sharded(LocalExecutor(state=tiny_deep), corpus, site)
    assert got.count == want.count
    for attr in ("mean", "second_moment"):
        assert np.array_equal(getattr(got, attr), getattr(want, attr)), attr


def test_editors_declare_their_statistics_to_the_run(tiny_deep):
    """``worker_info`` asks the editor (``stats_sites``), not its name."""
    from lalm_interp.editors import make
    from lalm_interp.evaluation.runs import worker_info

    plain = make("rome", "text.layers.2.mlp.down", cov="identity")
    info = worker_info(tiny_deep, {"editor": plain})
    assert info["sites"] == ["text.layers.2.mlp.down"] and info["stats_sites"] == []
    alpha = make("alphaedit", "text.layers.2:4.mlp.down")
    assert worker_info(tiny_deep, {"editor": alpha, "fingerprint": False})["stats_sites"] == [
        str(s) for s in alpha.stats_sites(tiny_deep[2])] != []
    assert worker_info(tiny_deep, {"editor": alpha, "fingerprint": False})["fingerprint"] is None
