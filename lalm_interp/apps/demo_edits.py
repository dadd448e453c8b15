"""The demo's editing stage: the paper's Table 1 (FT, single-layer, multi-layer × Audio / Text /
Multi) on the demo benchmark's known facts, layers chosen from the demo's own tracing result.

Layer choice (the paper picks layers by AIE per word position; see ``docs/usage/tracing.md`` and
Table 2): each stream's layers are the top AIE layers of its MLP family **at the position the
editors key at** (their default ``key_span="auto"``): audio layers at ``last_subject_word`` (the
subject word's encoder frames), text layers at ``last_token`` (on the organism the text MLPs'
effect peaks at the last token, not at the subject's audio tokens) — ``plans.layer_spans(keyed=True)``;
``reproduce table1`` reads both streams at the subject word instead (the paper protocol; why the
two differ: ``lalm_interp/plans.py``). The rows, their editors and their order are
``plans.table1_plan``: single-layer edits use the top-1 layer, multi-layer edits the top-3 (sorted). The edit prompts are keyed on the last subject
word (``WORD``). Hyper-parameters: the model's default preset
(``editors.presets.default_preset``: ``"organism"`` for the organism, ``"paper"`` for a real
Qwen2-Audio checkpoint), recorded in every row. Each row runs through the executor
(``evaluation.runs.evaluate``; default: this process), one file per finished case under
``<out>/edits/<row>/cases/`` so a rerun resumes; key statistics are computed once per site and
cached in ``<out>/cache``. The stage runs torch on one thread
(two OpenMP threads on a shared 2-core machine stalled each other, see the organism recipe).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import xarray as xr

from .. import evaluation, plans
from ..bench.corpus import SYNTH_N, corpus_id, protected_corpus
from ..cache import Store
from ..editors import EditContext, KeyCorpus, presets
from ..evaluation.runs import evaluate
from ..executors import LocalExecutor

WORD = "last"
SPAN = plans.word_span(WORD)
SPANS = plans.layer_spans(WORD, keyed=True)
"""The tracing span each stream's layers are chosen at (where the editors key by default):
``plans.layer_spans(keyed=True)``; ``SPAN`` when an older trace lacks it."""


def table1_plan(agg: xr.Dataset) -> plans.Plan:
    """The nine Table-1 rows (``plans.table1_plan``) with layers chosen from the demo's trace ``agg``."""
    return plans.table1_plan(plans.aie_layers(agg, SPANS, fallback=SPAN))


def table1(cfg: Any, model, processor, adapter, bench, known: list[str], recipe, *,
           executor: Any = None) -> tuple[list[dict], str]:
    """Run the nine rows of :func:`table1_plan` on ``executor`` (default: this process); returns
    (rows for results.json, the Markdown table)."""
    import torch
    from tqdm.auto import tqdm

    out = Path(cfg.out)
    agg = xr.load_dataset(out / "trace" / "aie.nc", engine="h5netcdf")
    cases = evaluation.cases_from_benchmark(bench, word=WORD, fact_ids=known, limit=cfg.n_edit,
                                            instruction=recipe.instruction)
    exclude = [c.request.prompt.id for c in cases]
    n = getattr(cfg, "corpus_n", SYNTH_N)
    utts = protected_corpus(None, n=n, fallback_dir=out / f"protected_corpus-{n}", exclude=exclude)

    ctx = EditContext(model, processor, adapter, store=Store(out / "cache"),
                      corpus=KeyCorpus(corpus_id(utts, "demo-synth"), utts, instruction=recipe.instruction))
    results = []
    rows = []
    plan = table1_plan(agg)
    preset = presets.default_preset(model, adapter)
    ex = (executor if executor is not None else LocalExecutor()).bind((model, processor, adapter))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for row in tqdm(plan, desc="Table 1", unit="row"):
            editor = row.build(preset)
            res = evaluate(ex, editor, cases, out / "edits" / row.folder, store=ctx.store, corpus=ctx.corpus,
                           fingerprint=ctx.fingerprint, meta={"model": cfg.model, "bench": str(out / "bench")})
            _row(res, editor, row, out, results, rows)
    finally:
        torch.set_num_threads(threads)
    md = evaluation.table(results)
    b = results[0]["baseline"]
    rows.insert(0, {"modality": "–", "method": "Unedited", "editor": "-", "sites": [], "score": b["Score"],
                    "es": b["ES"], "ps": b["PS"], "ns": b["NS"], **_measured(b)})
    return rows, md


def _row(res, editor, row: plans.Row, out: Path, results: list, rows: list) -> None:
    label, name, sites, mod = row.label, row.editor, list(row.sites), row.modality
    dest = out / "edits" / row.folder
    res.save(dest)
    doc = res.to_json()
    own = getattr(editor, "label", label)
    doc["label"] = label if own == label else f"{label} ({own})"  # "FT", not "FT (FT)"
    results.append(doc)
    s = res.summary
    rows.append({"modality": mod, "method": label, "editor": name, "preset": res.meta.get("preset"),
                 "sites": sites, "score": s["Score"], "es": s["ES"], "ps": s["PS"], "ns": s["NS"], **_measured(s)})


ROW_FIELDS = ("reached", "n_cases", "n_paraphrase", "n_paraphrase_skipped", "n_neighbourhood",
              "n_neighbourhood_skipped", "dW_rel_median", "leak_max")
"""What each results.json Table-1 row says it measured, beside score/es/ps/ns (from the run's
``summary``: ``evaluation.summarise`` + ``evaluation.edit_sizes``); the Unedited row has no
``dW_rel_median`` / ``leak_max`` (None)."""


def _measured(summary: dict) -> dict:
    return {k: summary.get(k) for k in ROW_FIELDS}
