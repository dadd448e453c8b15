"""Hyper-parameter presets as data files (issue 14 item 4), the paper preset's values, the
model's default preset, and the v*-loss terms against ROME's own formulas."""

import dataclasses
import json
import warnings

import pytest
import torch

from lalm_interp.editors import (
    AlphaEditHParams,
    EditorError,
    FineTuneHParams,
    RomeHParams,
    losses,
    make,
    presets,
)
from lalm_interp.editors.crossmodal import CrossModalHParams
from lalm_interp.editors.rome import Rome

OWN = {"rome": RomeHParams, "alphaedit": AlphaEditHParams, "finetune": FineTuneHParams}


def shipped():
    return [(e, p) for e in OWN for p in presets.available(e)]


def test_every_editor_ships_paper_and_organism():
    for editor in OWN:
        assert {"paper", "organism"} <= set(presets.available(editor)), editor


@pytest.mark.parametrize("editor,preset", shipped())
def test_preset_files_set_every_field_and_say_why(editor, preset):
    raw = presets.read(editor, preset)
    fields = {f.name for f in dataclasses.fields(OWN[editor])}
    values = {k for k in raw if not k.startswith("_")}
    assert values == fields, f"{editor}/{preset} must set every field (missing {fields - values}, extra {values - fields})"
    assert raw["_doc"] and set(raw["_reasons"]) == fields
    assert all(isinstance(v, str) and len(v) > 10 and v != "TBD" for v in raw["_reasons"].values())
    hp = presets.load(editor, preset)
    assert isinstance(hp, OWN[editor])
    for k in fields:  # JSON lists become tuples, everything else as written
        want = raw[k]
        assert getattr(hp, k) == (tuple(want) if isinstance(want, list) else want)


@pytest.mark.parametrize("editor", list(OWN))
def test_dataclass_defaults_are_the_paper_preset(editor):
    assert presets.load(editor, "paper") == OWN[editor]()


def test_paper_preset_has_the_papers_and_romes_settings():
    r = presets.load("rome", "paper")
    assert (r.steps, r.clamp_norm_factor, r.wd_form, r.kl_direction) == (10, 4.0, "rome", "rome")
    assert r.weight_decay_streams == ("audio",) and r.key_span == "word" and r.keys == "mean"
    a = presets.load("alphaedit", "paper")
    assert (a.threshold_mode, a.nullspace_threshold, a.l2_mode, a.l2) == ("absolute", 2e-2, "absolute", 10.0)
    assert (a.steps, a.key_span, a.keys) == (10, "word", "mean")
    f = presets.load("finetune", "paper")
    assert f.params == "weight+bias" and f.order == "audio_then_text"


def test_unknown_preset_names_the_valid_ones_and_the_closest():
    with pytest.raises(EditorError) as e:
        make("rome", "text.layers.1.mlp.down", preset="orgnism")
    msg = str(e.value)
    assert "'orgnism'" in msg and "Did you mean 'organism'" in msg and "'paper'" in msg and "presets" in msg
    with pytest.raises(EditorError, match="no presets at all"):
        presets.path("no-such-editor-folder", "paper")


def test_make_and_the_constructor_take_a_preset_then_overrides():
    ed = make("rome", "audio.layers.1.mlp.down", preset="organism", steps=3)
    org = presets.load("rome", "organism")
    assert ed.hparams == dataclasses.replace(org, steps=3) and ed.preset == "organism"
    assert Rome("audio.layers.1", preset="organism").hparams == org
    assert make("rome", "audio.layers.1").hparams == RomeHParams() and make("rome", "audio.layers.1").preset is None
    with pytest.raises(EditorError, match="either hparams= or preset="):
        make("rome", "audio.layers.1", RomeHParams(), preset="paper")
    with pytest.raises(EditorError, match="unknown hyper-parameter"):
        make("alphaedit", "audio.layers.1:3", preset="organism", stepz=3)


def test_from_dict_nests_ignores_docs_and_rejects_unknown_keys():
    hp = presets.from_dict(CrossModalHParams, {"_doc": "x", "audio": {"steps": 7, "weight_decay_streams": ["audio", "text"]},
                                               "drive_scale": 0.5})
    assert hp.audio.steps == 7 and hp.audio.weight_decay_streams == ("audio", "text") and hp.text == RomeHParams()
    assert hp.drive_scale == 0.5
    with pytest.raises(EditorError, match=r"audio: unknown hyper-parameter\(s\) \['stepz'\]"):
        presets.from_dict(CrossModalHParams, {"audio": {"stepz": 1}})


def test_bad_preset_file_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "rome").mkdir()
    (tmp_path / "rome" / "broken.json").write_text("{not json")
    (tmp_path / "rome" / "list.json").write_text("[1, 2]")
    monkeypatch.setattr(presets, "PRESET_DIR", tmp_path)
    with pytest.raises(EditorError, match="cannot be read"):
        presets.load("rome", "broken")
    with pytest.raises(EditorError, match="JSON object"):
        presets.load("rome", "list")


def test_default_preset_comes_from_the_model_then_the_adapter(tiny, tmp_path):
    from lalm_interp.adapters.qwen2_audio import ADAPTER

    model, _, adapter = tiny
    assert ADAPTER.default_preset == "paper"
    assert presets.default_preset(model, adapter) == "paper"  # a plain Qwen2-Audio
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "manifest.json").write_text(json.dumps({"name": "organism", "recipe": {"n_subjects": 40}}))

    class M:  # an organism checkpoint: its config names the folder that holds the manifest
        config = type("C", (), {"_name_or_path": str(ckpt)})()

    assert presets.default_preset(M(), adapter) == "organism"
    m = M()
    m.lalm_interp_preset = "paper"  # an explicit attribute wins
    assert presets.default_preset(m, adapter) == "paper"


def test_default_preset_of_the_shipped_organism():
    from pathlib import Path

    import lalm_interp

    ckpt = Path(lalm_interp.__file__).parent / "assets" / "organism"
    if not (ckpt / "manifest.json").is_file():
        pytest.skip("no shipped organism")

    class M:
        config = type("C", (), {"_name_or_path": str(ckpt)})()

    assert presets.default_preset(M()) == "organism"


# ----------------------------------------------------------------------------- loss terms
def test_weight_decay_forms_match_romes_compute_v():
    g = torch.Generator().manual_seed(0)
    delta, v = torch.randn(64, generator=g), torch.randn(64, generator=g)
    rome_ref = 0.5 * (torch.norm(delta) / torch.norm(v) ** 2)  # rome/compute_v.py, v_weight_decay = 0.5
    assert torch.allclose(losses.weight_decay_term(delta, float(v.norm()), 0.5, "rome"), rome_ref)
    assert torch.allclose(losses.weight_decay_term(delta, float(v.norm()), 1e-3, "squared"),
                          1e-3 * delta.pow(2).sum() / v.norm() ** 2)
    # the two forms differ (the project's first form was the squared one)
    assert not torch.allclose(losses.weight_decay_term(delta, 2.0, 1.0, "rome"),
                              losses.weight_decay_term(delta, 2.0, 1.0, "squared"))
    with pytest.raises(ValueError, match="expected one of"):
        losses.weight_decay_term(delta, 1.0, 1.0, "l1")


def test_kl_directions_match_torch_kl_div_as_rome_calls_it():
    g = torch.Generator().manual_seed(1)
    log_p0 = torch.log_softmax(torch.randn(3, 50, generator=g), -1)
    log_pd = torch.log_softmax(torch.randn(3, 50, generator=g), -1)
    f = torch.nn.functional.kl_div
    rome = f(log_p0, log_pd, log_target=True, reduction="batchmean")  # rome/compute_v.py: KL(P_delta || P0)
    assert torch.allclose(losses.kl_term(log_p0, log_pd, "rome"), rome)
    assert torch.allclose(losses.kl_term(log_p0, log_pd, "reverse"),
                          f(log_pd, log_p0, log_target=True, reduction="batchmean"))
    assert not torch.allclose(losses.kl_term(log_p0, log_pd, "rome"), losses.kl_term(log_p0, log_pd, "reverse"))
    one = losses.kl_term(log_p0[0], log_pd[0], "rome")  # one next-token distribution (no batch dim)
    assert torch.allclose(one, f(log_p0[:1], log_pd[:1], log_target=True, reduction="batchmean"))


@pytest.mark.parametrize("site,wd", [("audio.layers.1.mlp.down", 0.5), ("text.layers.1.mlp.down", 0.0)])
def test_paper_weight_decay_applies_to_audio_layer_edits_only(monkeypatch, site, wd):
    from lalm_interp.editors import rome as rome_mod
    from lalm_interp.sites import parse

    got = {}

    def fake(ctx, prep, s, name, **kw):
        got.update(kw)
        return "result"

    monkeypatch.setattr(rome_mod, "optimise_delta", fake)
    hp = presets.load("rome", "paper")
    with warnings.catch_warnings():  # a fake without wd_form/kl_direction: the fallback warning is expected
        warnings.simplefilter("ignore")
        assert rome_mod.optimise_value(None, None, parse(site), "x", hp, kl_preps=[]) == "result"
    assert got["weight_decay"] == wd and got["steps"] == 10 and got["clamp_norm_factor"] == 4.0
    org = presets.load("rome", "organism")
    rome_mod.optimise_value(None, None, parse(site), "x", org, kl_preps=[])
    assert got["weight_decay"] == 1e-3  # organism: both streams


@pytest.mark.parametrize("bad,match", [({"wd_form": "l1"}, "wd_form"), ({"kl_direction": "forward"}, "kl_direction"),
                                       ({"weight_decay_streams": "audio"}, "weight_decay_streams"),
                                       ({"weight_decay_streams": ("speech",)}, "weight_decay_streams")])
def test_loss_options_are_validated(bad, match):
    for name in ("rome", "alphaedit"):
        with pytest.raises(EditorError, match=match):
            make(name, "audio.layers.1", **bad)


@pytest.mark.parametrize("bad,match", [({"params": "all"}, "params"), ({"order": "text_first"}, "order")])
def test_finetune_options_are_validated(bad, match):
    with pytest.raises(EditorError, match=match):
        make("finetune", "audio.layers.1", **bad)


def test_a_composite_editor_takes_its_stages_presets():
    from lalm_interp.editors.crossmodal import CrossModalAlphaEditHParams

    if "organism" in presets.available("crossmodal-alphaedit"):
        pytest.skip("crossmodal-alphaedit ships its own organism file, which wins")
    hp = presets.load("crossmodal-alphaedit", "organism")
    assert isinstance(hp, CrossModalAlphaEditHParams)
    assert hp.audio == presets.load("alphaedit", "organism") == hp.text
    assert hp.drive == CrossModalAlphaEditHParams().drive  # non-stage fields: the defaults
