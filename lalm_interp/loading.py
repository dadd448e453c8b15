"""Loading models by name: the one place where a ``--model NAME`` becomes a model.

A name is, in this order:

1. a registered name (:data:`MODELS`, :func:`register_model`): ``organism`` (the embedded tiny
   trained Qwen2-Audio), ``tiny-random`` (a random 6+6-layer tiny Qwen2-Audio built in seconds, for
   plumbing checks) and the tiny random ``tiny-voxtral``, ``tiny-audioflamingo3``, ``tiny-salmonn``;
2. an existing local folder holding ``config.json`` (``save_pretrained`` output);
3. a hub id ``owner/name`` (e.g. ``Qwen/Qwen2-Audio-7B-Instruct``).

Anything else fails at once (no hub retries) with the valid names and the closest match. A hub id
that is not in the local Hugging Face cache fails at once when ``HF_HUB_OFFLINE`` is set,
``local_files_only=True`` is passed, or the hub cannot be reached (a 1 s connection check); a cached
one then loads from the cache. :func:`load_model` (also called :func:`load`) is the one loader
every command, executor worker and :class:`lalm_interp.AudioLM` goes through. It returns
:class:`Loaded` (model, processor, adapter, and the serialisable :func:`model_spec` that loads the
same model again) and attaches a :class:`ModelIdentity` (name, revision, weights fingerprint) to the
model, read back with :func:`identity` (provenance of cached activations and results).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import socket
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlparse

from .errors import LoadError

if TYPE_CHECKING:  # torch, transformers and the adapters load only when a model does (fast name checks)
    import torch

    from .adapters.base import Adapter

ASSETS = Path(__file__).parent / "assets"


@dataclass(frozen=True)
class NamedModel:
    """A registered model name: ``name``, a one-line ``description``, and where it comes from —
    ``folder`` (a checkpoint folder, e.g. inside the package) or ``build`` (a function returning
    ``(model, processor)`` built in memory; its weights are fingerprinted from the tensors)."""

    name: str
    description: str
    folder: Path | None = None
    build: Callable[[], tuple[Any, Any]] | None = None


def _tiny_random() -> tuple[Any, Any]:
    from .models.tiny import TinyConfig, tiny_qwen2_audio

    return tiny_qwen2_audio(TinyConfig(audio_layers=6, text_layers=6, seed=1))


def _tiny_voxtral() -> tuple[Any, Any]:
    from .models.tiny_others import tiny_voxtral

    return tiny_voxtral()


def _tiny_audioflamingo3() -> tuple[Any, Any]:
    from .models.tiny_others import tiny_audioflamingo3

    return tiny_audioflamingo3()


def _tiny_salmonn() -> tuple[Any, Any]:
    from .models.salmonn import tiny_salmonn

    return tiny_salmonn()


MODELS: dict[str, NamedModel] = {}
"""The one registry of named models (name → :class:`NamedModel`); add to it with :func:`register_model`."""
NAMED: dict[str, Path] = {}
"""Registered names backed by a checkpoint folder (``organism`` → ``lalm_interp/assets/organism``)."""
MODEL_NAMES: dict[str, str] = {}
"""Every registered model name and what it is (``--model NAME`` accepts these, local checkpoint
folders and hub ids)."""


def register_model(name: str, description: str, *, folder: "str | os.PathLike[str] | None" = None,
                   build: Callable[[], tuple[Any, Any]] | None = None, replace: bool = False) -> NamedModel:
    """Register a model name: give exactly one of ``folder`` (a checkpoint folder holding
    ``config.json``) or ``build`` (a function returning ``(model, processor)``). Afterwards
    ``load_model(name)``, ``lalm_interp.load(name)`` and every ``--model name`` accept it."""
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise LoadError(f"a registered model name must be a non-empty string without surrounding spaces, "
                        f"got {name!r}. Fix: pass e.g. register_model('my-model', 'what it is', folder=...).")
    if (folder is None) == (build is None):
        raise LoadError(f"register_model({name!r}): give exactly one of folder= (a checkpoint folder) or build= "
                        "(a function returning (model, processor)).")
    if name in MODELS and not replace:
        raise LoadError(f"model name {name!r} is already registered ({MODELS[name].description}). Fix: pick "
                        "another name, or pass replace=True.")
    entry = NamedModel(name, description, Path(folder) if folder is not None else None, build)
    MODELS[name] = entry
    MODEL_NAMES[name] = description
    if entry.folder is not None:
        NAMED[name] = entry.folder
    else:
        NAMED.pop(name, None)
    return entry


register_model("organism", "the embedded tiny trained Qwen2-Audio (lalm_interp/assets/organism)",
               folder=ASSETS / "organism")
register_model("tiny-random", "a random-weight 6+6-layer tiny Qwen2-Audio built in seconds (plumbing checks only)",
               build=_tiny_random)
register_model("tiny-voxtral", "a random-weight 2+2-layer tiny Voxtral built in memory (plumbing checks only)",
               build=_tiny_voxtral)
register_model("tiny-audioflamingo3", "a random-weight 2+2-layer tiny AudioFlamingo3 built in memory "
               "(plumbing checks only)", build=_tiny_audioflamingo3)
register_model("tiny-salmonn", "a random-weight tiny SALMONN (Whisper + BEATs + Q-Former + LLaMA) built in "
               "memory (plumbing checks only)", build=_tiny_salmonn)

HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*\Z")
IDENTITY_ATTR = "lalm_interp_identity"
"""Attribute set on every model :func:`load` returns, holding its :class:`ModelIdentity`."""
HUB_CHECK_TIMEOUT_S = 1.0
FULL_HASH_LIMIT = 2 * 2**30
"""Weight files totalling at most this many bytes are hashed in full (else a quick fingerprint)."""
_EXAMPLE_ID = "Qwen/Qwen2-Audio-7B-Instruct"


@dataclass(frozen=True)
class ModelIdentity:
    """Which model was loaded: ``model`` (registered name, hub id or absolute folder path),
    ``source`` (``builtin``/``local``/``hub``), ``path`` (folder the files came from; empty for
    ``tiny-random``), ``revision`` (hub commit when loaded from the HF cache) and ``weights_hash``
    (see :func:`weights_fingerprint`)."""

    model: str
    source: str
    path: str = ""
    revision: str = ""
    weights_hash: str = ""

    def provenance(self) -> dict[str, str]:
        """The fields of :class:`lalm_interp.cache.Provenance` this identity fills."""
        return {"model": self.model, "revision": self.revision, "weights_hash": self.weights_hash}

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class Loaded:
    """What :func:`load_model` returns; unpacks as ``model, processor, adapter = load_model(...)``.
    ``source``: the folder or hub id the files came from (the name for models built in memory);
    ``identity``: the :class:`ModelIdentity`; ``spec``: the :func:`model_spec` that loads the same
    model again (``load_model(**loaded.spec)``, e.g. in a worker process)."""

    model: torch.nn.Module
    processor: Any
    adapter: Adapter
    source: str
    identity: ModelIdentity | None = field(default=None)
    spec: dict[str, Any] = field(default_factory=dict)

    def __iter__(self):
        return iter((self.model, self.processor, self.adapter))


def is_model_handle(obj: Any) -> bool:
    """Whether ``obj`` is a model handle: an :class:`~lalm_interp.handle.AudioLM` or anything with
    ``model``, ``processor`` and ``adapter`` attributes (duck-typed, so engines never import the
    handle). A bare ``torch.nn.Module`` is not one (it has no ``processor``/``adapter``)."""
    return all(hasattr(obj, a) for a in ("model", "processor", "adapter")) and not hasattr(obj, "forward")


def model_parts(first: Any, processor: Any, adapter: Any, *rest: Any, what: str = "this function") -> tuple:
    """``(model, processor, adapter, *rest)`` from the two calling forms an engine accepts:
    ``f(lm, a, b)`` with a model handle (the parts come from the handle and the following arguments
    shift into ``rest``) or ``f(model, processor, adapter, a, b)``."""
    if is_model_handle(first):
        given = (processor, adapter, *rest)
        n_rest = len(rest)
        shifted = [g for g in given if g is not None]
        if len(shifted) > n_rest:
            raise LoadError(f"{what} got a model handle and {len(shifted)} further positional arguments; "
                            f"expected {n_rest}. Fix: call {what}(lm, ...) or {what}(model, processor, adapter, ...).")
        shifted += [None] * (n_rest - len(shifted))
        return (first.model, first.processor, first.adapter, *shifted)
    return (first, processor, adapter, *rest)


@dataclass(frozen=True)
class Source:
    """A resolved model name: ``kind`` is ``builtin`` (built in memory: ``tiny-random``), ``local`` (a folder,
    including ``organism``'s) or ``hub``; ``location`` the folder or hub id; ``local_files_only``
    whether ``from_pretrained`` may use the network; ``name`` what the user gave."""

    name: str
    kind: str
    location: str
    local_files_only: bool
    revision: str = ""


# ----------------------------------------------------------------------------- resolution
def _offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")


_REACHABLE: dict[str, tuple[float, bool]] = {}


def _hub_reachable(timeout: float = HUB_CHECK_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub endpoint opens within ``timeout`` s (remembered 60 s)."""
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    hit = _REACHABLE.get(endpoint)
    if hit is not None and time.monotonic() - hit[0] < 60:
        return hit[1]
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            ok = True
    except OSError:
        ok = False
    _REACHABLE[endpoint] = (time.monotonic(), ok)
    return ok


def _cached_config(repo_id: str) -> Path | None:
    """``config.json`` of ``repo_id`` in the local HF cache, or ``None``."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # invalid ids, unreadable cache: treat as not cached
        return None
    return Path(hit) if isinstance(hit, (str, os.PathLike)) and Path(hit).is_file() else None


def _looks_like_path(name: str) -> bool:
    return (name.startswith(("/", ".", "~")) or name.endswith(("/", os.sep)) or "\\" in name
            or name.count("/") > 1 or os.sep != "/" and os.sep in name)


def _local_candidates(name: str) -> list[str]:
    """Checkpoint folders (holding config.json) near what the user typed: in the current folder and
    in the typed path's parent."""
    out = []
    parents = {Path.cwd()}
    parent = Path(name).expanduser().parent
    if str(parent) not in ("", "."):
        parents.add(parent)
    for d in parents:
        try:
            for p in sorted(d.iterdir())[:500]:
                if p.is_dir() and (p / "config.json").is_file():
                    out.append(str(p) if d != Path.cwd() else p.name)
        except OSError:
            continue
    return out


def _valid_names() -> str:
    return ", ".join(f"'{n}' ({d})" for n, d in MODEL_NAMES.items())


def _suggest(name: str, candidates: list[str]) -> str:
    """`` Did you mean 'x'?`` with the closest candidate (and a second one only when about as close)."""
    close = _closest(name, candidates)
    if not close:
        lower = {c.lower(): c for c in candidates}
        close = [lower[c] for c in _closest(name.lower(), list(lower))]
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _closest(name: str, candidates: list[str], cutoff: float = 0.5) -> list[str]:
    scored = sorted(((difflib.SequenceMatcher(None, name, c).ratio(), c) for c in candidates), reverse=True)
    scored = [(r, c) for r, c in scored if r >= cutoff]
    return [c for r, c in scored[:2] if r >= scored[0][0] - 0.1] if scored else []


def _unknown(name: str) -> LoadError:
    cands = list(MODEL_NAMES) + _local_candidates(name)
    return LoadError(
        f"unknown model {name!r}: it is not a registered name, not an existing local folder, and not a hub "
        f"id of the form 'owner/name'.{_suggest(name, cands)} Expected one of: {_valid_names()}; a local "
        f"checkpoint folder holding config.json (save_pretrained output); or a hub id such as "
        f"{_EXAMPLE_ID!r}. Fix: correct the name (lalm-interp info lists what is installed)."
    )


def resolve_source(name_or_path: "str | os.PathLike[str]", *, local_files_only: bool | None = None) -> Source:
    """Resolve a model name without loading anything (fast; at most one 1 s hub connection check).
    Raises :class:`LoadError` at once for empty/unknown names, missing folders, folders without
    ``config.json``, and hub ids that are not cached while offline or unreachable."""
    raw = os.fspath(name_or_path) if isinstance(name_or_path, os.PathLike) else name_or_path
    if not isinstance(raw, str):
        raise LoadError(f"a model name must be a string or a path, got {type(raw).__name__} {raw!r}. "
                        f"Expected one of: {_valid_names()}; a checkpoint folder; or a hub id.")
    name = raw.strip()
    if not name:
        raise LoadError(f"the model name is empty. Expected one of: {_valid_names()}; a local checkpoint "
                        f"folder; or a hub id such as {_EXAMPLE_ID!r}. Fix: pass e.g. --model organism.")
    entry = MODELS.get(name)
    if entry is not None and entry.build is not None:
        return Source(name, "builtin", "", True)
    if name in NAMED:
        path = NAMED[name]
        if not (path / "config.json").exists():
            raise LoadError(
                f"the embedded model {name!r} is not in this installation ({path} has no config.json). "
                "Train it with `lalm-interp organism train --out DIR` and load DIR."
            )
        return Source(name, "local", str(path), True)
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir():
            raise LoadError(f"{p} is a file, not a checkpoint folder. Expected a folder holding config.json "
                            "(save_pretrained output). Fix: point at the folder that contains it.")
        if not (p / "config.json").exists():
            inner = [c for c in _local_candidates(str(p / "x"))][:5]
            hint = f" Folders inside it that are checkpoints: {', '.join(inner)}." if inner else ""
            raise LoadError(f"{p} exists but has no config.json; point at a Hugging Face checkpoint directory "
                            f"(save_pretrained output).{hint}")
        return Source(name, "local", str(p), True if local_files_only is None else local_files_only)
    if _looks_like_path(name) or not HUB_ID.match(name):
        if _looks_like_path(name):
            cands = _local_candidates(name)
            raise LoadError(
                f"no such folder {name!r} ({p.absolute()}).{_suggest(str(p), cands) or _suggest(name, list(MODEL_NAMES))} "
                f"Expected an existing checkpoint folder holding config.json, one of: {_valid_names()}, or a "
                f"hub id such as {_EXAMPLE_ID!r}. Fix: check the path (relative paths start from {Path.cwd()})."
            )
        raise _unknown(name)
    # a hub id
    cached = _cached_config(name)
    revision = cached.parent.name if cached is not None and cached.parent.parent.name == "snapshots" else ""
    offline = bool(local_files_only) or _offline_env()
    if offline or local_files_only is None and not _hub_reachable():
        if cached is None:
            why = ("HF_HUB_OFFLINE is set" if _offline_env() else "local_files_only=True was passed"
                   if local_files_only else "the hub is not reachable from this machine")
            raise LoadError(
                f"could not load {name!r}: it is a hub id, {why}, and it is not in the local Hugging Face cache "
                f"(no local folder {name!r} exists either).{_suggest(name, list(MODEL_NAMES))} Expected a "
                f"registered name ({', '.join(MODEL_NAMES)}), a local checkpoint folder, or a cached hub id. Fix: "
                "download it once where the network is allowed (huggingface-cli download ID), or give a "
                "local checkpoint folder."
            )
        return Source(name, "hub", name, True, revision)
    return Source(name, "hub", name, bool(local_files_only), revision)


def check_name(name_or_path: "str | os.PathLike[str]") -> None:
    """Refuse, at once, a name that can never load anywhere: empty, or neither a registered name, an
    existing folder, a path, nor a hub id. Looks at nothing else (a folder or cached hub id may exist
    only on worker machines), so a driver can call it before starting workers."""
    raw = os.fspath(name_or_path) if isinstance(name_or_path, os.PathLike) else name_or_path
    if not isinstance(raw, str) or not raw.strip():
        resolve_source(raw)  # raises the empty / wrong-type error
        return
    name = raw.strip()
    if name in MODEL_NAMES or Path(name).expanduser().exists() or _looks_like_path(name) or HUB_ID.match(name):
        return
    raise _unknown(name)


def resolve(name_or_path: "str | os.PathLike[str]") -> tuple[str, bool]:
    """(folder or hub id, is_local) for a model name (see :func:`resolve_source`)."""
    src = resolve_source(name_or_path)
    if src.kind == "builtin":
        raise LoadError(f"{src.name!r} is built in memory and has no checkpoint folder. Expected a name "
                        "with files on disk ('organism', a checkpoint folder or a hub id).")
    return src.location, src.kind == "local"


# ----------------------------------------------------------------------------- fingerprints
def _file_digest(path: Path) -> str:
    real = path.resolve()
    if re.fullmatch(r"[0-9a-f]{64}", real.name) and real.parent.name == "blobs":
        return real.name  # an HF cache blob: its name is the sha256 of its content (LFS files)
    h = hashlib.sha256()
    with open(real, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _quick_digest(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 2 << 20:
            fh.seek(size - (1 << 20))
            h.update(fh.read(1 << 20))
    return h.hexdigest()


def weights_fingerprint(folder: "str | os.PathLike[str]") -> str:
    """A short fingerprint of the weight files in ``folder`` (``*.safetensors``, ``*.bin``):
    ``sha256:<16 hex>`` over each file's sha256 (read from the HF cache's blob names when loaded
    from the cache, else computed) when the files total at most :data:`FULL_HASH_LIMIT` bytes or
    come from the HF cache; otherwise ``quick:<16 hex>`` over sizes and the first and last MiB of
    each file. Empty when there are no weight files."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin")
                   and not p.name.startswith("training_args"))
    if not files:
        return ""
    from_cache = all(re.fullmatch(r"[0-9a-f]{64}", p.resolve().name) for p in files)
    full = from_cache or sum(p.stat().st_size for p in files) <= FULL_HASH_LIMIT
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}:{_file_digest(p) if full else _quick_digest(p)}\n".encode())
    return f"{'sha256' if full else 'quick'}:{h.hexdigest()[:16]}"


def tensors_fingerprint(model: torch.nn.Module) -> str:
    """``sha256:<16 hex>`` over a model's parameters and buffers (names, dtypes, shapes, bytes);
    used for models built in memory (``tiny-random``)."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return f"sha256:{h.hexdigest()[:16]}"


def identity(model: Any) -> ModelIdentity:
    """The :class:`ModelIdentity` :func:`load` attached to ``model`` (also through an nnsight
    wrapper's ``._model`` or a handle's ``.model``); for a model built elsewhere, its
    ``config._name_or_path`` (or ``"unknown"``) with no weights fingerprint."""
    for m in (model, getattr(model, "_model", None), getattr(model, "model", None)):
        ident = getattr(m, IDENTITY_ATTR, None) if m is not None else None
        if isinstance(ident, ModelIdentity):
            return ident
    name = str(getattr(getattr(model, "config", None), "_name_or_path", "") or "unknown")
    return ModelIdentity(name, "unknown")


# ----------------------------------------------------------------------------- loading
SPEC_KEYS = ("name_or_path", "device", "dtype", "adapter", "local_files_only")
"""The keys of a model spec (:func:`model_spec`): the arguments of :func:`load_model`."""


def _dtype_name(dtype: Any) -> str | None:
    if dtype is None or isinstance(dtype, str):
        return dtype
    return str(dtype).removeprefix("torch.")


def _device(device: Any) -> Any:
    """``"auto"``: CUDA when this process sees a GPU, else CPU; anything else as given."""
    if isinstance(device, str) and device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def model_spec(name_or_path: "str | os.PathLike[str]", *, device: Any = "cpu", dtype: Any = None,
               adapter: str | None = None, local_files_only: bool | None = None) -> dict[str, Any]:
    """The small JSON-serialisable dict that names a model to load: the arguments of
    :func:`load_model` (``load_model(**spec)`` loads it). Local folders are made absolute (a worker
    may start in another folder); ``dtype`` is a name (``"bfloat16"``); ``device`` a string
    (``"auto"`` stays ``"auto"``: each worker picks its own GPU or CPU)."""
    raw = os.fspath(name_or_path) if isinstance(name_or_path, os.PathLike) else name_or_path
    name = raw.strip() if isinstance(raw, str) else raw
    if isinstance(name, str) and name not in MODELS and Path(name).expanduser().is_dir():
        name = str(Path(name).expanduser().resolve())
    return {"name_or_path": name, "device": str(device), "dtype": _dtype_name(dtype), "adapter": adapter,
            "local_files_only": local_files_only}


def check_spec(spec: Any) -> dict[str, Any]:
    """``spec`` as a complete model spec (missing keys take :func:`load_model`'s defaults); an
    unknown key or a spec without ``name_or_path`` is a :class:`LoadError` naming the valid keys."""
    if not isinstance(spec, dict) or "name_or_path" not in spec:
        raise LoadError(f"a model spec is a dict with at least 'name_or_path', got {spec!r}. Expected keys: "
                        f"{', '.join(SPEC_KEYS)} (what model_spec() and AudioLM.spec give). Fix: pass e.g. "
                        "{'name_or_path': 'organism', 'device': 'cpu'}.")
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        from .sites import suggest

        raise LoadError(f"unknown model spec key(s) {unknown}.{suggest(str(unknown[0]), SPEC_KEYS)} Expected keys: "
                        f"{', '.join(SPEC_KEYS)}. Fix: build the spec with lalm_interp.loading.model_spec().")
    return model_spec(spec["name_or_path"], device=spec.get("device", "cpu"), dtype=spec.get("dtype"),
                      adapter=spec.get("adapter"), local_files_only=spec.get("local_files_only"))


def load_model(
    name_or_path: "str | os.PathLike[str]",
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    local_files_only: bool | None = None,
    adapter: str | None = None,
) -> Loaded:
    """THE loader: model + processor + adapter by name (see the module docstring for what a name is).

    name_or_path: a registered name (``"organism"``, ``"tiny-random"``, ...: :data:`MODELS`), a
        local checkpoint directory, or a hub id (e.g. ``Qwen/Qwen2-Audio-7B-Instruct``; needs the
        weights in the local HF cache offline).
    device: where to put the model; ``"auto"``: CUDA when this process sees a GPU, else CPU.
    dtype: torch dtype (or its name) of the weights; ``None`` keeps the checkpoint's.
    local_files_only: never touch the network; ``None``: True for local folders, when
        ``HF_HUB_OFFLINE=1``, and when the hub is unreachable.
    adapter: adapter name to force (default: from ``config.model_type``).

    The model carries its :class:`ModelIdentity` (``identity(model)``; also ``Loaded.identity``);
    ``Loaded.spec`` loads the same model again (``load_model(**loaded.spec)``).
    """
    src = resolve_source(name_or_path, local_files_only=local_files_only)
    spec_dict = model_spec(name_or_path, device=device, dtype=dtype, adapter=adapter,
                           local_files_only=local_files_only)
    device = _device(device)
    import torch

    from . import adapters

    if isinstance(dtype, str):
        try:
            dtype = getattr(torch, dtype)
        except AttributeError:
            raise LoadError(f"unknown dtype {dtype!r}; expected a torch dtype name such as 'float32' or "
                            "'bfloat16'.") from None
    if src.kind == "builtin":
        model, processor = MODELS[src.name].build()  # type: ignore[misc]
        ident = ModelIdentity(src.name, "builtin", "", "", tensors_fingerprint(model))
        model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
        spec = adapters.get(adapter or model.config.model_type)
        setattr(model, IDENTITY_ATTR, ident)
        return Loaded(model, processor, spec.bind(model.config, processor), src.name, ident, spec_dict)
    from transformers import AutoConfig, AutoProcessor

    loc, lfo = src.location, src.local_files_only
    try:
        config = AutoConfig.from_pretrained(loc, local_files_only=lfo)
        spec = adapters.get(adapter or config.model_type)
        cls = spec.hf_model_class()
        kwargs: dict[str, Any] = {"local_files_only": lfo}
        if dtype is not None:
            kwargs["dtype"] = dtype
        with _quiet_weights(getattr(src, "kind", "") != "hub"):
            model = cls.from_pretrained(loc, **kwargs).to(device).eval()
        processor = AutoProcessor.from_pretrained(loc, local_files_only=lfo)
    except (OSError, ValueError) as err:
        raise LoadError(
            f"could not load {str(name_or_path)!r} ({type(err).__name__}: {str(err).splitlines()[0]}). "
            "Offline, give a local checkpoint directory or have the weights in the HF cache."
        ) from err
    folder = Path(loc) if src.kind == "local" else _snapshot_dir(src)
    ident = ModelIdentity(
        model=src.name if src.kind == "hub" or src.name in NAMED else str(Path(loc).resolve()),
        source="local" if src.kind == "local" else "hub",
        path=str(folder) if folder is not None else "",
        revision=src.revision or (folder.name if folder is not None and folder.parent.name == "snapshots" else ""),
        weights_hash=weights_fingerprint(folder) if folder is not None else "",
    )
    setattr(model, IDENTITY_ATTR, ident)
    return Loaded(model, processor, spec.bind(model.config, processor), loc, ident, spec_dict)


load = load_model
"""The same function as :func:`load_model` (the name ``lalm_interp.loading.load`` predates it)."""


def _snapshot_dir(src: Source) -> Path | None:
    cached = _cached_config(src.location)
    return cached.parent if cached is not None else None


@contextmanager
def _quiet_weights(quiet: bool):
    """No "Loading weights" progress bar for checkpoints read from disk (it is noise in a notebook
    or a command's output); a hub download keeps transformers' own bars."""
    from transformers.utils import logging as tlog

    was = tlog.is_progress_bar_enabled()
    if quiet and was:
        tlog.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was:
            tlog.enable_progress_bar()
