"""The adapter protocol: a declarative table that maps canonical sites to a model's real modules.

An :class:`AdapterSpec` is data: which HF class, which config attributes give the layer counts
and widths, a table ``site template → Component``, the rate chain, and a few small functions
(prompt building, audio positions). It is *bound* to a concrete config to give an
:class:`Adapter`, against which sites are expanded, resolved and read.

Nothing else in the package knows a module path: tracing, caching and editing ask the adapter.
See ``docs/patterns/write-an-adapter.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from ..errors import AdapterError, SiteError
from ..rates import RateChain
from ..sites import expand, LAYER_COMPONENTS, one, parse, Site

TUPLE0 = "tuple0"
TENSOR = "tensor"
BTC = "btc"  # (batch, time, channels)
BCT = "bct"  # (batch, channels, time) — e.g. Conv1d outputs
SEQ = "seq"  # stage name of LLM sequence positions
WINDOWS = "windows"  # (batch * windows, queries, channels) — a windowed Q-Former (SALMONN)


@dataclass(frozen=True)
class Component:
    """Where a canonical component lives and how to read it.

    module: module path from the HF model root; ``{i}`` is replaced by the layer index.
    out: ``"tensor"`` when the module returns a tensor, ``"tuple0"`` when the value is ``output[0]``.
    layout: ``"btc"`` (batch, time, channels), ``"bct"`` (channels first, Conv1d) or ``"windows"``
        ((batch * windows, queries, channels): a module run once per window, like SALMONN's
        window-level Q-Former; read as (batch, windows * queries, channels), see ``windows``).
    stage: rate stage of the time axis (``mel``, ``encoder``, ``token`` ...) or ``"seq"`` for LLM
        sequence positions.
    dim: config attribute path of the channel width of the output (``text_config.hidden_size``).
    in_dim: config attribute path of the width of the first input, when ``@in`` is readable.
    in_layout: layout of the input when it differs from ``layout`` (``None``: same).
    windows: for ``layout="windows"``: windows per example — a config attribute path or a function
        of the config. A 3-D value (batch·windows, queries, C) reads as (batch, windows·queries, C);
        a 2-D value (batch·windows, C) as (batch, windows, C) (Voxtral's projector).
    """

    module: str
    dim: str
    out: str = TENSOR
    layout: str = BTC
    stage: str = SEQ
    in_dim: str | None = None
    in_layout: str | None = None
    windows: "str | Callable[[Any], int] | None" = None

    @property
    def has_input(self) -> bool:
        return self.in_dim is not None


@dataclass(frozen=True)
class AdapterSpec:
    """Declarative description of one model family. Register it with
    :func:`lalm_interp.adapters.register` or the ``lalm_interp.adapters`` entry point group.

    name: adapter name (``qwen2_audio``).
    model_types: HF ``config.model_type`` values this adapter serves.
    hf_class: import path of the HF model class (``transformers:Qwen2AudioForConditionalGeneration``).
    layer_counts: stream → config attribute path of its number of layers.
    sites: ``"audio.conv2"``/``"text.layers.{i}.mlp"`` → :class:`Component`, in forward order. Per-layer
        entries of a stream are expanded over all its layers at the position of the first one.
    rate_chain: function ``(config, processor | None) → RateChain``.
    audio_token_attr: config attribute holding the audio placeholder id (``None`` for models that
        splice audio embeddings without a placeholder token).
    build_prompt: function ``(processor, instruction, style) → text`` with one audio placeholder.
    audio_slots: function ``(input_ids row, config) → (start, n)`` locating the audio positions in
        the LLM sequence of one example.
    llm_input: (decoder module path, keyword) where the merged text+audio embeddings enter the
        LLM; the top-level forward must accept that keyword too. Lets tracing reuse one encoder
        pass for many text-side restorations (``None``: no reuse).
    object_prefix: leading text of an object per prompt style (``chat``: none; ``plain``: a space).
    version: adapter version, recorded in result provenance.
    feature_mask_key: model-input name of the mel-frame mask the processor returns and the model
        takes (``feature_attention_mask`` for Qwen2-Audio, ``input_features_mask`` for
        AudioFlamingo3; ``None`` for models that take no mask, e.g. Voxtral — real frames are then
        counted from the samples).
    default_preset: the editor hyper-parameter preset a model of this family uses unless told
        otherwise (``lalm_interp/editors/presets/<editor>/<name>.json``; ``"paper"`` = the paper's
        settings for Qwen2-Audio-7B). ``lalm_interp.editors.presets.default_preset(model, adapter)``
        reads it (a model attribute or an organism checkpoint's manifest wins).
    audio_positions: ``"valid"`` when the model keeps only the LLM audio positions of real audio
        (Qwen2-Audio, AudioFlamingo3) or ``"window"`` when every position of the padded encoder
        window is spliced in (Voxtral, SALMONN).
    segmented: name of the segmented tracing program that runs this family's forward stage by
        stage (:data:`lalm_interp.interventions.segmented.PROGRAMS`; ``None``: tracing runs every
        restoration as a full batched forward). See ``docs/usage/tracing.md#savings``.
    encoder_masks_padding: ``True`` when the audio encoder masks the padded window's frames out of
        attention, so that running it on the real frames alone is exact (the ``effective_length``
        saving; Qwen2-Audio). Whisper proper (Voxtral, SALMONN) attends to its padding: ``False``.

    Layer stacks: ``STREAM.layers.{i}.COMP`` entries are expanded over ``layer_counts[STREAM]``
    layers. A second stack inside a stream (SALMONN's BEATs) is written
    ``STREAM.NAME.layers.{i}.COMP`` with its count under ``layer_counts["STREAM.NAME"]``; its
    sites (``audio.beats.layers.3.resid``) are concrete sites of the stream, matched by ``*`` but
    not by layer ranges, and are not ``STREAM.layers`` sites (no ``Restore`` windows over them).
    """

    name: str
    model_types: tuple[str, ...]
    hf_class: str
    layer_counts: Mapping[str, str]
    sites: Mapping[str, Component]
    rate_chain: Callable[[Any, Any], RateChain]
    build_prompt: Callable[[Any, str, str], str]
    audio_slots: Callable[[torch.Tensor, Any], tuple[int, int]]
    audio_token_attr: str | None = "audio_token_id"
    llm_input: tuple[str, str] | None = ("model.language_model", "inputs_embeds")
    object_prefix: Mapping[str, str] = field(default_factory=lambda: {"chat": "", "plain": " "})
    version: str = "1"
    feature_mask_key: str | None = "feature_attention_mask"
    audio_positions: str = "valid"
    default_preset: str = "paper"
    segmented: str | None = None
    encoder_masks_padding: bool = False

    def bind(self, config: Any, processor: Any = None) -> "Adapter":
        return Adapter(self, config, processor)

    def hf_model_class(self) -> type:
        mod, _, name = self.hf_class.partition(":")
        import importlib

        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError) as err:
            raise AdapterError(
                f"adapter {self.name!r} needs {self.hf_class}, which this installation lacks ({err}). "
                "Install the pinned transformers (5.24.x)."
            ) from err


def config_get(config: Any, path: str) -> Any:
    obj = config
    for part in path.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


_LAYER_TMPL = re.compile(r"^(\w+(?:\.\w+)?)\.layers\.\{i\}\.(.+)$")


class Adapter:
    """An :class:`AdapterSpec` bound to one config: knows layer counts, widths and module paths."""

    def __init__(self, spec: AdapterSpec, config: Any, processor: Any = None):
        self.spec = spec
        self.config = config
        self.processor = processor
        self._n = {s: int(config_get(config, p)) for s, p in spec.layer_counts.items()}
        self._sites: list[Site] = []
        self._comp: dict[Site, tuple[Component, int | None]] = {}
        emitted: set[str] = set()
        layer_block: dict[str, list[tuple[str, Component]]] = {}
        for tmpl, comp in spec.sites.items():
            m = _LAYER_TMPL.match(tmpl)
            if m:
                layer_block.setdefault(m.group(1), []).append((m.group(2), comp))
        for tmpl, comp in spec.sites.items():
            m = _LAYER_TMPL.match(tmpl)
            if not m:
                self._add(parse(tmpl), comp, None)
                continue
            stream = m.group(1)
            if stream in emitted:
                continue
            emitted.add(stream)
            if stream not in self._n:
                raise AdapterError(
                    f"adapter {spec.name}: per-layer sites of {stream!r} but no layer count declared; "
                    f"add layer_counts[{stream!r}] (see docs/patterns/write-an-adapter.md)."
                )
            block = [
                (name, port, c)
                for name, c in layer_block[stream]
                for port in (("in", "out") if c.has_input else ("out",))
            ]
            block.sort(key=lambda b: _layer_rank(b[0], b[1]))
            for i in range(self._n[stream]):
                for name, port, c in block:
                    site = parse(f"{stream}.layers.{i}.{name}").with_port(port)
                    self._sites.append(site)
                    self._comp[site] = (c, i)
        self._rank = {s: k for k, s in enumerate(self._sites)}
        self.rate_chain: RateChain = spec.rate_chain(config, processor)

    def _add(self, site: Site, comp: Component, layer: int | None) -> None:
        if comp.has_input:
            s_in = site.with_port("in")
            self._sites.append(s_in)
            self._comp[s_in] = (comp, layer)
        self._sites.append(site)
        self._comp[site] = (comp, layer)

    # ------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(sorted({s.stream for s in self._sites}, key=("audio", "proj", "text").index))

    def n_layers(self, stream: str) -> int:
        if stream not in self._n:
            raise SiteError(f"stream {stream!r} of {self.name} has no layers; layered streams: {list(self._n)}.")
        return self._n[stream]

    def all_sites(self) -> list[Site]:
        """Every concrete site, in forward order."""
        return list(self._sites)

    def forward_rank(self, site: "Site | str") -> int:
        s = parse(site)
        try:
            return self._rank[s]
        except KeyError:
            raise SiteError(f"site {s} is not a concrete site of {self.name}; expand patterns first.") from None

    def expand(self, pattern: Any) -> list[Site]:
        return expand(pattern, self)

    def one(self, site: Any) -> Site:
        return one(site, self)

    # ------------------------------------------------------------------ resolution
    def _resolve(self, site: "Site | str") -> Site:
        """A concrete site of this adapter (fast path for already-resolved ``Site`` objects)."""
        return site if isinstance(site, Site) and site in self._comp else self.one(site)

    def component(self, site: "Site | str") -> Component:
        s = self._resolve(site)
        return self._comp[s][0]

    def module_path(self, site: "Site | str") -> str:
        s = self._resolve(site)
        comp, layer = self._comp[s]
        return comp.module.replace("{i}", str(layer)) if layer is not None else comp.module

    def module(self, model: torch.nn.Module, site: "Site | str") -> torch.nn.Module:
        """The real ``torch.nn.Module`` behind ``site`` on ``model``."""
        path = self.module_path(site)
        try:
            return model.get_submodule(path)
        except AttributeError as err:
            raise AdapterError(
                f"adapter {self.name}: site {site} points at module {path!r}, which {type(model).__name__} "
                f"does not have ({err}). Is this the model class the adapter was written for ({self.spec.hf_class})?"
            ) from err

    def width(self, site: "Site | str") -> int:
        s = self._resolve(site)
        comp = self._comp[s][0]
        return int(config_get(self.config, comp.in_dim if s.port == "in" else comp.dim))

    def layout(self, site: "Site | str") -> str:
        s = self._resolve(site)
        comp = self._comp[s][0]
        return (comp.in_layout or comp.layout) if s.port == "in" else comp.layout

    def stage(self, site: "Site | str") -> str:
        return self.component(site).stage

    def dims(self, site: "Site | str") -> tuple[str, str, str]:
        """Names of the axes of the value at ``site``: ``('batch', 'position', 'hidden')`` or channels first."""
        return ("batch", "hidden", "position") if self.layout(site) == BCT else ("batch", "position", "hidden")

    def select(self, site: "Site | str", value: Any) -> torch.Tensor:
        """The tensor of a module output (``output[0]`` for tuple outputs)."""
        comp = self.component(site)
        if parse(site).port == "in":
            return value
        if comp.out == TUPLE0:
            return value[0]
        return value

    def to_btc(self, site: "Site | str", x: torch.Tensor) -> torch.Tensor:
        """View of a value in (batch, time, channels) layout (writes through to ``x``)."""
        layout = self.layout(site)
        if layout == BCT:
            return x.transpose(1, 2)
        if layout == WINDOWS:
            comp = self.component(site)
            w = int(comp.windows(self.config) if callable(comp.windows) else config_get(self.config, comp.windows))
            return x.view(-1, w, x.shape[-1]) if x.dim() == 2 else x.view(-1, w * x.shape[1], x.shape[-1])
        return x

    # ------------------------------------------------------------------ audio/LLM glue
    @property
    def window_mel(self) -> int:
        """Mel frames of the padded encoder window the model requires (``2 * max_source_positions``)."""
        return 2 * int(config_get(self.config, "audio_config.max_source_positions"))

    @property
    def audio_token_id(self) -> int | None:
        if self.spec.audio_token_attr is None:
            return None
        return int(config_get(self.config, self.spec.audio_token_attr))

    def audio_slots(self, input_ids_row: torch.Tensor) -> tuple[int, int]:
        return self.spec.audio_slots(input_ids_row, self.config)

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}: {n} layers" for s, n in self._n.items())
        return f"Adapter({self.name!r}, {counts})"


_LAYER_ORDER = (
    ("resid", "in"),
    ("attn", "in"),
    ("attn", "out"),
    ("mlp", "in"),
    ("mlp.down", "in"),
    ("mlp.down", "out"),
    ("mlp", "out"),
    ("resid", "out"),
)


def _layer_rank(name: str, port: str) -> int:
    """Forward order of components inside one layer (the layer input first, its output last)."""
    try:
        return _LAYER_ORDER.index((name, port))
    except ValueError:
        raise AdapterError(
            f"per-layer component {name!r}@{port} is not canonical; use one of {list(LAYER_COMPONENTS)}."
        ) from None


def placeholder_slots(input_ids_row: torch.Tensor, config: Any, attr: str = "audio_token_id") -> tuple[int, int]:
    """Audio slots of models that expand one placeholder id into N consecutive ids (Qwen2-Audio)."""
    tok = int(config_get(config, attr))
    idx = (input_ids_row == tok).nonzero().flatten()
    if idx.numel() == 0:
        raise AdapterError(f"no audio placeholder id {tok} in the input ids; build inputs with lalm_interp.inputs.")
    start, n = int(idx[0]), int(idx.numel())
    if int(idx[-1]) != start + n - 1:
        raise AdapterError("audio placeholder ids are not consecutive; one audio clip per prompt is supported.")
    return start, n
