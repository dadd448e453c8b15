"""The activation store: one object over a cache root, for writers, queries and statistics."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import xarray as xr

from .. import sites as _sites
from .activations import Activations
from .catalog import Catalog, Scanner
from .gc import GcReport, collect
from .layout import resolve_root, stats_dir
from .provenance import Provenance
from .errors import CacheError
from .query import assemble, forward_key, n_layers_by_stream
from .shards import IOCounter, read_coords
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

    Writers: :meth:`writer`, :meth:`put` (one :class:`Activations`). Queries: :meth:`get`,
    :meth:`activations`, :meth:`ls`, :meth:`experiments`. Statistics: :meth:`key_stats`.
    Maintenance: :meth:`gc`.
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

    def put(self, acts: Activations, experiment: str, *, run: str = "clean", index: int | None = None,
            dataset: str = "", spec: Any = "") -> int:
        """Persist the activations of one example (``AudioLM.run_with_cache``'s result) as one shard
        of ``experiment``/``run``; returns its shard index (``index``: that one; default: the next
        free one). Float16 and float32 values are stored as they are (bfloat16 was widened to
        float32 when read, float64 is stored as float32). Read it back with :meth:`activations`."""
        w = self.writer(experiment, run=run, provenance=acts.provenance(dataset=dataset, spec=spec))
        if index is None:
            done = w.complete()
            index = max(done) + 1 if done else 0
        w.write(index, acts.to_batch())
        return index

    def activations(self, experiment: str, example: str | None = None, *, run: str = "clean") -> Activations:
        """The :class:`Activations` :meth:`put` stored for ``example`` (default: the only or first
        one) in ``experiment``/``run``: identical to what was put (``acts.identical(...)``)."""
        cat = self.catalog(experiment=experiment, run=run)
        cat.raise_if_corrupt()
        if not cat.shards:
            known = sorted({f"{e.experiment}/{e.run}" for e in self.experiments()})
            raise CacheError(f"no shards of experiment {experiment!r} run {run!r} in {self.root}; stored runs: "
                             f"{', '.join(known) or 'none'}. Fix: Store.put(acts, {experiment!r}) first, or pick a "
                             "stored experiment (`lalm-interp cache ls`).")
        seen: list[str] = []
        for info in cat.shards:
            if not info.keys:
                continue
            ids = [str(i) for i in read_coords(info.path, next(iter(info.keys)))["example"]]
            if example is None or example in ids:
                if len(ids) != 1:
                    raise CacheError(f"shard {info.path} holds {len(ids)} examples; Store.activations reads shards "
                                     "written by Store.put (one example each). Fix: use Store.get(site, ...) for it.")
                one = Catalog((info,))
                arrays = {k: assemble(k, one, self.io, None) for k in sorted(info.keys, key=forward_key)}
                return Activations.from_store(arrays, info.provenance)
            seen.extend(ids)
        raise CacheError(f"example {example!r} is not in experiment {experiment!r} run {run!r}; it holds "
                         f"{', '.join(seen[:10])}{' ...' if len(seen) > 10 else ''}.{_sites.suggest(str(example), seen)} "
                         "Fix: pass one of those ids.")

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

