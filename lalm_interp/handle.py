"""The model handle: :class:`AudioLM`, one object that owns a loaded audio-language model.

The role nnsight's ``LanguageModel`` and TransformerLens's ``HookedTransformer`` play. A handle holds
the model, its processor and adapter, the model's identity (name, revision, weights fingerprint)
and a small serialisable ``spec`` from which a worker process rebuilds the same handle::

    import lalm_interp
    lm = lalm_interp.load("organism")                 # still unpacks: model, processor, adapter = lm
    batch = lm.inputs(clip, sample_rate=16000)        # a PromptBatch (positions of the audio known)
    lm.score([clip], ["Paris", "Rome"], sample_rate=16000)    # DataArray prompt x candidate
    acts = lm.run_with_cache(clip, sample_rate=16000, sites=["text.layers.*.mlp"])
    acts["text.layers.1.mlp"].isel(position=-1)       # (hidden,) at the last prompt token
    with lm.trace(batch):                             # an nnsight trace of the wrapped model
        h = lm.site("text.layers.1.mlp").output.save()

Layering: the handle sits above the engines (interventions, editors, cache, specs) and below the
runs; engines receive it duck-typed (attributes ``model``, ``processor``, ``adapter``,
``fingerprint``, ``spec``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
import xarray as xr

from . import adapters as _adapters
from . import loading
from .cache.activations import Activations, label
from .cache.provenance import model_fingerprint
from .errors import LoadError, ScoringError
from .inputs import DEFAULT_INSTRUCTION, PromptBatch, build_inputs, model_placement, place
from .interventions.primitives import read
from .scoring import score_objects
from .sites import Site
from .spans import SEQ, position_map
from .wrap import envoy, wrap

if TYPE_CHECKING:
    from .adapters.base import Adapter

MEASURES = ("first", "total")


class AudioLM:
    """A loaded audio-language model: ``model``, ``processor``, ``adapter``, ``identity``,
    ``name``, ``fingerprint`` and ``spec``. Make one with :func:`lalm_interp.load` (or
    :meth:`load`, :meth:`from_spec`); ``AudioLM(model, processor)`` wraps a model built elsewhere
    (adapter from its ``config.model_type``; no ``spec``, so workers cannot rebuild it).

    Unpacks as ``model, processor, adapter = lm`` (what ``lalm_interp.load`` always returned).
    """

    def __init__(self, model: torch.nn.Module, processor: Any, adapter: "Adapter | None" = None, *,
                 identity: loading.ModelIdentity | None = None, spec: dict[str, Any] | None = None,
                 source: str = ""):
        self.model = model
        self.processor = processor
        self.adapter = adapter if adapter is not None else _adapters.for_model(model, processor)
        self.identity = identity if identity is not None else loading.identity(model)
        self._spec = dict(spec) if spec else None
        self.source = source or self.identity.path or self.identity.model
        self._wrapped: Any = None

    # ------------------------------------------------------------------ making one
    @classmethod
    def load(cls, name_or_path: Any, **kwargs: Any) -> "AudioLM":
        """Load by name through :func:`lalm_interp.loading.load_model` (the one loader): a
        registered name (``organism``, ``tiny-random``, ...), a checkpoint folder or a hub id;
        keywords ``device`` (``"auto"``: a GPU when there is one), ``dtype``, ``local_files_only``,
        ``adapter``."""
        got = loading.load_model(name_or_path, **kwargs)
        return cls(got.model, got.processor, got.adapter, identity=got.identity, spec=got.spec, source=got.source)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "AudioLM":
        """Rebuild a handle from its :attr:`spec` (e.g. in a worker process)."""
        return cls.load(**loading.check_spec(spec))

    @property
    def spec(self) -> dict[str, Any]:
        """A JSON-serialisable dict (``name_or_path``, ``device``, ``dtype``, ``adapter``,
        ``local_files_only``) that :meth:`from_spec` loads again. Raises :class:`LoadError` for a
        handle around a model that was not loaded by name."""
        if self._spec is None:
            raise LoadError(f"this AudioLM wraps a {type(self.model).__name__} that was not loaded by name, so it "
                            "has no spec a worker could load it from. Fix: load it with lalm_interp.load(NAME) (a "
                            "registered name, a checkpoint folder or a hub id), e.g. after save_pretrained(DIR).")
        return dict(self._spec)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.processor, self.adapter))

    # ------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        """The name it was loaded by (registered name, hub id or absolute folder)."""
        return self.identity.model

    @property
    def fingerprint(self) -> str:
        """``name[@revision][#weights_hash]`` of the weights as loaded (the cache's model filter)."""
        ident = self.identity
        return model_fingerprint(ident.model, ident.revision, ident.weights_hash)

    @property
    def n_layers(self) -> dict[str, int]:
        """Layers per layered stream, e.g. ``{"audio": 2, "text": 2}``."""
        return {s: self.adapter.n_layers(s) for s in self.adapter.spec.layer_counts}

    @property
    def device(self) -> torch.device:
        return model_placement(self.model)[0]

    @property
    def dtype(self) -> torch.dtype:
        return model_placement(self.model)[1]

    def sites(self, pattern: Any = "*") -> list[Site]:
        """The concrete sites a pattern (or list of patterns) expands to, in forward order."""
        return self.adapter.expand(pattern)

    def __repr__(self) -> str:
        layers = ", ".join(f"{s} {n}" for s, n in self.n_layers.items())
        dtype = str(self.dtype).removeprefix("torch.")
        fp = self.identity.weights_hash or "no weights hash"
        return (f"AudioLM({self.name!r}: {type(self.model).__name__}, adapter {self.adapter.name!r}, "
                f"layers {layers}, {dtype} on {self.device}, weights {fp[:23]})")

    # ------------------------------------------------------------------ inputs and scores
    def inputs(self, audio: Any, sample_rate: "int | Sequence[int] | None" = None, *,
               instruction: "str | Sequence[str] | None" = None, style: str | None = None) -> PromptBatch:
        """Model inputs (:class:`~lalm_interp.inputs.PromptBatch`) for one clip or a list of clips.

        audio: a mono float array, a list of them, or prompt objects with ``.audio`` and
            ``.sample_rate`` (a :class:`~lalm_interp.SpokenPrompt`, a benchmark item).
        sample_rate: the rate of raw arrays in Hz (required for them; never guessed).
        instruction: the text after the audio (default: the prompt object's own, else
            ``"Complete the sentence."``)."""
        clips, rates, instr, names = _prompts(audio, sample_rate, instruction)
        return build_inputs(self.processor, self.adapter, clips, sample_rate=rates, instruction=instr,
                            style=style, names=names)

    def score(self, prompts: Any, objects: Sequence[Any], *, sample_rate: "int | Sequence[int] | None" = None,
              instruction: "str | Sequence[str] | None" = None, measure: str = "first",
              prefix: str | None = None) -> xr.DataArray:
        """Log-probabilities of several candidate objects after each prompt: a DataArray with dims
        ``(prompt, candidate)``.

        prompts: what :meth:`inputs` takes, or a :class:`~lalm_interp.inputs.PromptBatch`.
        objects: candidates for every prompt (``["Paris", "Rome"]``; coordinate ``candidate`` is
            the strings) or one list per prompt, equally long (``[["Paris", "Rome"], ...]``;
            ``candidate`` is 0..K-1 and the 2-D coordinate ``object`` holds the strings).
        measure: ``"first"`` (log P of the first object token, what causal tracing measures) or
            ``"total"`` (teacher-forced log P of all its tokens). ``np.exp`` gives probabilities.

        One teacher-forced forward over every (prompt, candidate) pair through
        :func:`lalm_interp.scoring.score_objects` (the same numbers it gives for those rows)."""
        if measure not in MEASURES:
            raise ScoringError(f"measure {measure!r} is not one of {list(MEASURES)}; 'first' scores the first object "
                               "token, 'total' all of them.")
        if isinstance(prompts, PromptBatch):
            batch, names = prompts, [f"prompt[{i}]" for i in range(len(prompts))]
        else:
            clips, rates, instr, names = _prompts(prompts, sample_rate, instruction)
            batch = build_inputs(self.processor, self.adapter, clips, sample_rate=rates, instruction=instr,
                                 names=names)
        B = len(batch)
        shared = all(isinstance(o, str) for o in objects)
        table = [list(objects)] * B if shared else [list(o) for o in objects]
        if not shared and len(table) != B:
            raise ScoringError(f"{len(table)} candidate lists for {B} prompts; give one list per prompt, or one flat "
                               "list of candidates shared by every prompt.")
        K = len(table[0]) if table else 0
        if K == 0 or any(len(t) != K for t in table):
            raise ScoringError(f"candidate lists of lengths {sorted({len(t) for t in table})}; expected the same "
                               "number (at least one) of candidates for every prompt. Fix: pad the short lists "
                               "with candidates you can ignore, or score them separately.")
        rows = [b for b in range(B) for _ in range(K)]
        s = score_objects(self.model, self.adapter, batch.select(rows), [o for t in table for o in t], prefix=prefix)
        values = (s.first if measure == "first" else s.total).double().numpy().reshape(B, K)
        coords: dict[str, Any] = {"prompt": names}
        if shared:
            coords["candidate"] = list(objects)
        else:
            coords["candidate"] = np.arange(K)
            coords["object"] = (("prompt", "candidate"), np.asarray(table, dtype=object).astype(str))
        return xr.DataArray(values, dims=("prompt", "candidate"), coords=coords, name="logprob",
                            attrs={"measure": measure, "model": self.name})

    # ------------------------------------------------------------------ nnsight
    @property
    def wrapped(self) -> Any:
        """The ``nnsight.NNsight`` around the model (made once; weights shared, nothing copied)."""
        if self._wrapped is None:
            self._wrapped = wrap(self.model)
        return self._wrapped

    def trace(self, prompts: Any = None, *, sample_rate: "int | Sequence[int] | None" = None,
              instruction: "str | Sequence[str] | None" = None, **kwargs: Any) -> Any:
        """An nnsight tracing context over the model, run on ``prompts`` (a
        :class:`~lalm_interp.inputs.PromptBatch`, a dict of model inputs, or what :meth:`inputs`
        takes). Inside it, :meth:`site` gives the Envoy of a site; visit sites in forward order and
        ``.save()`` what you keep. ``use_cache=False`` unless given; ``kwargs`` go to the model::

            with torch.no_grad(), lm.trace(batch):
                out = lm.site("text.layers.1.mlp").output.save()
        """
        if prompts is not None:
            if isinstance(prompts, PromptBatch):
                inputs = prompts.model_inputs
            elif isinstance(prompts, dict):
                inputs = prompts
            else:
                inputs = self.inputs(prompts, sample_rate, instruction=instruction).model_inputs
            kwargs = {**place(dict(inputs), self.model), **kwargs}
        kwargs.setdefault("use_cache", False)
        return self.wrapped.trace(**kwargs)

    def site(self, site: "str | Site") -> Any:
        """The nnsight Envoy of the module behind a concrete ``site`` (``.output``; ``.input`` for
        ``@in`` sites). The value in (batch, position, hidden) layout is
        ``lm.adapter.to_btc(site, lm.adapter.select(site, value))``."""
        return envoy(self.wrapped, self.adapter, self.adapter.one(site))

    def run_with_cache(self, audio: Any, sample_rate: int | None = None, *, sites: Any,
                       instruction: str | None = None, words: Sequence[Any] | None = None,
                       subject: tuple[int, int] | None = None, example: str | None = None) -> Activations:
        """Run one spoken prompt and keep the activations at ``sites`` (sites or patterns, e.g.
        ``["audio.layers.*.resid", "text.layers.1.mlp"]``): an :class:`Activations` with one
        ``(position, hidden)`` DataArray per concrete site (see ``lalm_interp.cache.activations``).

        audio: one clip (with ``sample_rate``) or a prompt object (a
            :class:`~lalm_interp.SpokenPrompt` or a benchmark item: its rate, instruction, word
            timings and subject are used). words / subject: word timings ``(text, start_s,
            end_s)`` and the inclusive subject word range, for the ``word`` / ``is_subject``
            coordinates. example: the id recorded in ``acts.attrs["example"]`` (default: the
            prompt object's id, else ``"audio[0]"``).
        """
        clips, rates, instr, names = _prompts(audio, sample_rate, instruction)
        if len(clips) != 1:
            raise ScoringError(f"run_with_cache takes one prompt, got {len(clips)}. Fix: call it once per clip "
                               "(and Store.put each result), or use lm.trace for a batch.")
        if words is None:  # a prompt object's own timings (a benchmark item's only when every word is timed)
            words = getattr(audio, "words", None)
            if words and any(w[1] is None or w[2] is None for w in words):
                words = None
        if subject is None:
            subject = getattr(audio, "subject", None) or getattr(audio, "subject_word_range", None)
            subject = tuple(subject) if words and subject is not None else None
        batch = build_inputs(self.processor, self.adapter, clips, sample_rate=rates, instruction=instr, names=names)
        concrete = sorted(dict.fromkeys(self.adapter.expand(sites)), key=self.adapter.forward_rank)
        values = read_sites(self.wrapped, self.adapter, place(dict(batch.model_inputs), self.model), concrete)
        pmap = position_map(self.adapter, batch, 0, words, subject or (0, 0)) if words else None
        arrays = {}
        for s in concrete:
            x = values[s][0]
            arr = (x.float() if x.dtype == torch.bfloat16 else x).numpy()
            coords = position_coords(self.adapter, batch, s, arr.shape[0], pmap, subject is not None)
            da = xr.DataArray(arr, dims=("position", "hidden"),
                              coords={"position": np.arange(arr.shape[0]), **coords})
            arrays[str(s)] = label(da, str(s))
        ident = self.identity
        attrs = {"example": example or names[0], "model": ident.model,
                 "revision": ident.revision, "weights_hash": ident.weights_hash,
                 "adapter": f"{self.adapter.name}@{self.adapter.spec.version}",
                 "instruction": batch.instruction, "n_layers": self.n_layers}
        return Activations(arrays, attrs)


# ---------------------------------------------------------------------------- helpers
def read_sites(wrapped: Any, adapter: "Adapter", inputs: dict[str, torch.Tensor], sites: Sequence[Site]) -> dict[Site, torch.Tensor]:
    """One forward (no gradients) keeping the value at each concrete site, in (batch, position,
    hidden) layout, on the CPU, read with the engine's primitive
    (:func:`lalm_interp.interventions.primitives.read`). ``sites`` must be in forward order."""
    saved: dict[Site, Any] = {}
    with torch.no_grad(), wrapped.trace(**inputs, use_cache=False):
        for s in sites:
            saved[s] = read(wrapped, adapter, s).clone().save()
    return {s: v.detach().cpu() for s, v in saved.items()}


def position_coords(adapter: "Adapter", batch: PromptBatch, site: Site, T: int, pmap: Any = None,
                    with_subject: bool = False) -> dict[str, Any]:
    """Coordinates on ``position`` for the value at ``site`` of example 0 of ``batch`` (``T``
    positions): ``token``/``time_s``/``valid`` on LLM positions, ``time_s``/``valid`` on audio
    frames (frame centres, padding frames too), plus ``word``/``is_subject`` from a
    :class:`~lalm_interp.spans.PositionMap`."""
    chain = adapter.rate_chain
    n_mel = batch.n_mel[0]
    stage = adapter.stage(site)
    out: dict[str, Any] = {}
    if stage == SEQ:
        ids = batch.input_ids[0, :T].tolist()
        out["token"] = ("position", np.asarray(adapter.processor.tokenizer.convert_ids_to_tokens(ids)).astype(str))
        a0, n = batch.audio_start[0], batch.n_audio[0]
        llm = chain.llm_stage
        out["time_s"] = ("position", np.asarray([chain.centre_s(llm, j - a0, n_mel) if a0 <= j < a0 + n else np.nan
                                                 for j in range(T)], dtype=np.float64))
        mask = batch.model_inputs["attention_mask"][0, :T]
        out["valid"] = ("position", np.asarray(mask.tolist(), dtype=bool))
        if pmap is not None:
            by_tok = pmap.word_of_frame(llm)
            out["word"] = ("position", np.asarray([by_tok[j - a0] if a0 <= j < a0 + n and j - a0 < len(by_tok) else ""
                                                   for j in range(T)]).astype(str))
            if with_subject:
                s0, s1 = pmap.span("subject", SEQ)
                out["is_subject"] = ("position", np.asarray([s0 <= j < s1 for j in range(T)], dtype=bool))
        return out
    n_valid = chain.valid(stage, n_mel)
    out["time_s"] = ("position", np.asarray([chain.centre_s(stage, j, n_mel) for j in range(T)], dtype=np.float64))
    out["valid"] = ("position", np.asarray([j < n_valid for j in range(T)], dtype=bool))
    if pmap is not None:
        labels = pmap.word_of_frame(stage)
        out["word"] = ("position", np.asarray([labels[j] if j < len(labels) else "" for j in range(T)]).astype(str))
        if with_subject:
            s0, s1 = pmap.span("subject", stage)
            out["is_subject"] = ("position", np.asarray([s0 <= j < s1 for j in range(T)], dtype=bool))
    return out


def _prompts(audio: Any, sample_rate: Any, instruction: Any) -> tuple[list[Any], Any, Any, list[str]]:
    """(clips, rates, instructions, names) for one clip, a list of clips, or prompt objects."""
    if isinstance(audio, (np.ndarray, torch.Tensor)) or hasattr(audio, "audio"):
        audio = [audio]
    items = list(audio)
    clips, rates, instr, names = [], [], [], []
    for i, a in enumerate(items):
        if hasattr(a, "audio"):  # SpokenPrompt, benchmark item
            clips.append(a.audio)
            rates.append(getattr(a, "sample_rate", None) if sample_rate is None else sample_rate)
            instr.append(getattr(a, "instruction", None))
            names.append(str(getattr(a, "id", None) or getattr(a, "item_id", None) or f"audio[{i}]"))
        else:
            clips.append(a)
            rates.append(sample_rate)
            instr.append(None)
            names.append(f"audio[{i}]")
    if isinstance(sample_rate, (list, tuple)):
        rates = list(sample_rate)
    elif any(r is None for r in rates):
        rates = sample_rate  # build_inputs raises its "sample_rate is required" error
    if isinstance(instruction, (list, tuple)):
        instr = list(instruction)
    else:
        instr = [instruction if instruction is not None else (i or DEFAULT_INSTRUCTION) for i in instr]
        if len(set(instr)) == 1:
            instr = instr[0]
    return clips, rates, instr, names


__all__ = ["AudioLM", "read_sites", "position_coords"]
