"""Every engine takes the model handle (issue 17, point 2): tracing, runs and workers accept an
`AudioLM` where they accept (model, processor, adapter), with the same numbers; workers rebuild the
handle from a small serialisable spec."""

from __future__ import annotations

import json

import pytest

import lalm_interp
from lalm_interp.errors import LoadError
from lalm_interp.executors import LocalExecutor
from lalm_interp.executors.base import check_model_spec, load_state
from lalm_interp.handle import AudioLM
from lalm_interp.loading import is_model_handle, model_parts
from lalm_interp.prompts import SpokenPrompt
from lalm_interp.spans import Word
from lalm_interp.specs import Corrupt, Experiment, Restore, SpecError
from lalm_interp.speech import EspeakBackend, Rendition
from lalm_interp.tracing import trace_example
from lalm_interp.tracing.run import run_experiment


@pytest.fixture(scope="module")
def lm():
    return lalm_interp.load("organism")


@pytest.fixture(scope="module")
def clip():
    return EspeakBackend().synthesize("The twin city of Beirut is", Rendition.parse("en-us:r175:p50"))


@pytest.fixture(scope="module")
def prompt(clip):
    return SpokenPrompt("beirut", clip.audio, clip.words, (4, 5), "Istanbul", sample_rate=clip.sample_rate)


EXP = Experiment("handle", corrupt=Corrupt(), restores=(Restore("text.layers.*.mlp", window=1,
                                                                positions=("last_token",)),))


def test_spoken_prompt_takes_the_synthesisers_word_spans(clip, prompt):
    assert all(isinstance(w, Word) for w in prompt.words)
    assert [(w.text, w.start_s, w.end_s) for w in prompt.words] == [(w.word, w.start_s, w.end_s) for w in clip.words]


def test_is_model_handle(lm):
    assert is_model_handle(lm)
    assert not is_model_handle(lm.model)  # a torch module is not a handle
    assert not is_model_handle(tuple(lm))


def test_trace_example_takes_the_handle_with_the_same_result(lm, prompt):
    a = trace_example(lm, prompt, EXP)
    b = trace_example(*lm, prompt, EXP)
    c = trace_example(lm, ex=prompt, exp=EXP)
    assert a.equals(b) and a.equals(c)
    assert float(a["text.mlp"].ie.sel(label="last_token").max()) > 0


def test_wrong_argument_counts_say_which_form_to_use(lm, prompt):
    with pytest.raises(LoadError, match=r"trace_example\(lm, \.\.\.\)"):
        trace_example(lm, prompt, EXP, prompt)
    with pytest.raises(SpecError, match="needs a prompt and an experiment"):
        trace_example(lm, prompt)
    assert model_parts(1, 2, 3, 4) == (1, 2, 3, 4)  # the three-part form passes through


def test_run_experiment_takes_the_handle_and_names_the_model(lm, prompt, tmp_path):
    agg = run_experiment(lm, [prompt], EXP, tmp_path / "a", progress=False, plots=False)
    ref = run_experiment(*lm, [prompt], EXP, tmp_path / "b", progress=False, plots=False,
                         provenance={"model": "organism"})
    assert agg["aie"].equals(ref["aie"])
    manifest = json.loads((tmp_path / "a" / "experiment.json").read_text())
    assert json.dumps(manifest).count('"organism"') >= 1  # the handle's name is the run's model


def test_workers_rebuild_the_handle_from_a_spec(lm):
    state = load_state(lm.spec)
    assert isinstance(state, AudioLM) and state.fingerprint == lm.fingerprint
    model, processor, adapter = state  # shard functions unpack it
    assert adapter.name == lm.adapter.name
    by_name = load_state("organism", device="cpu")
    assert by_name.fingerprint == lm.fingerprint
    with pytest.raises(LoadError, match="Did you mean"):
        check_model_spec({"name_or_path": "organism", "devcie": "cpu"})
    with pytest.raises(LoadError, match="organism"):
        check_model_spec({"name_or_path": "orgnism"})
    ex = LocalExecutor(lm.spec)
    assert ex.map(lambda st, p: [type(st).__name__, p], [1]) == [["AudioLM", 1]]
