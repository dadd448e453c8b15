"""The offline demo end to end on the embedded organism (reduced --quick size, every stage), its
outputs, and its HTML page rendered in headless Chromium."""

import html
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

ORGANISM = Path(__file__).resolve().parents[2] / "lalm_interp" / "assets" / "organism" / "config.json"


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    assert ORGANISM.exists(), "the organism checkpoint must be shipped in lalm_interp/assets/organism"
    out = tmp_path_factory.mktemp("demo")
    r = subprocess.run([sys.executable, "-m", "lalm_interp", "demo", "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "index.html" in r.stdout  # the closing summary names the outputs
    (out / "_stdout.txt").write_text(r.stdout)
    (out / "_stderr.txt").write_text(r.stderr)
    return out


def test_cli_output_is_readable(demo_out):
    stdout, stderr = (demo_out / "_stdout.txt").read_text(), (demo_out / "_stderr.txt").read_text()
    assert "Loading weights" not in stdout + stderr  # transformers' bar stays out
    assert not re.search(r"\d+\.\d{4,}", stdout), stdout  # numbers rounded for reading
    assert re.search(r"Score +\d+\.\d\d ", stdout) and "Corrupting the subject" in stdout


def test_page_reads_at_a_glance(demo_out):
    page = (demo_out / "index.html").read_text()
    res = json.loads((demo_out / "results.json").read_text())
    assert page.index("What we found") < page.index("<h2>")  # the page opens with the findings
    assert res["found"].split(".")[0] in html.unescape(page)
    for fam in ("audio.mlp", "text.mlp"):
        assert fam in res["trace"]["peaks"]
    cap = re.search(r"<caption>(.*?)</caption>", page, flags=re.S).group(1)
    assert "harmonic mean" in cap and "ES (efficacy)" in cap
    run = page[page.index("<h2>Run</h2>"):]
    assert "<table>" in run and "<pre>" not in run
    assert not re.search(r">\d+\.\d{4,}<", page)  # table cells rounded
    umask = os.umask(0)
    os.umask(umask)
    for f in ("index.html", "results.json", "table1.md", "trace/figure2.png"):
        assert stat.S_IMODE((demo_out / f).stat().st_mode) == 0o666 & ~umask, f  # shareable, not 0600


def test_outputs_parse_and_touch_every_stage(demo_out):
    res = json.loads((demo_out / "results.json").read_text())
    for stage in ("load model", "benchmark (espeak-ng)", "known filter", "causal tracing",
                  "heatmap over spectrogram", "editing (Table 1)", "report"):
        assert stage in res["stages_s"], stage
    assert res["known"] >= 1 and res["trace"]["examples"] >= 1
    assert res["trace"]["p_clean"] > res["trace"]["p_corrupt"]  # corrupting the subject hurts
    rows = res["table1_rows"]
    assert len(rows) == 10 and rows[0]["method"] == "Unedited"
    assert {(r["modality"], r["method"]) for r in rows[1:]} == {
        (m, k) for m in ("Audio", "Text", "Multi") for k in ("FT", "Single-layer", "Multi-layer")}
    md = (demo_out / "table1.md").read_text().strip().splitlines()
    assert md[0].startswith("| Mod. | Method | Score | ES | PS | NS |") and len(md) == 12
    agg = xr.load_dataset(demo_out / "trace" / "aie.nc", engine="h5netcdf")
    assert set(agg["stream"].values) == {"audio", "text"} and set(agg["kind"].values) == {"resid", "mlp", "attn"}
    for f in ("trace/figure2.png", "trace/figure2.pdf", "heatmap_spectrogram.png", "index.html"):
        assert (demo_out / f).stat().st_size > 1000, f
    page = (demo_out / "index.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 and "data:audio/wav;base64," in page
    assert "http://" not in page and "https://" not in page  # self-contained, no network


def test_the_edited_layers_are_the_plans(demo_out):
    """The demo edits what ``lalm_interp.plans`` says: Table 1's rows in order, with each stream's
    layers read from the demo's own trace where the editors key (``layer_spans(keyed=True)``)."""
    from lalm_interp import plans

    res = json.loads((demo_out / "results.json").read_text())
    agg = xr.load_dataset(demo_out / "trace" / "aie.nc", engine="h5netcdf")
    plan = plans.table1_plan(plans.aie_layers(agg, plans.layer_spans("last", keyed=True)))
    assert [(r["modality"], r["method"], r["editor"], r["sites"]) for r in res["table1_rows"][1:]] == [
        (row.modality, row.label, row.editor, list(row.sites)) for row in plan]
    for row in plan:
        assert json.loads((demo_out / "edits" / row.folder / "result.json").read_text())["sites"] == list(row.sites)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_page_renders_with_plots_in_headless_chromium(demo_out, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    shot = tmp_path / "shot.png"
    r = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2400",
         (demo_out / "index.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert shot.exists(), r.stderr[-2000:]
    from matplotlib.image import imread

    img = imread(shot)
    assert img.shape[:2] == (2400, 1200)
    rgb = img[..., :3]
    assert rgb.std() > 0.05  # not blank
    # the plots: rows with many non-white, coloured pixels (heatmaps / curves) exist well below the title
    coloured = (np.abs(rgb - rgb.mean(axis=-1, keepdims=True)).sum(-1) > 0.15).sum(axis=1)
    assert (coloured[200:] > 100).sum() > 200
