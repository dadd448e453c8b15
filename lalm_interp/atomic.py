"""Atomic, no-clobber file publication: write to a hidden temp file, fsync, then hard-link it into
place (``os.link`` fails if the target exists, so two writers never overwrite each other) and drop
the temp name. Readers only ever look at final names, so they never see a half-written file."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

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


def _create(path: Path) -> None:
    """Create ``path`` empty and exclusively, with the mode ``open()`` would give (``0o666 & ~umask``);
    ``tempfile.mkstemp`` would give ``0o600``, which hides shared results from a user's group."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    os.close(fd)


@contextmanager
def atomic_write(final: "str | os.PathLike", *, clobber: bool = True, durable: bool = True) -> Iterator[Path]:
    """Write a file atomically: ``with atomic_write(path) as tmp: writer(tmp)``.

    ``tmp`` is a hidden temp name next to ``final`` (:func:`temp_path`, so ``parse_temp`` and
    :func:`remove_orphan_temps` recognise it), already created with normal permissions
    (``0o666 & ~umask``, as ``open()`` creates files). When the block ends without an exception the
    file is fsynced (``durable``) and moved to ``final``: replacing an existing file (``clobber``,
    ``os.replace``) or not (:func:`publish`'s no-clobber rule). On an exception the temp file is
    removed and ``final`` is untouched. Writers that recreate the file (``to_netcdf``,
    ``savefig``) keep the mode, since a process umask applies to them too."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    _create(tmp)
    try:
        yield tmp
        if clobber:
            if durable:
                fsync_file(tmp)
            os.replace(tmp, final)
            if durable:
                fsync_dir(final.parent)
        else:
            publish(tmp, final, durable=durable)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(final: "str | os.PathLike", data: bytes, *, clobber: bool = True, durable: bool = True) -> None:
    """Atomically write ``data`` to ``final`` with normal permissions (see :func:`atomic_write`)."""
    with atomic_write(final, clobber=clobber, durable=durable) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


def remove_orphan_temps(folder: "str | os.PathLike", *, legacy: bool = True,
                        final: "Callable[[str], bool] | None" = None) -> list[Path]:
    """Delete temp files that a killed writer left in ``folder`` (not recursive) and return them.

    Only our own names are touched: :func:`temp_path`'s ``.NAME.HOST.PID.RAND.tmp`` (skipped while
    that process is alive on this host, so a concurrent writer is never disturbed) and, with
    ``legacy``, the ``.NAME.XXXXXXXX.tmp`` names of ``tempfile.mkstemp(prefix=".NAME.")`` that
    earlier versions used. ``final``: only temps whose final ``NAME`` it accepts (e.g. the file
    names a run writes). Any other file, hidden or not, is left alone."""
    import re

    folder = Path(folder)
    gone: list[Path] = []
    if not folder.is_dir():
        return gone
    host = socket.gethostname().replace(".", "_") or "host"
    old = re.compile(r"^\.(.+)\.[a-z0-9_]{8}\.tmp$")
    for p in folder.iterdir():
        if not p.is_file() or not p.name.endswith(TMP_SUFFIX):
            continue
        parsed = parse_temp(p)
        legacy_match = old.match(p.name) if legacy and parsed is None else None
        name = parsed[0] if parsed is not None else (legacy_match.group(1) if legacy_match else None)
        if name is None or (final is not None and not final(name)):
            continue
        if parsed is not None:
            _, h, pid = parsed
            if h == host and pid != os.getpid() and pid_alive(pid):
                continue
            if h == host and pid == os.getpid():
                continue  # one of ours, still being written by this very process
        try:
            p.unlink()
            gone.append(p)
        except FileNotFoundError:
            pass
    return gone


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a process we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def safe_name(key: str) -> str:
    """A file name for an arbitrary id (an example or case id): the id's safe characters, cut to
    80, plus 8 hex digits of its sha1 so that two ids never share a file."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:80]
    return f"{base}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"
