"""Adapter registry: resolves an :class:`~lalm_interp.adapters.base.Adapter` from a model, a config
or a ``model_type``. Built-in adapters are registered here; third parties register theirs with the
``lalm_interp.adapters`` entry point group (value: an ``AdapterSpec`` object) or :func:`register`."""

from __future__ import annotations

from typing import Any

from ..errors import AdapterError
from ..plugins import Registry
from .base import Adapter, AdapterSpec, Component

ENTRY_POINT_GROUP = "lalm_interp.adapters"
REGISTRY: Registry[AdapterSpec] = Registry(
    "adapter", ENTRY_POINT_GROUP, lambda o: isinstance(o, AdapterSpec), lambda s: s.name, AdapterError
)
_REGISTRY = REGISTRY.items


def register(spec: AdapterSpec, *, replace: bool = False) -> AdapterSpec:
    """Register an adapter spec under its name (it serves its ``model_types``)."""
    return REGISTRY.register(spec, replace=replace)


def available() -> dict[str, AdapterSpec]:
    """All registered adapter specs by name."""
    return REGISTRY.available()


def get(name_or_model_type: str) -> AdapterSpec:
    """The spec registered under a name or serving a ``config.model_type``."""
    specs = available()
    if name_or_model_type in specs:
        return specs[name_or_model_type]
    for spec in specs.values():
        if name_or_model_type in spec.model_types:
            return spec

    names = list(dict.fromkeys(list(specs) + [t for s in specs.values() for t in s.model_types]))
    raise AdapterError(
        f"no adapter for {name_or_model_type!r}.{suggest(name_or_model_type, names, cutoff=0.5)} Registered: "
        + ", ".join(f"{n} (model types {list(s.model_types)})" for n, s in specs.items())
        + ". Write one (docs/patterns/write-an-adapter.md) and register it."
    )


def for_config(config: Any, processor: Any = None) -> Adapter:
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise AdapterError(f"config {type(config).__name__} has no model_type; pass an adapter explicitly.")
    return get(model_type).bind(config, processor)


def for_model(model: Any, processor: Any = None) -> Adapter:
    """The bound adapter for a model instance (by its ``config.model_type``)."""
    config = getattr(model, "config", None)
    if config is None:
        raise AdapterError(f"{type(model).__name__} has no .config; pass an adapter explicitly.")
    return for_config(config, processor)


from .qwen2_audio import ADAPTER as QWEN2_AUDIO  # noqa: E402

register(QWEN2_AUDIO)


from .audioflamingo3 import ADAPTER as AUDIOFLAMINGO3  # noqa: E402
from .salmonn import ADAPTER as SALMONN  # noqa: E402
from .voxtral import ADAPTER as VOXTRAL  # noqa: E402

from ..sites import suggest
register(VOXTRAL)
register(AUDIOFLAMINGO3)
register(SALMONN)

__all__ = ["Adapter", "AdapterSpec", "Component", "register", "get", "available", "for_config", "for_model"]
