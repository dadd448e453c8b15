"""The frame-rate chain of an audio encoder: seconds ↔ mel frames ↔ encoder frames ↔ LLM positions.

A chain is a list of :class:`Stage` s. Stage 0 is the feature frontend (mel frames at
``sample_rate / hop`` per second). Every later stage is a strided window over the previous stage:
frame ``j`` reads the previous frames ``j*stride - padding … j*stride - padding + kernel - 1``, and a
padded input of ``n`` previous frames yields ``(n + 2*padding - kernel) // stride + 1`` valid frames.

**Frames are placed at their centres.** Mel frames are centred (Whisper's STFT, ``center=True``):
mel frame ``i`` is centred at ``i * hop / sample_rate`` s (+ ``mel_offset_s``). A later stage's frame
``j`` is centred at the centre of its kernel window, ``j*stride - padding + (kernel-1)/2`` previous
frames — so on Qwen2-Audio encoder frame ``j`` (conv2 k3 s2 p1) is centred at ``0.02 j`` s and LLM
audio token ``k`` (avg-pool k2 s2) at ``0.04 k + 0.01`` s. A frame *covers* the ``cell`` seconds
centred on it (:meth:`RateChain.frame_to_seconds`), and **a time interval ``[t0, t1)`` covers frame
``j`` iff the frame's centre lies in ``[t0, t1)``** (:meth:`RateChain.seconds_to_span`); an interval
that holds no frame centre (shorter than a frame) gets the one frame whose cell holds its midpoint,
so a real word never maps to an empty span. See ``docs/gotchas/frame-rates.md``.

:meth:`RateChain.map_span` maps frame *indices* between stages through the stride structure (frame
``j`` owns the previous frames ``[j*stride, (j+1)*stride)``), which is exact for pooling and grouping
stages (encoder → token) and nests coarse over fine.

A ``partial`` stage counts every frame whose cell holds at least one valid previous frame
(``ceil(n / stride)``): for models that splice the whole padded window into the LLM (Voxtral's 4-frame
groups, SALMONN's 17-frame Q-Former windows), the frame holding the last real audio is a real
position. With ``RateChain.window_mel`` set, counts never exceed the frames of the full window
(SALMONN drops the 4 tail frames of 1500 that do not fill a 17-frame window: 88 windows for 30 s).

Qwen2-Audio: mel 100/s → conv2 (k3 s2 p1) 50/s → avg-pool (k2 s2) 25/s, so ``L`` valid mel frames
give ``((L-1)//2 + 1 - 2)//2 + 1`` LLM audio tokens (3 s → 300 → 150 → 75).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction

from .errors import SpanError


@dataclass(frozen=True)
class Stage:
    """One stage of the chain.

    name: the stage's name, used by sites (``mel``, ``encoder``, ``token`` ...).
    stride: previous-stage frames per frame of this stage (1 for the first stage).
    kernel: window length in previous-stage frames (the valid-count formula and the frame centre).
    padding: zero padding on each side, in previous-stage frames (the valid-count formula and the
        frame centre: frame ``j`` is centred on previous frame ``j*stride - padding + (kernel-1)/2``).
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

    @property
    def centre_offset(self) -> Fraction:
        """Frame ``j`` is centred on previous-stage frame ``j*stride + centre_offset``."""
        return Fraction(self.kernel - 1, 2) - self.padding


@functools.lru_cache(maxsize=256)
def _affine(stages: tuple[Stage, ...]) -> tuple[Fraction, Fraction]:
    step, first = Fraction(1), Fraction(0)
    for s in stages[1:]:
        first += step * s.centre_offset
        step *= s.stride
    return step, first


@dataclass(frozen=True)
class RateChain:
    """Seconds ↔ frames of every stage.

    sample_rate: audio samples per second the feature extractor expects (Hz).
    hop: samples between consecutive mel frames.
    stages: the stages after seconds; ``stages[0]`` is the mel frontend (stride 1).
    window_mel: mel frames of the padded encoder window; caps valid counts at the frames the
        model computes for a full window (``None``: no cap — the stages' own formulas suffice).
    mel_offset_s: time of mel frame 0's centre, seconds. Default 0.0: a centred STFT (Whisper's
        ``center=True``) centres frame ``i`` on sample ``i*hop``. An uncentred frontend whose
        frame ``i`` spans samples ``[i*hop, i*hop + n_fft)`` would use ``n_fft / 2 / sample_rate``.
    """

    sample_rate: int
    hop: int
    stages: tuple[Stage, ...]
    window_mel: int | None = None
    mel_offset_s: float = 0.0

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
    def _affine(self, stage: str) -> tuple[Fraction, Fraction]:
        """``(step, first)``: frame ``j`` of ``stage`` is centred on mel frame ``first + step*j``."""
        return _affine(self.stages[: self.index(stage) + 1])

    def frame_centre_s(self, stage: str, j: int) -> float:
        """Centre of frame ``j`` of ``stage``, seconds (Qwen2-Audio: mel ``0.01 j``, encoder
        ``0.02 j``, token ``0.04 j + 0.01``)."""
        step, first = self._affine(stage)
        return float((first + step * j) * self.hop / self.sample_rate) + self.mel_offset_s

    def frame_to_seconds(self, stage: str, j: int) -> tuple[float, float]:
        """The time ``[start, end)`` in seconds that frame ``j`` of ``stage`` covers: the ``cell``
        centred on the frame (:meth:`frame_centre_s`), its start clipped at 0 (frame 0's cell
        reaches before the audio: encoder frame 0 covers ``[0, 0.01)``)."""
        c = self.frame_centre_s(stage, j)
        half = self.cell(stage) / self.mel_rate / 2
        return (max(0.0, c - half), c + half)

    def _last_partial(self, stage: str, n_mel: int) -> tuple[float, float] | None:
        """For a ``partial`` stage whose last valid frame holds fewer valid previous frames than
        its stride (Voxtral's last 4-frame group, SALMONN's last window): that frame's centre and
        cell end computed from the valid frames it holds; ``None`` otherwise."""
        i = self.index(stage)
        st = self.stages[i]
        n = self.valid(stage, n_mel)
        if i == 0 or not st.partial or n == 0:
            return None
        prev = self.stages[i - 1].name
        n_prev = self.valid(prev, n_mel)
        lo, hi = (n - 1) * st.stride, min(n * st.stride, n_prev)
        if hi - lo >= st.stride or hi <= lo:
            return None
        c = (self.centre_s(prev, lo, n_mel) + self.centre_s(prev, hi - 1, n_mel)) / 2
        return c, self.frame_to_seconds(prev, hi - 1)[1]

    def centre_s(self, stage: str, j: int, n_mel: int | None = None) -> float:
        """Centre of frame ``j``, seconds; with ``n_mel``, the last frame of a ``partial`` stage
        that holds padding is centred on the valid frames it holds (Voxtral: a last group of 2 real
        encoder frames 96, 97 is centred at 1.93 s, not at the 4-frame group's 1.95 s)."""
        if n_mel is not None and j == self.valid(stage, n_mel) - 1:
            last = self._last_partial(stage, n_mel)
            if last is not None:
                return last[0]
        return self.frame_centre_s(stage, j)

    def centres(self, stage: str, n_mel: int) -> list[float]:
        """Centres (s) of the valid frames of ``stage`` for ``n_mel`` valid mel frames."""
        return [self.centre_s(stage, j, n_mel) for j in range(self.valid(stage, n_mel))]

    def valid_end_s(self, stage: str, n_mel: int) -> float:
        """End of the audio the valid frames of ``stage`` cover (the last valid frame's cell end;
        for a partial last frame, the end of the valid frames it holds)."""
        n = self.valid(stage, n_mel)
        if n <= 0:
            return 0.0
        last = self._last_partial(stage, n_mel)
        return last[1] if last is not None else self.frame_to_seconds(stage, n - 1)[1]

    def seconds_to_span(self, stage: str, start_s: float, end_s: float, n_mel: int | None = None) -> tuple[int, int]:
        """Half-open frame span ``[a, b)`` of ``stage`` covering the interval ``[start_s, end_s)``.

        Frame ``j`` is in the span iff its centre lies in ``[start_s, end_s)``. An interval that
        holds no frame centre (shorter than a frame) gets the single frame whose cell holds its
        midpoint, so it is never empty. With ``n_mel`` the span is clipped to the valid frames (a
        partial last frame is centred on the valid frames it holds, :meth:`centre_s`); an interval
        that starts after the valid frames' audio raises :class:`SpanError` (the words lie in padding).
        """
        if not (end_s > start_s) or start_s < 0 or not math.isfinite(end_s):
            raise SpanError(
                f"time span [{start_s}, {end_s}) s is not a valid interval; expected 0 <= start < end."
            )
        step, first = self._affine(stage)
        per = float(step) * self.hop / self.sample_rate  # seconds between frame centres
        c0 = float(first) * self.hop / self.sample_rate + self.mel_offset_s  # centre of frame 0

        def first_at_or_after(t: float) -> int:  # smallest j with centre_j >= t (1 ns tolerance)
            return max(0, int(math.ceil((t - 1e-9 - c0) / per)))

        def nearest(t: float) -> int:  # the frame whose cell holds t
            return max(0, int(math.floor((t - c0) / per + 0.5 + 1e-9)))

        a, b = first_at_or_after(start_s), first_at_or_after(end_s)
        if n_mel is None:
            if a >= b:
                a = nearest((start_s + end_s) / 2)
                b = a + 1
            return a, b
        n = self.valid(stage, n_mel)
        end_valid = self.valid_end_s(stage, n_mel)
        if n <= 0 or start_s >= end_valid - 1e-9:
            raise SpanError(
                f"time span [{start_s:.3f}, {end_s:.3f}) s falls outside the {n} valid {stage} frames "
                f"({end_valid:.3f} s of audio); the words lie in padding. "
                "Check the word timestamps belong to this clip."
            )
        last = self._last_partial(stage, n_mel)
        if last is None:
            a, b = min(a, n), min(b, n)
        else:  # frames 0..n-2 by the affine centres; frame n-1 by its own (valid-part) centre
            a, b = min(a, n - 1), min(b, n - 1)
            if start_s - 1e-9 <= last[0] < end_s - 1e-9:
                a, b = (a if a < b else n - 1), n
        if a >= b:  # no centre inside: the frame whose cell holds the midpoint
            mid = (start_s + end_s) / 2
            a = min(nearest(mid), n - 1)
            if last is not None and a == n - 2 and mid >= (self.frame_centre_s(stage, n - 2) + last[0]) / 2:
                a = n - 1
            b = a + 1
        return a, b

    def map_span(self, src: str, span: tuple[int, int], dst: str) -> tuple[int, int]:
        """Map a half-open frame span of stage ``src`` to the span of stage ``dst`` that owns it
        (frame indices through the strides: coarse frames cover the fine span)."""
        a, b = span
        if a >= b:
            raise SpanError(f"frame span {span} of {src!r} is empty; expected start < end.")
        cs, cd = self.cell(src), self.cell(dst)
        return (a * cs) // cd, -(-(b * cs) // cd)
