"""Per-example tracing results as DataTrees a notebook user can slice (lalm_interp.interventions.results).

The fixtures ``fixtures/format2_ex{0,1}.nc`` are per-example files written by the code before this
format existed (``trace_example`` of format 2, tiny random Qwen2-Audio 6+6 layers, seed 1; the
prompts of ``test_tracing.prompt(0)`` / ``prompt(1)``; the spec is in their ``experiment`` attr).
"""

import dataclasses
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from lalm_interp.interventions import results as R
from lalm_interp.interventions.results import FamilyGrid, aggregate, example_result, families, read_example, write_example
from lalm_interp.specs import Experiment, Restore, SpecError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OLD = [FIXTURES / f"format2_ex{i}.nc" for i in (0, 1)]


def old_aggregate(results, exp):
    """Format 2's ``tracing.causal.aggregate``, verbatim: the reference the new aggregate must equal."""
    from lalm_interp.sites import Site

    def _is_span_mode(exp, family):
        for r in exp.restores:
            if r.label == family:
                return r.positions != "each"
        return False

    fams = [r.label for r in exp.restores]
    spans = []
    max_layer = 0
    for ds in results:
        for f in fams:
            spans.extend(str(s) for s in ds[f"position:{f}"].values if _is_span_mode(exp, f))
            max_layer = max(max_layer, int(ds[f"layer:{f}"].max()) + 1)
    if any(not _is_span_mode(exp, f) for f in fams):
        spans.append("subject_mean")
    spans = list(dict.fromkeys(spans)) or ["all"]
    ie = np.full((len(results), len(fams), len(spans), max_layer), np.nan)
    for i, ds in enumerate(results):
        for j, f in enumerate(fams):
            da = ds[f"ie:{f}"]
            if not _is_span_mode(exp, f):
                subj = f"is_subject:{f}"
                if subj in ds.coords and bool(ds[subj].values.any()):
                    mean = da.values[:, ds[subj].values.astype(bool)].mean(axis=1)
                    for layer, v in zip(ds[f"layer:{f}"].values, mean):
                        ie[i, j, spans.index("subject_mean"), int(layer)] = v
                continue
            for s in da[f"position:{f}"].values:
                k = spans.index(str(s))
                for layer, v in zip(ds[f"layer:{f}"].values, da.sel({f"position:{f}": s}).values):
                    ie[i, j, k, int(layer)] = v
    streams = [Site.parse(r.at).stream for r in exp.restores]
    kinds = [Site.parse(r.at).component for r in exp.restores]
    out = xr.Dataset(
        {"ie": (("example", "family", "span", "layer"), ie),
         "p_clean": (("example",), [float(ds["p_clean"]) for ds in results]),
         "p_corrupt": (("example",), [float(ds["p_corrupt"]) for ds in results])},
        coords={"example": [ds.attrs["example"] for ds in results], "family": fams, "span": spans,
                "layer": np.arange(max_layer), "stream": ("family", streams), "kind": ("family", kinds)})
    out["aie"] = out["ie"].mean("example")
    out.attrs["experiment"] = exp.to_json()
    return out


def grids(seed=0, n_text=4, n_audio=3):
    """Two families of different depth: a text span-mode grid and an audio each-mode grid."""
    rng = np.random.default_rng(seed)
    spans = ["first_subject_word", "last_word", "last_token"]
    frames = ["The", "The", "city", "Beirut", "Beirut", "is"]
    return [
        FamilyGrid("text.mlp", "text.layers.*.mlp", R.positions_mode(tuple(spans)), list(range(n_text)), spans,
                   rng.normal(0, 0.1, (n_text, 3)), {}),
        FamilyGrid("audio.resid.each", "audio.layers.*.resid", "each", list(range(n_audio)),
                   [str(j) for j in range(6)], rng.normal(0, 0.1, (n_audio, 6)),
                   {"time_s": ("position", [0.02 * j for j in range(6)]), "word": ("position", frames),
                    "is_subject": ("position", [w == "Beirut" for w in frames])}),
    ]


def result(seed=0, **kw):
    return example_result(grids(seed, **kw), {"p_clean": 0.9 - 0.1 * seed, "p_corrupt": 0.2, "p:patched": 0.5},
                          {"example": f"e{seed}", "target": "Istanbul", "word_start_s": np.array([0.0, 0.04])})


EXP = Experiment("e", restores=(Restore("text.layers.*.mlp", positions=("first_subject_word", "last_word", "last_token")),
                                Restore("audio.layers.*.resid", window=1, positions="each", name="audio.resid.each")))


# ------------------------------------------------------------------------------------ structure
def test_plain_dims_integer_coords_and_slicing():
    res = result()
    assert isinstance(res, xr.DataTree)
    assert families(res) == ["text.mlp", "audio.resid.each"]
    ie = res["text.mlp"].ie
    assert ie.dims == ("layer", "position")
    assert ie["layer"].dtype.kind == "i" and ie["position"].dtype.kind == "i"
    assert list(ie["position"].values) == [0, 1, 2]
    assert list(ie["label"].values) == ["first_subject_word", "last_word", "last_token"]
    g = grids()[0]
    np.testing.assert_array_equal(ie.sel(layer=2).values, g.values[2])
    np.testing.assert_array_equal(ie.sel(label="last_token").values, g.values[:, 2])  # spans by name
    audio = res["audio.resid.each"].ie
    assert audio.shape == (3, 6)
    assert list(audio["word"].values[:3]) == ["The", "The", "city"]
    assert audio["time_s"].values[1] == pytest.approx(0.02)
    assert list(audio["is_subject"].values) == [False, False, False, True, True, False]
    np.testing.assert_array_equal(audio.sel(layer=1).where(audio.is_subject, drop=True).values, grids()[1].values[1, 3:5])
    assert float(res["p_clean"]) == 0.9 and float(res["p:patched"]) == 0.5
    assert res.attrs["example"] == "e0" and res.attrs["target"] == "Istanbul"
    assert res["audio.resid.each"].attrs == {"site": "audio.layers.*.resid", "positions": "each"}
    assert res["text.mlp"].attrs["positions"] == "first_subject_word,last_word,last_token"


def test_plot_draws_a_layer_by_position_heatmap():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        res = result()
        mesh = res["audio.resid.each"].ie.plot()
        ax = mesh.axes
        assert ax.get_ylabel() == "centre layer" and ax.get_xlabel() == "position index"
        assert mesh.get_array().shape[:2] == (3, 6) or mesh.get_array().size == 18  # one cell per (layer, position)
        assert mesh.cmap.name == "RdBu_r" and mesh.norm.vmin == pytest.approx(-mesh.norm.vmax)  # diverging at 0
        assert "IE" in ax.figure.axes[-1].get_ylabel()  # the colourbar names the quantity
    finally:
        plt.close("all")


def test_family_grid_repr_is_short_and_says_what_it_holds():
    g = grids()[1]
    text = repr(g)
    assert text.startswith("FamilyGrid('audio.resid.each', site='audio.layers.*.resid', positions='each'")
    assert "values 3×6" in text and "['is_subject', 'time_s', 'word']" in text and "layers 0..2" in text
    assert len(text) < 250 and "0.0" not in text  # no array dump


@pytest.mark.parametrize("bad, needle", [
    (dict(values=np.zeros((2, 2))), "values have shape"),
    (dict(coords={"word": ("position", ["a"])}), "one value per key"),
    (dict(coords={"word": ("frame", ["a"] * 6)}), "expected 'position'"),
    (dict(coords={"label": ("position", ["a"] * 6)}), "clashes"),
    (dict(keys=["0"] * 6), "repeat"),
    (dict(family="a/b"), "no '/'"),
    (dict(family="p_clean"), "name of a scalar"),
])
def test_bad_grids_are_refused_with_the_fix(bad, needle):
    g = grids()[1]
    fields = dict(family=g.family, site=g.site, positions=g.positions, layers=g.layers, keys=g.keys,
                  values=g.values, coords=g.coords)
    fields.update(bad)
    with pytest.raises(SpecError, match=needle):
        example_result([FamilyGrid(**fields)], {"p_clean": 1.0, "p_corrupt": 0.0}, {})


def test_duplicate_family_is_refused():
    g = grids()[0]
    with pytest.raises(SpecError, match="more than once"):
        example_result([g, g], {"p_clean": 1.0}, {})


def test_positions_mode():
    assert R.positions_mode("each") == "each" and R.positions_mode("all") == "all"
    assert R.positions_mode(("subject", (0, 1), "last_token")) == "subject,words0-1,last_token"


# ------------------------------------------------------------------------------------ files
def test_write_read_round_trip_is_identical_atomic_and_plain_netcdf(tmp_path):
    res = result()
    path = tmp_path / "examples" / "e0.nc"
    old = os.umask(0o022)
    try:
        write_example(res, path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["e0.nc"]  # no temp file left
    back = read_example(path)
    xr.testing.assert_identical(back, res)
    np.testing.assert_array_equal(back["text.mlp"].ie.sel(label="last_word").values, grids()[0].values[:, 1])
    assert families(back) == families(res)  # group order survives the file
    # a family is a netCDF group: plain xarray opens it
    with xr.open_dataset(path, engine="h5netcdf", group="audio.resid.each") as ds:
        assert ds["ie"].dims == ("layer", "position") and list(ds["word"].values[:2]) == ["The", "The"]
    lazy = read_example(path, chunks={})
    assert not isinstance(lazy["text.mlp"].ie.variable._data, np.ndarray)  # dask-backed, not loaded
    xr.testing.assert_identical(lazy.load(), res)


def test_a_failed_write_leaves_no_file(tmp_path):
    path = tmp_path / "e.nc"
    bad = result()
    bad.attrs["unstorable"] = {"a": 1}  # netCDF attrs cannot hold a dict
    with pytest.raises(Exception):
        write_example(bad, path)
    assert list(tmp_path.iterdir()) == []


def format2(res: xr.DataTree) -> xr.Dataset:
    """The format-2 Dataset of a result, written the way format-2 trace_example wrote it."""
    data, coords = {}, {}
    for f in families(res):
        node = res[f].to_dataset()
        ldim, pdim = f"layer:{f}", f"position:{f}"
        data[f"ie:{f}"] = ((ldim, pdim), node.ie.values)
        coords[ldim] = node.layer.values
        coords[pdim] = [str(k) for k in node.label.values]
        for c in node.coords:
            if c not in ("layer", "position", "label"):
                coords[f"{c}:{f}"] = (pdim, node[c].values)
    for k, v in res.ds.data_vars.items():
        data[k] = ((), float(v))
    return xr.Dataset(data, coords=coords, attrs=dict(res.attrs))


def test_format2_files_are_read_and_converted(tmp_path):
    res = result()
    res.attrs["experiment"] = EXP.to_json()
    path = tmp_path / "old.nc"
    format2(res).to_netcdf(path, engine="h5netcdf")
    back = read_example(path)
    assert families(back) == ["text.mlp", "audio.resid.each"]
    xr.testing.assert_equal(back, res)
    for f in families(res):
        assert back[f].attrs == res[f].attrs  # site and positions come from the recorded spec
    assert back.attrs["example"] == "e0"
    np.testing.assert_array_equal(back.attrs["word_start_s"], [0.0, 0.04])
    # without a recorded spec: the mode is inferred from the keys, the site is unknown
    plain = format2(result())
    plain.to_netcdf(tmp_path / "plain.nc", engine="h5netcdf")
    guess = read_example(tmp_path / "plain.nc")
    assert guess["audio.resid.each"].attrs == {"site": "", "positions": "each"}
    assert guess["text.mlp"].attrs["positions"] == "first_subject_word,last_word,last_token"
    # and a format-2 file rewritten is a file of the new format
    write_example(back, tmp_path / "new.nc")
    xr.testing.assert_identical(read_example(tmp_path / "new.nc"), back)
    assert not R.is_format2(xr.load_dataset(tmp_path / "new.nc", engine="h5netcdf"))


def test_old_run_files_read_back_and_equal_todays_trace(tiny_deep):
    """A per-example file written before this format (the fixture) reads back as the same result
    the current code traces for that prompt: old runs stay readable, the numbers are unchanged."""
    from lalm_interp.prompts import SpokenPrompt
    from lalm_interp.tracing import trace_example

    model, processor, a = tiny_deep
    old = read_example(OLD[0])
    exp = Experiment.from_json(old.attrs["experiment"])
    assert families(old) == [r.label for r in exp.restores]
    words = (("Metropolitan", 0.0, 0.765), ("France's", 0.765, 1.270), ("capital", 1.270, 1.785), ("is", 1.785, 1.943))
    audio = (0.3 * np.random.default_rng(0).standard_normal(int(1.95 * 16000))).astype(np.float32)
    ex = SpokenPrompt("ex0", audio, words, (0, 1), "Paris", sample_rate=16000)  # test_tracing.prompt(0)
    # the batched compiler (savings off) reproduces the old numbers bit for bit ...
    batched = R.as_result(trace_example(model, processor, a, ex, dataclasses.replace(exp, savings=())))
    assert json.loads(batched.attrs.pop("experiment")) == {**json.loads(old.attrs["experiment"]), "savings": []}
    batched.attrs["experiment"] = old.attrs["experiment"]
    xr.testing.assert_identical(batched, old)
    # ... and the default (segmented) path to float rounding, with every label and attribute but the count of forwards
    now = R.as_result(trace_example(model, processor, a, ex, exp))
    assert now.attrs.keys() == old.attrs.keys()
    for k, v in old.attrs.items():
        if k != "forwards":
            np.testing.assert_equal(now.attrs[k], v)
    for f in families(old):
        np.testing.assert_allclose(now[f].ie.values, old[f].ie.values, rtol=0, atol=1e-6)
        xr.testing.assert_identical(now[f].ie.coords.to_dataset(), old[f].ie.coords.to_dataset())
    ds = xr.load_dataset(OLD[0], engine="h5netcdf")
    for f in families(old):  # the conversion moved every number and label across
        np.testing.assert_array_equal(old[f].ie.values, ds[f"ie:{f}"].values)
        assert list(old[f].label.values) == [str(k) for k in ds[f"position:{f}"].values]
    assert list(old["audio.attn.each"].time_s.values[:2]) == pytest.approx([0.0, 0.02])
    assert old["text.resid"].is_audio.values.sum() == 49 and old["text.attn"].attrs["positions"] == "words0-1,subject"


# ------------------------------------------------------------------------------------ aggregate
def test_aggregate_equals_the_format2_aggregate_on_old_run_files():
    olds = [xr.load_dataset(p, engine="h5netcdf") for p in OLD]
    exp = Experiment.from_json(olds[0].attrs["experiment"])
    want = old_aggregate(olds, exp)
    assert np.isfinite(want["aie"].sel(span="subject_mean").values).any()  # the each-mode summary is exercised
    xr.testing.assert_identical(aggregate([read_example(p) for p in OLD], exp), want)
    xr.testing.assert_identical(aggregate(olds, exp), want)  # format-2 Datasets are accepted as they are
    xr.testing.assert_identical(aggregate([read_example(OLD[0], chunks={}), olds[1]], exp), want)  # mixed, lazy


def test_aggregate_equals_the_format2_aggregate_on_stacks_of_different_depth():
    res = [result(0), result(1, n_text=5, n_audio=2)]
    want = old_aggregate([format2(r) for r in res], EXP)
    got = aggregate(res, EXP)
    xr.testing.assert_identical(got, want)
    assert got["ie"].dims == ("example", "family", "span", "layer") and got.sizes["layer"] == 5
    assert list(got["span"].values) == ["first_subject_word", "last_word", "last_token", "subject_mean"]
    assert np.isnan(got["ie"].sel(family="audio.resid.each", layer=[2, 3, 4]).values[1]).all()
    subj = grids(1, n_text=5, n_audio=2)[1].values[:, 3:5].mean(axis=1)
    np.testing.assert_allclose(got["ie"].sel(example="e1", family="audio.resid.each", span="subject_mean").values[:2], subj)
    with pytest.raises(SpecError, match="no per-example results"):
        aggregate([], EXP)


def test_as_result_refuses_other_objects():
    with pytest.raises(TypeError, match="read_example"):
        R.as_result(np.zeros(3))
