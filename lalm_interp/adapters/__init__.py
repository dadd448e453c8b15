"""Adapter registry: resolves an :class:`~lalm_interp.adapters.base.Adapter` from a model, a config
or a ``model_type``. Built-in adapters are registered here; third parties register theirs with the
``lalm_interp.adapters`` entry point group (value: an ``AdapterSpec`` object) or :func:`register`."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from ..errors import AdapterError
from .base import Adapter, AdapterSpec, Component

_REGISTRY: dict[str, AdapterSpec] = {}
_ENTRY_POINTS_LOADED = False
ENTRY_POINT_GROUP = "lalm_interp.adapters"


def register(spec: AdapterSpec, *, replace: bool = False) -> AdapterSpec:
    """Register an adapter spec under its name and model types."""
    if not isinstance(spec, AdapterSpec):
        raise AdapterError(f"register() takes an AdapterSpec, got {type(spec).__name__}.")
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec and not replace:
        raise AdapterError(f"an adapter named {spec.name!r} is already registered; pass replace=True to override.")
    _REGISTRY[spec.name] = spec
    return spec


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            spec = ep.load()
        except Exception as err:  # a broken plug-in must not break the package
            import warnings

            warnings.warn(f"adapter entry point {ep.name!r} failed to load: {err}", stacklevel=2)
            continue
        if isinstance(spec, AdapterSpec) and spec.name not in _REGISTRY:
            register(spec)


def available() -> dict[str, AdapterSpec]:
    """All registered adapter specs by name."""
    _load_entry_points()
    return dict(_REGISTRY)


def get(name_or_model_type: str) -> AdapterSpec:
    """The spec registered under a name or serving a ``config.model_type``."""
    specs = available()
    if name_or_model_type in specs:
        return specs[name_or_model_type]
    for spec in specs.values():
        if name_or_model_type in spec.model_types:
            return spec
    raise AdapterError(
        f"no adapter for {name_or_model_type!r}; registered: "
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

register(VOXTRAL)
register(AUDIOFLAMINGO3)
register(SALMONN)

__all__ = ["Adapter", "AdapterSpec", "Component", "register", "get", "available", "for_config", "for_model"]
