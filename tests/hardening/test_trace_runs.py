"""Tracing runs on bad inputs, damaged output folders and resumes (issue 16 items 1, 5, 6 and the
outputs list; issue 14 item 6): each case asserts the error type and what its message names, or the
recovered behaviour (a quarantined file with the original bytes, a rerun equal to an uninterrupted
run). Tiny random 6+6-layer model and a 3-prompt espeak-ng benchmark; the CLI cases use the organism."""

from __future__ import annotations

import json
import os
import socket
import stat
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from lalm_interp.interventions.results import read_example, write_example
from lalm_interp.specs import Corrupt, Experiment, Restore, SpecError
from lalm_interp.tracing.run import prompts_from_bench, run_experiment

ROOT = Path(__file__).resolve().parents[2]
EXP = Experiment("h", corrupt=Corrupt(scale=3.0),
                 restores=(Restore("text.layers.*.resid", window=1, positions=("last_subject_word", "last_token")),))
DOCS = "docs/errors/specs.md"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from lalm_interp.bench.builder import build
    from lalm_interp.bench.datasets import load_facts
    from lalm_interp.bench.store import Benchmark

    out = tmp_path_factory.mktemp("bench")
    build(load_facts("known1000", limit=3), out, renditions=1, forms=("prompt", "subject"), progress=False)
    return out, prompts_from_bench(Benchmark.open(out))


@pytest.fixture(scope="module")
def reference(tiny_deep, bench, tmp_path_factory):
    """An uninterrupted run of EXP over the three prompts: the ground truth for recovered runs."""
    model, processor, a = tiny_deep
    out = tmp_path_factory.mktemp("ref")
    agg = run_experiment(model, processor, a, bench[1], EXP, out, progress=False, plots=False,
                         provenance={"model": "tiny", "benchmark": "b3"})
    return out, agg


def run(tiny_deep, prompts, out, exp=EXP, **kw):
    model, processor, a = tiny_deep
    kw.setdefault("provenance", {"model": "tiny", "benchmark": "b3"})
    return run_experiment(model, processor, a, prompts, exp, out, progress=False, plots=kw.pop("plots", False), **kw)


def long_prompt(p, seconds=5.0):
    """``p`` padded with silence to ``seconds`` (the tiny model's encoder window is 4 s)."""
    audio = np.concatenate([p.audio, np.zeros(int(seconds * 16000) - len(p.audio), np.float32)])
    return replace(p, id=p.id + "-long", audio=audio)


def manifest(out):
    return json.loads((Path(out) / "experiment.json").read_text())


def example_file(out, p):
    from lalm_interp.atomic import safe_name as _safe

    return Path(out) / "examples" / f"{_safe(p.id)}.nc"


# ---------------------------------------------------------------------------- item 1: prompts that cannot run
def test_too_long_clip_is_skipped_recorded_and_the_rest_finishes(tiny_deep, bench, reference, tmp_path, capfd):
    prompts = bench[1]
    mixed = [prompts[0], long_prompt(prompts[1]), prompts[1], prompts[2]]
    agg = run(tiny_deep, mixed, tmp_path)
    assert agg.sizes["example"] == 3 and agg.attrs["n_skipped"] == 1
    xr.testing.assert_allclose(agg["aie"], reference[1]["aie"])
    err = capfd.readouterr().err
    assert "skipped 1 of 4 prompt(s)" in err and "longer than" in err
    doc = manifest(tmp_path)
    assert doc["skipped"] == [{"id": mixed[1].id, "reason": doc["skipped"][0]["reason"]}]
    assert "5.00 s" in doc["skipped"][0]["reason"] and "4.00 s encoder window" in doc["skipped"][0]["reason"]
    assert json.loads(agg.attrs["skipped"])[0]["id"] == mixed[1].id
    # a rerun skips it again and traces nothing new
    again = run(tiny_deep, mixed, tmp_path)
    assert again.attrs["n_traced_now"] == 0 and again.attrs["n_skipped"] == 1


def test_word_timings_past_the_clip_are_skipped(tiny_deep, bench, tmp_path):
    from lalm_interp.spans import Word

    p = bench[1][0]
    words = tuple(Word(w.text, w.start_s, w.end_s) for w in p.words)
    late = replace(p, id="late", audio=p.audio[:8000],
                   words=words)  # 0.5 s of audio, words timed up to the original end
    agg = run(tiny_deep, [late, p], tmp_path)
    assert agg.sizes["example"] == 1
    reason = manifest(tmp_path)["skipped"][0]["reason"]
    assert "outside the 0.50 s clip" in reason or "after the clip" in reason or "ends" in reason


def test_no_runnable_prompt_is_a_clear_error(tiny_deep, bench, tmp_path):
    with pytest.raises(SpecError, match=r"none of the 1 prompt\(s\) can be traced.*longer than.*max-seconds"):
        run(tiny_deep, [long_prompt(bench[1][0])], tmp_path)
    assert manifest(tmp_path)["skipped"][0]["id"].endswith("-long")


def test_skips_on_a_sharded_run(tiny_deep, bench, reference, tmp_path):
    from lalm_interp.executors import LocalExecutor

    prompts = bench[1]
    agg = run(tiny_deep, [long_prompt(prompts[0]), *prompts], tmp_path, executor=LocalExecutor(), shard_size=2)
    assert agg.attrs["n_skipped"] == 1 and agg.sizes["example"] == 3
    xr.testing.assert_allclose(agg["aie"], reference[1]["aie"])


def test_duplicate_prompt_ids_are_refused(tiny_deep, bench, tmp_path):
    p = bench[1][0]
    with pytest.raises(SpecError, match="occurs more than once"):
        run(tiny_deep, [p, p], tmp_path)


# ---------------------------------------------------------------------------- item 5: one run key per folder
def _other_weights(tiny_deep):
    import copy

    import torch

    model, processor, a = tiny_deep
    m2 = copy.deepcopy(model)
    with torch.no_grad():
        next(m2.parameters()).add_(1e-3)
    return m2, processor, a


@pytest.mark.parametrize("change, needle", [
    ("model", "model 'tiny'"),
    ("weights", "weights 'Qwen2AudioForConditionalGeneration#"),
    ("benchmark", "benchmark 'b3'"),
    ("spec", "different experiment spec"),
])
def test_a_different_run_in_the_same_folder_is_refused(tiny_deep, bench, reference, tmp_path, change, needle):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    state, exp, prov = tiny_deep, EXP, {"model": "tiny", "benchmark": "b3"}
    if change == "model":
        prov = {"model": "organism", "benchmark": "b3"}
    elif change == "weights":
        state = _other_weights(tiny_deep)
    elif change == "benchmark":
        prov = {"model": "tiny", "benchmark": "b4"}
    else:
        exp = replace(EXP, corrupt=Corrupt(scale=2.0))
    with pytest.raises(SpecError) as err:
        run(state, bench[1], out, exp=exp, provenance=prov)
    msg = str(err.value)
    assert needle in msg and "never mixed" in msg and "--new-run" in msg and "new --out" in msg and DOCS in msg
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing touched


def test_new_run_moves_the_old_run_aside(tiny_deep, bench, reference, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    old_aie = (out / "aie.nc").read_bytes()
    agg = run(tiny_deep, bench[1], out, provenance={"model": "tiny-2", "benchmark": "b3"}, new_run=True)
    assert agg.attrs["n_traced_now"] == 3 and agg.attrs["model"] == "tiny-2"
    moved = list((out / "quarantine").glob("previous-run.*"))
    assert len(moved) == 1 and (moved[0] / "aie.nc").read_bytes() == old_aie
    assert len(list((moved[0] / "examples").glob("*.nc"))) == 3


def test_a_legacy_manifest_of_the_same_spec_still_resumes(tiny_deep, bench, reference, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    (out / "experiment.json").write_text(json.dumps({"experiment": EXP.to_dict(), "provenance": {"model": "tiny"}}))
    agg = run(tiny_deep, bench[1], out)
    assert agg.attrs["n_traced_now"] == 0


# ---------------------------------------------------------------------------- item 6: damaged files
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "not-an-object", "wrong-key-type"])
def test_damaged_manifest_is_quarantined_and_the_run_recovers(tiny_deep, bench, reference, tmp_path, capfd, damage):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    full = (out / "experiment.json").read_bytes()
    bad = {"truncated": full[: len(full) // 2], "garbage": b"\x00\xff not json", "empty": b"",
           "not-an-object": b"[1, 2]",
           "wrong-key-type": json.dumps({**json.loads(full), "key": "organism"}).encode()}[damage]
    (out / "experiment.json").write_bytes(bad)
    agg = run(tiny_deep, bench[1], out)
    q = list((out / "quarantine").glob("experiment.json.*"))
    assert len(q) == 1 and q[0].read_bytes() == bad  # moved, never deleted
    assert agg.attrs["n_traced_now"] == 0  # the examples carry the run key: kept
    xr.testing.assert_identical(agg["aie"], reference[1]["aie"])
    assert "experiment.json is damaged" in capfd.readouterr().err
    assert manifest(out)["runs"][-1]["quarantined"][0]["moved_to"].startswith("quarantine/experiment.json.")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "no-variables", "another-run"])
def test_damaged_example_is_quarantined_and_recomputed(tiny_deep, bench, reference, tmp_path, capfd, damage):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    target = example_file(out, bench[1][1])
    full = target.read_bytes()
    if damage == "no-variables":
        xr.Dataset(attrs={"example": bench[1][1].id}).to_netcdf(target, engine="h5netcdf")
    elif damage == "another-run":
        ds = read_example(target)
        ds.attrs["run_key"] = json.dumps({"model": "other", "weights": "x#1", "benchmark": "b3", "spec": "s"})
        target.unlink()
        write_example(ds, target)
    else:
        target.write_bytes({"truncated": full[: len(full) // 3], "garbage": os.urandom(4096), "empty": b""}[damage])
    bad = target.read_bytes()
    agg = run(tiny_deep, bench[1], out)
    q = list((out / "quarantine").glob(target.name + ".*"))
    assert len(q) == 1 and q[0].read_bytes() == bad
    assert agg.attrs["n_traced_now"] == 1
    xr.testing.assert_identical(agg["aie"], reference[1]["aie"])
    assert read_example(target).equals(read_example(example_file(reference[0], bench[1][1])))
    assert "will be recomputed" in capfd.readouterr().err
    assert manifest(out)["runs"][-1]["quarantined"][0]["file"] == f"examples/{target.name}"


def test_damaged_example_on_a_sharded_run(tiny_deep, bench, reference, tmp_path):
    import shutil

    from lalm_interp.executors import LocalExecutor

    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    example_file(out, bench[1][0]).write_bytes(b"\x89HDF\r\n garbage")
    agg = run(tiny_deep, bench[1], out, executor=LocalExecutor(), shard_size=1)
    assert agg.attrs["n_traced_now"] == 1
    xr.testing.assert_identical(agg["aie"], reference[1]["aie"])


# ---------------------------------------------------------------------------- outputs
def test_orphan_temps_of_ours_are_removed_and_nothing_else(tiny_deep, bench, reference, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(reference[0], out)
    ours = [out / "examples" / ".x.nc.somehost.999999999.abcd1234.tmp",  # atomic.temp_path, a dead pid
            out / ".aie.nc.k2j4_x9a.tmp",                                  # tempfile.mkstemp(prefix=".aie.nc.")
            out / ".experiment.json.myhost.999999998.0a1b2c3d.tmp"]
    users = [out / "notes.tmp", out / ".my-scratch.tmp", out / "examples" / "keep.tmp.txt",
             out / "tmpab_cd123.tmp", out / ".results.csv.k2j4_x9a.tmp",   # mkstemp names, not of our files
             out / "examples" / f".x.nc.{socket.gethostname().replace('.', '_')}.{os.getpid()}.abcd1234.tmp"]
    for p in ours + users:
        p.write_bytes(b"partial")
    agg = run(tiny_deep, bench[1], out)
    assert agg.attrs["n_traced_now"] == 0
    assert not any(p.exists() for p in ours)
    assert all(p.read_bytes() == b"partial" for p in users)
    assert len(manifest(out)["runs"][-1]["orphan_temps_removed"]) == 3


def test_n_traced_now_survives_resume(tiny_deep, bench, tmp_path):
    first = run(tiny_deep, bench[1][:2], tmp_path)
    example_file(tmp_path, bench[1][0]).unlink()  # an interrupted run's missing example
    again = run(tiny_deep, bench[1], tmp_path)
    assert (first.attrs["n_traced_now"], again.attrs["n_traced_now"]) == (2, 2)
    reread = xr.load_dataset(tmp_path / "aie.nc", engine="h5netcdf")
    assert int(reread.attrs["n_traced_now"]) == 2 and int(reread.attrs["n_examples"]) == 3
    assert [r["n_traced_now"] for r in manifest(tmp_path)["runs"]] == [2, 2]


def test_shared_files_have_normal_permissions(tiny_deep, bench, tmp_path):
    old = os.umask(0o022)
    try:
        run(tiny_deep, bench[1][:1], tmp_path, exp=replace(EXP, restores=(Restore(
            "text.layers.*.resid", window=1, positions=("last_token",)),)), plots=True)
    finally:
        os.umask(old)
    files = [tmp_path / "aie.nc", tmp_path / "experiment.json", tmp_path / "figure2.png",
             *sorted((tmp_path / "examples").glob("*.nc"))]
    assert {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == \
        {str(p.relative_to(tmp_path)): "0o644" for p in files}


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_write_uses_the_umask_like_open(tmp_path, umask, mode):
    from lalm_interp.atomic import atomic_write

    old = os.umask(umask)
    try:
        with atomic_write(tmp_path / "f.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_atomic_write_failure_keeps_the_old_file_and_no_temp(tmp_path):
    from lalm_interp.atomic import atomic_write

    (tmp_path / "f").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "f") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert (tmp_path / "f").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f"]


def test_provenance_names_the_model_and_its_weights(tiny_deep, bench, tmp_path):
    from lalm_interp.cache import Store
    from lalm_interp.specs import Read

    model, processor, a = tiny_deep
    exp = replace(EXP, name="reads", reads=(Read("text.layers.1.mlp"),))
    agg = run_experiment(model, processor, a, bench[1][:1], exp, tmp_path / "out", store=Store(tmp_path / "c"),
                         progress=False, plots=False)  # no provenance given: taken from the model
    doc = manifest(tmp_path / "out")
    assert doc["provenance"]["model"] not in ("", "unknown") and "#" in doc["provenance"]["weights_hash"]
    assert agg.attrs["weights"] == doc["key"]["weights"] == doc["provenance"]["weights_hash"]
    prov = Store(tmp_path / "c").get("text.layers.1.mlp", run="clean").attrs
    assert "unknown" not in json.dumps(prov) and doc["key"]["weights"] in json.dumps(prov)
    # a model loaded by its registered name is recorded by that name, as the CLI does
    from lalm_interp.loading import NAMED
    from lalm_interp.tracing.run import model_name

    assert model_name(str(NAMED["organism"])) == "organism" and model_name("/some/ckpt") == "/some/ckpt"


# ---------------------------------------------------------------------------- issue 14 item 6: windows
def test_window_longer_than_the_stack_is_clipped_with_a_note(tiny_deep, bench, tmp_path):
    from lalm_interp.specs import window_layers

    exp = Experiment("w", restores=(Restore("audio.layers.*.resid", window=10, positions=("last_word",)),))
    with pytest.warns(UserWarning, match=r"window=10 is longer than the 6 audio layers.*clipped"):
        agg = run(tiny_deep, bench[1][:1], tmp_path, exp=exp)
    assert int(agg["window_used"].sel(family="audio.resid")) == 6
    assert int(agg["window"].sel(family="audio.resid")) == 10
    assert json.loads(agg.attrs["window_used"]) == {"audio.resid": 6}
    assert manifest(tmp_path)["windows"]["audio.resid"] == {"requested": 10, "used": 6, "n_layers": 6}
    ex = read_example(next((tmp_path / "examples").glob("*.nc")))
    assert json.loads(ex.attrs["window_used"]) == {"audio.resid": 6}
    assert window_layers(0, 10, 6) == [0, 1, 2, 3, 4] and window_layers(3, 10, 6) == list(range(6))


def test_cli_trace_run_as_typed_on_the_organism(bench, tmp_path, capsys):
    """`trace run tracing_specs/hidden_audio.py --model organism` (window 10, 6 layers) works as typed;
    --forms takes a comma-separated list; the same --out with another model is refused with the fix."""
    from lalm_interp.apps.cli import main

    out = tmp_path / "o"
    args = ["trace", "run", str(ROOT / "tracing_specs" / "hidden_audio.py"), "--model", "organism",
            "--bench", str(bench[0]), "--out", str(out), "--limit", "2", "--forms", "prompt,subject", "--no-progress"]
    assert main(args) == 0
    r = capsys.readouterr()
    summary = json.loads(r.out)
    assert summary["window_used"] == {"audio.resid": 6} and summary["examples"] == 2
    assert "note:" in r.err and "clipped" in r.err
    assert manifest(out)["provenance"]["model"] == "organism"
    ids = [str(e) for e in xr.load_dataset(out / "aie.nc", engine="h5netcdf")["example"].values]
    assert [i.split("/")[1] for i in ids] == ["prompt", "subject"]  # both forms of the first fact
    assert main(args[:4] + ["tiny-random"] + args[5:]) == 2
    err = capsys.readouterr().err
    assert "--new-run" in err and "model 'organism'" in err and DOCS in err


@pytest.mark.parametrize("forms, needle", [("promt", "did you mean 'prompt'"), ("prompt,paraphrase", "'paraphrase'")])
def test_cli_unknown_form_is_named(bench, tmp_path, capsys, forms, needle):
    from lalm_interp.apps.cli import main

    args = ["trace", "run", str(ROOT / "tracing_specs" / "mlp_text.py"), "--model", "tiny-random", "--bench",
            str(bench[0]), "--out", str(tmp_path / "o"), "--forms", forms, "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and "['prompt', 'subject']" in err and DOCS in err
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_cli_forms_single_value_still_works(bench, tmp_path, capsys):
    from lalm_interp.apps.cli import main

    args = ["trace", "run", str(ROOT / "tracing_specs" / "mlp_text.py"), "--model", "tiny-random", "--bench",
            str(bench[0]), "--out", str(tmp_path / "o"), "--limit", "1", "--forms", "subject", "--no-progress"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["examples"] == 1 and summary["window_used"] == {"text.mlp": 6}
