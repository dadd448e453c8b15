"""Knowledge editors for audio-language models (paper §3.2) behind one protocol.

Quick use::

    from lalm_interp.editors import EditContext, EditRequest, KeyCorpus, make

    ctx = EditContext(model, processor, adapter, store=Store(), corpus=KeyCorpus("synth:200", clips))
    editor = make("rome", "audio.layers.1.mlp.down", cov="identity")
    handle = editor.apply(ctx, EditRequest(prompt, target_new="London", word="first"))
    ...                                  # the model now says London
    handle.revert()                      # bitwise back

Editors: ``rome`` (single-layer rank-one), ``crossmodal`` (audio then text ROME), ``alphaedit``
(multi-layer null-space), ``crossmodal-alphaedit`` (audio then text AlphaEdit), ``finetune``.
Third parties: :func:`register` or the ``lalm_interp.editors`` entry point group.
See ``docs/editors/index.md``.
"""

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
    make,
    normalise_site,
    register,
)
from .alphaedit import AlphaEdit, AlphaEditHParams, null_space_update
from .crossmodal import CrossModal, CrossModalAlphaEdit, CrossModalAlphaEditHParams, CrossModalHParams
from .finetune import FineTune, FineTuneHParams
from .rome import Rome, RomeHParams, multi_key_update, rank_one_update

__all__ = [
    "ENTRY_POINT_GROUP", "EditContext", "EditHandle", "Editor", "EditorError", "EditorWarning", "EditRequest",
    "KeyCorpus", "available", "get", "make", "normalise_site", "register",
    "Rome", "RomeHParams", "rank_one_update", "multi_key_update", "AlphaEdit", "AlphaEditHParams", "null_space_update",
    "CrossModal", "CrossModalHParams", "CrossModalAlphaEdit", "CrossModalAlphaEditHParams",
    "FineTune", "FineTuneHParams",
]
