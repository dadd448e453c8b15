"""End to end: train → evaluate → export (what ``lalm-interp organism train`` runs), and the
evaluation of a saved checkpoint (``lalm-interp organism eval``)."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from .. import adapters
from ..bench import Benchmark, build, load_facts
from ..known import first_token_scores
from . import export as E
from ..cache.layout import work_dir
from ..loading import load, resolve
from .evaluate import corruption_effect, evaluate_groups, relation_first_tokens
from .facts import build_benchmark, choose_facts, select
from .recipe import Recipe
from .train import train


def relation_map(facts) -> dict[str, str]:
    """fact id → relation key (the fact's relation id: CounterFact's template hash here)."""
    return {f.fact_id: f.relation_id for f in facts}


def full_metrics(model, processor, adapter, sel, facts, recipe: Recipe, *, n_corrupt: int = 60) -> dict[str, Any]:
    """Accuracy groups + corruption effect on known edit prompts (first training rendition)."""
    torch.set_num_threads(recipe.threads)
    metrics = evaluate_groups(model, processor, adapter, sel.groups, instruction=recipe.instruction)
    rel_of = relation_map(facts)
    pre = adapter.spec.object_prefix.get("chat" if processor.chat_template else "plain", "")
    rel_tok = relation_first_tokens(sel.train, processor.tokenizer, pre, rel_of)
    r0 = recipe.train_renditions[0]
    edit = [it for it in sel.groups["train_edit"] if str(it.rendition) == r0]
    s = first_token_scores(model, processor, adapter, edit, instruction=recipe.instruction)
    known = [it for it, ok in zip(edit, s.correct) if ok][:n_corrupt]
    if known:
        metrics["corruption"] = corruption_effect(model, processor, adapter, known, rel_tok, rel_of,
                                                  seed=recipe.seed, instruction=recipe.instruction).to_json()
    return metrics


def train_and_export(out: str | Path, recipe: Recipe = Recipe(), *, work: str | Path | None = None,
                     minutes: float | None = None, progress: bool = True) -> dict[str, Any]:
    """Train the organism, evaluate it, and write checkpoint + manifest to ``out``. ``work``: folder
    for the synthesised spoken benchmark and cached features (default: ``OUT-work`` next to ``out``)."""
    out = Path(out)
    work = Path(work) if work is not None else out.parent / (out.name + "-work")
    t0 = time.time()
    res = train(recipe, work, minutes=minutes, progress=progress)
    train_s = time.time() - t0
    model, processor = res.model, res.processor
    adapter = adapters.for_model(model, processor)
    metrics = full_metrics(model, processor, adapter, res.selection, res.facts, recipe)
    r0 = recipe.train_renditions[0]
    edit_r0 = [it for it in res.selection.groups["train_edit"] if str(it.rendition) == r0]
    s = first_token_scores(model, processor, adapter, edit_r0, instruction=recipe.instruction)
    correct = {it.item_id: ok for it, ok in zip(edit_r0, s.correct)}
    subset = E.pick_subset(res.selection.groups, correct, rendition=r0)
    # expected results on the subset, from the *saved* weights' forward (same code path as the test)
    manifest: dict[str, Any] = {
        "name": "organism",
        "description": "tiny Qwen2-Audio trained on spoken CounterFact facts (lalm_interp.organism)",
        "recipe": recipe.to_json(),
        "seed": recipe.seed,
        "steps_done": res.steps_done,
        "train_wall_s": round(train_s, 1),
        "git_commit": E.git_commit(Path(__file__).parent),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                     "python": platform.python_version()},
        "data": {
            "source": "lalm_interp/data/counterfact_subset.json",
            "fact_ids": [f.fact_id for f in res.facts],
            "subjects": sorted({f.subject for f in res.facts}),
            "n_train_clips": len(res.selection.train),
            "n_train_texts": len({it.text for it in res.selection.train}),
            "train_renditions": list(recipe.train_renditions),
            "heldout_renditions": list(recipe.heldout_renditions),
            "dropped": res.selection.dropped,
            "paraphrases": "held out (not trained)" if not recipe.train_paraphrases else "trained",
        },
        "metrics": metrics,
        "train_log": res.log,
        "eval_subset": subset,
    }
    E.save(model, processor, out, manifest)
    # re-score the subset from the exported checkpoint so expectations match what load() gives

    loaded = load(out)
    exp = subset_expectations(loaded.model, loaded.processor, loaded.adapter, subset, work, recipe)
    manifest["eval_subset_expected"] = exp
    E.save(loaded.model, loaded.processor, out, manifest)
    manifest["size_bytes"] = E.size_bytes(out)
    E.save(loaded.model, loaded.processor, out, manifest)
    return manifest


def subset_items(subset: list[dict[str, Any]], work: str | Path, recipe: Recipe):
    """Synthesise (or reuse) the clips of a manifest's evaluation subset → benchmark items, in order."""
    work = Path(work)
    facts = {f.fact_id: f for f in load_facts("counterfact")}
    by_r: dict[str, list[str]] = {}
    for e in subset:
        by_r.setdefault(e["rendition"], []).append(e["fact_id"])
    items = {}
    for k, (r, fids) in enumerate(sorted(by_r.items())):
        forms = sorted({e["form"] for e in subset if e["rendition"] == r})
        fs = [facts[f] for f in dict.fromkeys(fids)]
        d = work / f"subset-{k}"
        build(fs, d, renditions=[r], forms=forms, max_paraphrases=1, max_neighbours=1, workers=2, progress=False)
        for it in Benchmark.open(d):
            items[it.item_id] = it
    return [items[e["item_id"]] for e in subset]


def subset_expectations(model, processor, adapter, subset, work, recipe: Recipe) -> dict[str, Any]:
    items = subset_items(subset, Path(work), recipe)
    s = first_token_scores(model, processor, adapter, items, instruction=recipe.instruction)
    return {"correct": s.correct, "p_true": [round(p, 5) for p in s.p_true]}


def default_work() -> Path:
    """Where ``organism eval`` keeps its synthesised benchmark unless told otherwise:
    ``<cache root>/work/organism`` (cache root: ``$LALM_INTERP_CACHE`` or ``./cache``)."""

    return work_dir("organism")


def evaluate_checkpoint(model_ref: str = "organism", *, work: str | Path | None = None, subset_only: bool = False,
                        progress: bool = False) -> dict[str, Any]:
    """Metrics of a saved organism (``"organism"`` or a checkpoint folder), from its manifest's recipe.
    ``work``: folder for the synthesised benchmark, reused across calls (default :func:`default_work`)."""

    work = Path(work) if work is not None else default_work()
    path, _ = resolve(model_ref)
    manifest = E.read_manifest(path)
    recipe = E.recipe_of(path)
    torch.set_num_threads(recipe.threads)
    model, processor, adapter = load(model_ref)
    out: dict[str, Any] = {"model": str(path), "work": str(work)}
    if manifest.get("eval_subset"):
        items = subset_items(manifest["eval_subset"], Path(work) / "subset", recipe)
        s = first_token_scores(model, processor, adapter, items, instruction=recipe.instruction)
        out["subset"] = {"n": len(items), "top1": round(sum(s.correct) / len(items), 4),
                         "manifest_top1": round(sum(manifest["eval_subset_expected"]["correct"]) / len(items), 4)
                         if "eval_subset_expected" in manifest else None}
    if subset_only:
        return out
    facts = choose_facts(recipe)
    bench = build_benchmark(recipe, Path(work) / "bench", facts=facts, progress=progress)
    sel = select(bench, recipe, max_samples=int(processor.feature_extractor.n_samples))
    out["metrics"] = full_metrics(model, processor, adapter, sel, facts, recipe)
    return out


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1, ensure_ascii=False)
