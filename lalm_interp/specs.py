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
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Union

from .errors import LalmInterpError, SiteError
from .sites import Site, parse, suggest
from .spans import NAMED_SPANS

SpanSpec = Union[str, tuple[int, int]]

NOISES = ("gaussian", "zero", "replace")
POSITION_MODES = ("each", "all")
METRICS = ("first", "total")
SAVINGS = ("effective_length", "shared_prefix", "kv_reuse")
"""The exact tracing savings (``Experiment.savings``; ``docs/usage/tracing.md#savings``)."""


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
        _check_spans((self.span,), f"Corrupt({self.at!r}).span")  # a typo fails here, not per prompt

    def validate(self, adapter: Any, exp: "Experiment | None" = None) -> None:
        """The site is one concrete site of ``adapter``."""
        _concrete(self.at, adapter, "Corrupt.at")


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

    def validate(self, adapter: Any, exp: "Experiment") -> None:
        """Every centre's window starts after ``exp``'s corruption; span names fit the stream."""
        corrupt_site = _concrete(exp.corrupt.at, adapter, "Corrupt.at")
        c_rank = adapter.forward_rank(corrupt_site)
        sites = _expand(self.at, adapter, "Restore.at")
        n = adapter.n_layers(self.site.stream)
        if self.window > n:
            _note_clipped(self, n, adapter.name)
        for s in sites:
            lo = window_layers(s.layer, self.window, n)[0]
            first = s.with_layer(lo)
            if adapter.forward_rank(first) <= c_rank:
                raise SpecError(
                    f"Restore site {first} runs before the corruption at {corrupt_site}; a restoration "
                    "must come after the corrupted site in the forward pass."
                )
        if isinstance(self.positions, tuple) and self.site.stream != "text" and "last_token" in self.positions:
            raise SpecError(
                f"Restore({self.at!r}) asks for 'last_token', a text position, on the {self.site.stream} stream."
            )

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

    def validate(self, adapter: Any, exp: "Experiment") -> None:
        """A concrete site; one patched into the corrupted run comes after the corruption."""
        corrupt_site = _concrete(exp.corrupt.at, adapter, "Corrupt.at")
        s = _concrete(self.at, adapter, "Patch.at")
        if adapter.forward_rank(s) <= adapter.forward_rank(corrupt_site) and self.target == "corrupt":
            raise SpecError(f"Patch site {s} runs before the corruption at {corrupt_site}.")


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

    def validate(self, adapter: Any, exp: "Experiment | None" = None) -> None:
        """The pattern matches sites of ``adapter``."""
        _expand(self.at, adapter, "Read.at")


SPEC_TYPES: dict[str, type] = {"Corrupt": Corrupt, "Restore": Restore, "Patch": Patch, "Read": Read}
"""Spec kinds by their JSON ``"type"`` name: the four built in, plus every kind registered with
:func:`register_spec` (:func:`lalm_interp.interventions.register_kind` does it)."""


def register_spec(cls: type) -> type:
    """Make the frozen dataclass ``cls`` readable from JSON under its class name (``{"type":
    cls.__name__, ...}``), e.g. in :attr:`Experiment.interventions`. Registering a class again, or
    a new definition of it (same module and name: a re-run notebook cell), replaces it; another
    class under a taken name is a :class:`SpecError`."""
    if not hasattr(cls, "__dataclass_fields__"):
        raise SpecError(f"register_spec({cls!r}): a spec kind is a frozen dataclass; decorate it with "
                        "@dataclass(frozen=True) first.")
    have = SPEC_TYPES.get(cls.__name__)
    if have is not None and (have.__module__, have.__qualname__) != (cls.__module__, cls.__qualname__):
        raise SpecError(f"a spec kind named {cls.__name__!r} is already registered ({have.__module__}."
                        f"{have.__qualname__}); give the new kind another class name.")
    SPEC_TYPES[cls.__name__] = cls
    return cls


@dataclass(frozen=True)
class Experiment:
    """A causal-tracing experiment: one corruption, restoration families, patches and reads.

    name: experiment name (cache key, output folder).
    corrupt: the corruption applied to every run but ``clean``.
    restores: restoration families (each yields one IE grid).
    patches / reads: optional extra runs / recordings.
    interventions: further interventions of registered kinds
        (:func:`lalm_interp.interventions.register_kind`), each adding its own runs and results.
    metric: ``first`` — P(first object token) as ROME; ``total`` — teacher-forced P(object).
    reuse_encoder: for text-side restorations, run the audio encoder once (clean + corrupt) and feed
        its merged embeddings to every restoration row (exactly equal, much cheaper).
    memory_mb: activation-memory budget per forward, used to choose the number of rows per batch.
    savings: the exact savings the tracer may use where the model's adapter supports them (all of
        :data:`SAVINGS` by default; ``()`` runs every restoration as a full batched forward):
        ``effective_length`` (encoder on the real frames only), ``shared_prefix`` (each row starts
        at its first edited layer), ``kv_reuse`` (text rows compute only positions from their first
        edit). Results equal the full forward to float rounding (docs/usage/tracing.md#savings).
        Left out of the JSON (and the run key) when it is the default.
    """

    name: str
    corrupt: Corrupt = field(default_factory=Corrupt)
    restores: tuple[Restore, ...] = ()
    patches: tuple[Patch, ...] = ()
    reads: tuple[Read, ...] = ()
    metric: str = "first"
    reuse_encoder: bool = True
    memory_mb: int = 2048
    interventions: tuple[Any, ...] = field(default=(), metadata={"omit_empty": True})
    savings: tuple[str, ...] = field(default=SAVINGS, metadata={"omit_default": True})

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise SpecError(f"Experiment.metric={self.metric!r}; expected one of {list(METRICS)}.")
        if isinstance(self.savings, str) or not isinstance(self.savings, (tuple, list)):
            raise SpecError(f"Experiment.savings={self.savings!r}: expected a tuple of names from {list(SAVINGS)} "
                            "(e.g. savings=('kv_reuse',); () switches every saving off; docs/usage/tracing.md#savings).")
        for attr in ("restores", "patches", "reads", "interventions", "savings"):
            v = getattr(self, attr)
            if not isinstance(v, tuple):
                object.__setattr__(self, attr, tuple(v))
        for x in self.interventions:
            if SPEC_TYPES.get(type(x).__name__) is not type(x):
                raise SpecError(f"Experiment.interventions holds a {type(x).__name__}, which is not a registered "
                                "intervention kind; register its class with lalm_interp.interventions.register_kind "
                                "(docs/usage/interventions.md#your-own-kinds).")
        bad = [x for x in self.savings if x not in SAVINGS]
        if bad or len(set(self.savings)) != len(self.savings):
            raise SpecError(f"Experiment.savings={self.savings!r}: each of {list(SAVINGS)} at most once "
                            "(() switches every saving off; docs/usage/tracing.md#savings).")
        object.__setattr__(self, "savings", tuple(x for x in SAVINGS if x in self.savings))  # one spelling, one run key
        labels = [r.label for r in self.restores]
        if len(set(labels)) != len(labels):
            raise SpecError(f"restoration families need distinct names; got {labels}. Set Restore.name.")

    # ------------------------------------------------------------------ validation
    @property
    def specs(self) -> tuple[Any, ...]:
        """Every intervention of the experiment in order: the corruption, restorations, patches,
        reads, then :attr:`interventions`."""
        return (self.corrupt, *self.restores, *self.patches, *self.reads, *self.interventions)

    def validate(self, adapter: Any) -> None:
        """Check every site and window against ``adapter`` before any compute (each spec's own
        ``validate(adapter, experiment)``, in the order of :attr:`specs`)."""
        for spec in self.specs:
            spec.validate(adapter, self)

    def windows(self, n_layers: dict[str, int]) -> dict[str, dict[str, int]]:
        """The window each restoration family actually uses on a model with ``n_layers`` per stream:
        ``{label: {"requested": w, "used": min(w, n), "n_layers": n}}``. A window longer than the
        stack is clipped to it (ROME's rule, see :func:`window_layers`): ``used`` is the largest
        number of layers any centre restores."""
        out = {}
        for r in self.restores:
            n = int(n_layers[r.site.stream])
            out[r.label] = {"requested": int(r.window), "used": min(int(r.window), n), "n_layers": n}
        return out

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "the spec") -> "Experiment":
        """The inverse of :meth:`to_dict`. A wrong kind, a missing or unknown field is a
        :class:`SpecError` naming ``source`` (a file name) and the field."""
        if not isinstance(d, dict):
            raise SpecError(f"{source}: expected a JSON object with the fields of Experiment, got "
                            f"{type(d).__name__}. Write it with Experiment.to_json().")
        d = dict(d)
        kind = d.pop("type", "Experiment")
        if kind != "Experiment":
            raise SpecError(f"{source}: top-level \"type\" is {kind!r}; expected \"Experiment\" (a tracing "
                            "experiment, as written by Experiment.to_json()).")
        if "corrupt" in d:
            d["corrupt"] = _from_dict(d["corrupt"], f"{source}: corrupt", expect="Corrupt")
        for k, kind_of in (("restores", "Restore"), ("patches", "Patch"), ("reads", "Read"),
                           ("interventions", None)):
            v = d.get(k, ())
            if not isinstance(v, (list, tuple)):
                what = f"{kind_of} objects" if kind_of else "intervention objects"
                raise SpecError(f"{source}: {k} is {type(v).__name__}; expected a list of {what}.")
            d[k] = tuple(_from_dict(x, f"{source}: {k}[{i}]", expect=kind_of) for i, x in enumerate(v))
        return _construct(cls, d, source)

    @classmethod
    def from_json(cls, s: str, *, source: str = "the spec JSON") -> "Experiment":
        """Parse :meth:`to_json`'s output. Malformed JSON is a :class:`SpecError` with its line and column."""
        try:
            d = json.loads(s)
        except json.JSONDecodeError as err:
            raise SpecError(
                f"{source}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}. "
                "Fix that spot (a missing comma or quote, a trailing comma), or regenerate the file with "
                "Experiment.to_json()."
            ) from None
        return cls.from_dict(d, source=source)


def _construct(cls: type, d: dict[str, Any], where: str) -> Any:
    import difflib

    names = [f.name for f in fields(cls)]
    unknown = [k for k in d if k not in names]
    if unknown:
        hint = difflib.get_close_matches(unknown[0], names, n=1)
        raise SpecError(f"{where}: unknown field {unknown[0]!r} for {cls.__name__}"
                        + (f" (did you mean {hint[0]!r}?)" if hint else "")
                        + f"; its fields are {names}.")
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    missing = [k for k in required if k not in d]
    if missing:
        raise SpecError(f"{where}: {cls.__name__} is missing the required field {missing[0]!r}; add it "
                        f"(e.g. \"{missing[0]}\": ...). Required fields of {cls.__name__}: {required}.")
    try:
        return cls(**d)
    except SpecError as err:
        raise SpecError(f"{where}: {str(err).split(chr(10))[0]}") from err
    except LalmInterpError as err:  # e.g. a SiteError: keep its page, add the location
        raise SpecError(f"{where}: {err}") from err
    except (TypeError, ValueError) as err:
        raise SpecError(f"{where}: {cls.__name__}({', '.join(d)}) is invalid: {err}.") from err


def _check_spans(spans: tuple, what: str) -> None:
    if not spans:
        raise SpecError(f"{what} is empty; give at least one named span, 'each' or 'all'.")
    for sp in spans:
        if isinstance(sp, str):
            if sp not in NAMED_SPANS:
                raise SpecError(f"{what}: unknown span {sp!r}; named spans are {list(NAMED_SPANS)} "
                                f"or an inclusive word range (i, j).{suggest(sp, NAMED_SPANS)}")
        elif not (isinstance(sp, tuple) and len(sp) == 2 and all(isinstance(v, int) for v in sp) and 0 <= sp[0] <= sp[1]):
            raise SpecError(f"{what}: {sp!r} is neither a named span nor a word range (i, j) with 0 <= i <= j.")


def window_layers(centre: int, window: int, n: int) -> list[int]:
    """Layers restored around ``centre`` (ROME: ``[c - w//2, c - w//2 + w)`` clipped to ``[0, n)``)."""
    lo = max(0, centre - window // 2)
    hi = min(n, centre - window // 2 + window)
    return list(range(lo, hi))


def _concrete(site: str, adapter: Any, what: str) -> Site:
    try:
        return adapter.one(site)
    except SiteError as err:
        raise SpecError(f"{what}: {err}") from err


def _expand(site: str, adapter: Any, what: str) -> list[Site]:
    try:
        return adapter.expand(site)
    except SiteError as err:
        raise SpecError(f"{what}: {err}") from err


def _to_dict(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        d = {"type": type(obj).__name__}
        for f in fields(obj):
            v = getattr(obj, f.name)
            if f.metadata.get("omit_empty") and not v:
                continue  # e.g. Experiment.interventions: absent from the JSON of plain experiments
            if f.metadata.get("omit_default") and v == f.default:
                continue  # e.g. Experiment.savings: absent unless changed, so run keys stay as they were
            d[f.name] = _to_dict(v)
        return d
    if isinstance(obj, tuple):
        return [_to_dict(x) for x in obj]
    return obj


def _tuplify(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_tuplify(x) for x in v)
    return v


def _from_dict(d: Any, where: str = "spec", expect: str | None = None) -> Any:
    if not isinstance(d, dict):
        raise SpecError(f"{where}: expected a JSON object like {{\"type\": \"{expect or 'Restore'}\", ...}}, "
                        f"got {type(d).__name__} {d!r:.60}.")
    d = dict(d)
    kind = d.pop("type", expect)
    if kind is None:
        raise SpecError(f"{where}: no \"type\" field; add one of {list(SPEC_TYPES)}.")
    if kind not in SPEC_TYPES:
        import difflib

        hint = difflib.get_close_matches(str(kind), list(SPEC_TYPES), n=1)
        raise SpecError(f"{where}: unknown spec kind {kind!r}"
                        + (f" (did you mean {hint[0]!r}?)" if hint else "")
                        + f"; expected one of {list(SPEC_TYPES)} (a kind of your own is known once the "
                        "module that registers it with register_kind is imported; import it first).")
    if expect is not None and kind != expect:
        raise SpecError(f"{where}: a {kind} where a {expect} belongs; move it to the right list "
                        "(corrupt: Corrupt, restores: Restore, patches: Patch, reads: Read).")
    return _construct(SPEC_TYPES[kind], {k: _tuplify(v) for k, v in d.items()}, where)


SPEC_SUFFIXES = (".py", ".json")


def experiment_from_file(path: "str | os.PathLike") -> Experiment:
    """Load an experiment from a spec file: a Python file defining ``EXPERIMENT = Experiment(...)``
    (``tracing_specs/``), or a JSON file written by :meth:`Experiment.to_json` (or a run's
    ``experiment.json``). Every problem is a :class:`SpecError` naming the file, the line where there
    is one, and the fix (``docs/errors/specs.md``)."""
    p = Path(path)
    if not p.exists():
        near = sorted(q.name for q in p.parent.glob("*.py")) if p.parent.is_dir() else []
        raise SpecError(
            f"spec file {str(p)!r} does not exist. Give the path of a Python spec (e.g. "
            "tracing_specs/hidden_audio.py) or a JSON spec"
            + (f"; {p.parent}/ has {near[:12]}" if near else "") + "."
        )
    if p.is_dir():
        raise SpecError(f"spec file {str(p)!r} is a folder; give one file in it, e.g. {p}/hidden_audio.py.")
    if p.suffix not in SPEC_SUFFIXES:
        raise SpecError(f"spec file {str(p)!r}: unknown spec kind {p.suffix or '(no suffix)'!r}; expected a "
                        "Python file (.py) defining EXPERIMENT = Experiment(...) or a JSON file (.json) "
                        "from Experiment.to_json(). Rename or convert it.")
    if p.suffix == ".json":
        try:
            text = p.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise SpecError(f"spec file {str(p)!r} cannot be read ({err}); check its permissions and "
                            "encoding.") from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            line = text.splitlines()[err.lineno - 1] if 0 < err.lineno <= len(text.splitlines()) else ""
            raise SpecError(
                f"spec file {p}, line {err.lineno}, column {err.colno}: malformed JSON ({err.msg})"
                + (f": {line.strip()[:80]!r}" if line.strip() else "")
                + ". Fix that spot (a missing comma or quote, a trailing comma), or regenerate the file "
                "with Experiment.to_json()."
            ) from None
        if isinstance(doc, dict) and "experiment" in doc and "name" not in doc:
            doc = doc["experiment"]  # a run's experiment.json: {"experiment": ..., "provenance": ...}
        return Experiment.from_dict(doc, source=f"spec file {p}")
    return _run_python_spec(p)


def _run_python_spec(p: Path) -> Experiment:
    import runpy
    import traceback

    try:
        ns = runpy.run_path(str(p))
    except SyntaxError as err:
        if err.filename and Path(err.filename).resolve() == p.resolve():
            where = f"spec file {p}, line {err.lineno}"
        else:
            where = f"spec file {p} (in {err.filename}, line {err.lineno}, which it imports)"
        text = (err.text or "").strip()
        raise SpecError(f"{where}: Python syntax error: {err.msg}" + (f": {text[:80]!r}" if text else "")
                        + ". Fix the syntax there; python -m py_compile FILE checks it.") from err
    except SpecError as err:
        raise SpecError(f"spec file {p}{_spec_line(err, p)}: {str(err).split(chr(10))[0]} Fix the spec there.") from err
    except (Exception, SystemExit) as err:  # noqa: BLE001 - any error in user code, reported with its line
        frames = [f for f in traceback.extract_tb(err.__traceback__) if _same(f.filename, p)]
        loc = f", line {frames[-1].lineno}" if frames else ""
        code = f": {frames[-1].line.strip()[:80]!r}" if frames and frames[-1].line else ""
        raise SpecError(
            f"spec file {p}{loc} raised {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}{code}. "
            "The file is plain Python run at load time; fix that line (run `python FILE` to see the whole traceback)."
        ) from err
    exp = ns.get("EXPERIMENT")
    if not isinstance(exp, Experiment):
        got = "nothing" if exp is None else f"a {type(exp).__name__}"
        raise SpecError(f"spec file {p} defines no EXPERIMENT = Experiment(...) (EXPERIMENT is {got}); assign one "
                        "at module level, e.g. copy tracing_specs/hidden_audio.py; see tracing_specs/README.md.")
    return exp


def _same(filename: str, p: Path) -> bool:
    try:
        return Path(filename).resolve() == p.resolve()
    except OSError:  # pragma: no cover
        return False


def _spec_line(err: BaseException, p: Path) -> str:
    import traceback

    frames = [f for f in traceback.extract_tb(err.__traceback__) if _same(f.filename, p)]
    return f", line {frames[-1].lineno}" if frames else ""


def _note_clipped(r: "Restore", n: int, model: str) -> None:
    """A window longer than the stack is clipped (ROME's rule), with a note, not an error."""
    import warnings

    warnings.warn(
        f"Restore({r.at!r}).window={r.window} is longer than the {n} {r.site.stream} layers of {model}: "
        f"clipped to the stack (ROME's rule: layers [l - {r.window // 2}, l + {r.window - r.window // 2}) "
        f"∩ [0, {n}) around each centre l; at most {n} layers). The window used is recorded in the "
        "results (window_used).",
        WindowClipped,
        stacklevel=4,
    )


class WindowClipped(UserWarning):
    """A ``Restore.window`` longer than the model's stack, clipped to it (a note, not an error)."""


__all__ = ["Corrupt", "Restore", "Patch", "Read", "Experiment", "SpecError", "WindowClipped", "window_layers",
           "experiment_from_file", "SPEC_TYPES", "register_spec"]
