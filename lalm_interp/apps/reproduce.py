"""``lalm-interp reproduce figure2|table1|table2``: the paper's protocol on any registered model.

* ``figure2`` — speak Known-1000 (``--data`` for the full file; the shipped subset otherwise),
  keep the facts the model knows (top-1 first object token), trace hidden / MLP / attention
  restorations in both streams at the first/last subject word, last word and last token, and plot
  the AIE curves (the demo's outputs: ``trace/aie.nc``, ``trace/figure2.png`` …).
* ``table1`` — speak CounterFact, filter known facts, build the edit set of ``K`` known + ``M``
  random cases (paper: 200 + 300, seeded), trace to choose layers (top-1 AIE MLP layer per stream
  at the keyed word for single-layer edits, top-3 for multi-layer; or ``--audio-layers`` /
  ``--text-layers``), run the nine Table-1 rows and write ``table1.md`` + per-row results.
* ``table2`` — the layer-selection study: for each word position (first / last subject word) and
  k ∈ {1, 2, 3}, the top-k AIE layers of each stream, edited with single-layer (k = 1) or
  multi-layer (k > 1) editors; writes ``table2.md``. The cross-modal rows come with their
  ablation (docs/editors/crossmodal.md#ablation): ``driven`` (the paper's method, the default),
  ``undriven`` (``drive=False``: plain sequential editing) and ``audio stage alone`` (the audio
  editor with the cross-modal editor's own audio hyper-parameters; computed once when it equals
  the audio row).

Every stage writes into ``--out`` and is resumable (the benchmark reuses its clips, tracing skips
completed examples, editing rows with a ``result.json`` are skipped). With an executor
(``--executor ray``) tracing shards, each editing row's key statistics and its edit cases run on
the workers (docs/usage/scale-out.md); without one everything runs in this process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import xarray as xr

CONFIGS = ("figure2", "table1", "table2")


@dataclass(frozen=True)
class ReproduceConfig:
    """Knobs of ``reproduce`` (defaults: the paper's protocol).

    config: ``figure2``, ``table1`` or ``table2``.
    model: a registered name, a checkpoint directory or a hub id available offline
        (``Qwen/Qwen2-Audio-7B-Instruct`` when you have the weights).
    data: path of the full dataset file (Known-1000 for figure2; CounterFact, ROME or KnowEdit
        format, for the tables). ``None``: the subsets shipped in the package.
    source: dataset of ``figure2`` (paper: ``known1000``; ``counterfact`` for a model trained on
        CounterFact facts, like the organism). The tables always use CounterFact.
    out: output folder. limit: facts read from the dataset (``None``: all).
    renditions: espeak-ng renditions per prompt. n_trace: known facts traced.
    k_known / m_random: the edit set (paper: 200 filtered + 300 random). seed: edit-set sampling.
    window: layers restored around each centre (paper: 10; capped at the stack depth).
    word: subject word the edit keys are taken at (``first`` / ``last``).
    audio_layers / text_layers: explicit editing layers (``None``: chosen from the AIE).
    preset: editor hyper-parameter preset (``None``: the model's own,
        ``editors.presets.default_preset`` — ``organism`` for the organism, ``paper`` for Qwen2-Audio).
    librispeech: a LibriSpeech split folder for the protected / statistics corpus (5,000 utterances,
        as in the paper); ``None``: the synthesised fallback (``bench.corpus.SYNTH_N`` sentences).
    """

    config: str
    model: str = "organism"
    data: str | None = None
    source: str = "known1000"
    out: str = "reproduce_out"
    limit: int | None = None
    renditions: int = 1
    n_trace: int = 100
    k_known: int = 200
    m_random: int = 300
    seed: int = 0
    window: int = 10
    word: str = "last"
    audio_layers: tuple[int, ...] | None = None
    text_layers: tuple[int, ...] | None = None
    instruction: str = "Complete the sentence."
    preset: str | None = None
    librispeech: str | None = None


def _stage_bench(cfg: ReproduceConfig, source: str):
    from ..bench import Benchmark, build, load_facts

    facts = load_facts(source, cfg.data, limit=cfg.limit)
    forms = ("prompt", "subject") if source == "known1000" else ("prompt", "subject", "paraphrase", "neighbourhood")
    out = Path(cfg.out) / "bench"
    build(facts, out, renditions=cfg.renditions, forms=forms, progress=True, source=source)
    return Benchmark.open(out)




def _trace(cfg: ReproduceConfig, model, processor, adapter, bench, known: Sequence[str]):
    from .demo import figure2_experiment
    from ..tracing.run import prompts_from_bench, run_experiment

    window = min(cfg.window, adapter.n_layers("audio"), adapter.n_layers("text"))
    prompts = [replace(p, instruction=cfg.instruction)
               for p in prompts_from_bench(bench, limit=cfg.n_trace, fact_ids=list(known))]
    return run_experiment(model, processor, adapter, prompts, figure2_experiment(window, cfg.seed),
                          Path(cfg.out) / "trace", provenance={"model": cfg.model, "dataset": str(cfg.data or "shipped")})


Row = tuple  # (label, editor name, sites) or (label, editor name, sites, overrides)


def _editor(row: Row, preset: str) -> Any:
    """The editor of a plan row in ``preset``; overrides ``{"audio_stage_of": cross-modal name,
    "text_sites": [...]}`` build the cross-modal editor's own audio stage (its ``audio``
    hyper-parameters) alone."""
    from ..editors import make

    label, name, sites, *rest = row
    kw = dict(rest[0]) if rest else {}
    cross = kw.pop("audio_stage_of", None)
    if cross:
        return make(name, sites, make(cross, sites + kw.pop("text_sites"), preset=preset).hparams.audio, **kw)
    return make(name, sites, preset=preset, **kw)


def _edit_rows(cfg: ReproduceConfig, model, processor, adapter, bench, case_ids: Sequence[str],
               plan: Sequence[Row], folder: str) -> list[dict[str, Any]]:
    """Run the editing rows of ``plan`` (label, editor name, sites[, hyper-parameter overrides]).
    A row whose editor (name, sites, hyper-parameters) equals an earlier row's reuses its result.
    With an executor (``executors.using``, ``--executor ray``) each row's key statistics are
    computed in corpus chunks on the workers and its edit cases are spread over them
    (accumulating rows as one shard); the in-process path is unchanged."""
    import json as _json

    from tqdm.auto import tqdm

    from .. import evaluation, executors
    from ..bench.corpus import corpus_id, protected_corpus
    from ..cache import Store
    from ..editors import EditContext, KeyCorpus

    out = Path(cfg.out)
    cases = evaluation.cases_from_benchmark(bench, word=cfg.word, fact_ids=list(case_ids),
                                            instruction=cfg.instruction)
    if cfg.librispeech:  # the paper's protected corpus: 5,000 LibriSpeech utterances
        utts = protected_corpus(cfg.librispeech)
        cid = corpus_id(utts, f"librispeech:{Path(cfg.librispeech).name}")
    else:  # the synthesised fallback, SYNTH_N sentences (docs/editors/protected-corpus.md)
        utts = protected_corpus(None, fallback_dir=out / "protected_corpus")
        cid = corpus_id(utts)
    ctx = EditContext(model, processor, adapter, store=Store(out / "cache"),
                      corpus=KeyCorpus(cid, utts, instruction=cfg.instruction))
    from ..editors import presets

    preset = cfg.preset or presets.default_preset(model, adapter)
    ex = executors.current()
    if isinstance(ex, executors.LocalExecutor):
        ex = ex.with_state((model, processor, adapter))
    docs = []
    seen: dict[str, dict[str, Any]] = {}
    for row in tqdm(plan, desc=folder, unit="row"):
        label, sites = row[0], row[2]
        editor = _editor(row, preset)
        same = _json.dumps(editor.describe(), sort_keys=True, default=str)
        if same in seen:
            docs.append(seen[same])
            continue
        mod = evaluation.modality(sites)
        dest = out / folder / f"{mod}-{label}".replace(" ", "_")
        if (dest / evaluation.RESULT_FILE).exists():
            docs.append(evaluation.load_result(dest / evaluation.RESULT_FILE))
        else:
            meta = {"model": cfg.model, "bench": str(out / "bench"), "preset": preset, "corpus": cid}
            if ex is None:
                res = evaluation.run(editor, ctx, cases, meta=meta)
            else:
                res = executors.evaluate_sharded(ex, editor, cases, dest, store=ctx.store, corpus=ctx.corpus,
                                                 fingerprint=ctx.fingerprint, meta=meta)
            res.save(dest)
            docs.append(res.to_json())
        seen[same] = docs[-1]
    return docs


TABLE2_VARIANTS = ("audio", "text", "driven", "undriven", "audio stage alone")
"""The rows of ``reproduce table2`` per (word position, k): the audio editor, the text editor,
the cross-modal editor (driven: the paper's method), the cross-modal editor with ``drive=False``,
and the cross-modal editor's audio stage alone."""


def table2_plan(layers: Any) -> list[tuple[str, str, list[str], Row]]:
    """``[(word span, k, variant, row)]`` of ``reproduce table2``; ``layers(stream, span, k)`` gives
    the top-k AIE layers of a stream at a word span."""
    A = lambda ls: [f"audio.layers.{l}.mlp.down" for l in ls]  # noqa: E731
    T = lambda ls: [f"text.layers.{l}.mlp.down" for l in ls]  # noqa: E731
    plan = []
    for sp in ("first_subject_word", "last_subject_word"):
        for k in (1, 2, 3):
            a, t = A(layers("audio", sp, k)), T(layers("text", sp, k))
            single, cross = ("rome", "crossmodal") if k == 1 else ("alphaedit", "crossmodal-alphaedit")
            label = f"{sp} top-{k}"
            plan += [(sp, str(k), "audio", (label, single, a)),
                     (sp, str(k), "text", (label, single, t)),
                     (sp, str(k), "driven", (label, cross, a + t)),
                     (sp, str(k), "undriven", (f"{label} undriven", cross, a + t, {"drive": False})),
                     (sp, str(k), "audio stage alone", (f"{label} audio stage", single, a,
                                                        {"audio_stage_of": cross, "text_sites": t}))]
    return plan


def _layers(agg: xr.Dataset, stream: str, span: str, k: int, explicit: tuple[int, ...] | None) -> list[int]:
    from ..tracing.select import top_layers

    if explicit:
        return sorted(explicit)[:k] if k < len(explicit) else sorted(explicit)
    return top_layers(agg, f"{stream}.mlp", span, k)


def run(cfg: ReproduceConfig) -> dict[str, Any]:
    from .. import evaluation, load
    from ..bench.select import build_edit_set
    from .demo import known_facts, peak_layers

    if cfg.config not in CONFIGS:
        from ..specs import SpecError

        raise SpecError(f"unknown configuration {cfg.config!r}; choose one of {list(CONFIGS)}.")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model, processor, adapter = tuple(load(cfg.model))
    source = cfg.source if cfg.config == "figure2" else "counterfact"
    bench = _stage_bench(cfg, source)
    known, too_long = known_facts(model, processor, adapter, bench, cfg.instruction)
    if not known:
        from ..specs import SpecError

        raise SpecError(
            f"{cfg.model} knows none of the {len(bench.facts)} {source} facts (top-1 first object token), so "
            "there is nothing to trace or edit. Use more facts (--limit), another --source (the organism "
            "was trained on CounterFact: --source counterfact), or check the prompt instruction."
        )
    summary: dict[str, Any] = {"config": cfg.config, "model": cfg.model, "facts": len(bench.facts),
                               "known": len(known), "prompts_longer_than_window": too_long}
    agg = _trace(cfg, model, processor, adapter, bench, known)
    summary["trace"] = {"examples": int(agg.sizes["example"]), "p_clean": float(agg["p_clean"].mean()),
                        "p_corrupt": float(agg["p_corrupt"].mean()), "peak_layer": peak_layers(agg)}
    if cfg.config in ("table1", "table2"):
        candidates = sorted({it.fact_id for it in bench.select(form="prompt") if it.target_new})
        es = build_edit_set(candidates, known, k=cfg.k_known, m=cfg.m_random, seed=cfg.seed, allow_fewer=True)
        es.save(out / "edit_set.json")
        span = "last_subject_word" if cfg.word == "last" else "first_subject_word"
        A = lambda ls: [f"audio.layers.{l}.mlp.down" for l in ls]  # noqa: E731
        T = lambda ls: [f"text.layers.{l}.mlp.down" for l in ls]  # noqa: E731
        if cfg.config == "table1":
            a1, t1 = _layers(agg, "audio", span, 1, cfg.audio_layers), _layers(agg, "text", span, 1, cfg.text_layers)
            a3, t3 = _layers(agg, "audio", span, 3, cfg.audio_layers), _layers(agg, "text", span, 3, cfg.text_layers)
            plan = [("FT", "finetune", A(a1)), ("Single-layer", "rome", A(a1)), ("Multi-layer", "alphaedit", A(a3)),
                    ("FT", "finetune", T(t1)), ("Single-layer", "rome", T(t1)), ("Multi-layer", "alphaedit", T(t3)),
                    ("FT", "finetune", A(a1) + T(t1)), ("Single-layer", "crossmodal", A(a1) + T(t1)),
                    ("Multi-layer", "crossmodal-alphaedit", A(a3) + T(t3))]
            docs = _edit_rows(cfg, model, processor, adapter, bench, es.fact_ids, plan, "edits")
            (out / "table1.md").write_text(evaluation.table(docs) + "\n")
            summary["table"] = "table1.md"
        else:
            plan = table2_plan(lambda stream, sp, k: _layers(agg, stream, sp, k, None))
            docs = _edit_rows(cfg, model, processor, adapter, bench, es.fact_ids, [p[3] for p in plan], "table2")
            lines = ["| Word | Top-k | Mod. | Layers | Variant | Score | ES | PS | NS | reached |",
                     "|---|---|---|---|---|---|---|---|---|---|"]
            for (word, k, variant, row), d in zip(plan, docs):
                s = d["summary"]
                f = lambda x: "–" if x is None else f"{x:.2f}"  # noqa: E731
                lines.append(f"| {word} | {k} | {d['mod']} | {', '.join(row[2])} | {variant} | {f(s['Score'])} | "
                             f"{f(s['ES'])} | {f(s['PS'])} | {f(s['NS'])} | {f(s.get('reached'))} |")
            (out / "table2.md").write_text("\n".join(lines) + "\n")
            summary["table"] = "table2.md"
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return summary
