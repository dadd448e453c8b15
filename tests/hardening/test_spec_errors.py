"""Spec files and serialised specs that cannot be loaded (issue 16 item 4): each is a SpecError that
names the file, the line where there is one (JSON decode line/column; the spec file's line in a
Python traceback), the fix, and its docs page — never a bare traceback or KeyError. No model needed."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from lalm_interp.specs import Corrupt, Experiment, Patch, Read, Restore, SpecError, experiment_from_file

ROOT = Path(__file__).resolve().parents[2]
DOCS = "docs/errors/specs.md"
GOOD = Experiment("g", corrupt=Corrupt(seed=2), restores=(Restore("text.layers.*.mlp", window=3),),
                  patches=(Patch("text.layers.1.mlp"),), reads=(Read("proj"),))

HEAD = "from lalm_interp.specs import Corrupt, Experiment, Restore\n"
PY_CASES = {
    # name: (file text, [substrings the message must hold])
    "name-error": (HEAD + "X = 1\nEXPERIMENT = Experiment('e', restores=(Restor('text.layers.*.mlp'),))\n",
                   ["line 3", "NameError", "Restor", "fix that line"]),
    "spec-error-inside": (HEAD + "\n\nEXPERIMENT = Experiment('e', corrupt=Corrupt(noise='pink'))\n",
                          ["line 4", "Corrupt.noise='pink'", "Fix the spec there"]),
    "syntax-error": (HEAD + "EXPERIMENT = Experiment('e',\n    restores=(Restore('text.layers.*.mlp'),)\n",
                     ["line", "syntax error", "py_compile"]),
    "import-error": ("import numpy\nimport not_a_module_xyz\n", ["line 2", "ModuleNotFoundError", "not_a_module_xyz"]),
    "raise-in-function": (HEAD + "def make():\n    return {}['window']\nEXPERIMENT = make()\n",
                          ["line 3", "KeyError", "'window'"]),
    "sys-exit": ("import sys\nsys.exit(3)\n", ["line 2", "SystemExit"]),
    "no-experiment": (HEAD + "exp = Experiment('e')\n", ["defines no EXPERIMENT", "EXPERIMENT is nothing"]),
    "wrong-type": (HEAD + "EXPERIMENT = {'name': 'e'}\n", ["defines no EXPERIMENT", "EXPERIMENT is a dict"]),
}


@pytest.mark.parametrize("case", sorted(PY_CASES))
def test_python_spec_that_fails_to_load(tmp_path, case):
    text, needles = PY_CASES[case]
    f = tmp_path / f"{case}.py"
    f.write_text(text)
    with pytest.raises(SpecError) as err:
        experiment_from_file(f)
    msg = str(err.value)
    assert str(f) in msg and DOCS in msg
    for n in needles:
        assert n in msg, (n, msg)


def test_python_spec_error_line_points_into_the_spec_not_the_library(tmp_path):
    f = tmp_path / "s.py"
    f.write_text(HEAD + "A = 1\nB = 2\nEXPERIMENT = Experiment('e', restores=(Restore('audio.conv2'),))\n")
    with pytest.raises(SpecError, match=r"s\.py, line 4: Restore\.at='audio\.conv2' is not a per-layer site"):
        experiment_from_file(f)


@pytest.mark.parametrize("make, needles", [
    (lambda d: d / "nope.py", ["does not exist", "tracing_specs/hidden_audio.py"]),
    (lambda d: d, ["is a folder"]),
    (lambda d: (d / "spec.yaml").write_text("name: e") and d / "spec.yaml",
     ["unknown spec kind '.yaml'", ".py", ".json"]),
])
def test_spec_path_problems(tmp_path, make, needles):
    path = make(tmp_path)
    with pytest.raises(SpecError) as err:
        experiment_from_file(path)
    msg = str(err.value)
    assert str(path) in msg and DOCS in msg
    for n in needles:
        assert n in msg, (n, msg)


def test_missing_path_lists_the_specs_next_to_it():
    with pytest.raises(SpecError, match=r"hidden_audoi\.py' does not exist.*hidden_audio\.py"):
        experiment_from_file(ROOT / "tracing_specs" / "hidden_audoi.py")


def _json(**change):
    d = GOOD.to_dict()
    for k, v in change.items():
        d[k] = v
    return d


JSON_CASES = {
    # name: (file text, [substrings])
    "truncated": (GOOD.to_json()[:70], ["line 1, column", "malformed JSON", "Experiment.to_json()"]),
    "trailing-comma": ('{\n  "name": "e",\n  "restores": [],\n}\n', ["line 4, column 1", "malformed JSON"]),
    "missing-quote": ('{\n  "name": "e",\n  "metric: "first"\n}\n', ["line 3", "malformed JSON", '"metric: "first"']),
    "unknown-kind": (json.dumps(_json(restores=[{**GOOD.to_dict()["restores"][0], "type": "Restor"}])),
                     ["restores[0]", "unknown spec kind 'Restor'", "did you mean 'Restore'"]),
    "wrong-kind-in-list": (json.dumps(_json(reads=[{"type": "Patch", "at": "proj"}])),
                           ["reads[0]", "a Patch where a Read belongs"]),
    "missing-field": (json.dumps(_json(patches=[{"type": "Patch", "source": "clean"}])),
                      ["patches[0]", "Patch is missing the required field 'at'"]),
    "missing-name": (json.dumps({k: v for k, v in GOOD.to_dict().items() if k != "name"}),
                     ["Experiment is missing the required field 'name'"]),
    "unknown-field": (json.dumps(_json(restores=[{"type": "Restore", "at": "text.layers.*.mlp", "windw": 3}])),
                      ["restores[0]", "unknown field 'windw'", "did you mean 'window'"]),
    "bad-value": (json.dumps(_json(corrupt={"type": "Corrupt", "noise": "pink"})),
                  ["corrupt", "Corrupt.noise='pink'"]),
    "bad-site": (json.dumps(_json(reads=[{"type": "Read", "at": "txt.layers.1"}])),
                 ["reads[0]", "unknown stream 'txt'", "docs/errors/sites.md"]),
    "wrong-value-type": (json.dumps(_json(restores=[{"type": "Restore", "at": "text.layers.*.mlp", "window": "3"}])),
                         ["restores[0]", "Restore(", "is invalid"]),
    "not-a-list": (json.dumps(_json(restores={"type": "Restore"})), ["restores is dict", "list of Restore"]),
    "not-an-object": (json.dumps(_json(restores=["text.layers.*.mlp"])), ["restores[0]", "expected a JSON object"]),
    "top-level-list": ("[1, 2]", ["expected a JSON object", "got list"]),
    "top-level-type": (json.dumps({"type": "Restore", "at": "text.layers.*.mlp"}), ['"type" is \'Restore\'']),
    "null-corrupt": (json.dumps(_json(corrupt=None)), ["corrupt", "expected a JSON object", "got NoneType"]),
}


@pytest.mark.parametrize("case", sorted(JSON_CASES))
def test_json_spec_that_cannot_load(tmp_path, case):
    text, needles = JSON_CASES[case]
    f = tmp_path / f"{case}.json"
    f.write_text(text)
    with pytest.raises(SpecError) as err:
        experiment_from_file(f)
    msg = str(err.value)
    assert str(f) in msg and DOCS in msg
    for n in needles:
        assert n in msg, (n, msg)


@pytest.mark.parametrize("text, needles", [
    ('{"name": "e",', ["line 1, column 14", "malformed JSON"]),
    ('{"name": "e", "corrupt": {"noise": "zero", "type": "Korrupt"}}', ["unknown spec kind 'Korrupt'", "Corrupt"]),
    ('{"restores": []}', ["missing the required field 'name'"]),
])
def test_from_json_errors_name_the_problem(text, needles):
    with pytest.raises(SpecError) as err:
        Experiment.from_json(text)
    msg = str(err.value)
    assert DOCS in msg
    for n in needles:
        assert n in msg, (n, msg)


def test_json_specs_and_run_manifests_load(tmp_path):
    (tmp_path / "e.json").write_text(GOOD.to_json())
    assert experiment_from_file(tmp_path / "e.json") == GOOD
    (tmp_path / "experiment.json").write_text(json.dumps({"experiment": GOOD.to_dict(), "provenance": {}}))
    assert experiment_from_file(tmp_path / "experiment.json") == GOOD
    # without "corrupt" the default corruption is used (it is optional in Experiment too)
    d = GOOD.to_dict()
    d.pop("corrupt")
    assert Experiment.from_dict(d).corrupt == Corrupt()
    # a "type" left out inside a list is the list's kind
    d = GOOD.to_dict()
    d["patches"][0].pop("type")
    assert Experiment.from_dict(d) == replace(GOOD, corrupt=GOOD.corrupt)


def test_every_shipped_spec_round_trips_through_a_json_file(tmp_path):
    for f in sorted((ROOT / "tracing_specs").glob("*.py")):
        exp = experiment_from_file(f)
        (tmp_path / f"{f.stem}.json").write_text(exp.to_json())
        assert experiment_from_file(tmp_path / f"{f.stem}.json") == exp
