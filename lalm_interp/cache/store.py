"""The activation store: one object over a cache root, for writers, queries and statistics."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import xarray as xr

from .. import sites as _sites
from .catalog import Catalog, Scanner
from .gc import GcReport, collect
from .layout import resolve_root, stats_dir
from .provenance import Provenance
from .query import assemble, forward_key
from .shards import IOCounter
from .stats import SecondMoment, key_stats, list_stats, save_key_stats
from .writer import ShardWriter


@dataclass(frozen=True)
class ExperimentInfo:
    """One experiment run in the store: ``experiment``, ``run``, its ``provenance`` (of the first
    shard), ``n_shards``, ``n_examples`` and the ``keys`` it holds (forward order)."""

    experiment: str
    run: str
    provenance: Provenance
    n_shards: int
    n_examples: int
    keys: tuple[str, ...]

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class KeyInfo:
    """One stored key of one run: ``site``, ``experiment``, ``run``, total ``shape`` (examples
    summed, longest position), ``dims``, on-disk ``dtype``, ``original_dtype``, ``n_shards``."""

    site: str
    experiment: str
    run: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    original_dtype: str
    n_shards: int


class Store:
    """An activation cache rooted at ``root`` (explicit > ``$LALM_INTERP_CACHE`` > ``./cache``).

    Writers: :meth:`writer`. Queries: :meth:`get`, :meth:`ls`, :meth:`experiments`.
    Statistics: :meth:`key_stats`. Maintenance: :meth:`gc`.
    ``io`` counts bytes read by lazy arrays (``store.io.bytes_read``).
    """

    def __init__(self, root: "str | os.PathLike[str] | None" = None):
        self.root = resolve_root(root)
        self.io = IOCounter()
        self._scanner = Scanner(self.root)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # ------------------------------------------------------------------ writing
    def writer(
        self,
        experiment: str,
        *,
        provenance: Provenance,
        run: str = "clean",
        dtype: str | None = None,
        chunk_examples: int = 1,
    ) -> ShardWriter:
        """A :class:`ShardWriter` for one run of one experiment (see its docstring)."""
        return ShardWriter(self.root, experiment, run, provenance, dtype, chunk_examples)

    # ------------------------------------------------------------------ catalog
    def catalog(self, **filters: Any) -> Catalog:
        """Every complete shard (and every corrupt one), optionally filtered by ``experiment``,
        ``run``, ``model`` (name or fingerprint) and ``dataset``."""
        cat = self._scanner.scan()
        return cat.filter(**filters) if filters else cat

    def experiments(self, **filters: Any) -> list[ExperimentInfo]:
        cat = self.catalog(**filters)
        groups: dict[tuple[str, str], list] = {}
        for s in cat.shards:
            groups.setdefault((s.experiment, s.run), []).append(s)
        out = []
        for (exp, run), shards in groups.items():
            keys = sorted({k for s in shards for k in s.keys}, key=forward_key)
            out.append(ExperimentInfo(exp, run, shards[0].provenance, len(shards), sum(s.n_examples for s in shards), tuple(keys)))
        return out

    def ls(self, pattern: "str | None" = None, **filters: Any) -> list[KeyInfo]:
        """Stored keys per experiment run, optionally only those matching a site ``pattern``."""
        cat = self.catalog(**filters)
        groups: dict[tuple[str, str, str], list] = {}
        for s in cat.shards:
            for k, sch in s.keys.items():
                groups.setdefault((s.experiment, s.run, k), []).append(sch)
        if pattern is not None:
            from .query import n_layers_by_stream

            n_layers = n_layers_by_stream(cat.shards)
            p = _sites.parse(pattern)
            groups = {g: v for g, v in groups.items() if _sites.matches(p, g[2], n_layers.get(p.stream))}
        out = []
        for (exp, run, key), schemas in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], forward_key(kv[0][2]))):
            first = schemas[0]
            shape = list(first.shape)
            shape[0] = sum(s.shape[0] for s in schemas)
            if len(shape) == 3:
                shape[1] = max(s.shape[1] for s in schemas)
            out.append(KeyInfo(key, exp, run, first.dims, tuple(shape), first.dtype,
                               ",".join(sorted({s.original_dtype for s in schemas})), len(schemas)))
        return out

    # ------------------------------------------------------------------ reading
    def get(
        self,
        key: "str | _sites.Site",
        *,
        run: str | None = None,
        model: str | None = None,
        dataset: str | None = None,
        experiment: str | None = None,
        chunks: "str | dict | None" = "auto",
    ) -> xr.DataArray:
        """One lazily loaded (dask-backed) DataArray for a site or site pattern.

        A concrete key gives dims ``(example, position, hidden)`` (or ``(example, hidden)``); a
        layer pattern (``text.layers.5:15.mlp``, ``text.layers.*.resid``) stacks the matching keys
        along ``layer`` → ``(example, layer, position, hidden)``; other patterns stack along
        ``site``. Examples of every matching experiment/run/shard are concatenated along
        ``example``, with coordinates ``example`` (ids), ``experiment``, ``run``, ``shard``,
        ``token``/``word``/``time_s``/``is_subject``/``valid`` over (example, position). Shorter
        shards are padded with NaN and ``valid == False``. Filters select by provenance.

        Nothing is read until values are needed. ``chunks=None`` gives a lazily indexed array
        (``.sel``/``.isel`` then ``.values`` read exactly the selected HDF5 chunks); ``"shards"``
        gives dask with one chunk per (shard, key); a dict is passed to ``.chunk``; ``"auto"``
        (default) is dask above 256 MiB, lazily indexed below.
        """
        cat = self.catalog(run=run, model=model, dataset=dataset, experiment=experiment)
        return assemble(key, cat, self.io, chunks)

    # ------------------------------------------------------------------ statistics
    def key_stats(
        self,
        site: "str | _sites.Site",
        *,
        model: str,
        corpus: str,
        compute: Callable[[], Iterable[Any]] | None = None,
        recompute: bool = False,
    ) -> SecondMoment:
        """Second-moment statistics of keys at ``site`` for (model fingerprint, corpus id): loaded
        from ``<root>/stats`` when cached, else computed from ``compute()`` (an iterable of
        ``(n, d)`` batches), written atomically and returned."""
        return key_stats(stats_dir(self.root), site, model=model, corpus=corpus, compute=compute, recompute=recompute)

    def put_stats(self, site: "str | _sites.Site", stats: SecondMoment, *, model: str, corpus: str) -> SecondMoment:
        """Cache statistics computed elsewhere (e.g. merged from per-process accumulators)."""
        return save_key_stats(stats_dir(self.root), site, stats, model=model, corpus=corpus, replace=True)

    def stats(self) -> list[dict[str, Any]]:
        """Every cached statistics file: site, model, corpus, count, dim, path."""
        return list_stats(stats_dir(self.root))

    # ------------------------------------------------------------------ maintenance
    def gc(self, *, dry_run: bool = False, quarantine: bool = False, check: bool = False) -> GcReport:
        """Remove orphaned temp files; report (optionally move aside) corrupt shards. ``check``:
        also read every dataset of every shard and statistics file, verifying checksums, and report
        (with ``quarantine``: move aside) damaged ones."""
        return collect(self.root, dry_run=dry_run, quarantine=quarantine, check=check)

