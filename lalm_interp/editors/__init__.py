"""Knowledge editors for audio-language models (paper §3.2) behind one protocol.

Quick use::

    from lalm_interp.editors import EditContext, EditRequest, KeyCorpus, make

    lm = lalm_interp.load("organism")    # the model handle (or EditContext(model, processor, adapter, ...))
    ctx = EditContext(lm, store=Store(), corpus=KeyCorpus("synth:200", clips, sample_rate=16000))
    editor = make("rome", "audio.layers.1.mlp.down", cov="identity")
    handle = editor.apply(ctx, EditRequest(prompt, target_new="London", word="first"))
    ...                                  # the model now says London
    handle.revert()                      # bitwise back

``editor.apply(lm, request, store=..., corpus=...)`` takes the handle directly (one context per
call). ``editor.stats_sites(adapter)``: the key sites whose statistics the editor reads (empty:
none, so no corpus is needed).

Hyper-parameters come from named presets (``presets.available("rome")``: ``paper``, the default,
and ``organism``): ``make("rome", site, preset="organism")``; see :mod:`.presets`.

Editors: ``rome`` (single-layer rank-one), ``crossmodal`` (audio then text ROME), ``alphaedit``
(multi-layer null-space), ``crossmodal-alphaedit`` (audio then text AlphaEdit), ``finetune``.
Third parties: :func:`register` or the ``lalm_interp.editors`` entry point group.
See ``docs/editors/index.md``.
"""

from typing import Any

from . import losses, presets
from .alphaedit import AlphaEdit, AlphaEditHParams, null_space_update
from .base import (
    ENTRY_POINT_GROUP,
    EditContext,
    EditHandle,
    Editor,
    EditorError,
    EditorWarning,
    EditRequest,
    KeyCorpus,
    available,
    get,
    normalise_site,
    register,
)
from .crossmodal import (
    CrossModal,
    CrossModalAlphaEdit,
    CrossModalAlphaEditHParams,
    CrossModalHParams,
)
from .finetune import FineTune, FineTuneHParams
from .rome import Rome, RomeHParams, multi_key_update, rank_one_update


def make(name: str, sites: Any, hparams: Any = None, *, preset: str | None = None, **overrides: Any) -> Editor:
    """Build a registered editor: ``make("rome", "text.layers.1.mlp.down", steps=20)``.

    ``preset``: a named hyper-parameter preset (``presets.available(name)``, e.g. ``"paper"`` or
    ``"organism"``) instead of ``hparams``; ``overrides`` then replace single fields. Neither given:
    the dataclass defaults, which are the ``paper`` preset. ``editor.preset`` records the name."""
    hp = presets.resolve(name, hparams, preset)
    editor = get(name)(sites, hp, **overrides)
    editor.preset = preset
    return editor

__all__ = [
    "ENTRY_POINT_GROUP",
    "AlphaEdit",
    "AlphaEditHParams",
    "CrossModal",
    "CrossModalAlphaEdit",
    "CrossModalAlphaEditHParams",
    "CrossModalHParams",
    "EditContext",
    "EditHandle",
    "EditRequest",
    "Editor",
    "EditorError",
    "EditorWarning",
    "FineTune",
    "FineTuneHParams",
    "KeyCorpus",
    "Rome",
    "RomeHParams",
    "available",
    "get",
    "losses",
    "make",
    "multi_key_update",
    "normalise_site",
    "null_space_update",
    "presets",
    "rank_one_update",
    "register",
]
