"""Hyper-parameter presets: named, per (editor, model family), as plain JSON data files.

``lalm_interp/editors/presets/<editor>/<preset>.json`` holds one editor's hyper-parameters: keys
are the field names of its ``HParams`` dataclass (a nested dataclass, e.g. the ``audio`` stage of
``crossmodal``, is a nested object); keys starting with ``_`` are documentation (``"_doc"``: what
the preset is; ``"_reasons"``: field → why this value) and are ignored by the loader. Every file
sets every field, so a preset never silently inherits a changed default (tested).

Shipped presets: ``paper`` — the paper's settings for Qwen2-Audio-7B (ROME's / AlphaEdit's
published values where the paper is silent), equal to the dataclass defaults; ``organism`` — the
tiny trained Qwen2-Audio (``load("organism")``), every deviation measured
(``docs/editors/index.md#presets``). Like EasyEdit's ``hparams/<METHOD>/<model>.yaml``.

    from lalm_interp.editors import make, presets
    presets.available("rome")                     # ['organism', 'paper']
    hp = presets.load("rome", "organism")         # a RomeHParams
    make("rome", "audio.layers.1", preset="organism", steps=20)   # preset, then overrides

A model names its default preset (:func:`default_preset`): a ``lalm_interp_preset`` attribute on
the model or its config wins; an organism checkpoint (a ``manifest.json`` with a ``recipe`` next to
its config) gets ``"organism"``; otherwise its adapter's ``AdapterSpec.default_preset``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any
from ..base import EditorError, get
from ..base import available as editors

PRESET_DIR = Path(__file__).parent
PAPER = "paper"
ORGANISM = "organism"


def _error(msg: str) -> Exception:
    return EditorError(msg)


def _hparams_class(editor: str) -> type:
    return get(editor).HParams


def available(editor: str) -> list[str]:
    """Names of the preset files shipped for ``editor`` (sorted; a composite editor also accepts
    its stages' presets, see :func:`load`)."""
    d = PRESET_DIR / editor
    return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []


def path(editor: str, preset: str) -> Path:
    """The JSON file of ``preset`` for ``editor``; :class:`EditorError` (listing the valid names
    and the closest one) if there is none."""
    p = PRESET_DIR / editor / f"{preset}.json"
    if p.is_file():
        return p
    names = available(editor)
    close = difflib.get_close_matches(str(preset), names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    where = f"presets for {editor!r}: {names}" if names else f"no presets at all for {editor!r} (folder {PRESET_DIR / editor})"
    raise _error(f"no hyper-parameter preset {preset!r} for editor {editor!r};{hint} {where}. "
                 "Pass one of them, or give hparams= / keyword overrides instead (docs/editors/index.md#presets).")


def read(editor: str, preset: str) -> dict[str, Any]:
    """The raw JSON of a preset (including its ``_doc`` / ``_reasons`` entries)."""
    p = path(editor, preset)
    try:
        data = json.loads(p.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise _error(f"preset file {p} cannot be read: {err}. Fix the JSON (docs/editors/index.md#presets).") from err
    if not isinstance(data, dict):
        raise _error(f"preset file {p} must hold a JSON object of hyper-parameters, got {type(data).__name__}.")
    return data


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """An instance of the dataclass ``cls`` from its defaults with ``data`` applied (keys starting
    with ``_`` ignored; nested dataclass fields from nested objects; JSON lists become tuples)."""
    base = cls()
    known = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in data.items() if not str(k).startswith("_")}
    bad = sorted(set(values) - known)
    if bad:
        raise _error(f"{where or cls.__name__}: unknown hyper-parameter(s) {bad}; {cls.__name__} has {sorted(known)}.")
    out = {}
    for k, v in values.items():
        cur = getattr(base, k)
        if dataclasses.is_dataclass(cur) and isinstance(v, dict):
            out[k] = from_dict(type(cur), v, f"{where}.{k}" if where else k)
        else:
            out[k] = tuple(v) if isinstance(v, list) else v
    return dataclasses.replace(base, **out)


def load(editor: str, preset: str) -> Any:
    """The ``HParams`` of ``editor`` (a registered editor name) in preset ``preset``, validated.
    A composite editor (hyper-parameters that nest other editors', e.g. ``crossmodal``'s ``audio``
    and ``text`` stages) without its own file for ``preset`` gets each stage from that stage
    editor's ``preset`` file and the rest from its defaults; its own file, when present, wins."""
    cls = _hparams_class(editor)
    if preset not in available(editor):
        composed = _composed(cls, preset)
        if composed is not None:
            return composed
    hp = from_dict(cls, read(editor, preset), f"preset {editor}/{preset}")
    check = getattr(hp, "check", None)
    if check:
        check()
    return hp


def _composed(cls: type, preset: str) -> Any:
    by_type = {e.HParams: name for name, e in editors().items()}
    base = cls()
    stages = {}
    for f in dataclasses.fields(base):
        inner = by_type.get(type(getattr(base, f.name)))
        if inner is not None and preset in available(inner):
            stages[f.name] = load(inner, preset)
    if not stages:
        return None
    hp = dataclasses.replace(base, **stages)
    check = getattr(hp, "check", None)
    if check:
        check()
    return hp


def reasons(editor: str, preset: str) -> dict[str, str]:
    """field → why, from the preset's ``_reasons`` entry."""
    return dict(read(editor, preset).get("_reasons", {}))


def resolve(editor: str, hparams: Any, preset: str | None) -> Any:
    """What an editor is built from: ``hparams`` if given, else preset ``preset`` (``None``: the
    dataclass defaults, which are the ``paper`` preset). Both at once is an error."""
    if preset is None:
        return hparams
    if hparams is not None:
        raise _error(f"{editor}: pass either hparams= or preset= (got both); use preset= with keyword "
                     "overrides to change single fields.")
    return load(editor, preset)


def is_organism_checkpoint(folder: "str | Path") -> bool:
    """Whether ``folder`` holds an organism checkpoint (a ``manifest.json`` with a ``recipe``, as
    ``lalm-interp organism train`` writes and ``load("organism")`` loads)."""
    man = Path(folder) / "manifest.json"
    try:
        return man.is_file() and "recipe" in json.loads(man.read_text("utf-8"))
    except (OSError, json.JSONDecodeError):
        return False


def default_preset(model: Any = None, adapter: Any = None) -> str:
    """The preset a model asks for: ``model.lalm_interp_preset`` or ``model.config.lalm_interp_preset``
    if set; ``"organism"`` for an organism checkpoint (``manifest.json`` with a ``recipe`` beside the
    config, as ``lalm-interp organism train`` writes and ``load("organism")`` loads); else the
    adapter's ``default_preset`` (``"paper"`` for Qwen2-Audio)."""
    for obj in (model, getattr(model, "config", None)):
        name = getattr(obj, "lalm_interp_preset", None) if obj is not None else None
        if isinstance(name, str) and name:
            return name
    src = str(getattr(getattr(model, "config", None), "_name_or_path", "") or "")
    if src and is_organism_checkpoint(src):
        return ORGANISM
    spec = getattr(adapter, "spec", adapter)
    return getattr(spec, "default_preset", None) or PAPER
