"""The frame-rate chain of an audio encoder: seconds ↔ mel frames ↔ encoder frames ↔ LLM positions.

A chain is a list of :class:`Stage` s. Stage 0 is the feature frontend (mel frames at
``sample_rate / hop`` per second). Every later stage is a strided window over the previous stage:
frame ``j`` *owns* the previous frames ``[j*stride, (j+1)*stride)`` (the stride cell — this is how a
word is assigned to frames; receptive fields of convolutions are wider, see
``docs/gotchas/frame-rates.md``), and a padded input of ``n`` previous frames yields
``(n + 2*padding - kernel) // stride + 1`` valid frames.

A ``partial`` stage counts every frame whose cell holds at least one valid previous frame
(``ceil(n / stride)``): for models that splice the whole padded window into the LLM (Voxtral's 4-frame
groups, SALMONN's 17-frame Q-Former windows), the frame holding the last real audio is a real
position. With ``RateChain.window_mel`` set, counts never exceed the frames of the full window
(SALMONN drops the 4 tail frames of 1500 that do not fill a 17-frame window: 88 windows for 30 s).

Qwen2-Audio: mel 100/s → conv2 (k3 s2 p1) 50/s → avg-pool (k2 s2) 25/s, so ``L`` valid mel frames
give ``((L-1)//2 + 1 - 2)//2 + 1`` LLM audio tokens (3 s → 300 → 150 → 75).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import SpanError


@dataclass(frozen=True)
class Stage:
    """One stage of the chain.

    name: the stage's name, used by sites (``mel``, ``encoder``, ``token`` ...).
    stride: previous-stage frames per frame of this stage (1 for the first stage).
    kernel: window length in previous-stage frames (for the valid-count formula).
    padding: zero padding on each side, in previous-stage frames (for the valid-count formula).
    partial: count a frame as valid when its stride cell holds any valid previous frame
        (``ceil(n_prev / stride)``) instead of the kernel formula; see the module docstring.
    """

    name: str
    stride: int = 1
    kernel: int = 1
    padding: int = 0
    partial: bool = False

    def count(self, n_prev: int) -> int:
        """Valid frames of this stage produced from ``n_prev`` valid previous frames."""
        if n_prev <= 0:
            return 0
        if self.partial:
            return -(-n_prev // self.stride)
        return self.full_count(n_prev)

    def full_count(self, n_prev: int) -> int:
        """Frames this stage computes from ``n_prev`` input frames (the kernel formula)."""
        if n_prev <= 0:
            return 0
        return max(0, (n_prev + 2 * self.padding - self.kernel) // self.stride + 1)


@dataclass(frozen=True)
class RateChain:
    """Seconds ↔ frames of every stage.

    sample_rate: audio samples per second the feature extractor expects (Hz).
    hop: samples between consecutive mel frames.
    stages: the stages after seconds; ``stages[0]`` is the mel frontend (stride 1).
    window_mel: mel frames of the padded encoder window; caps valid counts at the frames the
        model computes for a full window (``None``: no cap — the stages' own formulas suffice).
    """

    sample_rate: int
    hop: int
    stages: tuple[Stage, ...]
    window_mel: int | None = None

    # ------------------------------------------------------------------ basics
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    def index(self, stage: str) -> int:
        try:
            return self.names.index(stage)
        except ValueError:
            raise SpanError(f"unknown rate stage {stage!r}; this chain has {list(self.names)}.") from None

    @property
    def llm_stage(self) -> str:
        """The stage whose frames are LLM audio positions: ``token`` when present, else the last."""
        return "token" if "token" in self.names else self.names[-1]

    @property
    def mel_rate(self) -> float:
        """Mel frames per second."""
        return self.sample_rate / self.hop

    def frames_per_second(self, stage: str) -> float:
        r = self.mel_rate
        for s in self.stages[1 : self.index(stage) + 1]:
            r /= s.stride
        return r

    def cell(self, stage: str) -> int:
        """How many mel frames one frame of ``stage`` owns."""
        c = 1
        for s in self.stages[1 : self.index(stage) + 1]:
            c *= s.stride
        return c

    # ------------------------------------------------------------------ counts
    def mel_frames(self, n_samples: int) -> int:
        """Valid mel frames for ``n_samples`` of audio (Whisper's extractor: ``n // hop``)."""
        return n_samples // self.hop

    def valid(self, stage: str, n_mel: int) -> int:
        """Valid frames of ``stage`` for ``n_mel`` valid mel frames."""
        n, w = n_mel, self.window_mel
        if w is not None:
            n = min(n, w)
        for s in self.stages[1 : self.index(stage) + 1]:
            n = s.count(n)
            if w is not None:
                w = s.full_count(w)
                n = min(n, w)
        return n

    # ------------------------------------------------------------------ maps
    def frame_to_seconds(self, stage: str, j: int) -> tuple[float, float]:
        """The time interval ``[start, end)`` in seconds that frame ``j`` of ``stage`` owns."""
        c = self.cell(stage)
        return (j * c / self.mel_rate, (j + 1) * c / self.mel_rate)

    def seconds_to_span(self, stage: str, start_s: float, end_s: float, n_mel: int | None = None) -> tuple[int, int]:
        """Half-open frame span ``[a, b)`` of ``stage`` whose cells overlap ``[start_s, end_s)``.

        With ``n_mel`` the span is clipped to the valid frames; a span that would be empty after
        clipping raises :class:`SpanError` (the words lie in padding).
        """
        if not (end_s > start_s) or start_s < 0 or not math.isfinite(end_s):
            raise SpanError(
                f"time span [{start_s}, {end_s}) s is not a valid interval; expected 0 <= start < end."
            )
        c = self.cell(stage) / self.mel_rate  # seconds per frame
        a = int(math.floor(start_s / c + 1e-9))
        b = int(math.ceil(end_s / c - 1e-9))
        b = max(b, a + 1)
        if n_mel is not None:
            n = self.valid(stage, n_mel)
            a, b = min(a, n), min(b, n)
            if a >= b:
                raise SpanError(
                    f"time span [{start_s:.3f}, {end_s:.3f}) s falls outside the {n} valid {stage} frames "
                    f"({n / self.frames_per_second(stage):.3f} s of audio); the words lie in padding. "
                    "Check the word timestamps belong to this clip."
                )
        return a, b

    def map_span(self, src: str, span: tuple[int, int], dst: str) -> tuple[int, int]:
        """Map a half-open frame span of stage ``src`` to the overlapping span of stage ``dst``."""
        a, b = span
        if a >= b:
            raise SpanError(f"frame span {span} of {src!r} is empty; expected start < end.")
        cs, cd = self.cell(src), self.cell(dst)
        return (a * cs) // cd, -(-(b * cs) // cd)
