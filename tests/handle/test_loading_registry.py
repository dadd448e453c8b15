"""One loader and one registry of named models (lalm_interp.loading): every registered name loads
through load_model, a model spec loads the same model again, and bad names/specs fail at once."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lalm_interp import loading
from lalm_interp.errors import LoadError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_registry_holds_every_named_model_and_the_old_views_agree():
    assert {"organism", "tiny-random", "tiny-voxtral", "tiny-audioflamingo3", "tiny-salmonn"} <= set(loading.MODELS)
    assert loading.MODEL_NAMES == {n: m.description for n, m in loading.MODELS.items()}
    assert loading.NAMED == {n: m.folder for n, m in loading.MODELS.items() if m.folder is not None}
    assert loading.load is loading.load_model  # one loader, two names


@pytest.mark.parametrize("name,model_type,adapter", [("tiny-voxtral", "voxtral", "voxtral"),
                                                    ("tiny-audioflamingo3", "audioflamingo3", "audioflamingo3"),
                                                    ("tiny-salmonn", "salmonn", "salmonn")])
def test_every_builtin_name_loads_with_its_adapter_and_identity(name, model_type, adapter):
    got = loading.load_model(name)
    model, processor, bound = got
    assert model.config.model_type == model_type and bound.name == adapter
    assert got.identity.model == name and got.identity.source == "builtin"
    assert got.identity.weights_hash == loading.tensors_fingerprint(model)
    assert loading.identity(model) == got.identity and got.source == name


def test_a_spec_is_json_and_loads_the_same_model_again(tmp_path):
    got = loading.load_model("tiny-random", dtype="float32", device="auto")
    spec = json.loads(json.dumps(got.spec))
    assert spec == {"name_or_path": "tiny-random", "device": "auto", "dtype": "float32", "adapter": None,
                    "local_files_only": None}
    again = loading.load_model(**spec)
    assert again.identity == got.identity  # same tensors, same fingerprint
    # a relative checkpoint folder becomes absolute (workers may start elsewhere)
    got.model.save_pretrained(tmp_path / "ck")
    got.processor.save_pretrained(tmp_path / "ck")
    rel = loading.model_spec(str(tmp_path / "ck") + "/", dtype=__import__("torch").float32)
    assert rel["name_or_path"] == str((tmp_path / "ck").resolve()) and rel["dtype"] == "float32"


def test_check_spec_fills_defaults_and_names_a_misspelt_key():
    assert loading.check_spec({"name_or_path": "organism"}) == loading.model_spec("organism")
    with pytest.raises(LoadError, match="Did you mean 'device'") as err:
        loading.check_spec({"name_or_path": "organism", "devcie": "cpu"})
    assert "docs/errors/loading.md" in str(err.value)
    with pytest.raises(LoadError, match="at least 'name_or_path'"):
        loading.check_spec({"device": "cpu"})


def test_unknown_names_suggest_the_closest_only():
    with pytest.raises(LoadError) as err:
        loading.load_model("tiny-voxtal")
    msg = str(err.value)
    assert "Did you mean 'tiny-voxtral'?" in msg and "'tiny-salmonn' (" in msg  # listed, not suggested
    with pytest.raises(LoadError, match=r"Did you mean 'tiny-random'\?"):
        loading.load_model("tiny_random")


def test_register_model_adds_a_name_every_loader_accepts(tmp_path):
    from lalm_interp.models.tiny import tiny_qwen2_audio

    try:
        loading.register_model("my-tiny", "a test model", build=tiny_qwen2_audio)
        assert loading.resolve_source("my-tiny").kind == "builtin"
        loading.check_name("my-tiny")
        got = loading.load_model("my-tiny")
        assert got.identity.model == "my-tiny" and got.adapter.name == "qwen2_audio"
        with pytest.raises(LoadError, match="already registered"):
            loading.register_model("my-tiny", "again", build=tiny_qwen2_audio)
        with pytest.raises(LoadError, match="exactly one of folder= .* or build="):
            loading.register_model("other", "neither")
    finally:
        for d in (loading.MODELS, loading.MODEL_NAMES):
            d.pop("my-tiny", None)


def test_name_checks_stay_light():
    """Refusing a name imports neither torch nor transformers (fast driver-side checks)."""
    code = ("import sys, lalm_interp\nfrom lalm_interp import loading\n"
            "try:\n    loading.load_model('orgnism')\nexcept Exception as e:\n    print(type(e).__name__)\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout.split()
    assert out == ["LoadError", "False", "False"]
