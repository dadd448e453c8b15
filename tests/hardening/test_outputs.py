"""What a researcher reads: plots and the report page tell the truth at a glance.

Signed effects on a diverging map centred on 0 with the corrupted span marked; decoded, grouped
position labels; AIE curves with a bootstrap band, n and the window; Table 1 with a caption, n,
editor and layers; rounded numbers; a generated "what we found" paragraph; a "Run" table; files
written with ordinary permissions. Synthetic results (no model), so the whole file takes seconds.
"""

import json
import os
import re
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr

from lalm_interp.apps import report
from lalm_interp.interventions.results import FamilyGrid, example_result
from lalm_interp.tracing import plots

FIXTURE_TOKENIZER = Path(__file__).resolve().parents[1] / "fixtures" / "qwen2_audio_7b"

PREFIX = ["<|im_start|>", "s", "y", "st", "em", "Ċ", "Y", "ou", "Ġare", "Ġa", "Ġhe", "l", "p", "f", "ul", "Ġas",
          "s", "ist", "an", "t", ".", "<|im_end|>", "Ċ", "<|im_start|>", "us", "er", "Ċ", "A", "u", "d", "io",
          "Ġ1", ":", "Ġ", "<|audio_bos|>"]
AUDIO_WORDS = ["The", "The", "twin", "twin", "city", "of", "Beirut", "Beirut", "Beirut", "is"]
SUFFIX = ["<|audio_eos|>", "Ċ", "C", "om", "ple", "t", "e", "Ġthe", "Ġs", "ent", "en", "ce", ".", "<|im_end|>", "Ċ",
          "<|im_start|>", "as", "s", "ist", "an", "t", "Ċ"]
EXPERIMENT = json.dumps({"corrupt": {"at": "audio.conv2", "span": "subject"},
                         "restores": [{"at": "audio.layers.*.resid", "name": "audio.resid.each", "window": 1},
                                      {"at": "text.layers.*.resid", "name": "text.resid.each", "window": 1}]})


def example_parts(seed: int = 0):
    """The IE grids, coordinates and attrs of one synthetic example (audio frames, decoder tokens)."""
    rng = np.random.default_rng(seed)
    toks = PREFIX + ["<|AUDIO|>"] * len(AUDIO_WORDS) + SUFFIX
    L = len(toks)
    a0 = len(PREFIX)
    words = [""] * a0 + AUDIO_WORDS + [""] * len(SUFFIX)
    is_audio = [a0 <= j < a0 + len(AUDIO_WORDS) for j in range(L)]
    subj_t = [w == "Beirut" for w in words]
    text = rng.normal(0, 0.05, (4, L))
    text[:, -1] = 0.6  # the last token matters
    text[1, a0 + 6] = -0.3  # the strongest effect is negative
    frames = ["The"] * 4 + ["twin"] * 6 + ["city"] * 5 + ["of"] * 3 + ["Beirut"] * 8 + ["is"] * 4
    audio = rng.normal(0, 0.05, (3, len(frames)))
    audio[:, 18:26] += 0.4
    fams = {
        "text.resid.each": (text, {"token": toks, "word": words, "is_audio": is_audio, "is_subject": subj_t}),
        "audio.resid.each": (audio, {"time_s": 0.01 + 0.02 * np.arange(len(frames)), "word": frames,
                                     "is_subject": [w == "Beirut" for w in frames]}),
    }
    attrs = {"example": "ex0", "target": "Istanbul", "words": "The twin city of Beirut is",
             "word_start_s": np.array([0.0, 0.08, 0.2, 0.3, 0.36, 0.52]),
             "word_end_s": np.array([0.08, 0.2, 0.3, 0.36, 0.52, 0.6]), "experiment": EXPERIMENT}
    return fams, attrs


def example_ds(seed: int = 0, *, zero: bool = False) -> xr.DataTree:
    """A per-example each-position result as trace_example returns it (one node per family)."""
    fams, attrs = example_parts(seed)
    grids = [FamilyGrid(f, f"{f.split('.')[0]}.layers.*.resid", "each", list(range(v.shape[0])),
                        [str(j) for j in range(v.shape[1])], np.zeros_like(v) if zero else v,
                        {k: ("position", c) for k, c in coords.items()}) for f, (v, coords) in fams.items()]
    return example_result(grids, {"p_clean": 0.9, "p_corrupt": 0.3}, attrs)


def example_format2(seed: int = 0) -> xr.Dataset:
    """The same example in format 2 (the flat Dataset of earlier versions: ``ie:<family>`` ...)."""
    fams, attrs = example_parts(seed)
    data, coords = {}, {}
    for f, (v, cs) in fams.items():
        ldim, pdim = f"layer:{f}", f"position:{f}"
        data[f"ie:{f}"] = ((ldim, pdim), v)
        coords[ldim] = np.arange(v.shape[0])
        coords[pdim] = [str(j) for j in range(v.shape[1])]
        coords.update({f"{k}:{f}": (pdim, c) for k, c in cs.items()})
    return xr.Dataset(data, coords=coords, attrs=attrs)


def aie_ds(n_ex: int = 6, *, window_used=None) -> xr.Dataset:
    rng = np.random.default_rng(1)
    fams, spans = ["audio.mlp", "text.mlp"], ["first_subject_word", "last_subject_word", "last_word", "last_token"]
    ie = rng.normal(0.1, 0.05, (n_ex, 2, 4, 5))
    ie[:, :, 0] = ie[:, :, 1]  # one-word subjects: first == last subject word
    ie[:, 0, 3] = np.nan  # the audio stream has no last token
    ds = xr.Dataset({"ie": (("example", "family", "span", "layer"), ie),
                     "p_clean": (("example",), np.full(n_ex, 0.9)), "p_corrupt": (("example",), np.full(n_ex, 0.3))},
                    coords={"example": [f"e{i}" for i in range(n_ex)], "family": fams, "span": spans,
                            "layer": np.arange(5), "stream": ("family", ["audio", "text"]),
                            "kind": ("family", ["mlp", "mlp"])})
    ds["aie"] = ds["ie"].mean("example")
    ds.attrs["experiment"] = json.dumps({"restores": [{"at": "audio.layers.*.mlp", "name": "", "window": 10},
                                                      {"at": "text.layers.*.mlp", "name": "", "window": 10}]})
    if window_used is not None:
        ds.attrs["window_used"] = window_used
    return ds


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _image(fig):
    return fig.axes[0].images[0]


# ------------------------------------------------------------------------------------ heatmaps
@pytest.mark.parametrize("family", ["text.resid.each", "audio.resid.each"])
def test_heatmap_is_diverging_and_centred_on_zero(family):
    fig = plots.heatmap_figure(example_ds(), family)
    im = _image(fig)
    assert im.get_cmap().name == plots.DIVERGING_CMAP
    assert im.norm.vmin == pytest.approx(-im.norm.vmax)
    assert im.norm(0.0) == pytest.approx(0.5)
    r, g, b, _ = im.get_cmap()(im.norm(0.0))
    assert min(r, g, b) > 0.9  # no effect reads as white, not as "active"


def test_strongest_negative_effect_is_coloured_not_white():
    ds = example_ds()
    fig = plots.heatmap_figure(ds, "text.resid.each")
    im = _image(fig)
    lo = float(ds["text.resid.each"].ie.min())
    r, g, b, _ = im.get_cmap()(im.norm(lo))
    assert b > r + 0.3  # saturated blue (Purples drew the most negative cell white)


def test_all_zero_heatmap_does_not_divide_by_zero():
    ds = example_ds(zero=True)
    assert not ds["text.resid.each"].ie.values.any()
    im = _image(plots.heatmap_figure(ds, "text.resid.each"))
    assert np.isfinite([im.norm.vmin, im.norm.vmax]).all() and im.norm.vmax > 0


@pytest.mark.parametrize("family", ["text.resid.each", "audio.resid.each"])
def test_corrupted_subject_span_is_marked(family):
    ds = example_ds()
    ax = plots.heatmap_figure(ds, family).axes[0]
    boxes = [p for p in ax.patches if p.get_gid() == "subject-span"]
    assert len(boxes) == 1
    cols = np.flatnonzero(ds[family].is_subject.values)
    x0, w = boxes[0].get_x(), boxes[0].get_width()
    assert x0 == pytest.approx(cols[0] - 0.5) and x0 + w == pytest.approx(cols[-1] + 0.5)
    assert any("corrupted subject" in t.get_text() for t in ax.texts)


def test_spectrogram_heatmap_is_diverging_and_marks_the_span():
    ds = example_ds()
    audio = np.random.default_rng(0).normal(0, 0.1, 16000 * 6 // 10).astype(np.float32)
    fig = plots.spectrogram_figure(ds, "audio.resid.each", audio)
    ax1 = fig.axes[1]
    im = ax1.images[0]
    assert im.get_cmap().name == plots.DIVERGING_CMAP and im.norm(0.0) == pytest.approx(0.5)
    box = [p for p in ax1.patches if p.get_gid() == "subject-span"][0]
    t = ds["audio.resid.each"].time_s.values[ds["audio.resid.each"].is_subject.values]
    assert box.get_x() < t[0] < t[-1] < box.get_x() + box.get_width()


@pytest.mark.parametrize("family", ["text.resid.each", "audio.resid.each"])
def test_heatmap_of_a_format2_dataset_is_the_same_picture(family):
    """Files of earlier versions (format 2) still plot, into the same picture."""
    new, old = plots.heatmap_figure(example_ds(), family).axes[0], plots.heatmap_figure(example_format2(), family).axes[0]
    np.testing.assert_array_equal(new.images[0].get_array(), old.images[0].get_array())
    assert [t.get_text() for t in new.get_xticklabels()] == [t.get_text() for t in old.get_xticklabels()]
    assert [(p.get_x(), p.get_width()) for p in new.patches] == [(p.get_x(), p.get_width()) for p in old.patches]
    assert new.get_title() == old.get_title()


def test_heatmap_written_as_png_and_pdf(tmp_path):
    paths = plots.plot_heatmap(example_ds(), "text.resid.each", tmp_path / "hm")
    assert [p.suffix for p in paths] == [".png", ".pdf"] and all(p.stat().st_size > 1000 for p in paths)


# ------------------------------------------------------------------------------------ labels
@pytest.mark.parametrize("token, text", [("Ġom", " om"), ("Ċ", "\n"), ("Ġ1", " 1"), ("<|im_start|>", "<|im_start|>"),
                                         ("Paris", "Paris"), ("ĠParÃ©", " Paré"), ("▁Paris", " Paris")])
def test_readable_token_decodes_byte_level_symbols(token, text):
    assert plots.readable_token(token) == text


def test_readable_token_uses_a_given_tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(FIXTURE_TOKENIZER, local_files_only=True)
    assert plots.readable_token("Ġom", tok) == " om"
    assert plots.readable_token("ĠParis", tok) == " Paris"


def test_text_positions_grouped_into_readable_labels():
    ds = example_ds()
    fam = "text.resid.each"
    toks = [str(t) for t in ds[fam].token.values]
    groups = plots.text_position_groups(toks, ds[fam].is_audio.values, list(ds[fam].word.values))
    labels = [g[2] for g in groups]
    # every position is covered exactly once, in order
    assert groups[0][0] == 0 and groups[-1][1] == len(toks)
    assert all(a[1] == b[0] for a, b in zip(groups, groups[1:]))
    assert labels[0] == "<system prompt>" and groups[0][1] >= 20  # the chat template is one run
    for w in ("The", "twin", "city", "of", "Beirut", "is", "Complete", "the", "sentence.", "<assistant>"):
        assert w in labels, w
    assert labels[-1] == "last token" and groups[-1] == (len(toks) - 1, len(toks), "last token")
    assert not any(c in "".join(labels) for c in "ĠĊ")  # no byte-level fragments


def test_text_heatmap_tick_labels_are_decoded():
    ax = plots.heatmap_figure(example_ds(), "text.resid.each").axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert "<system prompt>" in ticks and "Beirut" in ticks and "last token" in ticks
    assert not any("Ġ" in t or "Ċ" in t for t in ticks)
    assert len(ticks) < 30  # grouped: far fewer ticks than the 67 positions


def test_audio_heatmap_labels_frames_by_word_once():
    ax = plots.heatmap_figure(example_ds(), "audio.resid.each").axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["The", "twin", "city", "of", "Beirut", "is"]


# ------------------------------------------------------------------------------------ AIE curves
def test_bootstrap_interval_is_deterministic_and_brackets_the_mean():
    v = np.random.default_rng(3).normal(0.2, 0.1, (12, 5))
    lo, hi = plots.bootstrap_ci(v)
    lo2, hi2 = plots.bootstrap_ci(v)
    assert np.array_equal(lo, lo2) and np.array_equal(hi, hi2)
    m = v.mean(0)
    assert (lo < m).all() and (m < hi).all()
    # roughly mean ± 1.96 σ/√n
    assert np.allclose(hi - lo, 2 * 1.96 * v.std(0, ddof=1) / np.sqrt(12), rtol=0.35)
    one_lo, one_hi = plots.bootstrap_ci(v[:1])
    assert np.allclose(one_lo, v[0]) and np.allclose(one_hi, v[0])


def test_aie_panels_have_bands_n_and_window():
    fig = plots.aie_figure(aie_ds(6))
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2
    for ax in axes:
        assert ax.collections, "no uncertainty band"
        assert "n=6" in ax.get_title() and "window 10" in ax.get_title()
    assert "n=6" in fig._suptitle.get_text() and "95%" in fig._suptitle.get_text()


def test_window_in_title_is_the_window_used():
    fig = plots.aie_figure(aie_ds(4, window_used=json.dumps({"audio.mlp": {"requested": 10, "used": 6},
                                                             "text.mlp": {"requested": 10, "used": 6}})))
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert all("window 6" in t for t in titles), titles


@pytest.mark.parametrize("value, expected", [(3, 3), ({"text.mlp": 5}, 5), (json.dumps({"text.mlp": {"used": 2}}), 2),
                                             (None, 10)])
def test_window_of(value, expected):
    assert plots.window_of(aie_ds(2, window_used=value), "text.mlp") == expected


def test_first_and_last_subject_word_stay_distinguishable_when_equal():
    fig = plots.aie_figure(aie_ds(5))
    ax = [a for a in fig.axes if a.get_visible()][1]
    lines = {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}
    first, last = lines["first subject word"], lines["last subject word"]
    assert np.allclose(first.get_ydata(), last.get_ydata())  # they coincide in this data
    assert first.get_linestyle() != last.get_linestyle() and first.get_marker() != last.get_marker()
    assert first.get_zorder() != last.get_zorder()  # the later-drawn equal curve sits on top
    assert any("=" in t.get_text() for t in ax.texts)  # and the panel says they are equal


def test_plot_aie_writes_files(tmp_path):
    paths = plots.plot_aie(aie_ds(3), tmp_path / "figure2")
    assert all(p.exists() and p.stat().st_size > 1000 for p in paths)


# ------------------------------------------------------------------------------------ report
@pytest.mark.parametrize("value, text", [(63.422758661882206, "63.42"), (0.5, "0.50"), (7, "7"), (float("nan"), "–"),
                                         (None, "–"), ("Text", "Text"), (np.float32(1.006), "1.01")])
def test_numbers_rounded_for_reading(value, text):
    assert report.fmt(value) == text


def test_table_cells_rounded_and_captioned():
    html = report._table(["Score"], [[63.422758661882206]], caption="Score: the harmonic mean")
    assert "63.42" in html and "63.4227" not in html and "<caption>Score: the harmonic mean</caption>" in html


def test_page_written_with_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        p = report.write(tmp_path / "index.html", "t", [report.Section("s", html="<p>x</p>")])
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644  # mkstemp alone gave 0600
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_page_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        p = report.write_text(tmp_path / "private.html", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600


ROWS = [
    {"modality": "–", "method": "Unedited", "editor": "-", "sites": [], "score": 29.0912, "es": 20.4, "ps": 24.4,
     "ns": 76.18, "n_cases": 12, "n_paraphrase": 10, "n_neighbourhood": 12, "reached": 0.0, "dW_rel_median": None},
    {"modality": "Text", "method": "Single-layer", "editor": "rome", "sites": ["text.layers.4.mlp.down"],
     "score": 63.422758661882206, "es": 91.66666666666667, "ps": 50.0, "ns": 58.333333, "n_cases": 12,
     "n_paraphrase": 10, "n_neighbourhood": 12, "reached": 83.3333, "dW_rel_median": 0.01234567},
    {"modality": "Multi", "method": "Multi-layer", "editor": "crossmodal-alphaedit",
     "sites": ["audio.layers.0.mlp.down", "audio.layers.1.mlp.down", "text.layers.3.mlp.down"],
     "score": 40.0, "es": 50.0, "ps": 30.0, "ns": 50.0, "n_cases": 12, "n_paraphrase": 10, "n_neighbourhood": 12,
     "reached": 25.0, "dW_rel_median": 0.2},
]


def test_table1_has_n_editor_layers_and_measured_columns():
    from lalm_interp.apps.demo import table1_table

    header, body = table1_table(ROWS)
    for h in ("Editor", "Edited layers", "n", "Score", "ES", "PS", "NS", "n para.", "n neigh.", "Reached",
              "‖ΔW‖/‖W‖"):
        assert h in header, h
    row = dict(zip(header, body[1]))
    assert row["Editor"] == "rome" and row["Edited layers"] == "text 4" and row["n"] == 12
    assert dict(zip(header, body[2]))["Edited layers"] == "audio 0,1 · text 3"
    assert row["‖ΔW‖/‖W‖"] == "0.012"


def test_table1_without_measured_fields_still_renders():
    from lalm_interp.apps.demo import table1_table

    old = [{k: r[k] for k in ("modality", "method", "editor", "sites", "score", "es", "ps", "ns")} for r in ROWS]
    header, body = table1_table(old)
    assert header[:9] == ["Mod.", "Method", "Editor", "Edited layers", "n", "Score", "ES", "PS", "NS"]
    assert len(header) == 9 and report.fmt(body[1][4]) == "–"


def _summary():
    return {"config": {}, "rendition": "en-us:r175:p50", "facts": 10, "known": 8, "prompts_longer_than_window": 1,
            "trace": {"examples": 3, "p_clean": 0.8781234, "p_corrupt": 0.5329876,
                      "peaks": {"audio.resid": {"span": "last_subject_word", "layer": 5, "aie": 0.3471},
                                "audio.mlp": {"span": "last_subject_word", "layer": 1, "aie": 0.0351},
                                "text.mlp": {"span": "last_subject_word", "layer": 2, "aie": 0.1583},
                                "text.attn": {"span": "last_token", "layer": 3, "aie": 0.2961}}},
            "table1_rows": ROWS, "stages_s": {"load model": 3.4123, "causal tracing": 28.7456}}


def test_what_we_found_is_generated_from_the_results():
    from lalm_interp.apps.demo import findings

    text = findings(_summary())
    assert "0.878" in text and "0.533" in text and "n=3" in text
    assert "audio encoder" in text and "MLP layer 1" in text and "hidden state layer 5" in text
    assert "text decoder" in text and "attention layer 3" in text
    assert "Best editor: Text Single-layer (rome at text 4), Score 63.42" in text and "29.09 unedited" in text
    assert "n=12 edit cases" in text


def _page(tmp_path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lalm_interp.apps.demo import DemoConfig, write_report

    for f in ("heatmap_spectrogram.png", "heatmap/heatmap_text.resid.each.png", "trace/figure2.png"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        plt.figure(figsize=(1, 1)).savefig(tmp_path / f)
    prompt = SimpleNamespace(words=[SimpleNamespace(text=w) for w in "The twin city of Beirut is".split()],
                             target="Istanbul", audio=np.zeros(1600, np.float32))
    path = write_report(DemoConfig(out=str(tmp_path)), _summary(), "", prompt)
    return path.read_text()


def test_page_opens_with_findings_and_has_captioned_table1_and_run_table(tmp_path):
    page = _page(tmp_path)
    found = page.index("What we found")
    assert found < page.index("<h2>")  # it opens the page
    cap = re.search(r"<caption>(.*?)</caption>", page, flags=re.S).group(1)
    for term in ("ES (efficacy)", "PS (generalisation)", "NS (specificity)", "harmonic mean", "n: edit cases"):
        assert term in cap, term
    run = page[page.index("<h2>Run</h2>"):]
    assert "<table>" in run and "<pre>" not in run and "{" not in run  # a table, not a JSON dump
    assert "3.4" in run and "3.4123" not in run and "28.7" in run
    assert "63.42" in page and "63.4227" not in page and "91.67" in page  # rounded everywhere


def test_demo_cli_summary_is_rounded():
    from lalm_interp.apps.cli.demo import summary_text

    text = summary_text(_summary())
    assert "Score  63.42" in text and "63.4227" not in text and "P_clean 0.878" in text
    assert "n=12" in text and "load model 3.4 s" in text
