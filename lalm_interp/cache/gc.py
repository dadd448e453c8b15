"""Garbage collection: remove temp files of writers that are gone; report (and optionally move
aside) corrupt shards. Complete, readable data is never touched."""

from __future__ import annotations

import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import TMP_SUFFIX, parse_temp
from .catalog import Scanner
from .layout import quarantine_dir


@dataclass(frozen=True)
class GcReport:
    """``removed``: orphaned temp files deleted (or that would be, with ``dry_run``); ``kept_live``:
    temp files of writers still running; ``corrupt``: unreadable shards; ``quarantined``: where
    corrupt shards were moved."""

    removed: tuple[Path, ...] = ()
    kept_live: tuple[Path, ...] = ()
    corrupt: tuple[Path, ...] = ()
    quarantined: tuple[Path, ...] = field(default_factory=tuple)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def collect(root: Path, *, dry_run: bool = False, quarantine: bool = False, foreign_age_s: float = 24 * 3600) -> GcReport:
    """Scan ``root``. A temp file is orphaned when its writer (host, pid) is this host and the pid is
    gone, or it is from another host and older than ``foreign_age_s``."""
    host = socket.gethostname().replace(".", "_") or "host"
    removed, live = [], []
    if root.is_dir():
        for path in root.rglob(f".*{TMP_SUFFIX}"):
            info = parse_temp(path)
            if info is None:
                continue
            _, who, pid = info
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue
            orphan = (who == host and not _pid_alive(pid)) or (who != host and age > foreign_age_s)
            if orphan:
                removed.append(path)
                if not dry_run:
                    path.unlink(missing_ok=True)
            else:
                live.append(path)
    corrupt = [c.path for c in Scanner(root).scan().corrupt]
    moved = []
    if quarantine and not dry_run:
        for path in corrupt:
            dest = quarantine_dir(root) / path.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(dest))
            moved.append(dest)
    return GcReport(tuple(removed), tuple(live), tuple(corrupt), tuple(moved))
