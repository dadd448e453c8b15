"""Sequential cross-modal editing (paper §3.2): edit audio layer(s) first, then text layer(s) on the
already audio-edited model, **driven** by the change the audio edit caused in the text space.

Paper: "We first edit a selected audio layer and compute the resulting residual from the encoder
output. This residual is then projected into the text representation space and used to drive a
subsequent text-layer update."

Construction (exact; ``docs/editors/crossmodal.md``), for each request:

0. every stage's key statistics (ROME's C, AlphaEdit's P) are fetched **before anything is
   edited**, i.e. from the unedited model — computed once per site and shared across cases (the
   paper's reading), stored under the unedited model's fingerprint;
1. e₀ = the value at the subject word's audio-token positions in the LLM, before any edit: the
   residual stream after the (last) edited text layer (``drive_at="layer"``, default: the audio
   edit's change as the LLM carries it to the text layer) or the projector output (``"projector"``:
   the audio tokens as the LLM receives them);
2. the audio editor (ROME or AlphaEdit) edits the audio site(s);
3. e₁ = the same after the audio edit; Δe = e₁ − e₀ (one row per audio token of the word, in the
   LLM's residual width D) is the audio edit's residual, projected into the text space (through
   the projector, and with ``"layer"`` the text layers up to the edited one);
4. the text editor edits the text site(s) on the audio-edited model, keyed at the **same** audio
   tokens (``text.key_span="word"``), with target value v* = v₁ + ``drive_scale``·Δe — v₁ the
   text layer's value there on the audio-edited model (ROME: ``mlp.down`` output, mean-pooled;
   AlphaEdit: the residual after the last edited text layer) and Δe mean-pooled (``keys="mean"``)
   or per token (``keys="frames"``): the text layer is made to write the projected residual into
   the residual stream once more. ``refine_steps`` > 0 then refines that target by gradient steps
   on NLL(target_new) from that start (off in the paper preset).

``drive=False`` is plain sequential editing (the text stage finds its own v* with ``text.steps``
NLL steps from δ = 0). ``info["drive_used"]`` is ``drive``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..sites import Site
from .alphaedit import AlphaEdit, AlphaEditHParams
from .base import EditContext, EditHandle, Editor, EditorError, EditRequest, register, require_mlp_down
from .keys import capture, prepare
from .rome import Rome, RomeHParams, key_mode

DOCS = "docs/editors/crossmodal.md"
DRIVE_AT = ("layer", "projector")


def _check_drive(name: str, hp: Any) -> None:
    hp.audio.check()
    hp.text.check()
    if not isinstance(hp.drive, bool):
        raise EditorError(f"{name}: drive={hp.drive!r}; expected True or False. See {DOCS}.")
    if not (isinstance(hp.drive_scale, (int, float)) and math.isfinite(hp.drive_scale)):
        raise EditorError(f"{name}: drive_scale={hp.drive_scale!r}; expected a finite number (1.0: transfer "
                          f"the audio edit's projected residual as is). See {DOCS}.")
    if hp.drive_at not in DRIVE_AT:
        raise EditorError(f"{name}: drive_at={hp.drive_at!r}; expected one of {list(DRIVE_AT)} ('layer': the change "
                          "the audio edit causes after the edited text layer; 'projector': at the LLM's input). "
                          f"See {DOCS}.")
    if not isinstance(hp.refine_steps, int) or hp.refine_steps < 0:
        raise EditorError(f"{name}: refine_steps={hp.refine_steps!r}; expected an integer >= 0 (0: the text "
                          f"target is the driven one, as in the paper). See {DOCS}.")
    if hp.drive and hp.text.key_span != "word":
        raise EditorError(
            f"{name}: drive=True needs text.key_span='word' (got {hp.text.key_span!r}): the drive Δe is the "
            "audio edit's change at the subject word's audio tokens, so the text stage must key there. "
            f"Set text.key_span=word, or drive=False for plain sequential editing. See {DOCS}."
        )


@dataclass(frozen=True)
class CrossModalHParams:
    """Hyper-parameters of :class:`CrossModal` (single-layer: one audio + one text site).

    audio: the audio-layer ROME edit (:class:`RomeHParams`).
    text: the text-layer ROME edit (:class:`RomeHParams`; default ``key_span="word"``: the subject
        word's audio tokens, where the drive lives). With ``drive=True`` its ``steps`` are replaced
        by ``refine_steps``.
    drive: derive the text stage's target from the audio edit's projected residual
        (v* = v₁ + drive_scale·Δ; module docstring). ``False``: plain sequential editing. Unit: flag.
    drive_at: where the audio edit's residual Δ is read: ``"layer"`` (default) = the change it causes
        in the residual stream after the (last) edited text layer, at the subject's audio tokens —
        Δe carried by the LLM to the text layer; ``"projector"`` = Δe itself, the change of the
        projector output (the LLM's input) there.
    drive_scale: multiplier of Δ. Unit: ratio.
    refine_steps: NLL gradient steps refining the driven text target (0: the driven target itself,
        the paper's construction). Used only with ``drive=True``. Unit: Adam steps.
    """

    audio: RomeHParams = field(default_factory=RomeHParams)
    text: RomeHParams = field(default_factory=lambda: RomeHParams(key_span="word"))
    drive: bool = True
    drive_at: str = "layer"
    drive_scale: float = 1.0
    refine_steps: int = 0

    def check(self) -> None:
        _check_drive("crossmodal", self)


@dataclass(frozen=True)
class CrossModalAlphaEditHParams:
    """Hyper-parameters of :class:`CrossModalAlphaEdit` (multi-layer: audio layers, then text layers).

    audio / text: :class:`AlphaEditHParams` of each stage (text default ``key_span="word"``).
    drive / drive_at / drive_scale / refine_steps: as in :class:`CrossModalHParams` (units: flag,
    name, ratio, Adam steps); the driven target is the residual after the last edited text layer
    plus drive_scale·Δ.
    """

    audio: AlphaEditHParams = field(default_factory=AlphaEditHParams)
    text: AlphaEditHParams = field(default_factory=lambda: AlphaEditHParams(key_span="word"))
    drive: bool = True
    drive_at: str = "layer"
    drive_scale: float = 1.0
    refine_steps: int = 0

    def check(self) -> None:
        _check_drive("crossmodal-alphaedit", self)


def prefetch_stats(ctx: EditContext, stage: Editor, sites: list[Site]) -> None:
    """Fetch (compute or read) ``stage``'s key statistics at ``sites`` now — before anything is
    edited — so every stage uses the unedited model's statistics (memoised on ``ctx``): ROME's C,
    AlphaEdit's projector and its sample of protected keys K₀ (:meth:`Editor.prefetch_stats`)."""
    stage.prefetch_stats(ctx, sites)


class CrossModal(Editor):
    """Audio-layer ROME, then text-layer ROME on the audio-edited model (see module docstring)."""

    name = "crossmodal"
    label = "Cross-modal ROME"
    HParams = CrossModalHParams
    accumulates = False
    inner = Rome
    single = True
    summary = ("drive", "drive_at", "drive_scale", "refine_steps")

    def __init__(self, sites: Any, hparams: Any = None, **overrides: Any):
        super().__init__(sites, hparams, **overrides)
        self._stages: dict[str, Editor] = {}

    def _summary(self) -> list[str]:
        inner = self.inner.summary
        stages = [f"{st}=({', '.join(f'{f}={getattr(getattr(self.hparams, st), f)!r}' for f in inner)})"
                  for st in ("audio", "text")]
        return super()._summary() + stages

    def _state(self) -> list[str]:
        n = max((getattr(e, "n_edited", 0) for e in self._stages.values()), default=0)
        return [f"edits since reset()={n}"] if n else []

    def _split(self, sites: Sequence[Site]) -> dict[str, list[Site]]:
        return {st: [s for s in sites if s.stream == st] for st in ("audio", "text")}

    def stats_sites(self, adapter: Any) -> list[Site]:
        """Every stage's statistics sites (audio stage first): each stage editor's
        :meth:`~lalm_interp.editors.base.Editor.stats_sites` on its own sites."""
        return [k for st, part in self._split(self.resolve_sites(adapter)).items()
                for k in self.inner(part, self.stage_hparams(st)).stats_sites(adapter)]

    def prefetch_stats(self, ctx: EditContext, sites: Sequence[Site]) -> None:
        """Both stages' statistics (audio stage first), from the model as it is now."""
        for st, part in self._split(sites).items():
            if part:
                self.stage(st, part).prefetch_stats(ctx, part)

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

    def stage_hparams(self, stream: str) -> Any:
        """The hyper-parameters the ``stream`` stage runs with: the text stage's ``steps`` are
        ``refine_steps`` when driven."""
        hp = self.hparams
        sub = getattr(hp, stream)
        return dataclasses.replace(sub, steps=hp.refine_steps) if stream == "text" and hp.drive else sub

    def stage(self, stream: str, sites: list[Site]) -> Editor:
        key = f"{stream}:{[str(s) for s in sites]}"
        if key not in self._stages:
            self._stages[key] = self.inner(sites, self.stage_hparams(stream))
        return self._stages[key]

    def drive_site(self, ctx: EditContext, t_sites: list[Site]) -> Site:
        """Where the audio edit's residual is read: the projector output (``drive_at="projector"``)
        or the residual stream after the last edited text layer (``"layer"``)."""
        if self.hparams.drive_at == "projector":
            return ctx.adapter.one("proj")
        last = t_sites[-1]
        return Site(last.stream, ("layers", last.layer, "resid"))

    def _at_subject(self, ctx: EditContext, site: Site, preps: list, requests: list[EditRequest]) -> list[torch.Tensor]:
        """Per request, ``site``'s value at the subject word's audio tokens ((n, D), float64)."""
        out = []
        for p, r in zip(preps, requests):
            a, b = p.pm.span(r.span_name, ctx.adapter.stage(site))
            if b <= a:
                raise EditorError(f"{self.name}: the subject word of {r.id} has no audio token in the LLM; the "
                                  "word is too short to drive the text stage. Use a longer word (EditRequest.word) "
                                  f"or drive=False. See {DOCS}.")
            x = capture(ctx, [site], p.batch.model_inputs)[site]
            out.append(x[0, a:b].double())
        return out

    def _edit(self, ctx: EditContext, requests: list[EditRequest], sites: list[Site], handle: EditHandle) -> None:
        hp = self.hparams
        a_sites = [s for s in sites if s.stream == "audio"]
        t_sites = [s for s in sites if s.stream == "text"]
        audio, text = self.stage("audio", a_sites), self.stage("text", t_sites)
        # 0. both stages' statistics from the unedited model, before the audio stage edits anything
        prefetch_stats(ctx, audio, a_sites)
        prefetch_stats(ctx, text, t_sites)
        preps = [prepare(ctx, r) for r in requests]
        where = self.drive_site(ctx, t_sites)
        e0 = self._at_subject(ctx, where, preps, requests)
        audio._edit(ctx, requests, a_sites, handle)
        audio_info, handle.info = handle.info, {}
        e1 = self._at_subject(ctx, where, preps, requests)
        per_token = key_mode(t_sites[-1], text.hparams.keys) == "frames"
        delta_e = [hp.drive_scale * (y - x) for x, y in zip(e0, e1)]  # (n tokens, D) per request
        drives = {i: (d if per_token else d.mean(0)).float() for i, d in enumerate(delta_e)}
        text._edit(ctx, requests, t_sites, handle, inits=drives if hp.drive else None)
        text_info = handle.info
        handle.info = {"audio": audio_info, "text": text_info,
                       "drive_norm": [float(d.mean(0).norm()) for d in delta_e], "drive": hp.drive,
                       "drive_used": hp.drive, "drive_at": str(where), "drive_per_token": per_token,
                       "refine_steps": hp.refine_steps,
                       "stats": "unedited"}


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
