"""``lalm-interp reproduce figure2|table1|table2``: the paper's protocol on any registered model.

* ``figure2`` — speak Known-1000 (``--data`` for the full file; the shipped subset otherwise),
  keep the facts the model knows (top-1 first object token), trace hidden / MLP / attention
  restorations in both streams at the first/last subject word, last word and last token, and plot
  the AIE curves (the demo's outputs: ``trace/aie.nc``, ``trace/figure2.png`` …).
* ``table1`` — speak CounterFact, filter known facts, build the edit set of ``K`` known + ``M``
  random cases (paper: 200 + 300, seeded), trace to choose layers (top-1 AIE MLP layer per stream
  at the subject word the edits key on, ``--word``, for single-layer edits, top-3 for multi-layer;
  or ``--audio-layers`` / ``--text-layers``), run the nine Table-1 rows and write ``table1.md`` +
  per-row results.
* ``table2`` — the layer-selection study: for each word position (first / last subject word) and
  k ∈ {1, 2, 3}, the top-k AIE layers of each stream, edited with single-layer (k = 1) or
  multi-layer (k > 1) editors; writes ``table2.md``. The cross-modal rows come with their
  ablation (docs/editors/crossmodal.md#ablation): ``driven`` (the paper's method, the default),
  ``undriven`` (``drive=False``: plain sequential editing) and ``audio stage alone`` (the audio
  editor with the cross-modal editor's own audio hyper-parameters; computed once when it equals
  the audio row).

Every stage writes into ``--out`` and is resumable (the benchmark reuses its clips, tracing skips
completed examples, editing rows with a ``result.json`` are skipped). Everything runs on the
executor given to :func:`run` (``--executor``; default: this process); on Ray (``--executor ray``)
tracing shards, each editing row's key statistics and its edit cases run on the workers
(docs/usage/scale-out.md).

The plans themselves (Figure 2's experiment, Table 1's and Table 2's rows, how layers are chosen)
are defined once in :mod:`lalm_interp.plans`; this module runs them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import xarray as xr

from .. import evaluation, load, plans
from ..bench import Benchmark, build, load_facts
from ..bench.corpus import corpus_id, protected_corpus
from ..bench.select import build_edit_set
from ..cache import Store
from ..editors import EditContext, KeyCorpus, presets
from ..evaluation.runs import evaluate
from ..executors import LocalExecutor
from ..specs import SpecError
from ..tracing.run import prompts_from_bench, run_experiment
from ..tracing.select import top_layers
from .demo import known_facts, peak_layers

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
    facts = load_facts(source, cfg.data, limit=cfg.limit)
    forms = ("prompt", "subject") if source == "known1000" else ("prompt", "subject", "paraphrase", "neighbourhood")
    out = Path(cfg.out) / "bench"
    build(facts, out, renditions=cfg.renditions, forms=forms, progress=True, source=source)
    return Benchmark.open(out)


def _trace(cfg: ReproduceConfig, model, processor, adapter, bench, known: Sequence[str], executor: Any = None):
    prompts = [replace(p, instruction=cfg.instruction)
               for p in prompts_from_bench(bench, limit=cfg.n_trace, fact_ids=list(known))]
    exp = plans.figure2_experiment(plans.figure2_window(adapter, cfg.window), cfg.seed)
    return run_experiment(model, processor, adapter, prompts, exp, Path(cfg.out) / "trace",
                          provenance={"model": cfg.model, "dataset": str(cfg.data or "shipped")}, executor=executor)


def edit_rows(cfg: ReproduceConfig, model, processor, adapter, bench, case_ids: Sequence[str],
              plan: Sequence[plans.Row], folder: str, *, executor: Any = None) -> list[dict[str, Any]]:
    """Run the editing rows of ``plan`` (:class:`~lalm_interp.plans.Row` s, or their tuple form) on
    ``executor`` (default: a :class:`~lalm_interp.executors.LocalExecutor` on the loaded model).
    A row whose editor (name, sites, hyper-parameters) equals an earlier row's reuses its result;
    a row whose folder holds a ``result.json`` is not run again. On a Ray executor each row's key
    statistics are computed in corpus chunks on the workers and its edit cases are spread over them
    (accumulating rows as one shard)."""
    from tqdm.auto import tqdm

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
    preset = cfg.preset or presets.default_preset(model, adapter)
    ex = (executor if executor is not None else LocalExecutor()).bind((model, processor, adapter))
    docs = []
    seen: dict[str, dict[str, Any]] = {}
    for row in tqdm([plans.Row.of(r) for r in plan], desc=folder, unit="row"):
        editor = row.build(preset)
        same = json.dumps(editor.describe(), sort_keys=True, default=str)
        if same in seen:
            docs.append(seen[same])
            continue
        dest = out / folder / row.folder
        if (dest / evaluation.RESULT_FILE).exists():
            docs.append(evaluation.load_result(dest / evaluation.RESULT_FILE))
        else:
            meta = {"model": cfg.model, "bench": str(out / "bench"), "preset": preset, "corpus": cid}
            res = evaluate(ex, editor, cases, dest, store=ctx.store, corpus=ctx.corpus,
                           fingerprint=ctx.fingerprint, meta=meta)
            res.save(dest)
            docs.append(res.to_json())
        seen[same] = docs[-1]
    return docs


def layer_chooser(cfg: ReproduceConfig, agg: xr.Dataset) -> plans.LayerChooser:
    """Table 1's layers: the top-k AIE MLP layers of each stream at the subject word the edits key
    on (the paper protocol, ``plans.layer_spans(word)``), or ``--audio-layers`` / ``--text-layers``."""
    return plans.aie_layers(agg, plans.layer_spans(cfg.word),
                            explicit={"audio": cfg.audio_layers, "text": cfg.text_layers})


def table2_markdown(plan: Sequence[plans.Row], docs: Sequence[dict[str, Any]]) -> str:
    """``table2.md``: one line per row of :func:`lalm_interp.plans.table2_plan` and its result."""
    f = lambda x: "–" if x is None else f"{x:.2f}"  # noqa: E731
    lines = ["| Word | Top-k | Mod. | Layers | Variant | Score | ES | PS | NS | reached |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row, d in zip(plan, docs):
        s = d["summary"]
        lines.append(f"| {row.span} | {row.k} | {d['mod']} | {', '.join(row.sites)} | {row.variant} | {f(s['Score'])} | "
                     f"{f(s['ES'])} | {f(s['PS'])} | {f(s['NS'])} | {f(s.get('reached'))} |")
    return "\n".join(lines) + "\n"


def run(cfg: ReproduceConfig, *, executor: Any = None) -> dict[str, Any]:
    """Run ``cfg``'s stages; tracing and editing run on ``executor`` (default: this process,
    :class:`~lalm_interp.executors.LocalExecutor`). Returns the summary written to ``results.json``."""
    if cfg.config not in CONFIGS:
        raise SpecError(f"unknown configuration {cfg.config!r}; choose one of {list(CONFIGS)}.")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model, processor, adapter = tuple(load(cfg.model))
    executor = (executor if executor is not None else LocalExecutor()).bind((model, processor, adapter))
    source = cfg.source if cfg.config == "figure2" else "counterfact"
    bench = _stage_bench(cfg, source)
    known, too_long = known_facts(model, processor, adapter, bench, cfg.instruction)
    if not known:
        raise SpecError(
            f"{cfg.model} knows none of the {len(bench.facts)} {source} facts (top-1 first object token), so "
            "there is nothing to trace or edit. Use more facts (--limit), another --source (the organism "
            "was trained on CounterFact: --source counterfact), or check the prompt instruction."
        )
    summary: dict[str, Any] = {"config": cfg.config, "model": cfg.model, "facts": len(bench.facts),
                               "known": len(known), "prompts_longer_than_window": too_long}
    agg = _trace(cfg, model, processor, adapter, bench, known, executor)
    summary["trace"] = {"examples": int(agg.sizes["example"]), "p_clean": float(agg["p_clean"].mean()),
                        "p_corrupt": float(agg["p_corrupt"].mean()), "peak_layer": peak_layers(agg)}
    if cfg.config in ("table1", "table2"):
        candidates = sorted({it.fact_id for it in bench.select(form="prompt") if it.target_new})
        es = build_edit_set(candidates, known, k=cfg.k_known, m=cfg.m_random, seed=cfg.seed, allow_fewer=True)
        es.save(out / "edit_set.json")
        if cfg.config == "table1":
            plan = plans.table1_plan(layer_chooser(cfg, agg))
            docs = edit_rows(cfg, model, processor, adapter, bench, es.fact_ids, plan, "edits", executor=executor)
            (out / "table1.md").write_text(evaluation.table(docs) + "\n")
            summary["table"] = "table1.md"
        else:
            plan = plans.table2_plan(lambda stream, sp, k: top_layers(agg, f"{stream}.mlp", sp, k))
            docs = edit_rows(cfg, model, processor, adapter, bench, es.fact_ids, plan, "table2", executor=executor)
            (out / "table2.md").write_text(table2_markdown(plan, docs))
            summary["table"] = "table2.md"
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return summary
