"""Intervention specs: plain, frozen, serialisable data written in Python.

* :class:`Corrupt` — add noise to (or zero, or replace) a span of frames at one site;
* :class:`Restore` — copy clean values back over a window of layers, at chosen positions;
* :class:`Patch` — copy values from one run into another at a site and positions;
* :class:`Read` — record activations (into the cache);
* :class:`Experiment` — names the runs (``clean``, ``corrupt``, one per restoration) and groups them.

Specs are validated against an adapter (:meth:`Experiment.validate`) before any forward pass, and
``to_dict()`` / ``from_dict()`` round-trip so a result file records exactly what produced it.
See ``docs/usage/specs.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, Union

from .errors import LalmInterpError
from .sites import Site, parse

SpanSpec = Union[str, tuple[int, int]]

NOISES = ("gaussian", "zero", "replace")
POSITION_MODES = ("each", "all")
METRICS = ("first", "total")


class SpecError(LalmInterpError, ValueError):
    """A spec that cannot run on this model or these inputs."""

    page = "specs"


@dataclass(frozen=True)
class Corrupt:
    """Corrupt a span of frames at one site in every run but ``clean``.

    at: the site (default ``audio.conv2``: the encoder's second conv, (B, C, T), pre-GELU).
    span: the named span (``subject``, ``first_subject_word``, …) or an inclusive word range.
    noise: ``gaussian`` (add ``scale * σ * N(0, 1)``), ``zero`` (set to 0), or ``replace`` (copy the
        same frames of another clip's activations, given to the tracer as ``replace_audio``).
    scale: multiplier of σ for gaussian noise (ROME and the paper: 3.0).
    sigma: ``"span"`` — σ is the standard deviation of this example's clean activations over the
        span at ``at`` (all channels and frames of the span; the paper, following ROME) — or a
        fixed float.
    seed: seed of the noise generator; the same seed gives bitwise the same noise.
    """

    at: str = "audio.conv2"
    span: SpanSpec = "subject"
    noise: str = "gaussian"
    scale: float = 3.0
    sigma: Union[str, float] = "span"
    seed: int = 0

    def __post_init__(self) -> None:
        parse(self.at)
        if self.noise not in NOISES:
            raise SpecError(f"Corrupt.noise={self.noise!r}; expected one of {list(NOISES)}.")
        if self.sigma != "span" and not isinstance(self.sigma, (int, float)):
            raise SpecError(f"Corrupt.sigma={self.sigma!r}; expected 'span' or a number.")
        if self.scale < 0:
            raise SpecError(f"Corrupt.scale={self.scale} is negative; expected a multiplier >= 0.")


@dataclass(frozen=True)
class Restore:
    """Restore clean values in corrupted runs: one run per (centre layer, position group).

    at: a per-layer site pattern, e.g. ``text.layers.*.mlp`` (one stream, one component:
        ``resid`` hidden state, ``attn`` or ``mlp`` output). Every matching layer is a centre.
    window: layers restored around each centre: ``[l - window//2, l - window//2 + window)``
        clipped to the stack (ROME's rule; ``window=1`` restores the centre layer only).
    positions: ``"each"`` (one run per valid frame/token of the site's stream), ``"all"`` (every
        position, including padding, in one run), or a tuple of named spans / word ranges (one run
        per span; ``last_token`` is valid on the text stream only).
    name: label of this restoration family in results (default ``"<stream>.<component>"``).
    """

    at: str = "text.layers.*.mlp"
    window: int = 10
    positions: Union[str, tuple[SpanSpec, ...]] = ("first_subject_word", "last_subject_word", "last_word")
    name: str = ""

    def __post_init__(self) -> None:
        s = parse(self.at)
        if not s.is_layer_site or len(s.path) < 3:
            raise SpecError(
                f"Restore.at={self.at!r} is not a per-layer site pattern; write e.g. 'text.layers.*.mlp'."
            )
        if self.window < 1:
            raise SpecError(f"Restore.window={self.window}; expected a window of at least 1 layer.")
        if isinstance(self.positions, str) and self.positions not in POSITION_MODES:
            raise SpecError(
                f"Restore.positions={self.positions!r}; expected 'each', 'all' or a tuple of named spans."
            )
        if isinstance(self.positions, list):
            object.__setattr__(self, "positions", tuple(self.positions))
        if isinstance(self.positions, tuple):
            _check_spans(self.positions, f"Restore({self.at!r}).positions")

    @property
    def site(self) -> Site:
        return parse(self.at)

    @property
    def label(self) -> str:
        s = self.site
        return self.name or f"{s.stream}.{s.component}"


@dataclass(frozen=True)
class Patch:
    """Copy ``source`` run's values into ``target`` run at ``at`` and ``positions`` (a new run).

    at: a concrete site. source / target: run names (``clean``, ``corrupt``).
    positions: ``"all"`` or a tuple of named spans / word ranges.
    name: name of the patched run in results.
    """

    at: str
    source: str = "clean"
    target: str = "corrupt"
    positions: Union[str, tuple[SpanSpec, ...]] = "all"
    name: str = "patched"

    def __post_init__(self) -> None:
        parse(self.at)
        for r in (self.source, self.target):
            if r not in ("clean", "corrupt"):
                raise SpecError(f"Patch run {r!r}; expected 'clean' or 'corrupt'.")
        if isinstance(self.positions, list):
            object.__setattr__(self, "positions", tuple(self.positions))
        if isinstance(self.positions, str):
            if self.positions != "all":
                raise SpecError(f"Patch.positions={self.positions!r}; expected 'all' or a tuple of named spans.")
        else:
            _check_spans(self.positions, f"Patch({self.at!r}).positions")


@dataclass(frozen=True)
class Read:
    """Record activations at ``at`` (a site or pattern) for ``runs`` into the activation cache."""

    at: str
    runs: tuple[str, ...] = ("clean",)

    def __post_init__(self) -> None:
        parse(self.at)
        if isinstance(self.runs, (list, str)):
            object.__setattr__(self, "runs", (self.runs,) if isinstance(self.runs, str) else tuple(self.runs))
        bad = [r for r in self.runs if r not in ("clean", "corrupt")]
        if bad or not self.runs:
            raise SpecError(f"Read.runs={self.runs!r}; expected a non-empty tuple of 'clean' / 'corrupt'.")


_KINDS = {"Corrupt": Corrupt, "Restore": Restore, "Patch": Patch, "Read": Read}


@dataclass(frozen=True)
class Experiment:
    """A causal-tracing experiment: one corruption, restoration families, patches and reads.

    name: experiment name (cache key, output folder).
    corrupt: the corruption applied to every run but ``clean``.
    restores: restoration families (each yields one IE grid).
    patches / reads: optional extra runs / recordings.
    metric: ``first`` — P(first object token) as ROME; ``total`` — teacher-forced P(object).
    reuse_encoder: for text-side restorations, run the audio encoder once (clean + corrupt) and feed
        its merged embeddings to every restoration row (exactly equal, much cheaper).
    memory_mb: activation-memory budget per forward, used to choose the number of rows per batch.
    """

    name: str
    corrupt: Corrupt = field(default_factory=Corrupt)
    restores: tuple[Restore, ...] = ()
    patches: tuple[Patch, ...] = ()
    reads: tuple[Read, ...] = ()
    metric: str = "first"
    reuse_encoder: bool = True
    memory_mb: int = 2048

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise SpecError(f"Experiment.metric={self.metric!r}; expected one of {list(METRICS)}.")
        for attr in ("restores", "patches", "reads"):
            v = getattr(self, attr)
            if not isinstance(v, tuple):
                object.__setattr__(self, attr, tuple(v))
        labels = [r.label for r in self.restores]
        if len(set(labels)) != len(labels):
            raise SpecError(f"restoration families need distinct names; got {labels}. Set Restore.name.")

    # ------------------------------------------------------------------ validation
    def validate(self, adapter: Any) -> None:
        """Check every site and window against ``adapter`` before any compute."""
        corrupt_site = _concrete(self.corrupt.at, adapter, "Corrupt.at")
        c_rank = adapter.forward_rank(corrupt_site)
        for r in self.restores:
            sites = _expand(r.at, adapter, "Restore.at")
            n = adapter.n_layers(r.site.stream)
            if r.window > n:
                raise SpecError(
                    f"Restore({r.at!r}).window={r.window} is larger than the {n} {r.site.stream} layers of "
                    f"{adapter.name}; use window <= {n}."
                )
            for s in sites:
                lo = window_layers(s.layer, r.window, n)[0]
                first = s.with_layer(lo)
                if adapter.forward_rank(first) <= c_rank:
                    raise SpecError(
                        f"Restore site {first} runs before the corruption at {corrupt_site}; a restoration "
                        "must come after the corrupted site in the forward pass."
                    )
            if isinstance(r.positions, tuple) and r.site.stream != "text" and "last_token" in r.positions:
                raise SpecError(
                    f"Restore({r.at!r}) asks for 'last_token', a text position, on the {r.site.stream} stream."
                )
        for p in self.patches:
            s = _concrete(p.at, adapter, "Patch.at")
            if adapter.forward_rank(s) <= c_rank and p.target == "corrupt":
                raise SpecError(f"Patch site {s} runs before the corruption at {corrupt_site}.")
        for rd in self.reads:
            _expand(rd.at, adapter, "Read.at")

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Experiment":
        d = dict(d)
        d.pop("type", None)
        d["corrupt"] = _from_dict(d["corrupt"])
        for k in ("restores", "patches", "reads"):
            d[k] = tuple(_from_dict(x) for x in d.get(k, ()))
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> "Experiment":
        return cls.from_dict(json.loads(s))


def _check_spans(spans: tuple, what: str) -> None:
    from .spans import NAMED_SPANS

    if not spans:
        raise SpecError(f"{what} is empty; give at least one named span, 'each' or 'all'.")
    for sp in spans:
        if isinstance(sp, str):
            if sp not in NAMED_SPANS:
                raise SpecError(f"{what}: unknown span {sp!r}; named spans are {list(NAMED_SPANS)} "
                                "or an inclusive word range (i, j).")
        elif not (isinstance(sp, tuple) and len(sp) == 2 and all(isinstance(v, int) for v in sp) and 0 <= sp[0] <= sp[1]):
            raise SpecError(f"{what}: {sp!r} is neither a named span nor a word range (i, j) with 0 <= i <= j.")


def window_layers(centre: int, window: int, n: int) -> list[int]:
    """Layers restored around ``centre`` (ROME: ``[c - w//2, c - w//2 + w)`` clipped to ``[0, n)``)."""
    lo = max(0, centre - window // 2)
    hi = min(n, centre - window // 2 + window)
    return list(range(lo, hi))


def _concrete(site: str, adapter: Any, what: str) -> Site:
    from .errors import SiteError

    try:
        return adapter.one(site)
    except SiteError as err:
        raise SpecError(f"{what}: {err}") from err


def _expand(site: str, adapter: Any, what: str) -> list[Site]:
    from .errors import SiteError

    try:
        return adapter.expand(site)
    except SiteError as err:
        raise SpecError(f"{what}: {err}") from err


def _to_dict(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        d = {"type": type(obj).__name__}
        for f in fields(obj):
            d[f.name] = _to_dict(getattr(obj, f.name))
        return d
    if isinstance(obj, tuple):
        return [_to_dict(x) for x in obj]
    return obj


def _tuplify(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_tuplify(x) for x in v)
    return v


def _from_dict(d: dict[str, Any]) -> Any:
    d = dict(d)
    cls = _KINDS[d.pop("type")]
    return cls(**{k: _tuplify(v) for k, v in d.items()})


def experiment_from_file(path: str) -> Experiment:
    """Load ``EXPERIMENT`` from a spec file in ``tracing_specs/`` (plain Python)."""
    import runpy

    ns = runpy.run_path(str(path))
    exp = ns.get("EXPERIMENT")
    if not isinstance(exp, Experiment):
        raise SpecError(f"spec file {path} defines no EXPERIMENT = Experiment(...); see tracing_specs/README.md.")
    return exp


__all__ = ["Corrupt", "Restore", "Patch", "Read", "Experiment", "SpecError", "window_layers",
           "experiment_from_file"]
