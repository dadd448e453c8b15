"""Where things live under a cache root, and how the root is chosen.

::

    <root>/
      experiments/<experiment>/manifest.json            provenance, written once, atomically
      experiments/<experiment>/runs/<run>/shard-000000.h5   immutable shards (see shards.py)
      experiments/<experiment>/runs/<run>/.shard-000001.h5.<host>.<pid>.<rand>.tmp   in flight
      stats/<site>/<digest>.h5                         second-moment statistics (see stats.py)
      quarantine/...                                   corrupt files moved aside by `cache gc`
      work/<name>/...                                  scratch folders of commands (e.g. the spoken
                                                       benchmark `organism eval` synthesises)

Root resolution: explicit argument > environment variable ``LALM_INTERP_CACHE`` > ``./cache``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import CacheError

ENV_VAR = "LALM_INTERP_CACHE"
DEFAULT_DIR = "cache"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]*\Z")


def resolve_root(root: "str | os.PathLike[str] | None" = None) -> Path:
    """The cache root: ``root`` if given, else ``$LALM_INTERP_CACHE``, else ``./cache``."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.cwd() / DEFAULT_DIR


def check_name(kind: str, name: str) -> str:
    """Experiment and run names become directory names: letters, digits and ``_ . + = -``."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise CacheError(
            f"{kind} name {name!r} is not usable as a directory name; expected letters, digits and "
            "'_ . + = -', starting with a letter or digit (e.g. 'capitals-v1', 'clean')."
        )
    return name


def experiments_dir(root: Path) -> Path:
    return root / "experiments"


def experiment_dir(root: Path, experiment: str) -> Path:
    return experiments_dir(root) / check_name("experiment", experiment)


def manifest_path(root: Path, experiment: str) -> Path:
    return experiment_dir(root, experiment) / "manifest.json"


def run_dir(root: Path, experiment: str, run: str) -> Path:
    return experiment_dir(root, experiment) / "runs" / check_name("run", run)


def stats_dir(root: Path) -> Path:
    return root / "stats"


def quarantine_dir(root: Path) -> Path:
    return root / "quarantine"


def work_dir(name: str, root: "str | os.PathLike[str] | None" = None) -> Path:
    """A reusable scratch folder of a command, under the cache root: ``<root>/work/<name>`` (root
    resolved as in :func:`resolve_root`), so commands never litter the current folder."""
    return resolve_root(root) / "work" / check_name("work folder", name)
