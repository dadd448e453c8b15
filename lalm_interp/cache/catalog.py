"""The catalog is derived from the files themselves: a directory scan of complete shards plus
their root attributes. There is no shared mutable index, so concurrent writers never contend."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CacheError
from .layout import experiments_dir
from .shards import SHARD_RE, ShardInfo, read_header


@dataclass(frozen=True)
class CorruptShard:
    """A file with a final shard name that cannot be read; ``error`` is the message."""

    path: Path
    error: str


@dataclass(frozen=True)
class Catalog:
    """``shards``: every readable complete shard, sorted by (experiment, run, index);
    ``corrupt``: files that look like shards but cannot be read."""

    shards: tuple[ShardInfo, ...] = ()
    corrupt: tuple[CorruptShard, ...] = ()

    def filter(
        self,
        *,
        experiment: "str | None" = None,
        run: "str | None" = None,
        model: "str | None" = None,
        dataset: "str | None" = None,
    ) -> "Catalog":
        """Shards whose experiment/run/model/dataset equal the given values (``None``: any).
        Corrupt shards are kept when their directory matches experiment and run."""

        def ok(s: ShardInfo) -> bool:
            return (
                (experiment is None or s.experiment == experiment)
                and (run is None or s.run == run)
                and (model is None or s.provenance.model == model or s.provenance.fingerprint == model)
                and (dataset is None or s.provenance.dataset == dataset)
            )

        def ok_corrupt(c: CorruptShard) -> bool:
            run_name, exp_name = c.path.parent.name, c.path.parent.parent.parent.name
            return (experiment is None or exp_name == experiment) and (run is None or run_name == run)

        return Catalog(
            tuple(s for s in self.shards if ok(s)), tuple(c for c in self.corrupt if ok_corrupt(c))
        )

    def raise_if_corrupt(self) -> None:
        if self.corrupt:
            first = self.corrupt[0]
            more = f" (and {len(self.corrupt) - 1} more)" if len(self.corrupt) > 1 else ""
            raise CacheError(
                f"{len(self.corrupt)} corrupt shard(s) among the ones this query needs: {first.path}{more}. "
                "They are reported rather than skipped, so results never silently lose examples.\n"
                f"  first error: {first.error.splitlines()[0]}"
            )


@dataclass
class Scanner:
    """Scans a root; remembers headers by (path, mtime, size) so repeated scans are cheap."""

    root: Path
    _memo: dict[Path, tuple[tuple[int, int], "ShardInfo | CorruptShard"]] = field(default_factory=dict)

    def scan(self) -> Catalog:
        base = experiments_dir(self.root)
        shards: list[ShardInfo] = []
        corrupt: list[CorruptShard] = []
        if not base.is_dir():
            return Catalog()
        for exp in sorted(base.iterdir()):
            runs = exp / "runs"
            if not runs.is_dir():
                continue
            for run in sorted(runs.iterdir()):
                if not run.is_dir():
                    continue
                for entry in sorted(os.scandir(run), key=lambda e: e.name):
                    if not SHARD_RE.match(entry.name):
                        continue
                    path = Path(entry.path)
                    st = entry.stat()
                    stamp = (st.st_mtime_ns, st.st_size)
                    hit = self._memo.get(path)
                    if hit is None or hit[0] != stamp:
                        try:
                            info: "ShardInfo | CorruptShard" = read_header(path)
                        except CacheError as err:
                            info = CorruptShard(path, str(err))
                        self._memo[path] = (stamp, info)
                    info = self._memo[path][1]
                    (corrupt if isinstance(info, CorruptShard) else shards).append(info)  # type: ignore[arg-type]
        shards.sort(key=lambda s: (s.experiment, s.run, s.index))
        return Catalog(tuple(shards), tuple(corrupt))
