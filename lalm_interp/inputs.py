"""Spoken-prompt inputs: audio + a fixed text instruction → model inputs, with every position known.

:func:`build_inputs` checks the audio (mono float, finite, non-empty, within the encoder window),
resamples it from the stated ``sample_rate`` (required: never guessed) to the model's rate,
renders the prompt through the processor's chat template (or the plain base-model format), lets
the real processor expand the audio placeholder to the right number of audio ids, left-pads the
text and adds position ids. The returned :class:`PromptBatch` records, per example, where the audio
sits in the LLM sequence and how many mel frames are real, so spans and scoring never guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int

from .adapters.base import Adapter
from .errors import AudioInputError
from .speech.audio import RATE_HINT, TOOLKIT_RATE, _rate, check_samples, require_rates, resample  # noqa: F401

DEFAULT_INSTRUCTION = "Complete the sentence."


@dataclass
class PromptBatch:
    """Model inputs plus per-example bookkeeping (all positions index the padded LLM sequence).

    model_inputs: keyword arguments for the HF model forward (ids, masks, mel features, position ids).
    n_mel: real (unpadded) mel frames per example.
    audio_start / n_audio: first LLM position of the audio and the number of audio positions.
    last: index of the last real text token (the position whose logits predict the object).
    texts: the rendered prompt strings (with one placeholder each, before expansion).
    """

    model_inputs: dict[str, torch.Tensor]
    n_mel: list[int]
    audio_start: list[int]
    n_audio: list[int]
    last: list[int]
    texts: list[str]
    style: str = "chat"
    instruction: str = DEFAULT_INSTRUCTION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def input_ids(self) -> Int[torch.Tensor, "batch seq"]:
        return self.model_inputs["input_ids"]

    @property
    def input_features(self) -> Float[torch.Tensor, "batch mel frames"]:
        return self.model_inputs["input_features"]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def select(self, rows: Sequence[int]) -> "PromptBatch":
        """A batch of the given rows (repeats allowed), e.g. ``[0] * 8`` to replicate one example."""
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        return PromptBatch(
            {k: v[idx] for k, v in self.model_inputs.items()},
            [self.n_mel[i] for i in rows],
            [self.audio_start[i] for i in rows],
            [self.n_audio[i] for i in rows],
            [self.last[i] for i in rows],
            [self.texts[i] for i in rows],
            self.style,
            self.instruction,
            dict(self.extra),
        )

    def to(self, device: Any, dtype: torch.dtype | None = None) -> "PromptBatch":
        """Move the inputs to ``device`` (in place); ``dtype`` casts the floating ones (mel features)."""
        self.model_inputs = _moved(self.model_inputs, device, dtype)
        return self


def _moved(inputs: dict[str, torch.Tensor], device: Any, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    return {k: v.to(device=device, dtype=dtype) if dtype is not None and v.is_floating_point() else v.to(device)
            for k, v in inputs.items()}


def model_placement(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) of the model's first floating-point parameter: where its inputs must live."""
    for prm in model.parameters():
        if prm.is_floating_point():
            return prm.device, prm.dtype
    return torch.device("cpu"), torch.float32


def place(inputs: "PromptBatch | dict[str, torch.Tensor]", model: torch.nn.Module) -> Any:
    """Inputs on the model's device, mel features in its dtype (a no-op when they already are).

    Every forward the toolkit runs goes through this, so a model moved to CUDA or cast to bf16
    needs nothing else; a :class:`PromptBatch` is moved in place and returned."""
    device, dtype = model_placement(model)
    if isinstance(inputs, PromptBatch):
        return inputs.to(device, dtype)
    return _moved(inputs, device, dtype)


def check_audio(audio: Any, sample_rate: int, adapter: Adapter, *, name: str = "audio") -> np.ndarray:
    """Validate one clip given at ``sample_rate`` Hz and return it as 1-D float32 at the model's
    rate (resampled with :func:`lalm_interp.speech.audio.resample` when the rates differ).
    Raises :class:`AudioInputError`."""
    chain = adapter.rate_chain
    require_rates(sample_rate, 1, where=f"{name}: ")
    sample_rate = _rate(sample_rate, f"{name}: sample_rate")
    x = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    if x.ndim == 2 and 1 in x.shape:
        x = x.reshape(-1)
    if x.ndim != 1:
        raise AudioInputError(
            f"{name}: audio of shape {tuple(x.shape)} is not mono; expected a 1-D array of samples. "
            "Mix down first, e.g. x.mean(axis=channel_axis), or read files with "
            "lalm_interp.load_audio (it mixes down)."
        )
    if x.size == 0:
        raise AudioInputError(f"{name}: audio is empty; expected at least one mel hop ({chain.hop} samples).")
    if not np.issubdtype(x.dtype, np.floating):
        raise AudioInputError(
            f"{name}: audio dtype {x.dtype} is not floating point; expected float samples in [-1, 1] "
            "(divide int16 PCM by 32768)."
        )
    check_samples(x, sample_rate, name=name)
    x = resample(x, sample_rate, chain.sample_rate)
    if chain.mel_frames(x.size) < 1:
        raise AudioInputError(
            f"{name}: {x.size} samples at {chain.sample_rate} Hz is shorter than one mel hop "
            f"({chain.hop} samples = {chain.hop / chain.sample_rate * 1000:.0f} ms)."
        )
    window = window_samples(adapter)
    if x.size > window:
        raise AudioInputError(
            f"{name}: the clip is {x.size / chain.sample_rate:.2f} s long ({x.size} samples at "
            f"{chain.sample_rate} Hz), longer than the encoder window of "
            f"{window / chain.sample_rate:.2f} s ({adapter.name} would silently truncate it). "
            "Cut the clip, leave it out (`bench build --max-seconds`), or use a model/processor "
            "with a longer window."
        )
    return x.astype(np.float32, copy=False)


def check_words(words: Sequence[Any], n_samples: int, sample_rate: int, *, name: str = "audio",
                tol_s: float = 0.02) -> None:
    """Raise :class:`AudioInputError` unless every timed word ``(text, start_s, end_s)`` lies
    inside the clip of ``n_samples`` at ``sample_rate`` (within ``tol_s``) with start <= end.
    The message names the word, its times and the clip length."""
    dur = n_samples / sample_rate
    for i, w in enumerate(words):
        text, s, e = w[0], w[1], w[2]
        if s is None or e is None:
            continue
        if not (np.isfinite(s) and np.isfinite(e)) or s < -tol_s or e < s:
            raise AudioInputError(
                f"{name}: word {i} {text!r} has times {s:.3f}–{e:.3f} s; expected finite 0 <= start <= end. "
                "Correct the word timings (seconds, not ms or samples).")
        if e > dur + tol_s:
            raise AudioInputError(
                f"{name}: word {i} {text!r} ends at {e:.3f} s, after the clip ends ({dur:.3f} s: "
                f"{n_samples} samples at {sample_rate} Hz). Check that the timings belong to this "
                "clip, are in seconds, and that sample_rate is the clip's real rate.")


def window_samples(adapter: Adapter) -> int:
    """Samples the encoder window holds (mel length must equal ``2 * max_source_positions``)."""
    fe = getattr(adapter.processor, "feature_extractor", None)
    chain = adapter.rate_chain
    if fe is not None:
        return int(fe.n_samples)
    msp = int(adapter.config.audio_config.max_source_positions)
    return 2 * msp * chain.hop


def build_inputs(
    processor: Any,
    adapter: Adapter,
    audios: Sequence[Any],
    *,
    sample_rate: int | Sequence[int] | None = None,
    instruction: str | Sequence[str] = DEFAULT_INSTRUCTION,
    style: str | None = None,
    names: Sequence[str] | None = None,
) -> PromptBatch:
    """Build a :class:`PromptBatch` for spoken prompts ``audios`` (one clip each).

    sample_rate: the rate of the clips in Hz — one for all, or one per clip. Required (no
        default): without it :class:`AudioInputError` is raised, since a 44.1 kHz array taken as
        16 kHz plays 2.76 x too slow. Benchmark items carry theirs (``item.sample_rate``);
        :func:`load_audio` returns 16 kHz (:data:`TOOLKIT_RATE`). Clips at another rate than the
        model's are resampled to it.
    """
    if len(audios) == 0:
        raise AudioInputError("no audio clips given; build_inputs needs at least one.")
    require_rates(sample_rate, len(audios), where="build_inputs: ")
    if adapter.processor is None:
        adapter.processor = processor
    names = list(names) if names is not None else [f"audio[{i}]" for i in range(len(audios))]
    rates = list(sample_rate) if isinstance(sample_rate, (list, tuple)) else [sample_rate] * len(audios)
    if len(rates) != len(audios):
        raise AudioInputError(f"{len(rates)} sample rates for {len(audios)} clips; give one rate, "
                              "or one per clip.")
    clips = [check_audio(a, r, adapter, name=n) for a, r, n in zip(audios, rates, names)]
    sample_rate = adapter.rate_chain.sample_rate  # every clip is at the model's rate now
    if style is None:
        style = "chat" if getattr(processor, "chat_template", None) else "plain"
    instructions = [instruction] * len(clips) if isinstance(instruction, str) else list(instruction)
    texts = [adapter.spec.build_prompt(processor, ins, style) for ins in instructions]
    tok = processor.tokenizer
    old_side = tok.padding_side
    tok.padding_side = "left"
    try:
        # padding applies to the text only: the mel features keep the processor's own padding to the
        # encoder window (a top-level padding=True would pad AudioFlamingo3's features to the longest clip)
        enc = processor(
            text=texts, audio=clips, sampling_rate=sample_rate, return_tensors="pt", text_kwargs={"padding": True}
        )
    finally:
        tok.padding_side = old_side
    fe = processor.feature_extractor
    expected = adapter.window_mel
    if enc["input_features"].shape[-1] != expected:
        raise AudioInputError(
            f"the processor's feature extractor makes {enc['input_features'].shape[-1]} mel frames but the "
            f"encoder needs exactly {expected} (2 x max_source_positions); set chunk_length="
            f"{expected * fe.hop_length // fe.sampling_rate} s in the feature extractor.",
            page="adapters",
        )
    mask = enc["attention_mask"]
    position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
    inputs = {
        "input_ids": enc["input_ids"],
        "attention_mask": mask,
        "input_features": enc["input_features"],
    }
    mask_key = adapter.spec.feature_mask_key
    chain = adapter.rate_chain
    if mask_key is not None:
        if mask_key not in enc:
            raise AudioInputError(
                f"the processor returned no {mask_key!r} (got {sorted(enc.keys())}); {adapter.name} needs the "
                "mel-frame mask. Use the processor the adapter was written for.",
                page="adapters",
            )
        inputs[mask_key] = enc[mask_key]
        n_mel = [int(v) for v in enc[mask_key].sum(-1)]
    else:  # the model takes no mask (Voxtral, SALMONN): real frames from the sample count
        n_mel = [min(chain.mel_frames(c.size), expected) for c in clips]
    inputs["position_ids"] = position_ids
    llm = chain.llm_stage
    starts, counts = [], []
    for row, nm in zip(enc["input_ids"], n_mel):
        s, n = adapter.audio_slots(row)
        want = chain.valid(llm, expected if adapter.spec.audio_positions == "window" else nm)
        if n != want:
            raise AudioInputError(
                f"processor expanded {n} audio ids but {nm} mel frames give {want} audio tokens; "
                "the processor and the model disagree on the rate chain.",
                page="adapters",
            )
        starts.append(s)
        counts.append(n)
    last = [int(mask.shape[1]) - 1] * len(clips)  # left padding: the last position is always real
    return PromptBatch(inputs, n_mel, starts, counts, last, texts, style,
                       instruction if isinstance(instruction, str) else "", {})
