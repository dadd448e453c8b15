"""Tiny models for every registered adapter (built from configs, nothing downloaded)."""

from __future__ import annotations

import pytest
from adapter_helpers import ADAPTER_NAMES, build

_CACHE: dict[str, tuple] = {}


@pytest.fixture(scope="session", params=ADAPTER_NAMES)
def any_model(request):
    """(model, processor, adapter) of each registered adapter's tiny model."""
    if request.param not in _CACHE:
        _CACHE[request.param] = build(request.param)
    return _CACHE[request.param]


@pytest.fixture(scope="session")
def built():
    """name → (model, processor, adapter), built on demand and shared with ``any_model``."""

    def get(name: str):
        if name not in _CACHE:
            _CACHE[name] = build(name)
        return _CACHE[name]

    return get
