"""The demo's editing stage: the paper's Table 1 (FT, single-layer, multi-layer × Audio / Text /
Multi) on the demo benchmark's known facts, layers chosen from the demo's own tracing result.

Layer choice (the paper picks layers by AIE per word position; see ``docs/usage/tracing.md`` and
Table 2): each stream's layers are the top AIE layers of its MLP family **at the position the
editors key at** (their default ``key_span="auto"``): audio layers at ``last_subject_word`` (the
subject word's encoder frames), text layers at ``last_token`` (on the organism the text MLPs'
effect peaks at the last token, not at the subject's audio tokens). Single-layer edits use the
top-1 layer, multi-layer edits the top-3 (sorted). The edit prompts are keyed on the last subject
word (``WORD``). Hyper-parameters: the model's default preset
(``editors.presets.default_preset``: ``"organism"`` for the organism, ``"paper"`` for a real
Qwen2-Audio checkpoint), recorded in every row. The unedited baseline is scored once and shared by all nine rows; key statistics
are computed once per site and cached in ``<out>/cache``. The stage runs torch on one thread
(two OpenMP threads on a shared 2-core machine stalled each other, see the organism recipe).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import xarray as xr

WORD = "last"
SPAN = "last_subject_word"
SPANS = {"audio": "last_subject_word", "text": "last_token"}
"""The tracing span each stream's layers are chosen at (where the editors key by default)."""


def choose_layers(agg: xr.Dataset, stream: str, k: int) -> list[int]:
    from ..tracing.select import top_layers

    span = SPANS[stream]
    if span not in agg["span"].values:  # an older trace without the last-token span
        span = SPAN
    return top_layers(agg, f"{stream}.mlp", span, k)


def table1_plan(agg: xr.Dataset) -> list[tuple[str, str, list[str]]]:
    """(row label, editor name, sites) for the nine Table-1 rows."""
    a1, t1 = choose_layers(agg, "audio", 1)[0], choose_layers(agg, "text", 1)[0]
    a3 = choose_layers(agg, "audio", 3)
    t3 = choose_layers(agg, "text", 3)
    A = lambda ls: [f"audio.layers.{l}.mlp.down" for l in ls]  # noqa: E731
    T = lambda ls: [f"text.layers.{l}.mlp.down" for l in ls]  # noqa: E731
    return [
        ("FT", "finetune", A([a1])),
        ("Single-layer", "rome", A([a1])),
        ("Multi-layer", "alphaedit", A(a3)),
        ("FT", "finetune", T([t1])),
        ("Single-layer", "rome", T([t1])),
        ("Multi-layer", "alphaedit", T(t3)),
        ("FT", "finetune", A([a1]) + T([t1])),
        ("Single-layer", "crossmodal", A([a1]) + T([t1])),
        ("Multi-layer", "crossmodal-alphaedit", A(a3) + T(t3)),
    ]


def table1(cfg: Any, model, processor, adapter, bench, known: list[str], recipe) -> tuple[list[dict], str]:
    """Run the nine rows; returns (rows for results.json, the Markdown table)."""
    import torch
    from tqdm.auto import tqdm

    from .. import evaluation
    from ..bench.corpus import SYNTH_N, corpus_id, protected_corpus
    from ..editors import EditContext, KeyCorpus, make, presets

    out = Path(cfg.out)
    agg = xr.load_dataset(out / "trace" / "aie.nc", engine="h5netcdf")
    cases = evaluation.cases_from_benchmark(bench, word=WORD, fact_ids=known, limit=cfg.n_edit,
                                            instruction=recipe.instruction)
    exclude = [c.request.prompt.id for c in cases]
    n = getattr(cfg, "corpus_n", SYNTH_N)
    utts = protected_corpus(None, n=n, fallback_dir=out / f"protected_corpus-{n}", exclude=exclude)
    from ..cache import Store

    ctx = EditContext(model, processor, adapter, store=Store(out / "cache"),
                      corpus=KeyCorpus(corpus_id(utts, "demo-synth"), utts, instruction=recipe.instruction))
    results = []
    rows = []
    plan = table1_plan(agg)
    preset = presets.default_preset(model, adapter)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        before = evaluation.score_before(ctx, cases)  # the unedited model: scored once for all rows
        for label, name, sites in tqdm(plan, desc="Table 1", unit="row"):
            editor = make(name, sites, preset=preset)
            res = evaluation.run(editor, ctx, cases, before=before,
                                 meta={"model": cfg.model, "bench": str(out / "bench")})
            _row(res, editor, label, name, sites, out, results, rows)
    finally:
        torch.set_num_threads(threads)
    md = evaluation.table(results)
    b = results[0]["baseline"]
    rows.insert(0, {"modality": "–", "method": "Unedited", "editor": "-", "sites": [], "score": b["Score"],
                    "es": b["ES"], "ps": b["PS"], "ns": b["NS"], **_measured(b)})
    return rows, md


def _row(res, editor, label: str, name: str, sites: list[str], out: Path, results: list, rows: list) -> None:
    from .. import evaluation

    mod = evaluation.modality(sites)
    dest = out / "edits" / f"{mod}-{label}".replace(" ", "_")
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
