"""The paper's plans, defined once (``lalm_interp.plans``): Figure 2's experiment, Table 1's and
Table 2's rows, how their layers are chosen, and that demo / reproduce use these definitions."""

import numpy as np
import pytest
import xarray as xr

from lalm_interp import plans
from lalm_interp.specs import SpecError

FAMILIES = [f"{s}.{k}" for s in plans.STREAMS for k in plans.KINDS]


def fake_aie(values: dict[tuple[str, str], list[float]], spans=plans.TEXT_SPANS, n_layers=6) -> xr.Dataset:
    """A Figure-2 aggregate (family × span × layer AIE) with the given curves, NaN elsewhere."""
    aie = np.full((len(FAMILIES), len(spans), n_layers), np.nan)
    for (fam, span), ys in values.items():
        aie[FAMILIES.index(fam), list(spans).index(span)] = ys
    return xr.Dataset({"aie": (("family", "span", "layer"), aie)},
                      coords={"family": FAMILIES, "span": list(spans), "layer": np.arange(n_layers)})


# The organism-like situation the two former copies disagreed on: the text MLPs' effect at the
# subject word peaks at layer 0, at the last token at layer 4.
AGG = fake_aie({("audio.mlp", "last_subject_word"): [0.1, 0.3, 0.2, 0.0, 0.05, 0.0],
                ("audio.mlp", "first_subject_word"): [0.4, 0.0, 0.0, 0.0, 0.0, 0.3],
                ("text.mlp", "last_subject_word"): [0.05, 0.04, 0.03, 0.02, 0.01, 0.0],
                ("text.mlp", "first_subject_word"): [0.0, 0.0, 0.0, 0.0, 0.0, 0.1],
                ("text.mlp", "last_token"): [0.0, 0.1, 0.2, 0.3, 0.4, 0.0]})


class FakeAdapter:
    def __init__(self, audio: int, text: int):
        self.layers = {"audio": audio, "text": text}

    def n_layers(self, stream: str) -> int:
        return self.layers[stream]


# ------------------------------------------------------------------------------------- Figure 2
def test_figure2_experiment_is_the_papers():
    exp = plans.figure2_experiment(3, seed=7)
    assert exp.name == "figure2"
    c = exp.corrupt
    assert (c.at, c.span, c.noise, c.scale, c.sigma, c.seed) == ("audio.conv2", "subject", "gaussian", 3.0, "span", 7)
    assert [r.at for r in exp.restores] == [f"{s}.layers.*.{k}" for s in ("audio", "text") for k in ("resid", "mlp", "attn")]
    assert all(r.window == 3 for r in exp.restores)
    for r in exp.restores:
        want = ("first_subject_word", "last_subject_word", "last_word") + (("last_token",) if r.at.startswith("text") else ())
        assert tuple(r.positions) == want
    assert plans.figure2_experiment(3).corrupt.seed == 0


def test_a_subset_keeps_the_full_experiments_order_and_values():
    full = plans.figure2_experiment(6)
    for streams in (("audio",), ("text",), ("text", "audio")):
        sub = plans.figure2_experiment(6, streams=streams, kinds=("mlp",))
        assert sub.restores == tuple(r for r in full.restores if r.at.endswith(".mlp") and r.at.split(".")[0] in streams)
        assert sub.corrupt == full.corrupt and sub.name == full.name
    with pytest.raises(SpecError, match="non-empty subset"):
        plans.figure2_experiment(6, kinds=("mlp.down",))


def test_the_window_is_capped_at_the_shallower_stack():
    assert plans.figure2_window(FakeAdapter(6, 6)) == 6  # the paper's 10 on the organism
    assert plans.figure2_window(FakeAdapter(32, 32)) == 10
    assert plans.figure2_window(FakeAdapter(32, 4), 3) == 3
    assert plans.figure2_window(FakeAdapter(32, 2), 3) == 2


def test_the_heatmap_experiment_restores_every_position_one_layer_at_a_time():
    exp = plans.heatmap_experiment(seed=2)
    assert [r.label for r in exp.restores] == ["audio.resid.each", "text.resid.each"]
    assert all(r.window == 1 and r.positions == "each" for r in exp.restores) and exp.corrupt.seed == 2


# --------------------------------------------------------------------------------------- Table 1
def test_table1_has_the_papers_nine_rows_in_order():
    plan = plans.table1_plan(lambda stream, k: list(range(10, 10 + k)) if stream == "audio" else list(range(20, 20 + k)))
    assert [(r.modality, r.label, r.editor) for r in plan] == [
        ("Audio", "FT", "finetune"), ("Audio", "Single-layer", "rome"), ("Audio", "Multi-layer", "alphaedit"),
        ("Text", "FT", "finetune"), ("Text", "Single-layer", "rome"), ("Text", "Multi-layer", "alphaedit"),
        ("Multi", "FT", "finetune"), ("Multi", "Single-layer", "crossmodal"),
        ("Multi", "Multi-layer", "crossmodal-alphaedit")]
    assert plan[0].sites == ("audio.layers.10.mlp.down",)
    assert plan[5].sites == tuple(f"text.layers.{l}.mlp.down" for l in (20, 21, 22))
    assert plan[8].sites == tuple(f"audio.layers.{l}.mlp.down" for l in (10, 11, 12)) + tuple(
        f"text.layers.{l}.mlp.down" for l in (20, 21, 22))  # audio then text
    assert [r.folder for r in plan][:3] == ["Audio-FT", "Audio-Single-layer", "Audio-Multi-layer"]
    assert plan.name == "table1" and len(plan) == 9


def test_the_protocol_and_the_demo_choose_text_layers_at_different_spans():
    protocol = plans.table1_plan(plans.aie_layers(AGG, plans.layer_spans("last")))
    keyed = plans.table1_plan(plans.aie_layers(AGG, plans.layer_spans("last", keyed=True)))
    assert protocol[1].sites == keyed[1].sites == ("audio.layers.1.mlp.down",)  # audio: the same span
    assert protocol[4].sites == ("text.layers.0.mlp.down",)  # text AIE at the last subject word
    assert keyed[4].sites == ("text.layers.4.mlp.down",)  # text AIE at the last token
    assert keyed[5].sites == tuple(f"text.layers.{l}.mlp.down" for l in (2, 3, 4))  # top-3, sorted
    first = plans.table1_plan(plans.aie_layers(AGG, plans.layer_spans("first")))
    assert first[1].sites == ("audio.layers.0.mlp.down",) and first[4].sites == ("text.layers.5.mlp.down",)
    assert plans.layer_spans("first", keyed=True) == {"audio": "first_subject_word", "text": "last_token"}
    with pytest.raises(SpecError, match="'first' or 'last'"):
        plans.layer_spans("middle")


def test_explicit_layers_win_and_a_missing_span_falls_back():
    choose = plans.aie_layers(AGG, plans.layer_spans("last"), explicit={"audio": (5, 3, 4), "text": None})
    assert choose("audio", 1) == [3] and choose("audio", 3) == [3, 4, 5] and choose("audio", 4) == [3, 4, 5]
    assert choose("text", 1) == [0]  # not given: from the AIE
    old = AGG.sel(span=["first_subject_word", "last_subject_word", "last_word"])  # a trace without last_token
    assert plans.aie_layers(old, plans.layer_spans(keyed=True), fallback="last_subject_word")("text", 1) == [0]
    with pytest.raises(SpecError, match="span 'last_token' not in this tracing result"):
        plans.aie_layers(old, plans.layer_spans(keyed=True))("text", 1)


def test_default_layers_give_the_documented_organism_sites():
    choose = plans.default_layers("organism")
    assert plans.sites(choose, "rome", ["audio"]) == ["audio.layers.2.mlp.down"]
    assert plans.sites(plans.DEFAULT_LAYERS["organism"], "alphaedit", ["audio"]) == [
        f"audio.layers.{l}.mlp.down" for l in (1, 2, 3)]
    assert plans.sites(choose, "crossmodal", ["audio", "text"]) == ["audio.layers.2.mlp.down", "text.layers.3.mlp.down"]
    assert plans.default_layers("qwen2_audio") is None
    assert set(plans.LAYERS_PER_STREAM) == {e.editor for e in plans.TABLE1}
    assert set(plans.TWO_STREAMS) == {e.editor for e in plans.TABLE1 if len(e.streams) == 2} - {"finetune"}


# --------------------------------------------------------------------------------------- Table 2
def test_table2_rows_and_the_crossmodal_ablation():
    plan = plans.table2_plan(lambda stream, span, k: list(range(k)) if span == "first_subject_word" else list(range(3, 3 + k)))
    assert len(plan) == 2 * 3 * 5 and plan.name == "table2"
    assert [r.variant for r in plan[:5]] == list(plans.TABLE2_VARIANTS)
    assert {(r.span, r.k) for r in plan} == {(s, k) for s in plans.TABLE2_SPANS for k in plans.TABLE2_KS}
    k1 = [r for r in plan if r.span == "last_subject_word" and r.k == 1]
    assert [r.editor for r in k1] == ["rome", "rome", "crossmodal", "crossmodal", "rome"]
    assert k1[2].sites == ("audio.layers.3.mlp.down", "text.layers.3.mlp.down")
    assert k1[3].overrides == {"drive": False} and k1[3].label == "last_subject_word top-1 undriven"
    stage = k1[4]
    assert stage.audio_stage_of == "crossmodal" and stage.text_sites == ("text.layers.3.mlp.down",)
    k3 = [r for r in plan if r.span == "first_subject_word" and r.k == 3]
    assert [r.editor for r in k3] == ["alphaedit", "alphaedit", "crossmodal-alphaedit", "crossmodal-alphaedit", "alphaedit"]


def test_rows_build_their_editors():
    pytest.importorskip("torch")
    from lalm_interp.editors import make

    a, t = ("audio.layers.1.mlp.down",), ("text.layers.3.mlp.down",)
    undriven = plans.Row("x undriven", "crossmodal", a + t, {"drive": False}).build("organism")
    assert undriven.hparams.drive is False
    assert undriven.describe() == make("crossmodal", list(a + t), preset="organism", drive=False).describe()
    stage = plans.Row("x audio stage", "rome", a, audio_stage_of="crossmodal", text_sites=t).build("organism")
    cross = make("crossmodal", list(a + t), preset="organism")
    assert stage.hparams == cross.hparams.audio  # the cross-modal editor's own audio stage
    assert stage.describe() == make("rome", list(a), cross.hparams.audio).describe()
    # the tuple form of a row (what reproduce's plans were before) is the same row
    assert plans.Row.of(("x audio stage", "rome", list(a), {"audio_stage_of": "crossmodal", "text_sites": list(t)})) == \
        plans.Row("x audio stage", "rome", a, audio_stage_of="crossmodal", text_sites=t)
    assert plans.Row.of(("FT", "finetune", list(a))) == plans.Row("FT", "finetune", a)


def test_reprs_read_as_the_table():
    row = plans.Row("x undriven", "crossmodal", ("audio.layers.1.mlp.down", "text.layers.3.mlp.down"), {"drive": False})
    assert repr(row) == "Row(Multi 'x undriven': crossmodal @ audio.layers.1.mlp.down, text.layers.3.mlp.down, drive=False)"
    text = repr(plans.table1_plan(plans.default_layers("organism")))
    lines = text.splitlines()
    assert lines[0] == "Plan 'table1': 9 row(s)" and len(lines) == 10
    assert lines[3].split() == ["Audio", "Multi-layer", "alphaedit", "audio", "1,2,3"]
    assert lines[9].split() == ["Multi", "Multi-layer", "crossmodal-alphaedit", "audio", "1,2,3", "·", "text", "3,4,5"]
    assert "audio stage alone" in repr(plans.table2_plan(lambda st, sp, k: list(range(k))))


# ----------------------------------------------------------------------------- defined once, used
def test_demo_and_reproduce_use_the_one_definition():
    from lalm_interp.apps import demo, demo_edits, reproduce

    for mod in (demo, demo_edits, reproduce):
        assert not hasattr(mod, "figure2_experiment") and not hasattr(mod, "table2_plan"), mod.__name__
    assert demo_edits.SPANS == plans.layer_spans("last", keyed=True)
    assert demo_edits.table1_plan(AGG) == plans.table1_plan(plans.aie_layers(AGG, demo_edits.SPANS))
    cfg = reproduce.ReproduceConfig("table1", audio_layers=(4,))
    chosen = plans.table1_plan(reproduce.layer_chooser(cfg, AGG))
    assert chosen[1].sites == ("audio.layers.4.mlp.down",) and chosen[4].sites == ("text.layers.0.mlp.down",)
