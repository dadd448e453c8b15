"""The paper's plans, defined once: Figure 2 (the causal-tracing experiment), Table 1 (the nine
editing rows) and Table 2 (the layer-selection study), as data plus a few small functions.

``lalm-interp demo``, ``lalm-interp reproduce`` and ``lalm-interp edit run --site auto`` all read
them from here; nothing else writes a plan down.

* **Figure 2** — corrupt the subject's audio at ``audio.conv2`` with 3σ Gaussian noise
  (:data:`CORRUPTION`), then restore, in a window of layers around each centre, the hidden state
  (``resid``), the MLP output (``mlp``) and the attention output (``attn``) of every layer of both
  streams (:data:`STREAMS` × :data:`KINDS`) at the word positions of :data:`FIGURE2_SPANS` (the text
  stream also at the last token). :func:`figure2_experiment` builds the
  :class:`~lalm_interp.specs.Experiment`; :func:`figure2_window` caps the paper's 10-layer window at
  the stack depth. :func:`heatmap_experiment` is the demo's every-frame / every-token picture.
* **Table 1** — :data:`TABLE1`: FT, single-layer and multi-layer editing × Audio / Text / Multi
  (audio then text). A single-layer editor edits the top-1 layer of each of its streams, a
  multi-layer editor the top-3 (:data:`LAYERS_PER_STREAM`). :func:`table1_plan` turns the nine
  entries into :class:`Row` s once a layer chooser (:func:`aie_layers` over a Figure-2 result, or
  :data:`DEFAULT_LAYERS`) says which layers; :func:`sites` is the one place that turns layers into
  ``mlp.down`` editing sites.
* **Table 2** — :func:`table2_plan`: for each word position (first / last subject word) and
  k ∈ {1, 2, 3}, the top-k layers of each stream, edited by the single-layer (k = 1) or multi-layer
  editors, with the cross-modal ablation (:data:`TABLE2_VARIANTS`: driven, undriven, audio stage alone).

A :class:`Plan` is an ordered tuple of :class:`Row` s with a readable ``repr``; ``row.build(preset)``
makes the editor, ``row.folder`` is its output folder name (``Audio-Single-layer``).

Where the two former copies of Table 1 (``apps/demo_edits.py`` and ``apps/reproduce.py``) drifted
-----------------------------------------------------------------------------------------------
1. **The span each stream's layers are chosen at** (the only difference that changes numbers).
   ``reproduce`` read both streams' AIE at the subject word the edits key on (``--word``, default
   the last subject word); the demo read the audio stream there and the text stream at the last
   token (where the organism preset's text editors key, ``key_span="auto"``). Neither wins
   silently: the choice is now a named, documented parameter, :func:`layer_spans` with
   ``keyed=False`` (the paper protocol: ``reproduce``, whose numbers are the reference and stay
   unchanged) or ``keyed=True`` (the demo and ``edit run --site auto``, whose numbers also stay).
   Why not unify: making ``reproduce`` key-consistent would change its Table 1 on the organism
   (the issue's constraint: numbers identical); making the demo read text layers at the subject
   word would pick text layers whose AIE is near zero on the organism (docs/editors/rome.md).
   A principled follow-up is to choose at each row's own key span (the preset's ``key_span``:
   ``word`` in the ``paper`` preset gives the protocol's choice, ``auto`` in the ``organism``
   preset the demo's), which changes ``reproduce table1`` on the organism and so is left for a
   separate change.
2. **An older demo trace without the ``last_token`` span**: the demo fell back to the subject
   word; kept (``fallback=`` of :func:`aie_layers`), harmless where the span exists.
3. **Explicit layers** (``--audio-layers`` / ``--text-layers``): only ``reproduce`` had them; its
   rule wins and is the only one (``explicit=`` of :func:`aie_layers`: the sorted layers, the first
   k of them when k is smaller).
4. **Rows with hyper-parameter overrides** (Table 2's undriven and audio-stage-alone rows): only
   ``reproduce`` could build them; :meth:`Row.build` is now the only editor constructor of a plan.
5. **The Figure-2 window**: ``reproduce`` and ``edit run --site auto`` capped it at the stack depth,
   the demo did not; the cap wins (:func:`figure2_window`), which changes nothing for the demo's
   window 3 on the 6-layer organism.

How the rows are *run* belongs to the applications: both now run every row through the executor
they are given (``evaluation.runs.evaluate``; default: this process). The demo used to score the
unedited baseline once and share it between rows; each row now scores it itself (the same numbers:
the baseline is the unedited model's). Its smaller protected corpus that excludes the edit prompts,
and its one-thread torch, stay as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .editors import make
from .specs import Corrupt, Experiment, Restore, SpecError
from .tracing.select import top_layers

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr

# ---------------------------------------------------------------------------------------- Figure 2
STREAMS = ("audio", "text")
"""The two streams of an audio LM: the audio encoder and the text decoder."""
KINDS = ("resid", "mlp", "attn")
"""What Figure 2 restores per layer: the hidden state, the MLP output, the attention output."""
AUDIO_SPANS = ("first_subject_word", "last_subject_word", "last_word")
TEXT_SPANS = AUDIO_SPANS + ("last_token",)
FIGURE2_SPANS: Mapping[str, tuple[str, ...]] = {"audio": AUDIO_SPANS, "text": TEXT_SPANS}
"""Word positions restored per stream (``last_token`` is a text position only)."""
PAPER_WINDOW = 10
"""Layers restored around each centre layer in the paper (ROME's window), on a 32-layer model."""
CORRUPTION = Corrupt(at="audio.conv2", span="subject", noise="gaussian", scale=3.0)
"""Figure 2's corruption: 3σ Gaussian noise on the subject's frames at the encoder's second conv
(σ measured per example over the span; the seed is set by :func:`figure2_experiment`)."""


def figure2_window(adapter: Any, window: int = PAPER_WINDOW) -> int:
    """``window`` capped at the depth of the shallower stream (the paper's 10 covers a 6-layer
    organism's whole stack, so 6 there)."""
    return min(int(window), *(adapter.n_layers(st) for st in STREAMS))


def figure2_experiment(window: int, seed: int = 0, *, streams: Sequence[str] = STREAMS,
                       kinds: Sequence[str] = KINDS) -> Experiment:
    """The paper's Figure-2 experiment: :data:`CORRUPTION` (noise seed ``seed``), and one
    restoration family per stream and kind (``audio.resid``, ``audio.mlp``, … in that order) with
    ``window`` layers around each centre at :data:`FIGURE2_SPANS`. ``streams`` / ``kinds`` keep a
    subset in the same order (``edit run --site auto`` traces the MLP families only)."""
    unknown = sorted(set(streams) - set(STREAMS)) + sorted(set(kinds) - set(KINDS))
    if unknown or not streams or not kinds:
        raise SpecError(f"figure2_experiment(streams={list(streams)}, kinds={list(kinds)}): choose a non-empty "
                        f"subset of streams {list(STREAMS)} and kinds {list(KINDS)}.")
    return Experiment(
        "figure2",
        corrupt=replace(CORRUPTION, seed=seed),
        restores=tuple(Restore(f"{s}.layers.*.{k}", window=window, positions=FIGURE2_SPANS[s])
                       for s in STREAMS if s in streams for k in KINDS if k in kinds),
    )


def heatmap_experiment(seed: int = 0) -> Experiment:
    """The demo's one-example picture: every encoder frame's and every text token's hidden state
    restored one layer at a time (families ``audio.resid.each``, ``text.resid.each``)."""
    return Experiment(
        "heatmap",
        corrupt=Corrupt(seed=seed),
        restores=(Restore("audio.layers.*.resid", window=1, positions="each", name="audio.resid.each"),
                  Restore("text.layers.*.resid", window=1, positions="each", name="text.resid.each")),
    )


# ------------------------------------------------------------------------------------------ rows
@dataclass(frozen=True, repr=False)
class Row:
    """One editing row of a plan: the editor ``editor`` (a registered name) at ``sites`` in the
    run's preset, with hyper-parameter ``overrides``.

    audio_stage_of / text_sites: a row that runs *only the audio stage* of the cross-modal editor
        ``audio_stage_of`` (whose text stage would edit ``text_sites``): the ``editor`` at ``sites``
        with that cross-modal editor's own ``audio`` hyper-parameters (Table 2's ablation).
    span / k / variant: what the row stands for in its table (the word position its layers were
        chosen at, the layers per stream, Table 2's variant); descriptive, not used to build.
    """

    label: str
    editor: str
    sites: tuple[str, ...]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    audio_stage_of: str | None = None
    text_sites: tuple[str, ...] = ()
    span: str | None = None
    k: int | None = None
    variant: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", tuple(map(str, self.sites)))
        object.__setattr__(self, "text_sites", tuple(map(str, self.text_sites)))
        object.__setattr__(self, "overrides", dict(self.overrides))

    @classmethod
    def of(cls, row: Row | Sequence[Any]) -> Row:
        """A :class:`Row`, or one from the tuple form ``(label, editor, sites[, overrides])`` (the
        overrides may hold ``audio_stage_of`` and ``text_sites``)."""
        if isinstance(row, Row):
            return row
        label, editor, sites, *rest = row
        kw = dict(rest[0]) if rest else {}
        stage, text = kw.pop("audio_stage_of", None), kw.pop("text_sites", ())
        return cls(label, editor, tuple(sites), kw, audio_stage_of=stage, text_sites=tuple(text))

    @property
    def modality(self) -> str:
        """The paper's "Mod." column: ``Audio``, ``Text`` or ``Multi`` (audio then text)."""
        streams = {s.split(".")[0] for s in self.sites}
        return "Audio" if streams == {"audio"} else "Text" if streams == {"text"} else "Multi"

    @property
    def folder(self) -> str:
        """The row's output folder name, ``<Mod.>-<label>`` with spaces as ``_``."""
        return f"{self.modality}-{self.label}".replace(" ", "_")

    def build(self, preset: str | None = None) -> Any:
        """The row's editor in hyper-parameter ``preset`` (``editors.make``)."""
        if self.audio_stage_of:
            cross = make(self.audio_stage_of, list(self.sites) + list(self.text_sites), preset=preset)
            return make(self.editor, list(self.sites), cross.hparams.audio, **self.overrides)
        return make(self.editor, list(self.sites), preset=preset, **self.overrides)

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.overrides.items())
        if self.audio_stage_of:
            extra += f", audio stage of {self.audio_stage_of} (text {', '.join(self.text_sites)})"
        return f"Row({self.modality} {self.label!r}: {self.editor} @ {', '.join(self.sites)}{extra})"


class Plan(tuple):
    """An ordered tuple of :class:`Row` s with a name; ``repr`` prints it as a table."""

    name: str

    def __new__(cls, name: str, rows: Sequence[Row | Sequence[Any]]) -> Plan:
        plan = super().__new__(cls, (Row.of(r) for r in rows))
        plan.name = name
        return plan

    def __repr__(self) -> str:
        cols = [(r.modality, r.label, r.editor, layers_text(r.sites), r.variant or "") for r in self]
        w = [max([len(c[i]) for c in cols], default=0) for i in range(5)]
        lines = [f"Plan {self.name!r}: {len(self)} row(s)"]
        for c in cols:
            lines.append("  " + "  ".join(x.ljust(n) for x, n in zip(c, w)).rstrip())
        return "\n".join(lines)


def layers_text(sites: Sequence[str]) -> str:
    """``["audio.layers.1.mlp.down", "text.layers.2.mlp.down"]`` → ``audio 1 · text 2`` (a site
    without a layer number is kept whole)."""
    by: dict[str, list[str]] = {}
    for s in sites:
        parts = str(s).split(".")
        if len(parts) > 2 and parts[1] == "layers":
            by.setdefault(parts[0], []).append(parts[2])
        else:
            by.setdefault(str(s), [])
    return " · ".join(f"{k} {','.join(v)}".strip() for k, v in by.items()) or "–"


# ---------------------------------------------------------------------------------------- Table 1
LAYERS_PER_STREAM: Mapping[str, int] = {"finetune": 1, "rome": 1, "crossmodal": 1,
                                        "alphaedit": 3, "crossmodal-alphaedit": 3}
"""Layers each editor edits per stream in Table 1: the top-1 AIE layer for FT and the single-layer
editors, the top-3 (sorted) for the multi-layer editors."""
TWO_STREAMS = ("crossmodal", "crossmodal-alphaedit")
"""Editors that edit an audio and a text layer (audio then text); the others edit one stream."""


@dataclass(frozen=True)
class Table1Entry:
    """One of Table 1's nine rows before layers are chosen: the method label, the editor, and the
    streams it edits."""

    label: str
    editor: str
    streams: tuple[str, ...]


TABLE1: tuple[Table1Entry, ...] = (
    Table1Entry("FT", "finetune", ("audio",)),
    Table1Entry("Single-layer", "rome", ("audio",)),
    Table1Entry("Multi-layer", "alphaedit", ("audio",)),
    Table1Entry("FT", "finetune", ("text",)),
    Table1Entry("Single-layer", "rome", ("text",)),
    Table1Entry("Multi-layer", "alphaedit", ("text",)),
    Table1Entry("FT", "finetune", ("audio", "text")),
    Table1Entry("Single-layer", "crossmodal", ("audio", "text")),
    Table1Entry("Multi-layer", "crossmodal-alphaedit", ("audio", "text")),
)
"""The paper's Table 1 in its order: FT, single-layer, multi-layer × Audio, Text, Multi."""

DEFAULT_LAYERS: Mapping[str, Mapping[str, list[int]]] = {
    # edit run --site auto on 32 known facts (the first 40 of the organism's list, 1 rendition), window 6:
    # audio MLP AIE at the last subject word .089 .096 .097 .096 .022 .002 (layers 0-5),
    # text MLP AIE at the last token .039 .048 .068 .147 .115 .089.
    "organism": {"audio": [2, 1, 3, 0, 4, 5], "text": [3, 4, 5, 2, 1, 0]},
}
"""Documented default editing layers per model (``--model`` name) or adapter name, best first
(the first is a single-layer editor's, the first three, sorted, a multi-layer editor's). The
organism's are its ``--site auto`` choice on its own known facts
(docs/usage/evaluation.md#sites-and-presets); a model without an entry (the real 7B models: the
paper's layers depend on the checkpoint) has its layers chosen by tracing."""

LayerChooser = Callable[[str, int], list[int]]
"""``layers(stream, k)`` → the k editing layers of ``stream`` (sorted)."""


def word_span(word: str) -> str:
    """``"first"`` / ``"last"`` → ``"first_subject_word"`` / ``"last_subject_word"`` (the span an
    edit prompt is keyed on, ``EditRequest.word``)."""
    if word not in ("first", "last"):
        raise SpecError(f"word={word!r}; the edits key on the 'first' or 'last' subject word.")
    return f"{word}_subject_word"


def layer_spans(word: str = "last", *, keyed: bool = False) -> dict[str, str]:
    """The Figure-2 span each stream's editing layers are chosen at. ``keyed=False`` (the paper
    protocol, ``reproduce``): both streams at the subject word the edits key on. ``keyed=True``
    (the demo, ``edit run --site auto``): audio there, text at the last token, where the
    ``organism`` preset's text editors key (``key_span="auto"``). See the module docstring."""
    ws = word_span(word)
    return {"audio": ws, "text": "last_token" if keyed else ws}


def aie_layers(agg: xr.Dataset, spans: Mapping[str, str], *, explicit: Mapping[str, Sequence[int] | None] = {},
               fallback: str | None = None) -> LayerChooser:
    """A layer chooser over a Figure-2 result ``agg``: the top-k MLP layers of ``stream`` by AIE at
    ``spans[stream]`` (``tracing.select.top_layers``), or ``fallback`` when ``agg`` lacks that span.
    ``explicit[stream]`` (layers given by the user) wins: sorted, the first k when k is smaller."""

    def layers(stream: str, k: int) -> list[int]:
        given = explicit.get(stream)
        if given:
            return sorted(given)[:k] if k < len(given) else sorted(given)
        span = spans[stream]
        if fallback is not None and span not in agg["span"].values:
            span = fallback
        return top_layers(agg, f"{stream}.mlp", span, k)

    return layers


def default_layers(name: str) -> LayerChooser | None:
    """A layer chooser from :data:`DEFAULT_LAYERS` for a model or adapter ``name`` (``None``: no
    documented default)."""
    table = DEFAULT_LAYERS.get(name)
    if table is None:
        return None
    return lambda stream, k: sorted(table[stream][:k])


def sites(layers: Mapping[str, Sequence[int]] | LayerChooser, editor: str,
          streams: Sequence[str]) -> list[str]:
    """The ``mlp.down`` editing sites of ``editor`` on ``streams`` (in that order): its
    :data:`LAYERS_PER_STREAM` layers per stream, from a chooser or a best-first table."""
    k = LAYERS_PER_STREAM.get(editor, 1)
    pick = layers if callable(layers) else (lambda st, n: sorted(list(layers[st])[:n]))
    return [f"{st}.layers.{l}.mlp.down" for st in streams for l in pick(st, k)]


def table1_plan(layers: LayerChooser) -> Plan:
    """Table 1's nine :class:`Row` s with the layers ``layers(stream, k)`` gives (e.g.
    ``aie_layers(agg, layer_spans(word))``)."""
    return Plan("table1", [Row(e.label, e.editor, tuple(sites(layers, e.editor, e.streams)),
                               k=LAYERS_PER_STREAM[e.editor]) for e in TABLE1])


# ---------------------------------------------------------------------------------------- Table 2
TABLE2_SPANS = ("first_subject_word", "last_subject_word")
TABLE2_KS = (1, 2, 3)
TABLE2_VARIANTS = ("audio", "text", "driven", "undriven", "audio stage alone")
"""The rows of Table 2 per (word position, k): the audio editor, the text editor, the cross-modal
editor (driven: the paper's method), the cross-modal editor with ``drive=False``, and the
cross-modal editor's audio stage alone (docs/editors/crossmodal.md#ablation)."""


def table2_plan(layers: Callable[[str, str, int], list[int]]) -> Plan:
    """Table 2's rows: per word position in :data:`TABLE2_SPANS` and k in :data:`TABLE2_KS`, the
    five :data:`TABLE2_VARIANTS` at the top-k layers ``layers(stream, span, k)`` of each stream;
    single-layer editors for k = 1, multi-layer ones for k > 1."""
    rows = []
    for sp in TABLE2_SPANS:
        for k in TABLE2_KS:
            a = tuple(f"audio.layers.{l}.mlp.down" for l in layers("audio", sp, k))
            t = tuple(f"text.layers.{l}.mlp.down" for l in layers("text", sp, k))
            single, cross = ("rome", "crossmodal") if k == 1 else ("alphaedit", "crossmodal-alphaedit")
            label = f"{sp} top-{k}"
            d = {"span": sp, "k": k}
            rows += [Row(label, single, a, variant="audio", **d),
                     Row(label, single, t, variant="text", **d),
                     Row(label, cross, a + t, variant="driven", **d),
                     Row(f"{label} undriven", cross, a + t, {"drive": False}, variant="undriven", **d),
                     Row(f"{label} audio stage", single, a, audio_stage_of=cross, text_sites=t,
                         variant="audio stage alone", **d)]
    return Plan("table2", rows)


__all__ = [
    "AUDIO_SPANS",
    "CORRUPTION",
    "DEFAULT_LAYERS",
    "FIGURE2_SPANS",
    "KINDS",
    "LAYERS_PER_STREAM",
    "PAPER_WINDOW",
    "STREAMS",
    "TABLE1",
    "TABLE2_KS",
    "TABLE2_SPANS",
    "TABLE2_VARIANTS",
    "TEXT_SPANS",
    "TWO_STREAMS",
    "Plan",
    "Row",
    "Table1Entry",
    "aie_layers",
    "default_layers",
    "figure2_experiment",
    "figure2_window",
    "heatmap_experiment",
    "layer_spans",
    "layers_text",
    "sites",
    "table1_plan",
    "table2_plan",
    "word_span",
]
