"""Garbage collection: remove temp files of writers that are gone; report (and optionally move
aside) corrupt shards. With ``check=True`` every dataset of every shard and statistics file is read
in full, so damaged bytes (a failed checksum) are found too. Complete, readable data is never
touched."""

from __future__ import annotations

import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import TMP_SUFFIX, parse_temp
from ..atomic import pid_alive as _pid_alive
from .catalog import Scanner
from .layout import quarantine_dir, stats_dir
from .shards import ShardCheck, verify_shard


@dataclass(frozen=True)
class GcReport:
    """``removed``: orphaned temp files deleted (or that would be, with ``dry_run``); ``kept_live``:
    temp files of writers still running; ``corrupt``: unreadable shards; ``quarantined``: where
    corrupt shards were moved. With ``check``: ``checked`` files read in full, ``damaged`` the
    :class:`ShardCheck` of each file with a dataset that failed its checksum (or could not be read),
    ``unverified`` files that hold data without checksums (written before checksums existed)."""

    removed: tuple[Path, ...] = ()
    kept_live: tuple[Path, ...] = ()
    corrupt: tuple[Path, ...] = ()
    quarantined: tuple[Path, ...] = field(default_factory=tuple)
    checked: int = 0
    damaged: tuple[ShardCheck, ...] = ()
    unverified: tuple[Path, ...] = ()


def collect(root: Path, *, dry_run: bool = False, quarantine: bool = False, check: bool = False,
            foreign_age_s: float = 24 * 3600) -> GcReport:
    """Scan ``root``. A temp file is orphaned when its writer (host, pid) is this host and the pid is
    gone, or it is from another host and older than ``foreign_age_s``. ``check``: also read every
    dataset of every readable shard and statistics file (verifying checksums); ``quarantine`` then
    moves damaged files aside too."""
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
    cat = Scanner(root).scan()
    corrupt = [c.path for c in cat.corrupt]
    damaged: list[ShardCheck] = []
    unverified: list[Path] = []
    checked = 0
    if check:
        stats = sorted(stats_dir(root).rglob("*.h5")) if stats_dir(root).is_dir() else []
        for path in [s.path for s in cat.shards] + [p for p in stats if not p.name.startswith(".")]:
            result = verify_shard(path)
            checked += 1
            if result.damaged:
                damaged.append(result)
            elif result.unverified:
                unverified.append(path)
    moved = []
    if quarantine and not dry_run:
        for path in corrupt + [d.path for d in damaged]:
            dest = quarantine_dir(root) / path.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(dest))
            moved.append(dest)
    return GcReport(tuple(removed), tuple(live), tuple(corrupt), tuple(moved), checked, tuple(damaged),
                    tuple(unverified))
