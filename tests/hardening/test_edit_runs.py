"""Bad-input, fault and resume cases of editing (issue 16 items 8 and 9, issue 14's ‖ΔW‖/‖W‖):

* edit handles revert newest-first per module — an out-of-order revert raises and changes nothing,
  a second revert is a no-op (also after later edits), interleaved layers revert independently;
* every handle records ``info["dW_rel"]`` = ‖ΔW‖_F/‖W‖_F per edited weight;
* the in-process evaluation writes one atomic file per finished case: a crashed run resumes where it
  stopped and the merged result equals an uninterrupted run; damaged case files are quarantined and
  recomputed; another editor / mode / corpus / model never reads them; accumulating runs restart;
* ``edit run`` rejects bad ``--method`` / ``--site`` / ``--preset`` / ``--hparam`` with the closest
  valid name, prints rounded metrics, and resumes after being SIGKILLed.

Edits run on a tiny random Qwen2-Audio (6+6 layers) with ROME's identity covariance and 2 steps.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lalm_interp.editors import EditContext, EditorError, EditRequest, KeyCorpus, make
from lalm_interp.evaluation import EditCase, Probe
from lalm_interp.executors import ExecutorError
from lalm_interp.evaluation import runs as sharded
from lalm_interp.evaluation.runs import CASES_DIR
from lalm_interp.tracing import SpokenPrompt

WORDS = (("Metropolitan", 0.0, 0.765), ("France's", 0.765, 1.270), ("capital", 1.270, 1.785), ("is", 1.785, 1.943))
ROME = dict(cov="identity", steps=2)
N = 3


pytestmark = pytest.mark.usefixtures("one_thread")


def noise(seconds, seed):
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(np.float32)


def request(seed, new="Seattle"):
    return EditRequest(SpokenPrompt(f"ex{seed}", noise(1.95, seed), WORDS, (0, 1), "Paris", sample_rate=16000), new, "first", f"case{seed}")


def case(seed, new):
    return EditCase(request(seed, new), (Probe(f"p{seed}", "Paris", noise(1.8, seed + 50), sample_rate=16000),),
                    (Probe(f"n{seed}", "guitar" if new != "guitar" else "Seattle", noise(1.7, seed + 90),
                           sample_rate=16000),))


CASES = [case(1, "Seattle"), case(2, "guitar"), case(3, "French")]


@pytest.fixture(scope="module")
def ctx(tiny_deep):
    model, processor, adapter = tiny_deep
    return EditContext(model, processor, adapter)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(model, snap):
    return all(torch.equal(v, snap[k]) for k, v in model.state_dict().items())


def evaluate_resumable(*args, **kwargs):
    return sharded.evaluate_resumable(*args, **kwargs)


QUARANTINE_DIR = getattr(sharded, "QUARANTINE_DIR", "quarantine")


def rome(layer=2, stream="text"):
    return make("rome", f"{stream}.layers.{layer}.mlp.down", **ROME)


# ---------------------------------------------------------------------------- handles: revert order
def test_forward_order_revert_raises_names_the_later_handle_and_changes_nothing(ctx):
    snap = snapshot(ctx.model)
    h1 = rome().apply(ctx, request(1))
    h2 = rome().apply(ctx, request(2, "guitar"))
    edited = snapshot(ctx.model)
    with pytest.raises(EditorError) as err:
        h1.revert()
    assert re.search(rf"(?s)cannot revert EditHandle #{h1.number} .*EditHandle #{h2.number} .*"
                     r"revert\(\) on that handle first.*errors/editors.md", str(err.value)), err.value
    assert same(ctx.model, edited) and not h1.reverted  # nothing half-reverted
    h2.revert()
    h1.revert()  # now allowed
    assert same(ctx.model, snap)


def test_reverse_order_revert_is_bitwise(ctx):
    snap = snapshot(ctx.model)
    hs = [rome().apply(ctx, request(s, n)) for s, n in ((1, "Seattle"), (2, "guitar"), (3, "French"))]
    for h in reversed(hs):
        h.revert()
    assert same(ctx.model, snap) and all(h.reverted for h in hs)


def test_interleaved_layers_revert_independently(ctx):
    snap = snapshot(ctx.model)
    a1 = rome(2).apply(ctx, request(1))
    b = rome(3).apply(ctx, request(2, "guitar"))
    a2 = rome(2).apply(ctx, request(3, "French"))
    with pytest.raises(EditorError) as err:
        a1.revert()
    assert f"#{a2.number}" in str(err.value)
    b.revert()  # layer 3 has no later edit: fine although a2 came after it
    a2.revert()
    a1.revert()
    assert same(ctx.model, snap)


def test_double_revert_is_a_no_op_even_after_a_later_edit(ctx):
    snap = snapshot(ctx.model)
    h1 = rome().apply(ctx, request(1))
    h1.revert()
    h2 = rome().apply(ctx, request(2, "guitar"))
    with_h2 = snapshot(ctx.model)
    h1.revert()  # old code copied h1's snapshot back here, silently wiping h2's edit
    assert same(ctx.model, with_h2)
    h2.revert()
    h2.revert()
    assert same(ctx.model, snap)


def test_multi_layer_handle_is_blocked_atomically(ctx):
    """An AlphaEdit handle over layers 2-3, then ROME on layer 3: reverting the AlphaEdit handle
    first raises, and layer 2 (not blocked) is not restored either."""
    snap = snapshot(ctx.model)
    ha = make("finetune", "text.layers.2.mlp.down", steps=2).apply(ctx, request(1))
    hb = make("finetune", "text.layers.3.mlp.down", steps=2).apply(ctx, request(2, "guitar"))
    ha.merge(hb)  # one handle over layers 2 and 3
    hc = rome(3).apply(ctx, request(3, "French"))
    edited = snapshot(ctx.model)
    with pytest.raises(EditorError) as err:
        ha.revert()
    assert re.search(rf"#{hc.number}.*layers\.3", str(err.value))
    assert same(ctx.model, edited)
    hb.revert()  # absorbed into ha: a no-op
    assert same(ctx.model, edited)
    hc.revert()
    ha.revert()
    assert same(ctx.model, snap)


def test_revert_after_editor_reset_and_failed_apply(ctx, monkeypatch):
    """``editor.reset()`` forgets AlphaEdit's accumulated keys, not the handles; a failed apply
    reverts itself without disturbing the edits before it."""
    snap = snapshot(ctx.model)
    ed = make("alphaedit", "text.layers.2:4.mlp.down", steps=2)
    ed_ctx = EditContext(ctx.model, ctx.processor, ctx.adapter,
                         corpus=KeyCorpus("noise:3", [noise(2.5, 200 + i) for i in range(3)], sample_rate=16000))
    h1 = ed.apply(ed_ctx, request(1))
    ed.reset()
    h2 = ed.apply(ed_ctx, request(2, "guitar"))
    after_two = snapshot(ctx.model)
    from lalm_interp.editors import alphaedit as alphaedit_mod

    real, calls = alphaedit_mod.null_space_update, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(*a, **k)

    monkeypatch.setattr(alphaedit_mod, "null_space_update", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        ed.apply(ed_ctx, request(3, "French"))
    assert same(ctx.model, after_two)  # the failed third edit restored itself, h1/h2 untouched
    h2.revert()
    h1.revert()
    assert same(ctx.model, snap)


def test_dw_rel_is_recorded_per_edited_weight(ctx):
    h = make("alphaedit", "text.layers.2:4.mlp.down", steps=2).apply(
        EditContext(ctx.model, ctx.processor, ctx.adapter,
                    corpus=KeyCorpus("noise:3", [noise(2.5, 200 + i) for i in range(3)], sample_rate=16000)), request(1))
    try:
        rel = h.info["dW_rel"]
        paths = [ctx.adapter.module_path(f"text.layers.{i}.mlp.down") for i in (2, 3)]
        assert sorted(rel) == sorted(f"{p}.weight" for p in paths)
        for p in paths:
            w0 = h.original(p).double()
            w1 = ctx.model.get_submodule(p).weight.detach().double()
            assert rel[f"{p}.weight"] == pytest.approx(float((w1 - w0).norm() / w0.norm()), rel=1e-12)
            assert rel[f"{p}.weight"] > 0
        assert h.to_json()["info"]["dW_rel"] == rel and json.dumps(h.to_json())
    finally:
        h.revert()


# ---------------------------------------------------------------------------- resumable evaluation
def counting(editor, monkeypatch, crash_at=None):
    """Count ``editor.apply`` calls; with ``crash_at=k`` the k-th call (0-based) raises, as a crash
    (a non-LalmInterpError: evaluation.run does not record it, the run stops)."""
    calls = []
    real = editor.apply

    def apply(*a, **k):
        if crash_at is not None and len(calls) == crash_at:
            raise KeyboardInterrupt("simulated kill")
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(editor, "apply", apply)
    return calls


def strip(res):
    return json.loads(json.dumps({"records": res.records, "edits": res.edits, "summary": res.summary,
                                  "baseline": res.baseline}))


@pytest.fixture(scope="module")
def reference(ctx, tmp_path_factory):
    return strip(evaluate_resumable(rome(), ctx, CASES, tmp_path_factory.mktemp("ref")))


def case_files(out):
    (folder,) = (Path(out) / CASES_DIR).iterdir()
    return sorted(folder.glob("*.json"))


@pytest.mark.parametrize("k", [1, 2])
def test_crash_after_k_cases_resumes_without_redoing_them(ctx, reference, tmp_path, monkeypatch, k):
    snap = snapshot(ctx.model)
    ed = rome()
    counting(ed, monkeypatch, crash_at=k)
    with pytest.raises(KeyboardInterrupt):
        evaluate_resumable(ed, ctx, CASES, tmp_path)
    assert same(ctx.model, snap) and len(case_files(tmp_path)) == k
    ed2 = rome()
    calls = counting(ed2, monkeypatch)
    said = []
    res = evaluate_resumable(ed2, ctx, CASES, tmp_path, progress=said.append)
    assert len(calls) == N - k and res.meta["n_computed_now"] == N - k and res.meta["n_resumed"] == k
    assert any(f"{k} of {N} cases finished already" in s for s in said)
    assert strip(res) == reference  # the merged result equals an uninterrupted run
    assert len(case_files(tmp_path)) == N


def test_finished_run_rerun_edits_nothing(ctx, reference, tmp_path, monkeypatch):
    evaluate_resumable(rome(), ctx, CASES, tmp_path)
    ed = rome()
    calls = counting(ed, monkeypatch)
    res = evaluate_resumable(ed, ctx, CASES, tmp_path)
    assert calls == [] and res.meta["n_computed_now"] == 0 and strip(res) == reference


DAMAGE = {
    "truncated": lambda b: b[: len(b) // 2],
    "empty": lambda b: b"",
    "binary": lambda b: b"\x00\xff\xfe garbage \x80",
    "json-list": lambda b: b"[1, 2, 3]",
    "no-record": lambda b: json.dumps({k: v for k, v in json.loads(b).items() if k != "record"}).encode(),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_case_file_is_quarantined_and_recomputed(ctx, reference, tmp_path, monkeypatch, kind):
    evaluate_resumable(rome(), ctx, CASES, tmp_path)
    victim = case_files(tmp_path)[1]
    original = victim.read_bytes()
    victim.write_bytes(DAMAGE[kind](original))
    ed, said = rome(), []
    calls = counting(ed, monkeypatch)
    res = evaluate_resumable(ed, ctx, CASES, tmp_path, progress=said.append)
    assert len(calls) == 1 and res.meta["n_computed_now"] == 1
    assert strip(res) == reference
    (moved,) = (victim.parent / QUARANTINE_DIR).iterdir()  # kept for the user, not deleted
    assert moved.name.startswith(victim.name) and moved.read_bytes() == DAMAGE[kind](original)
    assert any("damaged" in s and str(moved) in s for s in said)
    assert json.loads(victim.read_text())["record"] == json.loads(original)["record"]


@pytest.mark.parametrize("change", ["hparams", "mode", "corpus", "model"])
def test_another_run_key_never_reads_these_files(ctx, tmp_path, monkeypatch, change):
    first = evaluate_resumable(rome(), ctx, CASES[:2], tmp_path)
    ed, c, acc = rome(), ctx, None
    if change == "hparams":
        ed = make("rome", "text.layers.2.mlp.down", cov="identity", steps=3)
    elif change == "mode":
        acc = True
    elif change == "corpus":
        c = EditContext(ctx.model, ctx.processor, ctx.adapter, corpus=KeyCorpus("other", [noise(1.0, 7)], sample_rate=16000))
    else:
        c = EditContext(ctx.model, ctx.processor, ctx.adapter, fingerprint="another-model#0")
    calls = counting(ed, monkeypatch)
    res = evaluate_resumable(ed, c, CASES[:2], tmp_path, accumulate=acc)
    assert len(calls) == 2 and res.meta["n_computed_now"] == 2
    assert len(list((tmp_path / CASES_DIR).iterdir())) == 2  # one folder per run key
    assert res.meta["cases_dir"] != first.meta["cases_dir"]


def test_accumulating_run_killed_midway_restarts_from_case_one(ctx, tmp_path, monkeypatch):
    snap = snapshot(ctx.model)
    want = strip(evaluate_resumable(rome(), ctx, CASES, tmp_path / "ref", accumulate=True))
    ed = rome()
    counting(ed, monkeypatch, crash_at=2)
    with pytest.raises(KeyboardInterrupt):
        evaluate_resumable(ed, ctx, CASES, tmp_path / "run", accumulate=True)
    assert same(ctx.model, snap)  # the two applied edits were reverted on the way out
    ed2, said = rome(), []
    calls = counting(ed2, monkeypatch)
    res = evaluate_resumable(ed2, ctx, CASES, tmp_path / "run", accumulate=True, progress=said.append)
    assert len(calls) == N and any("from case 1" in s and "resuming-a-run" in s for s in said)
    assert strip(res) == want and res.accumulate


def test_orphan_temp_files_are_removed_and_changed_requests_refused(ctx, tmp_path):
    evaluate_resumable(rome(), ctx, CASES, tmp_path)
    folder = case_files(tmp_path)[0].parent
    (folder / ".case1-deadbeef.json.k3j4h5g6.tmp").write_text("{half")  # what a killed mkstemp writer leaves
    evaluate_resumable(rome(), ctx, CASES, tmp_path)
    assert not list(folder.glob(".*.tmp"))
    changed = [EditCase(EditRequest(CASES[0].request.prompt, "Berlin", "first", "case1"))] + CASES[1:]
    with pytest.raises(ExecutorError, match="written for another request.*scale-out.md"):
        evaluate_resumable(rome(), ctx, changed, tmp_path)


def test_duplicate_case_ids_are_refused(ctx, tmp_path):
    with pytest.raises(ExecutorError, match="unique"):
        evaluate_resumable(rome(), ctx, [CASES[0], CASES[0]], tmp_path)
    assert not (tmp_path / CASES_DIR).exists()


# ---------------------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Three spoken CounterFact facts (the organism's own), one paraphrase and neighbour each."""
    pytest.importorskip("espeakng_loader")
    import lalm_interp
    from lalm_interp.bench import build
    from lalm_interp.organism.export import recipe_of
    from lalm_interp.organism.facts import choose_facts

    recipe = recipe_of(Path(lalm_interp.__file__).parent / "assets" / "organism")
    out = tmp_path_factory.mktemp("bench")
    build(choose_facts(recipe)[:3], out, renditions=[recipe.train_renditions[0]], max_paraphrases=1,
          max_neighbours=1, workers=1, progress=False, source="counterfact")
    return out


def cli(bench, out, *extra):
    from lalm_interp.apps.cli import main

    return main(["edit", "run", "--model", "organism", "--bench", str(bench), "--out", str(out),
                 "--threads", "1", *extra])


BAD = [
    (["--method", "romee", "--site", "text.layers.2"], r"no editor named 'romee'\. Did you mean 'rome'\?"),
    (["--method", "rome", "--site", "text.layrs.2"], r"--site 'text\.layrs\.2'.*Did you mean 'text\.layers\.2'\?.*evaluation\.md"),
    (["--method", "rome", "--site", "text.layers.9"], r"out of range.*Editing sites of this model: audio\.layers\.0\.\.5"),
    (["--method", "rome", "--site", "auto", "--site", "text.layers.2"], r"mix of explicit sites and 'auto'"),
    (["--method", "crossmodal", "--site", "text.auto"], r"crossmodal edits an audio and a text layer"),
    (["--method", "rome", "--site", "text.layers.2", "--hparam", "stepz=2"], r"unknown hyper-parameter 'stepz'; Did you mean 'steps'\?"),
    (["--method", "rome", "--site", "text.layers.2", "--preset", "papr"], r"preset 'papr'"),
]


@pytest.mark.parametrize("argv,msg", BAD, ids=["method", "site-typo", "site-range", "auto-mix", "auto-stream",
                                              "hparam", "preset"])
def test_bad_names_fail_with_the_closest_valid_one(bench, tmp_path, capsys, argv, msg):
    assert cli(bench, tmp_path, *argv) == 2
    err = capsys.readouterr().err
    assert re.search(msg, err, re.S), err
    assert "docs/" in err and not (tmp_path / CASES_DIR).exists()


def test_cli_prints_rounded_metrics_and_resumes(bench, tmp_path, capsys):
    args = ["--method", "rome", "--site", "text.layers.2", "--hparam", "steps=2", "--hparam", "cov=identity"]
    assert cli(bench, tmp_path, *args) == 0
    out = capsys.readouterr().out
    assert re.search(r"Score \d+\.\d\d ES \d+\.\d\d PS (\d+\.\d\d|–) NS (\d+\.\d\d|–) \(unedited: Score", out), out
    assert not re.search(r"\d\.\d{3,}", out.split("wrote")[0]), out
    first = json.loads((tmp_path / "result.json").read_text())
    assert cli(bench, tmp_path, *args) == 0
    assert "3 read back from an earlier run" in capsys.readouterr().out
    again = json.loads((tmp_path / "result.json").read_text())
    assert again["cases"] == first["cases"] and again["meta"]["n_computed_now"] == 0


@pytest.mark.slow
def test_sigkilled_edit_run_resumes(bench, tmp_path):
    """A real kill: ``edit run`` SIGKILLed once its first case file is written; the rerun edits
    only the remaining cases and the result equals an uninterrupted run's."""
    args = ["--method", "rome", "--site", "text.layers.2", "--hparam", "steps=2", "--hparam", "cov=identity",
            "--threads", "1", "--model", "organism", "--bench", str(bench)]
    cmd = [sys.executable, "-m", "lalm_interp", "edit", "run", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert subprocess.run([*cmd, "--out", str(tmp_path / "ref")], env=env, capture_output=True).returncode == 0
    p = subprocess.Popen([*cmd, "--out", str(tmp_path / "run")], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if (tmp_path / "run" / CASES_DIR).exists() and list((tmp_path / "run" / CASES_DIR).rglob("*.json")):
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    n_before = len(list((tmp_path / "run" / CASES_DIR).rglob("*.json")))
    assert 1 <= n_before < 3 and not (tmp_path / "run" / "result.json").exists()
    r = subprocess.run([*cmd, "--out", str(tmp_path / "run")], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = json.loads((tmp_path / "run" / "result.json").read_text())
    want = json.loads((tmp_path / "ref" / "result.json").read_text())
    assert got["meta"]["n_computed_now"] == 3 - n_before
    assert got["cases"] == want["cases"] and got["summary"] == want["summary"]


def test_no_site_uses_the_documented_organism_default(bench, tmp_path, capsys):
    from lalm_interp.apps.cli import main
    from lalm_interp.plans import DEFAULT_LAYERS

    assert main(["edit", "run", "--model", "organism", "--bench", str(bench), "--out", str(tmp_path), "--threads", "1",
                 "--method", "rome", "--hparam", "steps=1", "--hparam", "cov=identity", "--limit", "1"]) == 0
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["sites"] == [f"audio.layers.{DEFAULT_LAYERS['organism']['audio'][0]}.mlp.down"]
    assert res["meta"]["site_choice"] == "default" and "documented default sites of organism" in capsys.readouterr().err
    assert not (tmp_path / "site-auto").exists()  # no trace needed


@pytest.mark.parametrize("site,streams", [(None, ("audio",)), ("text.auto", ("text",))])
def test_site_auto_takes_the_peak_aie_layer_of_a_selection_trace(bench, tmp_path, capsys, site, streams):
    """tiny-random has no documented default: no --site falls back to auto, which traces the edit
    prompts and edits the peak-AIE MLP layer of the chosen stream."""
    import xarray as xr

    from lalm_interp.apps.cli import main
    from lalm_interp.apps.demo_edits import SPANS
    from lalm_interp.tracing.select import top_layers

    argv = ["edit", "run", "--model", "tiny-random", "--bench", str(bench), "--out", str(tmp_path), "--threads", "1",
            "--method", "rome", "--hparam", "steps=1", "--hparam", "cov=identity", "--limit", "1", "--auto-n", "2"]
    assert main(argv + (["--site", site] if site else [])) == 0
    err = capsys.readouterr().err
    agg = xr.load_dataset(tmp_path / "site-auto" / "aie.nc", engine="h5netcdf")
    assert int(agg.sizes["example"]) == 2 and {str(f) for f in agg["family"].values} == {f"{s}.mlp" for s in streams}
    (st,) = streams
    peak = top_layers(agg, f"{st}.mlp", SPANS[st], 1)[0]
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["sites"] == [f"{st}.layers.{peak}.mlp.down"] and res["meta"]["site_choice"] == "auto"
    assert ("no documented default sites" in err) == (site is None)


def test_cases_longer_than_the_window_are_skipped_up_front_with_the_reason():
    from lalm_interp.apps.cli.edit import fitting

    long = EditCase(EditRequest(SpokenPrompt("long", noise(5.0, 9), WORDS, (0, 1), "Paris", sample_rate=16000), "Seattle", "first", "long"))
    meta, said = {}, []
    kept = fitting([CASES[0], long, CASES[1]], 3 * 16000, meta, said.append)
    assert [c.case_id for c in kept] == ["case1", "case2"]
    assert meta["skipped"] == {"long": "edit prompt is 5.00 s, longer than the 3.00 s encoder window"}
    assert said and "skipping 1 case(s)" in said[0] and "--max-seconds" in said[0]
