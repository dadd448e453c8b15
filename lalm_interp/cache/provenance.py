"""Provenance: what produced the activations of an experiment, recorded in every shard's attrs."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from .._version import __version__
from .errors import CacheError
from ..loading import identity


def _spec_text(spec: Any) -> str:
    if spec is None:
        return ""
    if isinstance(spec, str):
        return spec
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        try:
            return json.dumps({"type": type(spec).__name__, **dataclasses.asdict(spec)}, default=repr, sort_keys=True)
        except TypeError:  # pragma: no cover - exotic field types
            return repr(spec)
    try:
        return json.dumps(spec, default=repr, sort_keys=True)
    except TypeError:
        return repr(spec)


@dataclass(frozen=True)
class Provenance:
    """Everything needed to say where cached activations came from.

    Fields (all strings unless noted; empty means unknown):

    - ``model``: Hugging Face id or local path of the model (e.g. ``Qwen/Qwen2-Audio-7B-Instruct``).
    - ``revision``: model revision / commit hash.
    - ``weights_hash``: a hash of the weights actually loaded (guards against silent re-downloads).
    - ``adapter_version``: version of the lalm-interp adapter that mapped sites to modules.
    - ``dataset``: dataset id the examples came from (a query filter, like ``model``).
    - ``spec``: the experiment spec, serialised (a dataclass or mapping is turned into JSON).
    - ``package_version``: lalm-interp version that wrote the data (default: the running one).
    - ``n_layers``: layers per stream, e.g. ``{"audio": 32, "text": 32}``; lets layer patterns with
      open or negative ends (``text.layers.-4:.mlp``) resolve without loading the model. When
      missing, the highest cached layer + 1 is used.
    - ``extra``: free-form string metadata (seed, prompt template id, ...).
    """

    model: str
    revision: str = ""
    weights_hash: str = ""
    adapter_version: str = ""
    dataset: str = ""
    spec: Any = ""
    package_version: str = __version__
    n_layers: Mapping[str, int] = field(default_factory=dict)
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise CacheError(
                f"Provenance.model must be a non-empty string naming the model, got {self.model!r}; "
                "pass e.g. Provenance(model='Qwen/Qwen2-Audio-7B-Instruct', revision=...)."
            )
        object.__setattr__(self, "spec", _spec_text(self.spec))
        object.__setattr__(self, "n_layers", {str(k): int(v) for k, v in dict(self.n_layers).items()})
        object.__setattr__(self, "extra", {str(k): str(v) for k, v in dict(self.extra).items()})

    __hash__ = None  # type: ignore[assignment]  # holds dicts

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Provenance":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def for_model(cls, model: Any, **fields: Any) -> "Provenance":
        """Provenance of activations from ``model``: ``model``, ``revision`` and ``weights_hash`` from
        the identity :func:`lalm_interp.loading.load` attached to it (``loading.identity``), then
        ``fields`` (explicit values win; empty ones do not erase the identity)."""

        base = identity(model).provenance()
        base.update({k: v for k, v in fields.items() if v not in (None, "")})
        return cls(**base)

    @property
    def fingerprint(self) -> str:
        """``model@revision#weights_hash`` (the parts that are known): the model identity."""
        return model_fingerprint(self.model, self.revision, self.weights_hash)


def model_fingerprint(model: str, revision: str = "", weights_hash: str = "") -> str:
    """A string naming a model exactly: ``name[@revision][#weights_hash]``. Statistics are keyed by it."""
    out = model
    if revision:
        out += f"@{revision}"
    if weights_hash:
        out += f"#{weights_hash}"
    return out
