"""Export the organism: a Hugging Face checkpoint folder (safetensors, config, tokenizer, processor,
chat template) plus ``manifest.json`` (recipe, data ids, renditions, git commit, metrics, and a
small fixed evaluation subset with the expected per-item results the tests re-check)."""

from __future__ import annotations

import datetime
import json
import subprocess
from pathlib import Path
from typing import Any, Sequence

import torch

from ..bench.store import atomic_write_json
from .recipe import Recipe

MANIFEST = "manifest.json"


def git_commit(path: str | Path = ".") -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def subset_entry(item: Any, role: str) -> dict[str, Any]:
    return {"item_id": item.item_id, "fact_id": item.fact_id, "form": item.form, "role": role,
            "text": item.text, "rendition": str(item.rendition), "target_true": item.target_true}


def save(model: torch.nn.Module, processor: Any, out: str | Path, manifest: dict[str, Any]) -> Path:
    """Write the checkpoint and manifest to ``out`` (created). Returns the folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    manifest = dict(manifest)
    manifest.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    atomic_write_json(out / MANIFEST, manifest)
    return out


def read_manifest(path: str | Path) -> dict[str, Any]:
    p = Path(path) / MANIFEST
    return json.loads(p.read_text("utf-8")) if p.is_file() else {}


def recipe_of(path: str | Path) -> Recipe:
    m = read_manifest(path)
    return Recipe.from_json(m["recipe"]) if "recipe" in m else Recipe()


def size_bytes(path: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def pick_subset(groups: dict[str, Sequence[Any]], correct: dict[str, bool], *, n_known: int = 20,
                n_neigh: int = 8, n_held: int = 8, rendition: str | None = None) -> list[dict[str, Any]]:
    """A small fixed evaluation subset: ``n_known`` known edit prompts of distinct facts (also used
    for the corruption test), some unknown ones if any, neighbourhood and held-out-voice prompts —
    all in one training rendition (and one held-out rendition) so a test synthesises few clips."""
    edit = [it for it in groups["train_edit"] if rendition is None or str(it.rendition) == rendition]
    out, seen = [], set()
    for it in edit:
        if correct.get(it.item_id) and it.fact_id not in seen and len(out) < n_known:
            out.append(subset_entry(it, "known"))
            seen.add(it.fact_id)
    wrong = [it for it in edit if correct.get(it.item_id) is False][:4]
    out += [subset_entry(it, "unknown") for it in wrong]
    neigh = [it for it in groups["train_neighbourhood"] if rendition is None or str(it.rendition) == rendition]
    out += [subset_entry(it, "neighbourhood") for it in neigh[:n_neigh]]
    held = groups.get("heldout_edit", [])
    if held:
        r0 = str(held[0].rendition)
        out += [subset_entry(it, "heldout") for it in [h for h in held if str(h.rendition) == r0][:n_held]]
    return out
