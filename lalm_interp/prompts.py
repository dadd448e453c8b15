"""What every engine takes: :class:`SpokenPrompt`, one spoken example (audio at a stated rate, word
timings, the subject's word range, the object to score and the instruction), and
:class:`PreparedPrompt`, the one prepared-prompt type — that example turned into model inputs for one
object (tracing's :class:`~lalm_interp.interventions.engine.TracePrompt` and the editors'
:func:`lalm_interp.editors.keys.prepare_prompt` both start from it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import AudioInputError, SpanError
from .inputs import (DEFAULT_INSTRUCTION, RATE_HINT, TOOLKIT_RATE, PromptBatch, build_inputs, check_words, place,
                     require_rates)
from .scoring import object_prefix, object_token_ids, teacher_forced_inputs
from .speech.audio import _rate, check_samples, resample
from .spans import PositionMap, Word, as_words, position_map


_WORD_TOL_S = 0.02
"""How far (s) a word's end may pass the clip's end (rounding of aligner times)."""


@dataclass(frozen=True)
class SpokenPrompt:
    """One example to trace: audio, word timings, subject word range, object.

    id: example id (cache key). audio: mono float samples at ``sample_rate`` Hz (e.g. from
    :func:`lalm_interp.load_audio`). words: ``Word`` s or (text, start_s, end_s), seconds.
    subject: inclusive word range of the subject. target: the object whose probability is measured.
    instruction: the fixed text instruction after the audio.
    sample_rate: the rate of ``audio`` in Hz. Required (the last field, no default:
    :class:`~lalm_interp.errors.AudioInputError` without it): ``load_audio`` returns 16 kHz, and
    :meth:`from_item` takes a benchmark item's own ``sample_rate``. Audio at another rate is
    resampled to 16 kHz when the prompt is made, so afterwards ``audio`` is always 16 kHz and
    ``sample_rate`` is 16000.

    Checked when made: the rate is given; the audio is mono, float, finite and non-empty
    (:class:`~lalm_interp.errors.AudioInputError` otherwise). :meth:`check_words` (run by
    :func:`trace_example` before anything else) checks that every timed word ends inside the clip.
    """

    id: str
    audio: np.ndarray
    words: tuple[Word, ...]
    subject: tuple[int, int]
    target: str
    instruction: str = DEFAULT_INSTRUCTION
    sample_rate: int | None = None

    def __post_init__(self) -> None:
        name = f"example {self.id!r}"
        require_rates(self.sample_rate, 1, where=f"SpokenPrompt {name}: ")
        x = self.audio.detach().cpu().numpy() if isinstance(self.audio, torch.Tensor) else np.asarray(self.audio)
        if x.ndim == 2 and 1 in x.shape:
            x = x.reshape(-1)
        if x.ndim != 1 or x.size == 0 or not np.issubdtype(x.dtype, np.floating):
            raise AudioInputError(
                f"{name}: audio of shape {tuple(x.shape)} and dtype {x.dtype}; expected a non-empty "
                "1-D float array of mono samples. Read files with lalm_interp.load_audio (mono "
                "float32), or mix down / convert first (x.mean(axis=channel_axis), int16 / 32768).")
        rate = _rate(self.sample_rate, f"{name}: sample_rate")
        check_samples(x, rate, name=name)
        object.__setattr__(self, "words", as_words(self.words))  # Word s, also from TTS WordSpan s
        if rate != TOOLKIT_RATE:
            x = resample(x, rate, TOOLKIT_RATE)
            object.__setattr__(self, "sample_rate", TOOLKIT_RATE)
        object.__setattr__(self, "audio", x)

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate

    def check_words(self) -> None:
        """Raise :class:`~lalm_interp.errors.AudioInputError` naming the word, its end time and the
        clip length when a timed word ends after the clip (or has start > end)."""
        check_words(self.words, len(self.audio), self.sample_rate, name=f"example {self.id!r}",
                    tol_s=_WORD_TOL_S)

    @classmethod
    def from_item(cls, item: Any, target: str | None = None, instruction: str = DEFAULT_INSTRUCTION) -> "SpokenPrompt":
        """From a benchmark item (``lalm_interp.bench``): its audio at its ``sample_rate``, word
        timings and subject range. An object without a ``sample_rate`` raises
        :class:`~lalm_interp.errors.AudioInputError` (its rate is never guessed)."""
        if item.subject_word_range is None:
            raise SpanError(
                f"item {item.item_id}: has no subject span; trace items of form 'prompt' or 'subject'."
            )
        if any(w[1] is None or w[2] is None for w in item.words):
            raise SpanError(f"item {item.item_id}: some words have no timing; re-align the clip.")
        words = tuple(Word(w[0], float(w[1]), float(w[2])) for w in item.words)
        rate = getattr(item, "sample_rate", None)
        if rate is None:
            raise AudioInputError(
                f"SpokenPrompt.from_item: {type(item).__name__} {getattr(item, 'item_id', '?')!r} has no "
                "sample_rate, so its audio is 1 raw sample array(s) given without sample_rate. Fix: give "
                "the object a sample_rate (benchmark items have one), or build "
                f"SpokenPrompt(...) directly and {RATE_HINT}.")
        return cls(item.item_id, item.audio, words, tuple(item.subject_word_range),
                   target or item.target_true, instruction, sample_rate=rate)


@dataclass
class PreparedPrompt:
    """One spoken prompt made ready for one object.

    batch: the prompt's model inputs (:func:`~lalm_interp.inputs.build_inputs`, one example).
    pm: its position map (word spans at every stage). token_ids: the object's token ids.
    inputs: prompt + object teacher-forced (logits at ``L - 1 + k`` predict ``token_ids[k]``).
    L: the prompt length."""

    batch: PromptBatch
    pm: PositionMap
    token_ids: list[int]
    inputs: dict[str, torch.Tensor]
    L: int

    @classmethod
    def make(cls, processor: Any, adapter: Any, prompt: SpokenPrompt, target: str, *,
             model: "torch.nn.Module | None" = None) -> "PreparedPrompt":
        """Prepare ``prompt`` for the object ``target``; with ``model``, the batch is placed on its
        device and dtype first (:func:`~lalm_interp.inputs.place`)."""
        batch = build_inputs(processor, adapter, [prompt.audio], sample_rate=prompt.sample_rate,
                             instruction=prompt.instruction, names=[prompt.id])
        if model is not None:
            batch = place(batch, model)
        pm = position_map(adapter, batch, 0, as_words(prompt.words), prompt.subject)
        tok = processor.tokenizer
        ids = object_token_ids(tok, target, object_prefix(adapter, batch))
        inputs, L = teacher_forced_inputs(batch, [ids], tok.pad_token_id or 0)
        return cls(batch, pm, ids, inputs, L)

    @property
    def new_ids(self) -> list[int]:
        """The object's token ids under the editors' name (the object is ``target_new`` there)."""
        return self.token_ids
