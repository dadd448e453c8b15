"""Sequential cross-modal editing: edit audio layer(s) first, then text layer(s) on the already
audio-edited model, driven by the change the audio edit caused in the text space.

Construction (``docs/editors/crossmodal.md``): for each request,
1. e₀ = projector output (the audio tokens as the LLM sees them) at the subject word's audio
   tokens, mean-pooled, before any edit;
2. the audio editor (ROME or AlphaEdit) edits the audio site(s);
3. e₁ = the same after the audio edit; Δe = e₁ − e₀ lives in the LLM's residual width;
4. the text editor edits the text site(s) on the audio-edited model, with its value change δ
   initialised to ``drive_scale · Δe`` (the audio edit's own text-space signal, written again
   into the text stream at the subject's audio tokens) and then refined by its own gradient steps.
With ``drive=False`` step 4 starts from δ = 0 (plain sequential editing). The drive is used only
when the text stage keys at the subject word (``key_span="word"``); with the default ``"auto"``
the text stage keys at the last token, where Δe (a change at the subject's audio tokens) does not
apply, so it starts from δ = 0 and ``info["drive_used"]`` is False.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..sites import Site
from .alphaedit import AlphaEdit, AlphaEditHParams
from .base import EditContext, EditHandle, Editor, EditorError, EditRequest, register, require_mlp_down
from .keys import capture, key_span_name, prepare
from .rome import Rome, RomeHParams


@dataclass(frozen=True)
class CrossModalHParams:
    """Hyper-parameters of :class:`CrossModal` (single-layer: one audio + one text site).

    audio: the audio-layer ROME edit (:class:`RomeHParams`).
    text: the text-layer ROME edit (:class:`RomeHParams`).
    drive: initialise the text δ from the audio edit's change at the projector output. Unit: flag.
    drive_scale: multiplier of that change. Unit: ratio.
    """

    audio: RomeHParams = field(default_factory=RomeHParams)
    text: RomeHParams = field(default_factory=RomeHParams)
    drive: bool = True
    drive_scale: float = 1.0

    def check(self) -> None:
        self.audio.check()
        self.text.check()


@dataclass(frozen=True)
class CrossModalAlphaEditHParams:
    """Hyper-parameters of :class:`CrossModalAlphaEdit` (multi-layer: audio layers, then text layers).

    audio / text: :class:`AlphaEditHParams` of each stage. drive / drive_scale: as in
    :class:`CrossModalHParams` (units: flag, ratio).
    """

    audio: AlphaEditHParams = field(default_factory=AlphaEditHParams)
    text: AlphaEditHParams = field(default_factory=AlphaEditHParams)
    drive: bool = True
    drive_scale: float = 1.0

    def check(self) -> None:
        self.audio.check()
        self.text.check()


class CrossModal(Editor):
    """Audio-layer ROME, then text-layer ROME on the audio-edited model (see module docstring)."""

    name = "crossmodal"
    label = "Cross-modal ROME"
    HParams = CrossModalHParams
    accumulates = False
    inner = Rome
    single = True

    def __init__(self, sites: Any, hparams: Any = None, **overrides: Any):
        super().__init__(sites, hparams, **overrides)
        self._stages: dict[str, Editor] = {}

    def reset(self) -> None:
        for e in self._stages.values():
            e.reset()

    def check_sites(self, adapter: Any, sites: list[Site]) -> None:
        require_mlp_down(self.name, adapter, sites, one_stream=False)
        a = [s for s in sites if s.stream == "audio"]
        t = [s for s in sites if s.stream == "text"]
        if not a or not t or (self.single and (len(a) != 1 or len(t) != 1)):
            want = "one audio and one text" if self.single else "at least one audio and one text"
            raise EditorError(f"{self.name} needs {want} mlp.down site(s), e.g. ['audio.layers.1.mlp.down', "
                              f"'text.layers.0.mlp.down']; got {[str(s) for s in sites]}.")

    def stage(self, stream: str, sites: list[Site]) -> Editor:
        key = f"{stream}:{[str(s) for s in sites]}"
        if key not in self._stages:
            self._stages[key] = self.inner(sites, getattr(self.hparams, stream))
        return self._stages[key]

    def _proj_at_subject(self, ctx: EditContext, preps: list, requests: list[EditRequest]) -> list[torch.Tensor]:
        proj = ctx.adapter.one("proj")
        out = []
        for p, r in zip(preps, requests):
            a, b = p.pm.span(r.span_name, ctx.adapter.stage(proj))
            x = capture(ctx, [proj], p.batch.model_inputs)[proj]
            out.append(x[0, a:b].double().mean(0))
        return out

    def _edit(self, ctx: EditContext, requests: list[EditRequest], sites: list[Site], handle: EditHandle) -> None:
        hp = self.hparams
        a_sites = [s for s in sites if s.stream == "audio"]
        t_sites = [s for s in sites if s.stream == "text"]
        preps = [prepare(ctx, r) for r in requests]
        e0 = self._proj_at_subject(ctx, preps, requests)
        self.stage("audio", a_sites)._edit(ctx, requests, a_sites, handle)
        audio_info, handle.info = handle.info, {}
        e1 = self._proj_at_subject(ctx, preps, requests)
        drives = {i: (hp.drive_scale * (y - x)).float() for i, (x, y) in enumerate(zip(e0, e1))}
        # Δe is a change at the subject word's audio tokens: it initialises δ only where the text
        # stage keys at that word too (key_span "word"); at the last token it would be meaningless.
        t_span = getattr(hp.text, "key_span", "word")
        use = hp.drive and all(key_span_name(r, t_sites[-1], t_span) == r.span_name for r in requests)
        self.stage("text", t_sites)._edit(ctx, requests, t_sites, handle, inits=drives if use else None)
        text_info = handle.info
        handle.info = {"audio": audio_info, "text": text_info,
                       "drive_norm": [float(d.norm()) for d in drives.values()], "drive": hp.drive,
                       "drive_used": use}


class CrossModalAlphaEdit(CrossModal):
    """Audio-layer AlphaEdit, then text-layer AlphaEdit on the audio-edited model; both stages keep
    their previously edited keys across sequential calls."""

    name = "crossmodal-alphaedit"
    label = "Cross-modal AlphaEdit"
    HParams = CrossModalAlphaEditHParams
    accumulates = True
    inner = AlphaEdit
    single = False


register(CrossModal)
register(CrossModalAlphaEdit)
