"""``lalm-interp demo``: the whole pipeline on the embedded organism, offline, in minutes.

Stages (each resumable; outputs in one folder):

1. **benchmark** — speak a small set of the organism's CounterFact facts (edit prompt, subject alone,
   paraphrase and neighbourhood prompts) with espeak-ng, word timings included;
2. **known filter** — keep facts whose first object token is the model's top-1 prediction;
3. **tracing** — the paper's Figure 2 (hidden / MLP / attention restorations in audio and text
   layers at the first/last subject word, last word, last token) over the known facts, and one
   example's every-frame heatmap drawn over its spectrogram (``plans.figure2_experiment``,
   ``plans.heatmap_experiment``);
4. **editing** — the editors of the paper's Table 1 (FT, single-layer, multi-layer × Audio / Text /
   Multi; ``plans.table1_plan``), evaluated with ES / PS / NS / Score against an unedited baseline;
5. **report** — ``index.html`` (self-contained: plots, table, playable clip), ``table1.md``,
   ``results.json`` and the NetCDF tracing results.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import load, plans
from ..bench import Benchmark, build
from ..bench.select import filter_known
from ..executors import LocalExecutor
from ..inputs import window_samples
from ..interventions.results import read_example
from ..known import known_scorer
from ..loading import resolve
from ..organism.export import recipe_of
from ..organism.facts import choose_facts
from ..tracing.plots import plot_heatmap_over_spectrogram
from ..tracing.run import prompts_from_bench, run_experiment
from ..tracing.shards import example_path
from . import report
from .report import fmt, write_text


@dataclass(frozen=True)
class DemoConfig:
    """Knobs of the demo.

    out: output folder. model: ``organism`` or a checkpoint directory.
    n_facts: facts spoken into the demo benchmark (before the known filter).
    n_trace: known facts traced for the AIE curves. n_edit: edit cases per editor row.
    rendition: the voice (default: the organism's first training rendition).
    window: layers restored around each centre layer (the paper's 10 on a 32-layer model; the
        6-layer organism uses 3).
    seed: seed of the edit-set sampling and the noise.
    corpus_n: sentences of the synthesised protected / statistics corpus (default 600, the measured
        size, docs/editors/protected-corpus.md; ``--quick`` uses 64, which protects less).
    """

    out: str = "demo_out"
    model: str = "organism"
    n_facts: int = 40
    n_trace: int = 12
    n_edit: int = 12
    rendition: str | None = None
    window: int = 3
    seed: int = 0
    corpus_n: int = 600

    @classmethod
    def quick(cls, **kw: Any) -> "DemoConfig":
        """A reduced size that still touches every stage (CI)."""
        base = dict(n_facts=10, n_trace=3, n_edit=4, corpus_n=64)
        base.update(kw)
        return cls(**base)


class Stages:
    """Runs and times the demo's stages; prints a line per stage."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kw):
        t0 = time.perf_counter()
        print(f"[demo] {name} ...", flush=True)
        out = fn(*args, **kw)
        self.times[name] = time.perf_counter() - t0
        print(f"[demo] {name} done in {self.times[name]:.1f} s", flush=True)
        return out


def _facts_and_recipe(model_name: str, n_facts: int):
    path, _ = resolve(model_name)
    recipe = recipe_of(path)
    facts = choose_facts(recipe)
    return facts[:n_facts], recipe


def build_bench(cfg: DemoConfig, facts, rendition: str):
    out = Path(cfg.out) / "bench"
    build(facts, out, renditions=[rendition], forms=("prompt", "subject", "paraphrase", "neighbourhood"),
          max_neighbours=1, max_paraphrases=1, progress=True, source="demo")
    return Benchmark.open(out)


def known_facts(model, processor, adapter, bench, instruction: str) -> tuple[list[str], int]:
    """(facts whose edit prompt fits the encoder window and whose first object token is top-1, the
    number of edit prompts left out because they are longer than the window — never truncated)."""
    window = window_samples(adapter)
    prompts = [it for it in bench.select(form="prompt") if it.n_samples <= window]
    kf = filter_known(prompts, known_scorer(model, processor, adapter, instruction=instruction))
    return list(kf.known_facts), len(bench.select(form="prompt")) - len(prompts)


def trace(cfg: DemoConfig, model, processor, adapter, bench, known: list[str], instruction: str,
          executor: Any = None):
    """Figure 2 (``plans.figure2_experiment``) over the known facts, and the every-frame heatmap
    (``plans.heatmap_experiment``) of the first one, on ``executor`` (default: this process)."""
    prompts = [replace(p, instruction=instruction)
               for p in prompts_from_bench(bench, limit=cfg.n_trace, fact_ids=known)]
    if not prompts:
        raise RuntimeError("no known facts to trace; the model knows none of the demo facts.")
    exp = plans.figure2_experiment(plans.figure2_window(adapter, cfg.window), cfg.seed)
    agg = run_experiment(model, processor, adapter, prompts, exp, Path(cfg.out) / "trace",
                         provenance={"model": cfg.model, "dataset": "demo"}, executor=executor)
    hm = run_experiment(model, processor, adapter, prompts[:1], plans.heatmap_experiment(cfg.seed),
                        Path(cfg.out) / "heatmap", provenance={"model": cfg.model, "dataset": "demo"},
                        executor=executor)
    return agg, hm, prompts


def peak_layers(agg) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for fam in map(str, agg["family"].values):
        for span in map(str, agg["span"].values):
            y = agg["aie"].sel(family=fam, span=span).values
            if np.isfinite(y).any():
                out.setdefault(fam, {})[span] = int(np.nanargmax(y))
    return out


def peaks(agg) -> dict[str, dict[str, Any]]:
    """Per family (``audio.mlp``, …): the word position and layer with the largest AIE, and its value."""
    out: dict[str, dict[str, Any]] = {}
    for fam in map(str, agg["family"].values):
        best = None
        for span in map(str, agg["span"].values):
            y = agg["aie"].sel(family=fam, span=span).values
            if np.isfinite(y).any():
                j = int(np.nanargmax(y))
                if best is None or y[j] > best["aie"] + 1e-12:
                    best = {"span": span, "layer": j, "aie": float(y[j])}
                elif abs(y[j] - best["aie"]) <= 1e-12 and j == best["layer"]:  # a tie (one-word subjects)
                    best["span"] += f" = {span}"
        if best is not None:
            out[fam] = best
    return out


KIND_WORDS = {"resid": "hidden state", "mlp": "MLP", "attn": "attention"}


def span_text(span: str) -> str:
    """``first_subject_word = last_subject_word`` → ``first = last subject word``."""
    parts = [p.strip() for p in span.split("=")]
    if parts == ["first_subject_word", "last_subject_word"]:
        return "first = last subject word"
    return " = ".join(p.replace("_", " ") for p in parts)


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    edited = [r for r in rows if r.get("method") != "Unedited" and r.get("score") is not None]
    return max(edited, key=lambda r: r["score"]) if edited else None


def findings(summary: dict[str, Any]) -> str:
    """The page's opening paragraph, generated from the results: the corruption's effect, the peak
    layer per stream and module, the best editor against the unedited model."""
    tr = summary.get("trace", {})
    parts = [f"Corrupting the subject's audio drops P(object) from {fmt(tr.get('p_clean'), 3)} to "
             f"{fmt(tr.get('p_corrupt'), 3)} (mean over n={tr.get('examples', 0)} known facts)."]
    pk = tr.get("peaks", {})
    for stream in ("audio", "text"):
        bits = []
        for fam, p in pk.items():
            st, _, kind = fam.partition(".")
            if st != stream:
                continue
            bits.append(f"{KIND_WORDS.get(kind, kind)} layer {p['layer']} "
                        f"({span_text(p['span'])}, AIE {fmt(p['aie'], 2)})")
        if bits:
            name = "audio encoder" if stream == "audio" else "text decoder"
            parts.append(f"In the {name}, restoring helps most at: " + "; ".join(bits) + ".")
    rows = summary.get("table1_rows") or []
    best = best_row(rows)
    if best is not None:
        base = next((r for r in rows if r.get("method") == "Unedited"), None)
        n = best.get("n_cases")
        parts.append(
            f"Best editor: {best['modality']} {best['method']} ({best.get('editor', '?')} at "
            f"{plans.layers_text(best.get('sites', []))}), Score {fmt(best['score'])} (ES {fmt(best.get('es'))}, "
            f"PS {fmt(best.get('ps'))}, NS {fmt(best.get('ns'))})"
            + (f" against {fmt(base.get('score'))} unedited" if base else "")
            + (f", over n={n} edit cases." if n is not None else "."))
    elif summary.get("table1_rows") is not None:
        parts.append("Editing was not run.")
    if tr.get("examples", 0) and tr["examples"] < 20:
        parts.append("Few examples: read the 95% bands in Figure 2 before trusting a peak.")
    return " ".join(parts)


TABLE1_CAPTION = (
    "ES (efficacy): % of edit cases where the edited model prefers the new object over the true one on "
    "the edit prompt. PS (generalisation): the same on paraphrased prompts (per case, then averaged). "
    "NS (specificity): % of neighbourhood prompts — other subjects with the same relation and true "
    "object — where the true object is still preferred. Score: the harmonic mean of ES, PS and NS. "
    "n: edit cases per row (the same cases in every row); n para. / n neigh.: paraphrase / neighbourhood "
    "prompts scored (prompts longer than the encoder window are left out, never truncated). "
    "Edited layers: the top-1 (single-layer) or top-3 (multi-layer) MLP layers by AIE from the "
    "tracing above, per stream. Reached: % of cases whose edit prompt is answered with the new object "
    "by greedy decoding. ‖ΔW‖/‖W‖: median relative size of the weight change.")

OPTIONAL_COLUMNS = (("n_paraphrase", "n para."), ("n_neighbourhood", "n neigh."), ("reached", "Reached"),
                    ("dW_rel_median", "‖ΔW‖/‖W‖"))
"""Per-row fields of results.json's ``table1_rows`` shown when present (from ``evaluation.summarise``
/ ``edit_sizes``): key, column header."""


def table1_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of the page's Table 1: modality, method, editor, edited layers, n, metrics,
    and the optional measured columns that any row carries."""
    extra = [(k, h) for k, h in OPTIONAL_COLUMNS if any(r.get(k) is not None for r in rows)]
    header = ["Mod.", "Method", "Editor", "Edited layers", "n", "Score", "ES", "PS", "NS"] + [h for _, h in extra]
    body = []
    for r in rows:
        dw = r.get("dW_rel_median")
        cells = [r.get("modality", ""), r.get("method", ""), r.get("editor", "-"), plans.layers_text(r.get("sites") or []),
                 r.get("n_cases"), r.get("score"), r.get("es"), r.get("ps"), r.get("ns")]
        for k, _ in extra:
            v = r.get(k)
            cells.append(f"{dw:.2g}" if k == "dW_rel_median" and isinstance(dw, (int, float)) else v)
        body.append(cells)
    return header, body


def run_table(cfg: "DemoConfig", summary: dict[str, Any]) -> str:
    """The "Run" section: what ran and how long each stage took, as a small table."""
    st = summary.get("stages_s", {})
    items: list[tuple[str, object]] = [
        ("model", cfg.model), ("voice (rendition)", summary.get("rendition", "")),
        ("facts spoken", summary.get("facts")), ("known (traced from)", summary.get("known")),
        ("prompts longer than the window (left out)", summary.get("prompts_longer_than_window")),
        ("window (layers restored per centre)", cfg.window), ("seed", cfg.seed)]
    items += [(name, f"{float(t):.1f} s") for name, t in st.items()]
    if st:
        items.append(("total", f"{float(sum(st.values())):.1f} s"))
    return report.kv_table(items)


def spectrogram_heatmap(cfg: DemoConfig, prompt) -> Path:
    """The first traced example's every-frame audio heatmap drawn over its spectrogram."""
    result = read_example(example_path(Path(cfg.out) / "heatmap", prompt.id))
    return plot_heatmap_over_spectrogram(result, "audio.resid.each", prompt.audio, Path(cfg.out) / "heatmap_spectrogram")[0]


def write_report(cfg: DemoConfig, summary: dict[str, Any], table_md: str, prompt) -> Path:
    out = Path(cfg.out)
    t = summary.get("table1_rows", [])
    tr = summary["trace"]
    sections = [
        report.Section(
            "Example: where does the model read the subject?",
            html=(f"<p>Clip: “{prompt_text(prompt)}” → <b>{prompt.target}</b>. The heatmap shows the indirect "
                  "effect of restoring each encoder frame's hidden state (one layer at a time) after the "
                  "subject frames were corrupted at conv2 with 3σ noise, drawn over the spectrogram: red helps, "
                  "blue hurts, white is no effect; dashed lines mark word starts, the dashed box the corrupted "
                  "subject.</p>"),
            audio=[(prompt.audio, "the traced clip (16 kHz, espeak-ng)")],
            figures=[(out / "heatmap_spectrogram.png", "layer × time heatmap over the spectrogram"),
                     (out / "heatmap" / "heatmap_text.resid.each.png",
                      "text decoder: layer × position (chat template grouped, audio tokens by spoken word)")],
        ),
        report.Section(
            "Figure 2: average indirect effect per layer",
            html=f"<p>n={tr['examples']} known facts; P_clean {report.fmt(tr['p_clean'], 3)}, "
                 f"P_corrupt {report.fmt(tr['p_corrupt'], 3)}. Each point restores a window of {cfg.window} "
                 "layers centred on the layer; shaded: bootstrap 95% interval over examples.</p>",
            figures=[(out / "trace" / "figure2.png", "AIE vs layer, per stream and module kind")],
        ),
        report.Section(
            "Table 1: editing",
            table=table1_table(t) if t else None,
            caption=TABLE1_CAPTION if t else "",
            html="<pre>" + table_md.replace("<", "&lt;") + "</pre>" if not t else "",
        ),
        report.Section("Run", html=run_table(cfg, summary)),
    ]
    return report.write(out / "index.html", "lalm-interp demo: spoken facts in a tiny Qwen2-Audio", sections,
                        found=findings(summary),
                        intro=f"Model: {cfg.model}. Everything here was computed offline by <code>lalm-interp demo</code>.")


def prompt_text(prompt) -> str:
    return " ".join(w.text for w in prompt.words)


def run(cfg: DemoConfig, *, edit_fn=None, executor: Any = None) -> dict[str, Any]:
    """Run the demo; returns the summary written to ``results.json``. ``edit_fn``: the editing
    stage (``demo_edits.table1``; ``None`` skips it). ``executor``: where tracing and editing run
    (default: this process, :class:`~lalm_interp.executors.LocalExecutor` on the loaded model)."""
    import torch

    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    st = Stages()
    model, processor, adapter = st.run("load model", lambda: tuple(load(cfg.model)))
    executor = (executor if executor is not None else LocalExecutor()).bind((model, processor, adapter))
    facts, recipe = _facts_and_recipe(cfg.model, cfg.n_facts)
    rendition = cfg.rendition or recipe.train_renditions[0]
    bench = st.run("benchmark (espeak-ng)", build_bench, cfg, facts, rendition)
    known, too_long = st.run("known filter", known_facts, model, processor, adapter, bench, recipe.instruction)
    agg, hm, prompts = st.run("causal tracing", trace, cfg, model, processor, adapter, bench, known, recipe.instruction,
                              executor)
    st.run("heatmap over spectrogram", spectrogram_heatmap, cfg, prompts[0])
    table_rows: list[dict[str, Any]] = []
    table_md = ""
    if edit_fn is not None:
        table_rows, table_md = st.run("editing (Table 1)", edit_fn, cfg, model, processor, adapter, bench, known,
                                      recipe, executor=executor)
    summary = {
        "config": asdict(cfg),
        "rendition": rendition,
        "facts": len(facts),
        "known": len(known),
        "prompts_longer_than_window": too_long,
        "trace": {"examples": int(agg.sizes["example"]), "p_clean": float(agg["p_clean"].mean()),
                  "p_corrupt": float(agg["p_corrupt"].mean()), "peak_layer": peak_layers(agg),
                  "peaks": peaks(agg)},
        "table1_rows": table_rows,
        "stages_s": st.times,
    }

    write_text(out / "table1.md", table_md or "(editing not run)\n")
    write_text(out / "results.json", json.dumps(summary, indent=2))
    st.run("report", write_report, cfg, summary, table_md, prompts[0])
    summary["stages_s"] = st.times
    summary["found"] = findings(summary)
    write_text(out / "results.json", json.dumps(summary, indent=2))
    return summary
