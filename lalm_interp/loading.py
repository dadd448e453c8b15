"""Loading models: a registered short name (``organism``), a local checkpoint directory, or a hub id.

``load()`` returns :class:`Loaded` (model, processor, adapter). Real checkpoints load with
``from_pretrained``; with ``HF_HUB_OFFLINE=1`` (or ``local_files_only=True``) nothing is fetched,
and a missing file is a clear :class:`LoadError`, never a silent download.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import adapters
from .adapters.base import Adapter
from .errors import LoadError

ASSETS = Path(__file__).parent / "assets"
NAMED = {"organism": ASSETS / "organism"}


@dataclass
class Loaded:
    """What :func:`load` returns; unpacks as ``model, processor, adapter = load(...)``."""

    model: torch.nn.Module
    processor: Any
    adapter: Adapter
    source: str

    def __iter__(self):
        return iter((self.model, self.processor, self.adapter))


def resolve(name_or_path: str | os.PathLike) -> tuple[str, bool]:
    """(path or hub id, is_local)."""
    name = str(name_or_path)
    if name in NAMED:
        path = NAMED[name]
        if not (path / "config.json").exists():
            raise LoadError(
                f"the embedded model {name!r} is not in this installation ({path} has no config.json). "
                "Train it with `lalm-interp organism train --out DIR` and load DIR."
            )
        return str(path), True
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise LoadError(f"{p} exists but has no config.json; point at a Hugging Face checkpoint directory.")
        return str(p), True
    return name, False


def load(
    name_or_path: str | os.PathLike,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
    local_files_only: bool | None = None,
    adapter: str | None = None,
) -> Loaded:
    """Load model + processor + adapter.

    name_or_path: ``"organism"``, a local checkpoint directory, or a hub id (e.g.
        ``Qwen/Qwen2-Audio-7B-Instruct``; needs the weights in the local HF cache when offline).
    dtype: torch dtype (or its name) of the weights; ``None`` keeps the checkpoint's.
    device: where to put the model.
    local_files_only: never touch the network; defaults to True when ``HF_HUB_OFFLINE=1``.
    adapter: adapter name to force (default: from ``config.model_type``).
    """
    from transformers import AutoConfig, AutoProcessor

    src, is_local = resolve(name_or_path)
    if local_files_only is None:
        local_files_only = is_local or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    try:
        config = AutoConfig.from_pretrained(src, local_files_only=local_files_only)
        spec = adapters.get(adapter or config.model_type)
        cls = spec.hf_model_class()
        kwargs = {"local_files_only": local_files_only}
        if dtype is not None:
            kwargs["dtype"] = dtype
        model = cls.from_pretrained(src, **kwargs).to(device).eval()
        processor = AutoProcessor.from_pretrained(src, local_files_only=local_files_only)
    except (OSError, ValueError) as err:
        raise LoadError(
            f"could not load {name_or_path!r} ({type(err).__name__}: {str(err).splitlines()[0]}). "
            "Offline, give a local checkpoint directory or have the weights in the HF cache."
        ) from err
    return Loaded(model, processor, spec.bind(model.config, processor), src)
