"""The segmented tracing back end (issue #18) against the batched path it replaces.

The claim under test (``docs/usage/tracing.md#savings``): with every saving on, a plan's rows give
the same object log-probabilities as the full batched forward, to float rounding (1e-5 on P), for
every restoration family, position mode, window, noise and metric, every subset of the savings,
patches both ways, and mixed row sets; rows the program cannot place fall back to the batched path.

Each comparison checks P (both metrics) to 1e-5 — the documented claim — and every object
log-prob to 1e-5 (+ 5e-6 relative: float32 rounding of log p ≈ -20) as well. On the random tiny
models P ≈ 3e-3 and its spread over a sweep is a few 1e-6, so P alone could not tell a broken
restoration from a working one; the log-probs can (spread ~1e-3). Nothing passes vacuously:
``_signal`` requires some row of each sweep to move the log-probs by 100× the tolerance, and each
test asserts how many rows ran segmented (``Compiled.segmented_rows``).
Slower, complete sweeps are marked ``slow``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
import torch

from lalm_interp.interventions import Compiled, Edit, Row, TracePrompt, read, trace_example
from lalm_interp.interventions.plan import positions_tensor
from lalm_interp.interventions.segmented import PROGRAMS, Qwen2AudioProgram, program_for
from lalm_interp.prompts import SpokenPrompt
from lalm_interp.specs import SAVINGS, Corrupt, Experiment, Patch, Restore, SpecError
from lalm_interp.wrap import wrap
from scale_kind import Scale, zeroed_forward_p

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]

TOL = 1e-5
LP_RTOL = 5e-6  # log-probs of -20 in float32 carry ~1e-6 relative rounding (a few ulps)
MODELS = ("organism", "tiny-random")
WORDS = (("Metropolitan", 0.0, 0.765), ("France's", 0.765, 1.270), ("capital", 1.270, 1.785), ("is", 1.785, 1.943))
TARGET = "Paris is"  # two or more object tokens on every tiny tokenizer: "total" differs from "first"


def clip(seed: int, seconds: float = 1.95) -> np.ndarray:
    return (0.3 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(np.float32)


EX = SpokenPrompt("ex0", clip(0), WORDS, (0, 1), TARGET, sample_rate=16000)
OTHER = clip(9)  # the clip of Corrupt(noise="replace")


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def models():
    """name → the loaded model (``Loaded``: a handle ``trace_example`` takes, and unpacks to
    (model, processor, adapter)), loaded once per module through the standard loader."""
    from lalm_interp.loading import load_model

    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_model(name)  # a Loaded: unpacks to (model, processor, adapter)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def preps(models):
    """(model name, experiment) → TracePrompt of EX (cached: tokenising and the replace clip once)."""
    cache: dict[tuple, TracePrompt] = {}

    def get(name: str, exp: Experiment) -> TracePrompt:
        key = (name, exp.to_json())
        if key not in cache:
            model, processor, a = models(name)
            repl = OTHER if exp.corrupt.noise == "replace" else None
            cache[key] = TracePrompt(model, processor, a, EX, exp, repl, replace_sample_rate=16000 if repl is not None else None)
        return cache[key]

    return get


def _p(lp: torch.Tensor, metric: str) -> torch.Tensor:
    return (lp[:, 0] if metric == "first" else lp.sum(-1)).exp()


def run_both(preps, name: str, exp: Experiment, rows_of) -> tuple[torch.Tensor, torch.Tensor, TracePrompt]:
    """(segmented, batched, prep): ``rows_of(prep)`` run with ``exp``'s savings and with savings=()
    (a second TracePrompt of the same prompt, built through the public Experiment field)."""
    new_prep = preps(name, exp)
    old_prep = preps(name, dataclasses.replace(exp, savings=()))
    rows = rows_of(new_prep)
    new = new_prep.compiled.run(rows)
    assert old_prep.compiled.program() is None  # savings=() is today's batched path
    old = old_prep.compiled.run(rows_of(old_prep))
    assert old_prep.compiled.segmented_rows == 0
    return new, old, new_prep


def assert_exact(new: torch.Tensor, old: torch.Tensor, tol: float = TOL) -> None:
    """P under both metrics, and every object log-prob, within ``tol``."""
    assert new.shape == old.shape
    for metric in ("first", "total"):
        d = (_p(new, metric) - _p(old, metric)).abs().max().item()
        assert d <= tol, f"P ({metric}) differs by {d:.3g} > {tol}"
    torch.testing.assert_close(new, old, atol=tol, rtol=LP_RTOL)


def _signal(old: torch.Tensor, ref: torch.Tensor, factor: float = 100.0) -> None:
    """Some row moves the object log-probs away from the reference run by ``factor`` × TOL: the
    sweep can tell a working restoration from none."""
    move = (old - ref).abs().max().item()
    assert move > factor * TOL, f"sweep too weak to test anything: rows move log-probs by only {move:.3g}"


def restore_rows(prep: TracePrompt, stream: str, comp: str, stride: int) -> list[Row]:
    """A small sweep of one family: window 1 "each" (every ``stride``-th row), window 3 on named
    spans and a word range, window 10 "all" — on a few centre layers."""
    spans = ("subject", "last_word", (1, 2)) + (("last_token",) if stream == "text" else ())
    rows = prep.rows(Restore(f"{stream}.layers.*.{comp}", window=1, positions="each"))[::stride]
    rows += prep.rows(Restore(f"{stream}.layers.1:4.{comp}", window=3, positions=spans))
    rows += prep.rows(Restore(f"{stream}.layers.2:4.{comp}", window=10, positions="all"))
    return rows


# ------------------------------------------------------------------------------------ 1. families
@pytest.mark.parametrize("comp", ["resid", "mlp", "attn", "mlp.down"])
@pytest.mark.parametrize("stream", ["audio", "text"])
@pytest.mark.parametrize("name", MODELS)
def test_restore_families_equal_the_batched_path(preps, name, stream, comp):
    exp = Experiment("seg")
    new, old, prep = run_both(preps, name, exp, lambda p: restore_rows(p, stream, comp, 23 if stream == "audio" else 17))
    assert prep.compiled.segmented_rows == len(new)  # every row ran segmented: the test is not vacuous
    assert_exact(new, old)
    _signal(old, prep.compiled.base()[1:2])


NOISES = {
    "gaussian-span": Corrupt(scale=10.0),
    "gaussian-fixed": Corrupt(sigma=0.7, seed=3),
    "zero": Corrupt(noise="zero"),
    "replace": Corrupt(noise="replace"),
}


def mixed_sweep(prep: TracePrompt) -> list[Row]:
    n = prep.adapter.n_layers("text")
    rows = prep.rows(Restore("audio.layers.*.resid", window=1, positions="each"))[3::37]
    rows += prep.rows(Restore("text.layers.*.attn", window=1, positions="each"))[::31]
    rows += prep.rows(Restore("audio.layers.*.mlp", window=3, positions=("subject", "last_word")))
    rows += prep.rows(Restore(f"text.layers.{n // 2}:{n}.mlp", window=10, positions="all"))
    return rows


@pytest.mark.parametrize("noise", list(NOISES))
@pytest.mark.parametrize("name", MODELS)
def test_every_noise_equals_the_batched_path(preps, models, name, noise):
    exp = Experiment("seg", corrupt=NOISES[noise])
    new, old, prep = run_both(preps, name, exp, mixed_sweep)
    c = prep.compiled
    assert c.segmented_rows == len(new)
    assert_exact(new, old)
    base = c.base()
    _signal(old, base[1:2], factor=50.0)  # another noise clip is a mild corruption of a random model
    # the program's own clean / corrupted references equal the batched (full HF) forwards
    refs = c.program().references(set())
    assert_exact(refs["lp"].cpu(), base)
    assert (base[0] - base[1]).abs().max() > 50 * TOL  # the corruption does something


@pytest.mark.parametrize("name, metric", [("organism", "total"), ("tiny-random", "first")])
def test_trace_example_default_equals_savings_off(models, monkeypatch, name, metric):
    lm = models(name)
    exp = Experiment(
        "seg", metric=metric, corrupt=Corrupt(scale=10.0),
        restores=(Restore("audio.layers.2:3.resid", window=1, positions="each"),
                  Restore("text.layers.*.mlp", window=3, positions=("subject", "last_word", "last_token")),
                  Restore("audio.layers.*.attn", window=10, positions="all"),
                  Restore("text.layers.4:5.resid", window=1, positions="each", name="text.each")),
        patches=(Patch("text.layers.2.resid", positions=("last_token",)),
                 Patch("audio.layers.1.mlp", source="corrupt", target="clean", positions=("subject",), name="back")),
    )
    seen: list[tuple[int, int]] = []
    orig = Compiled.run

    def spy(self, rows, **kw):
        out = orig(self, rows, **kw)
        seen.append((len(rows), self.segmented_rows))
        return out

    monkeypatch.setattr(Compiled, "run", spy)
    new = trace_example(lm, EX, exp)
    assert seen and all(n == s for n, s in seen)  # every family and patch ran segmented
    seen.clear()
    old = trace_example(lm, EX, dataclasses.replace(exp, savings=()))
    assert seen and all(s == 0 for _, s in seen)
    for v in ("p_clean", "p_corrupt", "p:patched", "p:back"):
        assert abs(float(new[v]) - float(old[v])) <= TOL, v
    for fam in ("audio.resid", "text.mlp", "audio.attn", "text.each"):
        a, b = new[fam].ie, old[fam].ie
        assert a.dims == b.dims and a.shape == b.shape
        for c in b.coords:
            np.testing.assert_array_equal(a[c].values, b[c].values)
        np.testing.assert_allclose(a.values, b.values, atol=TOL, rtol=0)
    assert Experiment.from_json(new.attrs["experiment"]) == exp
    assert "savings" not in json.loads(new.attrs["experiment"])
    assert json.loads(old.attrs["experiment"])["savings"] == []


# ------------------------------------------------------------------------------------ 2. savings
@pytest.mark.parametrize("stream", ["audio", "text"])
@pytest.mark.parametrize("name", MODELS)
def test_every_subset_of_the_savings_is_exact(preps, name, stream):
    def rows_of(p):
        rows = p.rows(Restore(f"{stream}.layers.*.resid", window=1, positions="each"))[:: 67 if stream == "audio" else 43]
        rows += p.rows(Restore(f"{stream}.layers.1:4.resid", window=3, positions=("subject",)))
        return rows + p.rows(Restore(f"{stream}.layers.3:4.resid", window=10, positions="all"))

    old_prep = preps(name, Experiment("seg", savings=()))
    old = old_prep.compiled.run(rows_of(old_prep))
    subsets = [s for k in range(len(SAVINGS) + 1) for s in itertools.combinations(SAVINGS, k)]
    assert len(subsets) == 8
    for subset in subsets:
        prep = preps(name, Experiment("seg", savings=subset))
        c = prep.compiled
        new = c.run(rows_of(prep))
        if not subset:
            assert c.program() is None and c.segmented_rows == 0
            assert torch.equal(new, old)
            continue
        prog = c.program()
        assert prog.savings == set(subset)
        assert c.segmented_rows == len(new), subset
        window = int(prep.inputs["input_features"].shape[-1]) // 2
        assert prog.Fe == (prog.F if "effective_length" in subset else window), subset
        assert prog.F < window  # the clip does not fill the window: effective_length has work to skip
        assert_exact(new, old)
    _signal(old, old_prep.compiled.base()[1:2])


# ------------------------------------------------------------------------------------ 3. patches
PATCHES = (
    Patch("audio.layers.0.resid", positions=("subject",), name="a0"),
    Patch("audio.layers.3.attn", positions="all", name="a3"),
    Patch("audio.layers.5.mlp.down", positions=("last_word",), name="a5"),
    Patch("text.layers.1.resid", positions="all", name="t1"),
    Patch("text.layers.3.mlp", positions=("subject", "last_token"), name="t3"),
    Patch("text.layers.4.attn", positions=((0, 1),), name="t4"),
    Patch("audio.conv2", source="corrupt", target="clean", positions=("subject",), name="c2back"),
    Patch("audio.layers.2.resid", source="corrupt", target="clean", positions="all", name="a2back"),
    Patch("audio.layers.4.mlp", source="corrupt", target="clean", positions=("first_subject_word",), name="a4back"),
    Patch("text.layers.0.mlp", source="corrupt", target="clean", positions=("subject",), name="t0back"),
    Patch("text.layers.5.resid", source="corrupt", target="clean", positions=("last_token",), name="t5back"),
    Patch("text.layers.2.attn", source="clean", target="clean", positions="all", name="noop"),
)


@pytest.mark.parametrize("name", MODELS)
def test_patches_both_ways_equal_the_batched_path(preps, name):
    exp = Experiment("seg", corrupt=Corrupt(scale=10.0))
    new, old, prep = run_both(preps, name, exp, lambda p: [r for s in PATCHES for r in p.rows(s)])
    assert prep.compiled.segmented_rows == len(PATCHES)
    assert_exact(new, old)
    base = prep.compiled.base()
    _signal(old[:6], base[1:2])   # clean → corrupted patches move the corrupted run
    _signal(old[6:], base[0:1])   # corrupted → clean patches move the clean run
    torch.testing.assert_close(new[-1], base[0], atol=TOL, rtol=LP_RTOL)  # clean into clean: the clean run
    # the corrupted subject frames at conv2 patched into the clean run: the corrupted run itself
    torch.testing.assert_close(new[6], base[1], atol=TOL, rtol=LP_RTOL)


UNSUPPORTED = (
    Patch("proj", positions=("subject",), name="proj"),
    Patch("text.layers.2.mlp.down@in", positions=("last_token",), name="down_in"),
    Patch("audio.layers.1.mlp.down@in", positions=("subject",), name="adown_in"),
)


@pytest.mark.parametrize("spec", UNSUPPORTED, ids=lambda s: s.name)
def test_unsupported_patch_sites_fall_back_to_the_batched_path(preps, spec):
    exp = Experiment("seg", corrupt=Corrupt(scale=10.0))
    new, old, prep = run_both(preps, "tiny-random", exp, lambda p: p.rows(spec))
    c = prep.compiled
    assert c.program() is not None and not c.program().supports(prep.rows(spec)[0])
    assert c.segmented_rows == 0
    assert_exact(new, old)
    _signal(old, c.base()[1:2], factor=10.0)


def test_a_text_embed_edit_falls_back_and_runs(models, preps):
    # as a spec it is refused before any compute: text.embed runs before the audio tower's corruption
    spec = Patch("text.embed", positions=("subject", "last_token"), name="embed")
    with pytest.raises(SpecError, match="runs before the corruption"):
        trace_example(models("tiny-random"), EX, Experiment("seg", corrupt=Corrupt(scale=10.0), patches=(spec,)))
    # as a raw row it runs on the batched path, without encoder reuse (embed_tokens must run in the
    # forward; before the fix the reuse path fed inputs_embeds and nnsight raised OutOfOrderError)
    prep = preps("tiny-random", Experiment("seg", corrupt=Corrupt(scale=10.0)))
    c = prep.compiled
    site = prep.adapter.one("text.embed")
    rows = [Row({"run": "embed"}, corrupted=True, edits=[Edit(site, positions_tensor(0, 3), 0)])]
    c.base()
    got = c.run(rows)
    assert c.segmented_rows == 0
    assert_exact(got, c.run(rows, reuse_encoder=False))


def test_mixed_supported_and_unsupported_rows_keep_their_order(preps):
    exp = Experiment("seg", corrupt=Corrupt(scale=10.0))

    def rows_of(p):
        sup = [r for s in PATCHES[:4] + PATCHES[6:9] for r in p.rows(s)]
        sup += p.rows(Restore("text.layers.*.mlp", window=3, positions=("last_token",)))
        uns = [r for s in UNSUPPORTED for r in p.rows(s)]
        zero = Scale("text.layers.3.mlp", 0.0, ("last_token",), name="zeroed")
        uns += zero.rows(p)
        out = []
        for k in range(max(len(sup), len(uns))):  # interleaved, unsupported first
            out += uns[k : k + 1] + sup[k : k + 1]
        return out, len(sup)

    prep = preps("tiny-random", exp)
    rows, n_sup = rows_of(prep)
    counted = Counter()
    new = prep.compiled.run(rows, progress=counted)
    assert prep.compiled.segmented_rows == n_sup and 0 < n_sup < len(rows)
    assert counted.n == len(rows)
    old_prep = preps("tiny-random", dataclasses.replace(exp, savings=()))
    old = old_prep.compiled.run(rows_of(old_prep)[0])
    assert_exact(new, old)
    # and each row equals itself run alone (order kept, nothing leaks between rows)
    for k in (0, 1, len(rows) - 2, len(rows) - 1):
        alone = prep.compiled.run([rows[k]])
        torch.testing.assert_close(alone, new[k : k + 1], atol=TOL, rtol=LP_RTOL)
    _signal(old, prep.compiled.base()[1:2])


class Counter:
    """A progress sink counting rows (``update(n)``)."""

    def __init__(self) -> None:
        self.n = 0

    def update(self, n: int) -> None:
        self.n += n


def test_hand_made_rows_mixing_streams_sources_and_targets(preps):
    """Rows Restore never makes: audio + text edits in one row, clean targets with edits, copies
    from the corrupted run into it, scattered positions, positions past the prompt, duplicates."""
    exp = Experiment("seg", corrupt=Corrupt(scale=10.0))

    def rows_of(p):
        a = p.adapter
        S = int(p.inputs["input_ids"].shape[1])
        L = p.L
        a0, n = p.batch.audio_start[0], p.batch.n_audio[0]
        subj_f = p.span_positions(a.one("audio.layers.0.resid"), ("subject",))
        subj_t = p.span_positions(a.one("text.layers.0.resid"), ("subject",))
        P = torch.tensor
        return [
            Row({"k": 0}, True, [Edit(a.one("audio.layers.2.resid"), subj_f), Edit(a.one("text.layers.4.mlp"), P([L - 1]))]),
            Row({"k": 1}, True, [Edit(a.one("text.layers.1.attn"), P([2, a0 + 3, L - 2])),
                                 Edit(a.one("text.layers.3.resid"), subj_t)]),
            Row({"k": 2}, False, [Edit(a.one("audio.layers.1.mlp"), subj_f, src=1),
                                  Edit(a.one("text.layers.2.resid"), P([L - 1]), src=1)]),
            Row({"k": 3}, False, [Edit(a.one("text.layers.0.resid"), positions_tensor(0, S), src=1)]),
            Row({"k": 4}, True, [Edit(a.one("text.layers.5.mlp.down"), positions_tensor(L - 1, S))]),  # object positions too
            Row({"k": 5}, True, [Edit(a.one("audio.conv2"), subj_f[: len(subj_f) // 2])]),
            Row({"k": 6}, True, [Edit(a.one("text.layers.2.attn"), P([1])), Edit(a.one("audio.layers.5.attn"), subj_f)]),
            Row({"k": 7}, True, [Edit(a.one("audio.layers.2.resid"), subj_f)]),  # a duplicate of part of row 0
            Row({"k": 8}, True, [Edit(a.one("audio.layers.3.resid"), subj_f, src=1)]),  # corrupt into corrupt: a no-op
            Row({"k": 9}, False, []),
            Row({"k": 10}, True, []),
            Row({"k": 11}, True, [Edit(a.one("text.layers.0.mlp"), P([a0 + n - 1])), Edit(a.one("text.layers.5.resid"), P([a0]))]),
        ]

    new, old, prep = run_both(preps, "tiny-random", exp, rows_of)
    assert prep.compiled.segmented_rows == len(new)
    assert_exact(new, old)
    base = prep.compiled.base()
    assert torch.equal(new[9], prep.compiled.program().references(set())["lp"][0].cpu())
    torch.testing.assert_close(new[8:11], torch.stack([base[1], base[0], base[1]]), atol=TOL, rtol=LP_RTOL)
    _signal(old, base[1:2])


def random_rows(p: TracePrompt, seed: int, n: int) -> list[Row]:
    """``n`` random rows: 1-3 copy edits each at any supported site (conv2, layer outputs, attn,
    mlp, mlp.down of both streams), random positions (padded frames and object positions
    included), random source and target runs."""
    g = np.random.default_rng(seed)
    a = p.adapter
    S = int(p.inputs["input_ids"].shape[1])
    T = p.full_length(a.one("audio.layers.0.resid"))
    sites = [a.one("audio.conv2")] + [a.one(f"{st}.layers.{j}.{c}") for st in ("audio", "text")
                                      for j in range(a.n_layers(st)) for c in ("resid", "attn", "mlp", "mlp.down")]
    rows = []
    for k in range(n):
        edits = []
        for i in g.choice(len(sites), size=g.integers(1, 4), replace=False):
            site = sites[i]
            length = S if site.stream == "text" else T
            lo = int(g.integers(0, length))
            pos = np.unique(g.integers(lo, min(length, lo + 1 + g.integers(0, 12)), size=g.integers(1, 6)))
            edits.append(Edit(site, torch.as_tensor(pos, dtype=torch.long), src=int(g.integers(0, 2))))
        rows.append(Row({"k": k}, corrupted=bool(g.integers(0, 4) > 0), edits=edits))
    return rows


@pytest.mark.parametrize("name, seed", [("tiny-random", 0), ("tiny-random", 1), ("organism", 2)])
def test_random_rows_equal_the_batched_path(preps, name, seed):
    exp = Experiment("seg", corrupt=Corrupt(scale=10.0))
    new, old, prep = run_both(preps, name, exp, lambda p: random_rows(p, seed, 40))
    assert prep.compiled.segmented_rows == len(new)
    assert_exact(new, old)
    _signal(old, prep.compiled.base()[1:2])


# ------------------------------------------------------------------------------------ 4. own kinds
@pytest.mark.parametrize("name", MODELS)
def test_a_registered_kind_runs_on_the_batched_path(models, monkeypatch, name):
    model, processor, a = models(name)
    zero = Scale("text.layers.2.mlp", 0.0, ("subject", "last_token"), name="zeroed")
    exp = Experiment("k", restores=(Restore("text.layers.*.mlp", window=3, positions=("last_token",)),),
                     interventions=(zero,))
    seen: list[tuple[str, int, int]] = []
    orig = Compiled.run

    def spy(self, rows, **kw):
        out = orig(self, rows, **kw)
        seen.append((next(iter(rows[0].label)), len(rows), self.segmented_rows))
        return out

    monkeypatch.setattr(Compiled, "run", spy)
    res = trace_example(model, processor, a, EX, exp)
    assert seen == [("family", 6, 6), ("run", 1, 0)]  # restorations segmented, the kind's run batched
    off = trace_example(model, processor, a, EX, dataclasses.replace(exp, savings=()))
    assert float(res["p:zeroed"]) == float(off["p:zeroed"])  # the same batched forward
    np.testing.assert_allclose(res["text.mlp"].ie.values, off["text.mlp"].ie.values, atol=TOL, rtol=0)
    # the kind did what it says: a hooked plain forward
    prep = TracePrompt(model, processor, a, EX, exp)
    site = a.one(zero.at)
    pos = prep.span_positions(site, zero.positions)

    p_ref = zeroed_forward_p(model, prep, site, pos)
    assert float(res["p:zeroed"]) == pytest.approx(p_ref, abs=1e-6)
    assert abs(np.log(float(res["p:zeroed"])) - np.log(float(res["p_clean"]))) > 100 * TOL  # the ablation did something


# ------------------------------------------------------------------------------------ 5. effective length
TINY = ("tiny-random", "organism", "tiny-voxtral", "tiny-audioflamingo3", "tiny-salmonn")


def test_which_adapters_declare_a_program_and_encoder_masking(models):
    from lalm_interp import adapters

    specs = adapters.available()
    assert {n for n, s in specs.items() if s.encoder_masks_padding} == {"qwen2_audio", "audioflamingo3"}
    assert {n for n, s in specs.items() if s.segmented} == {"qwen2_audio", "audioflamingo3"}
    assert all(s.segmented in PROGRAMS for s in specs.values() if s.segmented)
    declared = {n for n in TINY if models(n).adapter.spec.encoder_masks_padding}
    assert declared == {"tiny-random", "organism", "tiny-audioflamingo3"}


def full_window_values(model, a, inputs, sites):
    """Values at ``sites`` (batch row 0) in the model's own full-window forward (no intervention)."""
    w = wrap(model)
    saved = {}
    with torch.no_grad(), w.trace(**inputs, use_cache=False):
        for s in sorted(sites, key=a.forward_rank):
            saved[s] = read(w, a, s).clone().save()
        logits = w.output.logits.save()
    return {s: v.detach()[0] for s, v in saved.items()}, logits.detach()


@pytest.mark.parametrize("name", ["tiny-random", "organism", "tiny-audioflamingo3"])
def test_effective_length_reference_equals_the_full_window_forward(models, preps, name):
    model, _, a = models(name)
    prep = preps(name, Experiment("seg", corrupt=Corrupt(scale=10.0)))
    c = prep.compiled
    prog = c.program()
    assert isinstance(prog, Qwen2AudioProgram)
    window = int(prep.inputs["input_features"].shape[-1])
    n_mel = int(prep.inputs[a.spec.feature_mask_key].sum())
    F = (n_mel - 1) // 2 + 1
    assert prog.F == prog.Fe == F and F < window // 2  # only the real frames are computed
    assert prog.mel.shape[-1] == min(2 * F + 1, window) < window
    assert prog.n_tok == (F - 2) // 2 + 1
    n = a.n_layers("audio")
    conv2, proj = a.one("audio.conv2"), a.one("proj")
    layers = [a.one(f"audio.layers.{j}.resid") for j in range(n)]
    full, logits = full_window_values(model, a, c.inputs, [conv2, proj, *layers])
    refs = prog.references(set())
    # conv2 (pre-GELU, the corruption site) on the real frames, clean row
    close = dict(atol=TOL, rtol=LP_RTOL)
    torch.testing.assert_close(a.to_btc(conv2, refs["c2"])[0, :F], full[conv2][:F], **close)
    # every encoder layer's output on the real frames
    for j, s in enumerate(layers):
        torch.testing.assert_close(refs["audio_in"][j + 1][0], full[s][:F], **close)
    # the projector's output on the real audio tokens, as spliced into the LLM input
    a0, nt = prog.a0, prog.n_tok
    torch.testing.assert_close(refs["embeds"][0, a0 : a0 + nt], full[proj][:nt], **close)
    # object log-probs: clean from the plain forward; clean and corrupted from Compiled.base()
    lp_full = torch.log_softmax(logits[0, prep.L - 1 : prep.L - 1 + len(prep.token_ids)].float(), -1)
    lp_full = lp_full[torch.arange(len(prep.token_ids)), prep.token_ids]
    torch.testing.assert_close(refs["lp"][0].cpu(), lp_full.cpu(), **close)
    base = c.base(reads=[conv2, *layers])
    torch.testing.assert_close(refs["lp"].cpu(), base, **close)
    # the corrupted row too: conv2 and every encoder layer on the real frames
    torch.testing.assert_close(a.to_btc(conv2, refs["c2"])[1, :F].cpu(), c.read_values[conv2][1, :F], **close)
    for j, s in enumerate(layers):
        torch.testing.assert_close(refs["audio_in"][j + 1][1].cpu(), c.read_values[s][1, :F], **close)
    assert (refs["lp"][0] - refs["lp"][1]).abs().max() > 100 * TOL


@pytest.mark.parametrize("name", ["tiny-audioflamingo3"])
def test_audioflamingo3_runs_segmented_and_exactly(preps, name):
    """AudioFlamingo3 inherits Qwen2-Audio's program and flag (its encoder masks padding too)."""
    new, old, prep = run_both(preps, name, Experiment("seg", corrupt=Corrupt(scale=10.0)), mixed_sweep)
    assert prep.compiled.segmented_rows == len(new)
    assert_exact(new, old)
    _signal(old, prep.compiled.base()[1:2])


@pytest.mark.parametrize("seconds", [0.37, 1.015, 3.99], ids=["short-odd", "odd-mel", "full-window"])
def test_effective_length_at_its_boundaries(models, seconds):
    """Clips with an odd / even number of mel frames, and one that fills the window (nothing to
    skip): the reference and a sweep still equal the batched path."""
    model, processor, a = models("tiny-random")
    T = seconds
    words = (("Metropolitan", 0.0, 0.3 * T), ("France's", 0.3 * T, 0.6 * T), ("capital", 0.6 * T, 0.9 * T), ("is", 0.9 * T, T))
    ex = SpokenPrompt("edge", clip(1, T), words, (0, 1), TARGET, sample_rate=16000)
    exp = Experiment("seg", corrupt=Corrupt(span=(2, 3), scale=10.0))  # the span ends at the clip's end
    new_p = TracePrompt(model, processor, a, ex, exp)
    old_p = TracePrompt(model, processor, a, ex, dataclasses.replace(exp, savings=()))
    prog = new_p.compiled.program()
    window = int(new_p.inputs["input_features"].shape[-1])
    assert prog.Fe == prog.F and new_p.corruption.stop == prog.F
    assert (prog.F == window // 2) == (seconds == 3.99)

    def rows(pp):
        r = pp.rows(Restore("audio.layers.*.resid", window=1, positions="each"))
        return r[:: max(1, len(r) // 12)] + r[-2:] + pp.rows(Restore("text.layers.*.attn", window=3, positions=("last_word",)))

    new = new_p.compiled.run(rows(new_p))
    assert new_p.compiled.segmented_rows == len(new)
    assert_exact(new, old_p.compiled.run(rows(old_p)))
    torch.testing.assert_close(prog.references(set())["lp"].cpu(), old_p.compiled.base(), atol=TOL, rtol=LP_RTOL)


def test_adapter_without_the_flag_runs_the_full_window(models):
    """A Qwen2-Audio adapter with encoder_masks_padding=False: the program keeps the padded window
    (and masks it as the model does); still exact."""
    model, processor, a = models("tiny-random")
    spec = dataclasses.replace(a.spec, encoder_masks_padding=False)
    b = spec.bind(model.config, processor)
    exp = Experiment("seg", corrupt=Corrupt(scale=10.0))
    prep = TracePrompt(model, processor, b, EX, exp)
    prog = prep.compiled.program()
    window = int(prep.inputs["input_features"].shape[-1])
    assert prog.Fe == window // 2 > prog.F and prog.enc_mask is not None
    rows = restore_rows(prep, "audio", "resid", 41)
    new = prep.compiled.run(rows)
    assert prep.compiled.segmented_rows == len(rows)
    old = TracePrompt(model, processor, b, EX, dataclasses.replace(exp, savings=())).compiled.run(rows)
    assert_exact(new, old)
    refs = prog.references(set())
    torch.testing.assert_close(refs["lp"].cpu(), prep.compiled.base(), atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["tiny-voxtral", "tiny-salmonn"])
def test_adapters_without_a_program_fall_back(models, name):
    model, processor, a = models(name)
    assert a.spec.segmented is None and not a.spec.encoder_masks_padding
    cls, why = program_for(model, a)
    assert cls is None and a.name in why
    exp = Experiment("seg", corrupt=Corrupt(scale=10.0),
                     restores=(Restore("audio.layers.*.resid", window=1, positions=("subject", "last_word")),
                               Restore("text.layers.*.mlp", window=1, positions=("last_token",))))
    prep = TracePrompt(model, processor, a, EX, exp)
    assert prep.compiled.program() is None
    assert prep.compiled.why_batched == why
    rows = prep.rows(exp.restores[0]) + prep.rows(exp.restores[1])
    new = prep.compiled.run(rows)
    assert prep.compiled.segmented_rows == 0
    old = TracePrompt(model, processor, a, EX, dataclasses.replace(exp, savings=())).compiled.run(rows)
    assert torch.equal(new, old)
    res = trace_example(model, processor, a, EX, exp)
    assert np.isfinite(res["audio.resid"].ie.values).all() and np.isfinite(res["text.mlp"].ie.values).all()


def test_other_fallbacks_corruption_elsewhere_no_reuse_and_attention(models, preps):
    model, processor, a = models("tiny-random")
    # corruption not at conv2: no program; still runs
    exp = Experiment("seg", corrupt=Corrupt(at="audio.layers.0.resid", scale=10.0))
    prep = TracePrompt(model, processor, a, EX, exp)
    assert prep.compiled.program() is None
    assert "not audio.conv2" in prep.compiled.why_batched
    off = TracePrompt(model, processor, a, EX, Experiment("seg", savings=()))
    assert off.compiled.program() is None and off.compiled.why_batched == "Experiment.savings is ()"
    assert preps("tiny-random", Experiment("seg")).compiled.program() is not None
    assert preps("tiny-random", Experiment("seg")).compiled.why_batched is None
    rows = prep.rows(Restore("audio.layers.2:4.mlp", window=1, positions=("subject",)))
    prep.compiled.run(rows)
    assert prep.compiled.segmented_rows == 0
    # reuse_encoder=False sends every row to the batched path
    p2 = preps("tiny-random", Experiment("seg"))
    r2 = p2.rows(Restore("text.layers.*.mlp", window=1, positions=("last_token",)))
    full = p2.compiled.run(r2, reuse_encoder=False)
    assert p2.compiled.segmented_rows == 0
    seg = p2.compiled.run(r2)
    assert p2.compiled.segmented_rows == len(r2)
    assert_exact(seg, full)
    # attention the program cannot run: refused with the reason
    cfg = model.model.language_model.config
    impl = cfg._attn_implementation
    try:
        cfg._attn_implementation = "flash_attention_2"
        cls, why = program_for(model, a)
        assert cls is None and "flash_attention_2" in why
    finally:
        cfg._attn_implementation = impl
    assert program_for(model, a) == (Qwen2AudioProgram, None)


def test_eager_attention_is_exact_too(models):
    from lalm_interp.loading import load_model

    model, processor, a = load_model("tiny-random")  # a model of its own: the attention is switched
    model.set_attn_implementation("eager")
    assert model.model.language_model.config._attn_implementation == "eager"
    exp = Experiment("seg", corrupt=Corrupt(scale=10.0))
    prep = TracePrompt(model, processor, a, EX, exp)
    rows = mixed_sweep(prep)
    new = prep.compiled.run(rows)
    assert prep.compiled.segmented_rows == len(rows)
    old = TracePrompt(model, processor, a, EX, dataclasses.replace(exp, savings=())).compiled.run(rows)
    assert_exact(new, old)


# ------------------------------------------------------------------------------------ 6. the spec field
def test_savings_field_json_and_errors():
    plain = json.loads(Experiment("x").to_json())
    assert "savings" not in plain  # default: the JSON, and so the run key, as before
    assert Experiment("x").savings == SAVINGS
    assert Experiment.from_json(Experiment("x").to_json()).savings == SAVINGS
    assert Experiment("x", savings=list(SAVINGS)).to_json() == Experiment("x").to_json()
    for subset in [(), ("kv_reuse",), ("effective_length", "shared_prefix")]:
        exp = Experiment("x", savings=subset)
        d = json.loads(exp.to_json())
        assert d["savings"] == list(subset)
        back = Experiment.from_json(exp.to_json())
        assert back == exp and back.savings == subset
        assert {k: v for k, v in d.items() if k != "savings"} == plain
    for bad in [("kv_reuse", "kv_reuse"), ("kv-reuse",), ("effective_length", "speed"), "kv_reuse", ("",)]:
        with pytest.raises(SpecError, match="docs/usage/tracing.md#savings") as err:
            Experiment("x", savings=bad)
        assert "savings" in str(err.value)


def test_the_default_savings_in_another_order_keep_the_run_key():
    assert Experiment("x", savings=tuple(reversed(SAVINGS))).to_json() == Experiment("x").to_json()


# ------------------------------------------------------------------------------------ 7. memory chunks
def test_memory_chunking_is_exact_and_within_budget(preps):
    exp = Experiment("seg", corrupt=Corrupt(scale=10.0))

    def rows_of(p):
        return (p.rows(Restore("audio.layers.*.resid", window=3, positions="each"))[::53]
                + p.rows(Restore("text.layers.*.attn", window=1, positions="each"))[::37]
                + p.rows(Restore("text.layers.1:4.mlp", window=10, positions="all")))

    new, old, prep = run_both(preps, "tiny-random", exp, rows_of)
    c = prep.compiled
    prog = c.program()
    rows = rows_of(prep)
    # window 10 on 6 layers clips centres 1, 2, 3 to the same six layers: one computation for the three
    unique, twins = prog._unique([prog._job(k, r) for k, r in enumerate(rows)])
    assert len(twins) == 2 and len(unique) == len(rows) - 2
    for mb in (1, 0):
        c.memory_mb = mb
        log0, fw0 = len(prog.chunk_log), prog.forwards
        try:
            small = c.run(rows)
        finally:
            c.memory_mb = exp.memory_mb
        log = prog.chunk_log[log0:]
        assert c.segmented_rows == len(rows)
        assert_exact(small, old)
        assert sum(n for n, _ in log) == len(unique)  # every distinct row in exactly one chunk (all have edits)
        assert prog.forwards - fw0 == len(log)      # one forward per chunk (references cached)
        budget = mb * 2**20
        for n, est in log:
            assert est > 0
            assert n == 1 or est <= budget, (n, est, budget)
        if mb == 0:
            assert all(n == 1 for n, _ in log)  # nothing fits: one row per chunk
        else:
            assert len(log) > 1
    # with the default budget the same rows share far fewer chunks
    log0 = len(prog.chunk_log)
    c.run(rows)
    assert len(prog.chunk_log) - log0 < len(rows) // 2
    assert_exact(new, old)


def test_identical_rows_are_computed_once(preps):
    """Rows with the same base run and the same effective edits are one computation, and every one
    of them gets its result (window 10 on a 6-layer stack: centres 1-5 restore the same layers)."""
    exp = Experiment("seg", corrupt=Corrupt(scale=10.0))

    def rows_of(p):
        return p.rows(Restore("text.layers.*.resid", window=10, positions=("last_token", "subject")))

    new, old, prep = run_both(preps, "tiny-random", exp, rows_of)
    prog = prep.compiled.program()
    rows = rows_of(prep)
    unique, twins = prog._unique([prog._job(k, r) for k, r in enumerate(rows)])
    assert len(rows) == 12 and len(unique) == 4 and len(twins) == 8  # centres 0 | 1-5, two position groups
    log0 = len(prog.chunk_log)
    again = prep.compiled.run(rows)
    assert sum(n for n, _ in prog.chunk_log[log0:]) == 4
    for k, first in twins:
        assert torch.equal(again[k], again[first])
    assert_exact(again, old)
    assert_exact(new, old)


# ------------------------------------------------------------------------------------ 8. padded frames
@pytest.mark.parametrize("savings", [SAVINGS, ("shared_prefix", "kv_reuse")], ids=["all", "full-window"])
def test_edits_only_at_padded_frames_give_the_corrupted_run(preps, savings):
    exp = Experiment("seg", corrupt=Corrupt(scale=10.0), savings=savings)

    def rows_of(p):
        a = p.adapter
        prog_F = p.pm.n_frames("encoder")
        pad = positions_tensor(prog_F, p.full_length(a.one("audio.layers.0.resid")))
        rows = [Row({"k": j}, True, [Edit(a.one(f"audio.layers.{j}.{c}"), pad) for c in ("resid", "mlp", "attn")])
                for j in range(a.n_layers("audio"))]
        rows.append(Row({"k": "conv2"}, True, [Edit(a.one("audio.conv2"), pad)]))
        rows.append(Row({"k": "clean"}, False, [Edit(a.one("audio.layers.2.resid"), pad, src=1)]))
        return rows

    new, old, prep = run_both(preps, "tiny-random", exp, rows_of)
    c = prep.compiled
    prog = c.program()
    assert prep.pm.n_frames("encoder") == prog.F and len(rows_of(prep)[0].edits[0].positions) > 0
    assert c.segmented_rows == len(new)
    refs = prog.references(set())["lp"].cpu()
    base = c.base()
    assert_exact(new, old)
    if "effective_length" in savings:  # nothing computed there: the reference rows themselves
        assert torch.equal(new[:-1], refs[1].expand(len(new) - 1, -1))
        assert torch.equal(new[-1], refs[0])
    torch.testing.assert_close(new[:-1], base[1].expand(len(new) - 1, -1), atol=TOL, rtol=0)
    torch.testing.assert_close(new[-1], base[0], atol=TOL, rtol=0)
    torch.testing.assert_close(old[:-1], base[1].expand(len(new) - 1, -1), atol=TOL, rtol=0)


# ------------------------------------------------------------------------------------ the full sweep (slow)
@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_full_sweep_every_row_of_every_family(preps, name):
    """The lead's measurement as a test: every row (no subsampling) of resid / mlp / attn ×
    audio / text × (window 1 each, window 3 spans, window 10 all), both metrics."""
    exp = Experiment("seg")
    fams = [Restore(f"{s}.layers.*.{c}", window=w, positions=pos)
            for s in ("audio", "text") for c in ("resid", "mlp", "attn")
            for w, pos in ((1, "each"), (3, ("subject", "last_word")), (10, "all"))]
    worst = 0.0
    for f in fams:
        new, old, prep = run_both(preps, name, exp, lambda p: p.rows(f))
        assert prep.compiled.segmented_rows == len(new)
        assert_exact(new, old)
        worst = max(worst, (new.exp() - old.exp()).abs().max().item())
    assert worst <= TOL
