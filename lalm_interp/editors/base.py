"""The editor protocol: edit requests, the edit context, the edit handle, and the registry.

An :class:`Editor` is built from its sites and a hyper-parameter dataclass; ``editor.apply(ctx,
requests)`` edits the model of an :class:`EditContext` in place and returns an :class:`EditHandle`
that reverts the weights **bitwise** and records what changed. Any failure inside ``apply``
restores the weights before the exception leaves. Third parties register editors with
:func:`register` or the ``lalm_interp.editors`` entry point group (value: an ``Editor`` subclass).
See ``docs/editors/index.md`` and ``docs/patterns/add-an-editor.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np
import torch

from ..errors import LalmInterpError, ScoringError, SiteError, SpanError
from ..inputs import DEFAULT_INSTRUCTION
from ..loading import is_model_handle
from ..plugins import Registry
from ..prompts import SpokenPrompt
from ..scoring import object_prefix, object_token_ids
from ..sites import Site, parse

if TYPE_CHECKING:
    from ..handle import AudioLM

WORDS = {"first": "first_subject_word", "last": "last_subject_word", "subject": "subject"}
"""``EditRequest.word`` → the named span the key is pooled over."""


class EditorError(LalmInterpError, ValueError):
    """A request, site or hyper-parameter an editor cannot use. The model is untouched."""

    page = "editors"


class EditorWarning(UserWarning):
    """Something an editor worked around (e.g. a singular key second moment it regularised)."""


# ---------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class EditRequest:
    """One fact to rewrite: a spoken prompt (with its subject words and true object) and the new object.

    prompt: the spoken edit prompt; ``prompt.target`` is the true object.
    target_new: the object the edited model should say.
    word: which subject word the key is taken at: ``"first"`` or ``"last"`` subject word, or
        ``"subject"`` (all subject words pooled).
    case_id: an id for result files (default: the prompt's id).
    kl_prompts: optional prompts (e.g. the subject spoken alone) whose next-token distribution the
        value optimisation keeps (ROME's "essence" KL term); their ``subject`` gives the key span.
    """

    prompt: SpokenPrompt
    target_new: str
    word: str = "last"
    case_id: str = ""
    kl_prompts: tuple[SpokenPrompt, ...] = ()

    @property
    def target_true(self) -> str:
        return self.prompt.target

    @property
    def id(self) -> str:
        return self.case_id or self.prompt.id

    @property
    def span_name(self) -> str:
        return WORDS[self.word]

    @classmethod
    def from_item(cls, item: Any, *, word: str = "last", target_new: str | None = None,
                  kl_items: Sequence[Any] = (), instruction: str = DEFAULT_INSTRUCTION) -> "EditRequest":
        """From a benchmark item of form ``prompt`` (its ``target_new`` unless given)."""
        new = target_new or getattr(item, "target_new", None)
        if not new:
            raise EditorError(
                f"item {item.item_id!r} has no target_new; pass target_new= or use a CounterFact 'prompt' item."
            )
        kl = tuple(SpokenPrompt.from_item(k, instruction=instruction) for k in kl_items)
        return cls(SpokenPrompt.from_item(item, instruction=instruction), new, word,
                   getattr(item, "fact_id", "") or item.item_id, kl)

    def to_json(self) -> dict[str, Any]:
        return {"case_id": self.id, "prompt_id": self.prompt.id, "words": _texts(self.prompt.words),
                "subject": list(self.prompt.subject), "word": self.word,
                "target_true": self.target_true, "target_new": self.target_new}


def check_request(req: EditRequest, tokenizer: Any, prefix: str) -> None:
    """Validate one request before anything runs. Raises :class:`EditorError`."""
    if not isinstance(req, EditRequest):
        raise EditorError(f"an edit request must be an EditRequest, got {type(req).__name__}.")
    if req.word not in WORDS:
        raise EditorError(f"request {req.id}: word={req.word!r}; expected one of {list(WORDS)}.")
    if req.target_new.strip() == req.target_true.strip():
        raise EditorError(
            f"request {req.id}: target_new {req.target_new!r} equals target_true; an edit must change the "
            "object. Pick a different target_new."
        )
    for name, obj in (("target_new", req.target_new), ("target_true", req.target_true)):
        try:
            object_token_ids(tokenizer, obj, prefix)
        except ScoringError as err:
            raise EditorError(f"request {req.id}: {name} {obj!r} cannot be scored: {str(err).splitlines()[0]}") from err
    a, b = req.prompt.subject
    if not (0 <= a <= b < len(req.prompt.words)):
        raise EditorError(
            f"request {req.id}: subject word range {req.prompt.subject} is not in the prompt's "
            f"{len(req.prompt.words)} words ({' '.join(_texts(req.prompt.words))!r}); expected inclusive "
            "word indices 0 <= first <= last < n_words."
        )


def _texts(words: Sequence[Any]) -> list[str]:
    return [w.text if hasattr(w, "text") else str(w[0]) for w in words]


# ---------------------------------------------------------------------------- context
@dataclass
class KeyCorpus:
    """Clips whose keys give an editor its statistics (ROME's C, AlphaEdit's protected K0).

    id: names the corpus in the statistics cache; include what makes it unique (source, size).
    clips: mono float32 arrays at ``sample_rate`` (or anything with ``.audio``, e.g. corpus
        utterances, which read as 16 kHz).
    batch_size: clips per forward pass while collecting keys.
    instruction: the text instruction after each clip (text-side keys include it).
    sample_rate: the rate in Hz of clips given as raw arrays (resampled to the model's rate);
        required for them — a rate is never guessed. Objects with ``.audio`` state their own
        ``.sample_rate`` (corpus utterances and benchmark items: 16 kHz).
    """

    id: str
    clips: Sequence[Any]
    batch_size: int = 8
    instruction: str = DEFAULT_INSTRUCTION
    sample_rate: int | None = None

    def audio(self, i: int) -> np.ndarray:
        c = self.clips[i]
        return c.audio if hasattr(c, "audio") else c

    def rate(self, i: int) -> int:
        """The sample rate of clip ``i`` in Hz: the object's own, or ``sample_rate`` for a raw array."""
        c = self.clips[i]
        r = getattr(c, "sample_rate", None) if hasattr(c, "audio") else self.sample_rate
        if r is None:
            what = f"{type(c).__name__} without a sample_rate" if hasattr(c, "audio") else "a raw sample array"
            raise EditorError(f"KeyCorpus {self.id!r}: clip {i} is {what}, and its rate cannot be read from its "
                              "samples (it is never guessed).\n  fix: KeyCorpus(id, clips, sample_rate=<Hz>) — "
                              "16000 for the toolkit's TTS, LibriSpeech and lalm_interp.load_audio. "
                              "Docs: docs/errors/editors.md")
        return int(r)


@dataclass(init=False, repr=False)
class EditContext:
    """What an editor works on: the model (edited in place), its processor and adapter, and where
    its key statistics come from.

    Built from a model handle (``lalm_interp.load(...)``, or any object with ``model``,
    ``processor`` and ``adapter``) or from the three parts — the same context either way::

        ctx = EditContext(lm, store=Store(), corpus=corpus)      # == EditContext.from_lm(lm, ...)
        ctx = EditContext(model, processor, adapter, store=Store(), corpus=corpus)

    store: an activation :class:`~lalm_interp.cache.Store`; statistics are read from it and
        computed + written on first use (``None``: computed in memory only).
    corpus: the :class:`KeyCorpus` for statistics (needed by every editor whose
        :meth:`Editor.stats_sites` is not empty: ROME with ``cov="second_moment"``, AlphaEdit and
        the cross-modal editors built on them).
    fingerprint: names the model in the statistics cache (default: name + a hash of the weights as
        they are when the context is made, :func:`weights_fingerprint`, so stats always belong to
        the unedited model — also for a handle, whose own ``fingerprint`` names the weight files as
        loaded: a model edited since would get the loaded model's statistics name).
    lm: the handle the context was built from (``None`` when built from the parts).
    memo: statistics and projectors already fetched (editors memoise them per context: build one
        context for a series of edits).
    """

    model: torch.nn.Module
    processor: Any
    adapter: Any
    store: Any = None
    corpus: KeyCorpus | None = None
    fingerprint: str | None = None
    memo: dict[str, Any] = field(default_factory=dict)
    lm: Any = field(default=None, compare=False)

    def __init__(self, model: "torch.nn.Module | AudioLM", processor: Any = None, adapter: Any = None,
                 store: Any = None, corpus: KeyCorpus | None = None, fingerprint: str | None = None,
                 memo: dict[str, Any] | None = None, lm: Any = None):
        if processor is None and adapter is None and is_model_handle(model):
            lm = model
            model, processor, adapter = lm.model, lm.processor, lm.adapter
        elif processor is None or adapter is None:
            raise EditorError(
                f"EditContext got a {type(model).__name__} without its processor and adapter; expected a model "
                "handle (lalm_interp.load(...)) or the three parts: EditContext(lm, store=..., corpus=...) or "
                "EditContext(model, processor, adapter, store=..., corpus=...)."
            )
        self.model, self.processor, self.adapter = model, processor, adapter
        self.store, self.corpus, self.lm = store, corpus, lm
        self.fingerprint = fingerprint if fingerprint is not None else weights_fingerprint(model)
        self.memo = {} if memo is None else memo

    @classmethod
    def from_lm(cls, lm: "AudioLM", *, store: Any = None, corpus: KeyCorpus | None = None,
                fingerprint: str | None = None) -> "EditContext":
        """The context of a model handle (anything with ``model``, ``processor`` and ``adapter``),
        with the statistics cache ``store`` and ``corpus``; equal to ``EditContext(lm.model,
        lm.processor, lm.adapter, ...)``."""
        if not is_model_handle(lm):
            raise EditorError(
                f"EditContext.from_lm needs a model handle with .model, .processor and .adapter (lalm_interp.load(...)); "
                f"got a {type(lm).__name__}. Use EditContext(model, processor, adapter, ...) for the parts."
            )
        return cls(lm, store=store, corpus=corpus, fingerprint=fingerprint)

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def __repr__(self) -> str:
        corpus = "None" if self.corpus is None else f"{self.corpus.id!r} ({len(self.corpus.clips)} clips)"
        store = "None (in memory)" if self.store is None else repr(str(getattr(self.store, "root", self.store)))
        return (f"EditContext(model={type(self.model).__name__}, adapter={getattr(self.adapter, 'name', self.adapter)!r}, "
                f"fingerprint={self.fingerprint!r}, store={store}, corpus={corpus}, memo={len(self.memo)} entries)")


def as_context(target: Any, *, store: Any = None, corpus: KeyCorpus | None = None) -> EditContext:
    """``target`` as an :class:`EditContext`: a context itself, a model handle (built with ``store``
    and ``corpus``), or a ``(model, processor, adapter)`` tuple. :class:`EditorError` otherwise."""
    if isinstance(target, EditContext):
        if store is not None or corpus is not None:
            raise EditorError(
                "store= / corpus= were given together with an EditContext, which has its own; pass them when "
                "building the context (EditContext(lm, store=..., corpus=...)) or pass the model handle instead."
            )
        return target
    if is_model_handle(target):
        return EditContext(target, store=store, corpus=corpus)
    if isinstance(target, tuple) and len(target) == 3 and isinstance(target[0], torch.nn.Module):
        return EditContext(*target, store=store, corpus=corpus)
    raise EditorError(
        f"an editor edits a model handle (lalm_interp.load(...)), an EditContext or a (model, processor, "
        f"adapter) tuple; got a {type(target).__name__}."
    )


def weights_fingerprint(model: torch.nn.Module, max_params: int = 50_000_000) -> str:
    """``name#sha256[:16]`` of all weights (models up to ``max_params``); larger models are named
    by ``config._name_or_path`` and their parameter count only."""
    name = str(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)
    n = sum(p.numel() for p in model.parameters())
    if n > max_params:
        return f"{name}#n{n}"
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return f"{name}#{h.hexdigest()[:16]}"


# ---------------------------------------------------------------------------- handle
_APPLIED: "weakref.WeakKeyDictionary[torch.nn.Module, list[weakref.ref[EditHandle]]]" = weakref.WeakKeyDictionary()
"""Per edited module, the handles whose edit of it is still applied, oldest first (weak references:
a handle that was garbage-collected without ``revert()`` keeps its edit and guards nothing)."""
_NUMBERS = itertools.count(1)


def _applied(module: torch.nn.Module) -> list["EditHandle"]:
    """The live, unreverted handles that edited ``module``, oldest first (dead ones pruned)."""
    refs = _APPLIED.get(module)
    if not refs:
        return []
    live = [r for r in refs if r() is not None and not r().reverted]  # type: ignore[union-attr]
    _APPLIED[module] = live
    return [r() for r in live]  # type: ignore[misc]


class EditHandle:
    """Reverts an edit bitwise and records what it changed.

    ``track(site, module)`` clones every parameter of ``module`` before the editor writes to it;
    ``revert()`` copies the clones back (``copy_``), so the weights are bit-identical to before.
    ``changes`` lists per edited site: module path, ``delta_fro`` = ||ΔW||_F, ``weight_fro`` =
    ||W||_F, ``delta_rel`` = their ratio, ``delta_rank`` (numerical rank of ΔW, for matrices up to
    4096 wide). ``info`` holds editor-specific diagnostics (loss, null-space size...) and
    ``info["dW_rel"]`` = ``{"<module path>.weight": ||ΔW||_F / ||W||_F}`` for every edited weight.

    Several handles on one module (sequential edits) revert **newest first**: a later edit was
    computed on the weights the earlier one left, so "undo only the earlier one" has no exact
    meaning. Reverting a handle while a later, still-applied handle edited one of its modules raises
    :class:`EditorError` naming that handle, and changes nothing. Reverting twice is a no-op (also
    after other edits were applied since). See docs/editors/index.md.
    """

    def __init__(self, method: str, sites: Sequence[Site], hparams: Any):
        self.method = method
        self.sites = [str(s) for s in sites]
        self.hparams = hparams
        self._orig: dict[str, tuple[torch.nn.Module, dict[str, torch.Tensor]]] = {}
        self._site_of: dict[str, str] = {}
        self.changes: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}
        self.reverted = False
        self.number = next(_NUMBERS)
        self._on_revert: list[Any] = []  # editors' state to undo with the weights (newest first)
        """Creation order of handles in this process (names a handle in revert-order errors)."""

    def track(self, site: "Site | str", module: torch.nn.Module, path: str) -> None:
        if path in self._orig:
            return
        self._orig[path] = (module, {n: p.detach().clone() for n, p in module.named_parameters(recurse=False)})
        self._site_of[path] = str(site)
        stack = _applied(module)
        if self not in stack:
            _APPLIED[module] = [weakref.ref(h) for h in stack] + [weakref.ref(self)]

    @property
    def modules(self) -> list[str]:
        return list(self._orig)

    def original(self, path: str, name: str = "weight") -> torch.Tensor:
        return self._orig[path][1][name]

    def blocking(self) -> dict[str, "EditHandle"]:
        """``{module path: later handle}`` for every module of this handle that a later,
        still-applied handle edited (empty: ``revert()`` can run)."""
        out = {}
        for path, (module, _) in self._orig.items():
            stack = _applied(module)
            if self in stack and stack[-1] is not self:
                out[path] = stack[-1]
        return out

    @torch.no_grad()
    def revert(self) -> None:
        """Restore every tracked parameter bit for bit. A no-op when already reverted; raises
        :class:`EditorError` (touching nothing) when a later applied handle edited one of the
        same modules: revert that one first."""
        if self.reverted:
            return
        later = self.blocking()
        if later:
            path, h = next(iter(later.items()))
            raise EditorError(
                f"cannot revert {self!r} yet: {h!r} edited {path} after it and is still applied. Edits of "
                f"one module revert newest first (a later edit was computed on the weights this one left); "
                f"call revert() on that handle first, then on this one. Nothing was changed."
            )
        for module, saved in self._orig.values():
            params = dict(module.named_parameters(recurse=False))
            for n, t in saved.items():
                params[n].data.copy_(t)
        self.reverted = True
        for module, _ in self._orig.values():
            _applied(module)  # prune this handle from the module's stack
        for undo in reversed(self._on_revert):
            undo()
        self._on_revert.clear()

    def on_revert(self, undo: Any) -> None:
        """Call ``undo()`` when this handle is reverted: an editor's own state that belongs to this
        edit (AlphaEdit's accumulated keys) goes back with the weights."""
        self._on_revert.append(undo)

    @torch.no_grad()
    def finish(self) -> "EditHandle":
        """Compute the change records from the snapshots (called by ``Editor.apply``), and
        ``info["dW_rel"]`` = ``{"<module path>.weight": ||ΔW||_F / ||W||_F}`` (W before the edit)."""
        self.changes = []
        rel: dict[str, float] = {}
        for path, (module, saved) in self._orig.items():
            w0 = saved["weight"].double()
            dw = module.weight.detach().double() - w0
            rec = {"site": self._site_of[path], "module": path, "shape": list(w0.shape),
                   "delta_fro": float(dw.norm()), "weight_fro": float(w0.norm())}
            rec["delta_rel"] = rec["delta_fro"] / max(rec["weight_fro"], 1e-30)
            if dw.ndim == 2 and max(dw.shape) <= 4096:
                rec["delta_rank"] = int(torch.linalg.matrix_rank(dw, rtol=1e-6)) if rec["delta_fro"] > 0 else 0
            self.changes.append(rec)
            rel[f"{path}.weight"] = rec["delta_rel"]
        self.info["dW_rel"] = rel
        return self

    def merge(self, other: "EditHandle") -> "EditHandle":
        """Absorb another handle applied *after* this one (the earliest snapshot of a module wins);
        afterwards this handle reverts both edits and ``other`` is marked reverted."""
        for path, entry in other._orig.items():
            module = entry[0]
            stack = _applied(module)
            if path not in self._orig:
                self._orig[path] = entry
                self._site_of[path] = other._site_of[path]
                stack = [self if h is other else h for h in stack]
            else:
                stack = [h for h in stack if h is not other]
            _APPLIED[module] = [weakref.ref(h) for h in dict.fromkeys(stack)]
        for s in other.sites:
            if s not in self.sites:
                self.sites.append(s)
        self.info.update({f"{other.method}.{k}": v for k, v in other.info.items()})
        self._on_revert.extend(other._on_revert)
        other._on_revert = []
        other.reverted = True  # its edit is now this handle's to revert
        return self

    def to_json(self) -> dict[str, Any]:
        hp = dataclasses.asdict(self.hparams) if dataclasses.is_dataclass(self.hparams) else self.hparams
        return {"method": self.method, "sites": self.sites, "hparams": hp, "changes": self.changes,
                "info": _jsonable(self.info), "reverted": self.reverted}

    def __repr__(self) -> str:
        state = "reverted" if self.reverted else "applied"
        rel = self.info.get("dW_rel")
        rel = "" if not rel else ", dW_rel={" + ", ".join(f"{k!r}: {v:.3g}" for k, v in rel.items()) + "}"
        return f"EditHandle #{self.number} ({self.method!r}, sites={self.sites}, {state}{rel})"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


# ---------------------------------------------------------------------------- editor
class Editor:
    """Base class of editors. Subclasses set ``name``, ``label``, ``HParams`` (a dataclass) and
    implement ``check_sites(adapter, sites)`` and ``_edit(ctx, requests, sites, handle)``.

    ``Editor(sites, hparams=None, **overrides)``: ``sites`` is a site string, a pattern, or a list
    of them; ``overrides`` replace single hyper-parameters. Editors that accumulate state across
    sequential edits (AlphaEdit's previously edited keys) keep it on the instance; ``reset()``
    forgets it.
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    HParams: ClassVar[type] = object
    accumulates: ClassVar[bool] = False
    """Default evaluation mode: single-layer editors reset between cases, multi-layer accumulate."""

    def __init__(self, sites: Any, hparams: Any = None, **overrides: Any):
        if hparams is None:
            hparams = self.HParams()
        if not isinstance(hparams, self.HParams):
            raise EditorError(f"{self.name}: hparams must be a {self.HParams.__name__}, got {type(hparams).__name__}.")
        if overrides:
            known = {f.name for f in dataclasses.fields(hparams)}
            bad = sorted(set(overrides) - known)
            if bad:
                raise EditorError(f"{self.name}: unknown hyper-parameter(s) {bad}; {self.HParams.__name__} has {sorted(known)}.")
            hparams = dataclasses.replace(hparams, **overrides)
        check_hparams = getattr(hparams, "check", None)
        if check_hparams:
            check_hparams()
        self.hparams = hparams
        self.site_spec = sites

    # ------------------------------------------------------------------ API
    def resolve_sites(self, adapter: Any) -> list[Site]:
        """The concrete sites this editor edits on ``adapter``'s model, in forward order (patterns
        expanded, editor shorthand normalised); :class:`EditorError` for a site it cannot edit."""
        specs = [self.site_spec] if isinstance(self.site_spec, (str, Site)) else list(self.site_spec)
        if not specs:
            raise EditorError(f"{self.name}: no site given.")
        try:
            sites = adapter.expand([normalise_site(s) for s in specs])
        except SiteError as err:
            raise EditorError(f"{self.name}: {str(err).splitlines()[0]}") from err
        self.check_sites(adapter, sites)
        return sites

    def stats_sites(self, adapter: Any) -> list[Site]:
        """The key sites (``...mlp.down@in``, concrete, in forward order) whose second moments
        E[kkᵀ] over the context's :class:`KeyCorpus` this editor reads — what a run computes (and
        shards) before the edits, and whether it needs a corpus at all. Empty (this default): the
        editor reads no statistics. Editors that read them override it (ROME with
        ``cov="second_moment"``, AlphaEdit, the cross-modal editors: every stage's)."""
        return []

    def prefetch_stats(self, ctx: EditContext, sites: Sequence[Site]) -> None:
        """Fetch (read or compute, memoised on ``ctx``) every statistic this editor uses at
        ``sites`` now, before anything is edited (nothing for editors without statistics)."""

    def apply(self, target: "EditContext | AudioLM", requests: "EditRequest | Sequence[EditRequest]", *,
              store: Any = None, corpus: KeyCorpus | None = None) -> EditHandle:
        """Edit the model in place for ``requests``; returns the handle. On any error the weights
        are restored bitwise before the exception propagates.

        target: a model handle (``lalm_interp.load(...)``; then ``store`` / ``corpus`` give the
        statistics, as in :class:`EditContext`), an :class:`EditContext` (which memoises statistics
        across calls: use one for a series of edits) or a ``(model, processor, adapter)`` tuple."""
        ctx = as_context(target, store=store, corpus=corpus)
        reqs = [requests] if isinstance(requests, EditRequest) else list(requests)
        if not reqs:
            raise EditorError(f"{self.name}: no edit requests given.")
        sites = self.resolve_sites(ctx.adapter)
        prefix = object_prefix(ctx.adapter, _Style(_style(ctx.processor)))
        for r in reqs:
            check_request(r, ctx.tokenizer, prefix)
        handle = EditHandle(self.name, sites, self.hparams)
        try:
            self._edit(ctx, reqs, sites, handle)
        except SpanError as err:
            handle.revert()
            raise EditorError(f"{self.name}: the key span cannot be placed: {str(err).splitlines()[0]}") from err
        except BaseException:
            handle.revert()
            raise
        return handle.finish()

    def reset(self) -> None:
        """Forget state accumulated across sequential edits (nothing for stateless editors)."""

    # ------------------------------------------------------------------ subclass hooks
    def check_sites(self, adapter: Any, sites: list[Site]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _edit(self, ctx: EditContext, requests: list[EditRequest], sites: list[Site],
              handle: EditHandle) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "label": self.label, "sites": _site_list(self.site_spec),
                "hparams": dataclasses.asdict(self.hparams)}

    # ------------------------------------------------------------------ repr
    summary: ClassVar[tuple[str, ...]] = ()
    """The hyper-parameters the repr shows (those that decide what the edit is); all of them are in
    ``editor.hparams``."""

    def _summary(self) -> list[str]:
        return [f"{f}={getattr(self.hparams, f)!r}" for f in self.summary if hasattr(self.hparams, f)]

    def _state(self) -> list[str]:
        """Accumulated state worth showing in the repr (e.g. AlphaEdit's edits since reset())."""
        return []

    def __repr__(self) -> str:
        sites = _site_list(self.site_spec)
        parts = [repr(sites[0]) if len(sites) == 1 else repr(sites)]
        preset = getattr(self, "preset", None)
        if preset is not None:
            parts.append(f"preset={preset!r}")
        return f"{type(self).__name__}({', '.join(parts + self._summary() + self._state())})"


def _site_list(spec: Any) -> list[str]:
    return [str(spec)] if isinstance(spec, (str, Site)) else [str(s) for s in spec]


@dataclass
class _Style:
    style: str


def _style(processor: Any) -> str:
    return "chat" if getattr(processor, "chat_template", None) else "plain"


def normalise_site(site: "str | Site") -> str:
    """``audio.layers.3`` / ``audio.layers.3.mlp`` / ``...mlp.down@in`` → ``audio.layers.3.mlp.down``
    (the edited module). Other components are returned unchanged so the editor can reject them."""
    try:
        s = parse(site)
    except LalmInterpError as err:
        raise EditorError(f"site {site!r}: {str(err).splitlines()[0]}") from err
    if s.is_layer_site and len(s.path) == 2:
        s = Site(s.stream, (*s.path, "mlp", "down"))
    elif s.is_layer_site and s.component == "mlp":
        s = Site(s.stream, (*s.path[:2], "mlp", "down"))
    if s.component == "mlp.down":
        s = s.with_port("out")
    return str(s)


def key_inputs(sites: Sequence[Site]) -> list[Site]:
    """The key sites (``@in``) of edited ``mlp.down`` sites: where their statistics are taken."""
    return [s.with_port("in") for s in sites]


def require_mlp_down(name: str, adapter: Any, sites: list[Site], *, n: int | None = None,
                     one_stream: bool = True) -> None:
    """Shared site check: every site must be a per-layer ``mlp.down`` (a Linear with a key input)."""
    for s in sites:
        if s.component != "mlp.down" or s.stream not in ("audio", "text"):
            raise EditorError(
                f"{name} cannot edit site {s}: it edits the MLP down-projection of an audio or text layer "
                "(e.g. 'audio.layers.3.mlp.down' = encoder fc2, 'text.layers.8.mlp.down' = mlp.down_proj), "
                f"whose input is the key. Attention and residual sites have no single key matrix."
            )
        if not adapter.component(s).has_input:
            raise EditorError(f"{name}: adapter {adapter.name} declares no key input (@in) for {s}.")
    if n is not None and len(sites) != n:
        raise EditorError(f"{name} edits exactly {n} site(s), got {len(sites)}: {[str(s) for s in sites]}.")
    if one_stream and len({s.stream for s in sites}) > 1:
        raise EditorError(f"{name}: sites {[str(s) for s in sites]} mix streams; edit audio and text with a cross-modal editor.")


# ---------------------------------------------------------------------------- registry
ENTRY_POINT_GROUP = "lalm_interp.editors"
REGISTRY: Registry[type[Editor]] = Registry(
    "editor", ENTRY_POINT_GROUP, lambda o: isinstance(o, type) and issubclass(o, Editor) and bool(o.name),
    lambda cls: cls.name, EditorError,
)


def register(cls: type[Editor], *, replace: bool = False) -> type[Editor]:
    """Register an :class:`Editor` subclass under ``cls.name`` (usable as a class decorator)."""
    return REGISTRY.register(cls, replace=replace)


def available() -> dict[str, type[Editor]]:
    """All registered editors by name."""
    return REGISTRY.available()


def get(name: str) -> type[Editor]:
    eds = available()
    if name not in eds:
        raise EditorError(f"no editor named {name!r}; registered: {sorted(eds)}. "
                          "Add one (docs/patterns/add-an-editor.md) and register it.")
    return eds[name]


def make(name: str, sites: Any, hparams: Any = None, **overrides: Any) -> Editor:
    """Build a registered editor: ``make("rome", "text.layers.1.mlp.down", steps=20)``."""
    return get(name)(sites, hparams, **overrides)
