"""Open intervention kinds: the built-in specs run through the registry, and a kind defined in the
tests (``scale_kind.Scale``, the compiler untouched) is registered, validated, compiled and serialised."""

import json
from dataclasses import dataclass

import numpy as np
import pytest

from lalm_interp.interventions import TracePrompt, kind_of, register_kind, trace_example
from lalm_interp.interventions.kinds import KINDS, PatchKind, ReadKind, RestoreKind
from lalm_interp.prompts import SpokenPrompt
from lalm_interp.specs import Corrupt, Experiment, Patch, Read, Restore, SpecError
from scale_kind import Scale, zeroed_forward_p

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = (("Metropolitan", 0.0, 0.765), ("France's", 0.765, 1.270), ("capital", 1.270, 1.785), ("is", 1.785, 1.943))


def prompt(seed=0):
    audio = (0.3 * np.random.default_rng(seed).standard_normal(int(1.95 * 16000))).astype(np.float32)
    return SpokenPrompt(f"ex{seed}", audio, WORDS, (0, 1), "Paris", sample_rate=16000)


def test_built_in_specs_are_registered_kinds():
    assert {Corrupt, Restore, Patch, Read, Scale} <= set(KINDS)
    assert isinstance(kind_of(Restore()), RestoreKind)
    assert isinstance(kind_of(Patch("text.layers.1.resid")), PatchKind)
    assert isinstance(kind_of(Read("text.layers.1.resid")), ReadKind)
    assert kind_of(Patch("text.layers.1.resid", name="x")).result_variables(Patch("text.layers.1.resid", name="x")) == ["p:x"]

    @dataclass(frozen=True)
    class Unregistered:
        at: str = "text.layers.1.mlp"

    with pytest.raises(SpecError, match="register_kind"):
        kind_of(Unregistered())
    with pytest.raises(SpecError, match="register_kind"):
        Experiment("e", interventions=(Unregistered(),))


def test_a_kind_defined_here_runs_through_the_compiler(tiny_deep):
    model, processor, a = tiny_deep
    ex = prompt()
    zero = Scale("text.layers.2.mlp", 0.0, ("last_token",), name="zeroed")
    exp = Experiment("k", restores=(Restore("text.layers.*.mlp", window=3, positions=("last_token",)),),
                     interventions=(zero, Scale("text.layers.2.mlp", 2.0, ("subject", "last_token"), "corrupt", "doubled")))
    res = trace_example(model, processor, a, ex, exp)
    # the reference: a plain forward with a torch hook that zeroes the output at the last prompt token
    prep = TracePrompt(model, processor, a, ex, exp)
    site = a.one(zero.at)
    pos = prep.span_positions(site, ("last_token",))
    assert pos.tolist() == [prep.L - 1]

    p_ref = zeroed_forward_p(model, prep, site, pos)
    assert float(res["p:zeroed"]) == pytest.approx(p_ref, abs=1e-6)
    assert float(res["p:zeroed"]) != pytest.approx(float(res["p_clean"]), abs=1e-6)  # the ablation did something
    assert "p:doubled" in res.ds and float(res["p:doubled"]) != pytest.approx(float(res["p_corrupt"]), abs=1e-6)
    # the built-in families are untouched by the extra kind
    plain = trace_example(model, processor, a, ex, Experiment("k", restores=exp.restores))
    np.testing.assert_array_equal(res["text.mlp"].ie.values, plain["text.mlp"].ie.values)
    assert Experiment.from_json(res.attrs["experiment"]) == exp


def test_a_kind_is_validated_before_compute(tiny_deep):
    model, processor, a = tiny_deep
    with pytest.raises(SpecError, match="one site"):
        trace_example(model, processor, a, prompt(), Experiment("k", interventions=(Scale("text.layers.*.mlp"),)))


def test_json_round_trip_and_plain_experiments_unchanged():
    exp = Experiment("k", restores=(Restore(),), interventions=(Scale("text.layers.1.mlp", 0.5, ("subject",)),))
    d = json.loads(exp.to_json())
    assert d["interventions"] == [{"type": "Scale", "at": "text.layers.1.mlp", "factor": 0.5,
                                   "positions": ["subject"], "run": "clean", "name": "scaled"}]
    assert Experiment.from_json(exp.to_json()) == exp
    plain = json.loads(Experiment("p", restores=(Restore(),)).to_json())
    assert "interventions" not in plain  # experiments without kinds of their own serialise as before
    assert set(plain) == {"type", "name", "corrupt", "restores", "patches", "reads", "metric", "reuse_encoder",
                          "memory_mb"}
    bad = dict(d, interventions=[{"type": "Scael", "at": "text.layers.1.mlp"}])
    with pytest.raises(SpecError, match="did you mean 'Scale'.*register_kind"):
        Experiment.from_dict(bad)


def test_registering_again_replaces_and_taken_names_are_refused():
    def define():
        @dataclass(frozen=True)
        class Twice:
            at: str = "text.layers.1.mlp"

        return Twice

    first, second = define(), define()  # a re-run notebook cell: same module and name, a new class
    register_kind(first)
    register_kind(second)
    assert kind_of(second()) is not None
    assert Experiment.from_json(Experiment("t", interventions=(second(),)).to_json()).interventions == (second(),)

    @dataclass(frozen=True)
    class Restore:  # noqa: F811 - another class under a built-in kind's name
        at: str = "x"

    with pytest.raises(SpecError, match="already registered"):
        register_kind(Restore)
