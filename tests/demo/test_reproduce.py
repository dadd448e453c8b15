"""``lalm-interp reproduce`` on the organism at toy sizes: outputs in the demo's shapes, resumable."""

import json
import subprocess
import sys

import pytest
import xarray as xr


def _run(*args, timeout=1500):
    r = subprocess.run([sys.executable, "-m", "lalm_interp", "reproduce", *args], capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def test_figure2_protocol_and_resume(tmp_path):
    out = tmp_path / "fig2"
    args = ("figure2", "--source", "counterfact", "--limit", "6", "--n-trace", "2", "--out", str(out))
    _run(*args)
    res = json.loads((out / "results.json").read_text())
    assert res["config"] == "figure2" and res["facts"] == 6 and res["known"] >= 1
    agg = xr.load_dataset(out / "trace" / "aie.nc", engine="h5netcdf")
    assert agg.sizes["example"] == min(2, res["known"])
    assert (out / "trace" / "figure2.png").exists()
    shards = sorted((out / "trace" / "examples").glob("*.nc"))
    mtimes = [p.stat().st_mtime_ns for p in shards]
    _run(*args)  # resume: nothing recomputed
    assert [p.stat().st_mtime_ns for p in shards] == mtimes


@pytest.mark.slow
def test_table1_protocol(tmp_path):
    out = tmp_path / "t1"
    _run("table1", "--limit", "12", "--k", "3", "--m", "1", "--n-trace", "2", "--out", str(out))
    md = (out / "table1.md").read_text().strip().splitlines()
    assert len(md) == 12 and "Unedited" in md[2]
    es = json.loads((out / "edit_set.json").read_text())
    assert es  # the edit set is recorded
    # the rows are lalm_interp.plans' Table 1, layers read at the subject word the edits key on
    from lalm_interp import plans

    agg = xr.load_dataset(out / "trace" / "aie.nc", engine="h5netcdf")
    for row in plans.table1_plan(plans.aie_layers(agg, plans.layer_spans("last"))):
        doc = json.loads((out / "edits" / row.folder / "result.json").read_text())
        assert (doc["method"], doc["sites"]) == (row.editor, list(row.sites)), row


@pytest.mark.slow
def test_table2_protocol(tmp_path):
    out = tmp_path / "t2"
    _run("table2", "--limit", "8", "--k", "2", "--m", "0", "--n-trace", "2", "--out", str(out))
    md = (out / "table2.md").read_text().strip().splitlines()
    assert md[0].startswith("| Word | Top-k | Mod. | Layers | Variant |")
    rows = md[2:]
    # word position x k x (audio, text, audio→text driven, undriven, the audio stage alone)
    assert len(rows) == 2 * 3 * 5
    for k in ("1", "2", "3"):
        text_rows = [r for r in rows if f"| {k} | Text |" in r]
        assert len(text_rows) == 2 and all(r.count("text.layers.") == int(k) for r in text_rows)
        for variant in ("driven", "undriven", "audio stage alone"):
            assert len([r for r in rows if f"| {k} |" in r and f"| {variant} |" in r]) == 2


def test_a_model_that_knows_nothing_gets_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lalm_interp", "reproduce", "figure2", "--source", "known1000",
                        "--limit", "3", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "knows none of the 3 known1000 facts" in r.stderr


def test_unknown_configuration_is_refused(tmp_path):
    r = subprocess.run([sys.executable, "-m", "lalm_interp", "reproduce", "figure9", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "invalid choice" in r.stderr
