"""nnsight wrapping: the real HF module tree, addressed by sites.

We always trace with ONE invoke whose batch rows we build ourselves (replicated prompts for clean /
corrupted / restored runs), so the plain :class:`nnsight.NNsight` wrapper suffices: no tokenizer
round trip, no multi-invoke batching of audio kwargs (see ``docs/gotchas/nnsight.md``).
"""

from __future__ import annotations

from typing import Any

import torch

from .adapters.base import Adapter


def wrap(model: torch.nn.Module) -> Any:
    """An ``nnsight.NNsight`` around ``model`` (weights shared, nothing copied)."""
    from nnsight import NNsight

    return NNsight(model)


def envoy(wrapped: Any, adapter: Adapter, site: Any) -> Any:
    """The nnsight Envoy of the module behind ``site``."""
    obj = wrapped
    for part in adapter.module_path(site).split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj
