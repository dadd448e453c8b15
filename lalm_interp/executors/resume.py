"""The one resume mechanism every pipeline uses (tracing, edit cases; key statistics use its
chunk files the same way).

* **One atomic file per finished item** (:func:`item_path`: ``<folder>/<safe id><suffix>``,
  written with :mod:`lalm_interp.atomic`): the files are the source of truth. A shard skips items
  whose file exists (:func:`pending`), so a retried shard or a restarted job never computes or
  writes an item twice.
* **The done-set** (:func:`scan`): on the driver, before any shard is scheduled, every existing
  file is read back and checked by the pipeline's ``check``; a damaged or foreign file is moved to
  a quarantine folder (:func:`quarantine`: never deleted) and its item computed again.
* **Run keys** (:func:`key_digest`): what the files depend on besides the item itself (model
  weights, spec, editor, …) is hashed into the folder name or stored in each file, so results of
  two different runs are never mixed.
* :func:`remove_orphan_temps`: the temp files a killed worker left (ours only).

See ``docs/usage/scale-out.md#resuming``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from ..atomic import remove_orphan_temps as _remove_orphan_temps
from ..atomic import safe_name

T = TypeVar("T")
QUARANTINE = "quarantine"


def item_path(folder: "str | os.PathLike", item_id: str, suffix: str) -> Path:
    """Where item ``item_id``'s result lives: ``<folder>/<safe_name(id)><suffix>``."""
    return Path(folder) / f"{safe_name(item_id)}{suffix}"


def key_digest(doc: Any) -> str:
    """16 hex digits of SHA-256 of ``doc`` (a string as is; anything else as sorted JSON)."""
    text = doc if isinstance(doc, str) else json.dumps(doc, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def utc_stamp() -> str:
    """``YYYYmmddTHHMMSSffffffZ``: the suffix of quarantined files and folders."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def quarantine(path: Path, into: Path, name: str | None = None) -> Path:
    """Move ``path`` to ``into/<name or path.name>.<UTC time>`` (never deleted; a clash gets
    ``~1``, ``~2``, …) and return the new path."""
    dest = Path(into) / f"{name or path.name}.{utc_stamp()}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    base, n = dest.name, 1
    while dest.exists():
        dest = dest.with_name(f"{base}~{n}")
        n += 1
    os.replace(path, dest)
    return dest


def scan(items: Iterable[T], item_id: Callable[[T], str], path_of: Callable[[T], Path],
         check: Callable[[Path, T], "tuple[Any, str | None]"],
         on_damaged: Callable[[Path, str], Any]) -> dict[str, Any]:
    """The done-set: ``{item id: check's value}`` for every item whose file exists and passes
    ``check(path, item) -> (value, None)``; a file that fails it (``(None, why)``) is handed to
    ``on_damaged(path, why)`` (which quarantines it) and its item is not done. ``check`` may raise
    to stop the run (e.g. a file written for another request under the same id)."""
    done: dict[str, Any] = {}
    for it in items:
        path = path_of(it)
        if not path.exists():
            continue
        value, why = check(path, it)
        if why is not None:
            on_damaged(path, why)
        else:
            done[item_id(it)] = value
    return done


def pending(items: Iterable[T], path_of: Callable[[T], Path]) -> list[T]:
    """The items whose result file does not exist yet (what a shard still has to compute)."""
    return [it for it in items if not path_of(it).exists()]


def remove_orphan_temps(folder: "str | os.PathLike", *, final: Callable[[str], bool] | None = None) -> list[Path]:
    """Delete temp files a killed worker left in ``folder`` (our own temp names only, see
    :func:`lalm_interp.atomic.remove_orphan_temps`; call once no worker of this run is alive)."""
    return _remove_orphan_temps(folder, final=final)
