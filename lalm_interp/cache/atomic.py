"""Atomic, no-clobber file publication: write to a hidden temp file, fsync, then hard-link it into
place (``os.link`` fails if the target exists, so two writers never overwrite each other) and drop
the temp name. Readers only ever look at final names, so they never see a half-written file."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

TMP_SUFFIX = ".tmp"
"""Every temp file ends with this and starts with a dot: ``.NAME.HOST.PID.RAND.tmp``."""


def temp_path(final: Path) -> Path:
    """A unique hidden temp name next to ``final`` recording host and pid (used by ``gc``)."""
    host = socket.gethostname().replace(".", "_") or "host"
    return final.with_name(f".{final.name}.{host}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


def parse_temp(path: Path) -> tuple[str, str, int] | None:
    """``(final_name, host, pid)`` of a temp file made by :func:`temp_path`, else ``None``."""
    name = path.name
    if not (name.startswith(".") and name.endswith(TMP_SUFFIX)):
        return None
    parts = name[1 : -len(TMP_SUFFIX)].rsplit(".", 3)
    if len(parts) != 4 or not parts[2].isdigit():
        return None
    return parts[0], parts[1], int(parts[2])


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path, *, durable: bool = True) -> bool:
    """Move finished ``tmp`` to ``final`` unless ``final`` already exists.

    Returns ``True`` when this call published the file, ``False`` when another writer got there
    first (``tmp`` is removed either way).
    """
    if durable:
        fsync_file(tmp)
    try:
        os.link(tmp, final)
        won = True
    except FileExistsError:
        won = False
    except OSError:  # file systems without hard links: fall back to an exclusive-create check
        if final.exists():
            won = False
        else:
            os.replace(tmp, final)
            won = True
    if tmp.exists():
        tmp.unlink()
    if durable:
        fsync_dir(final.parent)
    return won


def write_text_atomic(final: Path, text: str) -> bool:
    """Publish a small text file atomically (no clobber). Returns whether this call wrote it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    tmp.write_text(text)
    return publish(tmp, final)
