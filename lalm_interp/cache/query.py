"""Resolve a site pattern against the keys present in the store (no model needed) and assemble
one lazily loaded, labelled DataArray across every matching shard and experiment."""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import dask.array as dsa
import numpy as np
import xarray as xr
from xarray.core import indexing

from .. import sites as _sites
from .catalog import Catalog
from .errors import CacheError
from .shards import COORD_NAMES, IOCounter, LazyActivation, ShardInfo, read_coords

_STREAM_RANK = {s: i for i, s in enumerate(_sites.STREAMS)}
_COMPONENT_RANK = {c: i for i, c in enumerate(_sites.LAYER_COMPONENTS)}
_FILL = {"token": "", "word": "", "time_s": np.nan, "is_subject": False, "valid": False}


def forward_key(site: str) -> tuple:
    """Sort key approximating forward order without an adapter: stream, non-layer sites, layer,
    component, port (``@in`` before ``@out``)."""
    s = _sites.parse(site)
    layer = s.layer if s.layer is not None else -1
    return (
        _STREAM_RANK.get(s.stream, 99),
        0 if not s.is_layer_site else 1,
        layer,
        _COMPONENT_RANK.get(s.component, 50),
        s.component,
        0 if s.port == "in" else 1,
    )


def n_layers_by_stream(shards: Sequence[ShardInfo]) -> dict[str, int]:
    """Layers per stream from provenance, else the highest cached layer + 1."""
    out: dict[str, int] = {}
    for info in shards:
        for stream, n in info.provenance.n_layers.items():
            out[stream] = max(out.get(stream, 0), n)
    declared = set(out)
    for info in shards:
        for key in info.keys:
            s = _sites.parse(key)
            if s.layer is not None and s.stream not in declared:
                out[s.stream] = max(out.get(s.stream, 0), s.layer + 1)
    return out


def resolve(pattern: "str | _sites.Site", shards: Sequence[ShardInfo]) -> list[str]:
    """The stored keys matched by ``pattern``, in forward order. Raises :class:`CacheError` naming
    what is stored when nothing matches."""
    p = _sites.parse(pattern)
    keys = sorted({k for s in shards for k in s.keys}, key=forward_key)
    n_layers = n_layers_by_stream(shards)
    found = [k for k in keys if _sites.matches(p, k, n_layers.get(p.stream))]
    if not found:
        if not shards:
            raise CacheError(
                f"no cached data matches the query filters, so key {p} cannot be found. "
                "Expected at least one complete shard; check the filters (run=, model=, dataset=, "
                "experiment=) against `lalm-interp cache ls`."
            )
        shown = ", ".join(keys[:12]) + (", ..." if len(keys) > 12 else "")
        raise CacheError(
            f"key {p} matches nothing in the cache; stored keys are: {shown}. "
            "Expected a stored site or a pattern over them (e.g. 'text.layers.*.mlp'). "
            "List them with `lalm-interp cache ls`."
        )
    return found


def assemble(
    pattern: "str | _sites.Site",
    catalog: Catalog,
    counter: IOCounter | None = None,
    chunks: "str | dict | None" = "auto",
) -> xr.DataArray:
    """One DataArray for ``pattern`` across ``catalog``'s shards (already filtered).

    ``chunks``: ``None`` → lazily indexed (reads exactly the selection on ``.values``);
    ``"shards"`` → dask, one chunk per (shard, key); a dict → dask with those chunks;
    ``"auto"`` → dask when larger than :data:`DASK_THRESHOLD_BYTES`, else lazily indexed."""
    catalog.raise_if_corrupt()
    p = _sites.parse(pattern)
    keys = resolve(p, catalog.shards)
    keyset = set(keys)
    # The runs this query touches: those with at least one matched key. Every shard of such a run
    # must hold every matched key, else examples would silently go missing.
    runs: dict[tuple[str, str], list[ShardInfo]] = defaultdict(list)
    for info in catalog.shards:
        runs[(info.experiment, info.run)].append(info)
    pieces: list[ShardInfo] = []
    for (exp, run), infos in runs.items():
        if not any(keyset & set(i.keys) for i in infos):
            continue
        for info in infos:
            missing = [k for k in keys if k not in info.keys]
            if missing:
                raise CacheError(
                    f"experiment {exp!r} run {run!r}: shard {info.index} ({info.path.name}) lacks "
                    f"{missing[:4]} that other shards of the run hold. Expected every shard of a run to "
                    "hold the same keys. Query a narrower pattern, or rewrite the shard after removing it."
                )
            pieces.append(info)
    out = _build(p, keys, pieces, counter, chunks)
    out.attrs.update(_common_attrs(pieces, keys))
    out.attrs["query"] = str(p)
    out.name = str(p)
    return out


DASK_THRESHOLD_BYTES = 256 * 2**20
"""With ``chunks="auto"``, results larger than this are dask-backed; smaller ones lazily indexed."""


def _norm(k, n: int) -> tuple[np.ndarray, bool]:
    """One axis of an outer index as (sorted-or-not index array, dropped?)."""
    if isinstance(k, (int, np.integer)):
        i = int(k) + n if k < 0 else int(k)
        if not 0 <= i < n:
            raise IndexError(f"index {k} out of range for axis of size {n}")
        return np.array([i]), True
    if isinstance(k, slice):
        return np.arange(n)[k], False
    arr = np.asarray(k)
    if arr.dtype == bool:
        return np.nonzero(arr)[0], False
    return np.where(arr < 0, arr + n, arr).astype(np.int64), False


def _as_slice(idx: np.ndarray) -> "slice | np.ndarray":
    """A contiguous ascending index run as a slice (slice assignment is far cheaper than fancy)."""
    if len(idx) and idx[-1] - idx[0] == len(idx) - 1 and (len(idx) == 1 or (np.diff(idx) == 1).all()):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


class ShardedArray:
    """A read-only array over many shards and keys: shape ``(example, [stack,] position, hidden)``
    (``position`` only for 3-d keys). Indexing (ints, slices, 1-d integer/bool arrays per axis, with
    outer semantics) reads only the HDF5 chunks that hold the selection; positions past a shard's
    length read as NaN. Used directly by dask and, wrapped, as an xarray lazily indexed backend."""

    def __init__(self, pieces: Sequence[ShardInfo], keys: Sequence[str], stacked: bool, counter: IOCounter | None):
        self.pieces, self.keys, self.stacked, self.counter = list(pieces), list(keys), stacked, counter
        first = pieces[0].keys[keys[0]]
        self.has_pos = first.dims[1:2] == ("position",)
        self.n_pos = max(p.keys[k].shape[1] for p in pieces for k in keys) if self.has_pos else 0
        self.hidden = first.shape[-1]
        self.dtype = np.result_type(*[np.dtype(p.keys[k].dtype) for p in pieces for k in keys])
        self.sizes = np.array([p.keys[keys[0]].shape[0] for p in pieces])
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        shape: list[int] = [int(self.offsets[-1])]
        if stacked:
            shape.append(len(keys))
        if self.has_pos:
            shape.append(self.n_pos)
        shape.append(self.hidden)
        self.shape = tuple(shape)
        self.ndim = len(shape)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (self.ndim - len(key))
        axes = [_norm(k, n) for k, n in zip(key, self.shape)]
        idx = [a for a, _ in axes]
        ex = idx[0]
        layer_idx = idx[1] if self.stacked else np.array([0])
        rest = idx[2:] if self.stacked else idx[1:]
        pos = rest[0] if self.has_pos else None
        hid = rest[-1]
        out_shape = (len(ex), len(layer_idx), *((len(pos),) if self.has_pos else ()), len(hid))
        shard_of = np.searchsorted(self.offsets, ex, side="right") - 1
        fast = self._single_block(ex, shard_of, layer_idx, pos, hid)
        if fast is not None:  # one shard, one key, contiguous, no padding: no extra copy
            out = fast[:, None]
        else:
            out = np.empty(out_shape, dtype=self.dtype)
        for s in (np.unique(shard_of) if out.size and fast is None else ()):
            rows = np.nonzero(shard_of == s)[0]
            r = _as_slice(rows)
            local = ex[rows] - self.offsets[s]
            info = self.pieces[s]
            for j, li in enumerate(layer_idx):
                site = self.keys[li]
                if not self.has_pos:
                    self._fill(info, site, out, (r, j, slice(None)), [local, hid])
                    continue
                n_stored = info.keys[site].shape[1]
                sel_pos = np.nonzero(pos < n_stored)[0]
                pad = np.nonzero(pos >= n_stored)[0]
                if len(pad):
                    out[np.ix_(rows, [j], pad, np.arange(len(hid)))] = np.nan
                if len(sel_pos):
                    q = _as_slice(sel_pos)
                    if isinstance(r, slice) and isinstance(q, slice):
                        self._fill(info, site, out, (r, j, q, slice(None)), [local, pos[sel_pos], hid])
                    else:
                        block = self._read(info, site, local, pos[sel_pos], hid)
                        out[np.ix_(rows, [j], sel_pos, np.arange(len(hid)))] = block[:, None]
        if not self.stacked:
            out = out[:, 0]
        drop = tuple(i for i, (_, dropped) in enumerate(axes) if dropped)
        return out.reshape([n for i, n in enumerate(out.shape) if i not in drop]) if drop else out

    def _single_block(self, ex, shard_of, layer_idx, pos, hid) -> "np.ndarray | None":
        if len(ex) == 0 or len(layer_idx) != 1 or shard_of[0] != shard_of[-1]:
            return None
        info = self.pieces[int(shard_of[0])]
        site = self.keys[int(layer_idx[0])]
        parts = [ex - self.offsets[int(shard_of[0])]] + ([pos] if self.has_pos else []) + [hid]
        runs = [_as_slice(p) for p in parts]
        if not all(isinstance(r, slice) for r in runs):
            return None
        if self.has_pos and runs[1].stop > info.keys[site].shape[1]:
            return None
        block = LazyActivation(info.path, info.keys[site], self.counter)[tuple(runs)]
        return block.astype(self.dtype, copy=False)

    def _fill(self, info: ShardInfo, site: str, out: np.ndarray, dest: tuple, parts: list[np.ndarray]) -> None:
        """Write the selection ``parts`` (one index array per stored axis) into ``out[dest]``;
        ``dest`` is made of slices, so the copy is a plain strided copy."""
        # (h5py's read_direct into a strided destination proved much slower than read + copy.)
        block = self._read(info, site, parts[0], parts[1] if len(parts) == 3 else None, parts[-1])
        out[dest] = block

    def _read(self, info: ShardInfo, site: str, ex: np.ndarray, pos: np.ndarray | None, hid: np.ndarray) -> np.ndarray:
        """Read the bounding box of the selection (contiguous slices: HDF5 reads only the chunks
        that overlap it), then pick the exact indices in memory."""
        parts = [ex] + ([pos] if pos is not None else []) + [hid]
        box = tuple(slice(int(p.min()), int(p.max()) + 1) for p in parts)
        lazy = LazyActivation(info.path, info.keys[site], self.counter)
        block = lazy[box]
        picks = tuple(p - b.start for p, b in zip(parts, box))
        if all(len(p) == b.stop - b.start and (np.diff(p) == 1).all() for p, b in zip(picks, box)):
            return block.astype(self.dtype, copy=False)
        return block[np.ix_(*picks)].astype(self.dtype, copy=False)


class _Backend(xr.backends.BackendArray):
    def __init__(self, array: ShardedArray):
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype

    def __getitem__(self, key):
        return indexing.explicit_indexing_adapter(key, self.shape, indexing.IndexingSupport.OUTER, self._raw)

    def _raw(self, key):
        return self.array[key]


def _coords(pieces: Sequence[ShardInfo], site: str, has_pos: bool, n_pos: int) -> dict[str, tuple]:
    parts_by_name: dict[str, list[np.ndarray]] = defaultdict(list)
    present: set[str] = set()
    per_shard = []
    for info in pieces:
        c = read_coords(info.path, site)
        n = info.keys[site].shape[0]
        if has_pos:
            stored = info.keys[site].shape[1]
            for cname in COORD_NAMES:
                if cname in c and stored < n_pos:
                    fill = np.full((n, n_pos - stored), _FILL[cname], dtype=c[cname].dtype)
                    c[cname] = np.concatenate([c[cname], fill], axis=1)
        c["experiment"] = np.full(n, info.experiment, dtype=object)
        c["run"] = np.full(n, info.run, dtype=object)
        c["shard"] = np.full(n, info.index, dtype=np.int64)
        present.update(c)
        per_shard.append((n, c))
    names = ["example", "experiment", "run", "shard"] + ([c for c in COORD_NAMES if c in present] if has_pos else [])
    out: dict[str, tuple] = {}
    for cname in names:
        for n, c in per_shard:
            if cname in c:
                parts_by_name[cname].append(c[cname])
            else:  # coordinate absent from this shard: its neutral value
                fill = _FILL[cname]
                parts_by_name[cname].append(np.full((n, n_pos), fill, dtype=object if isinstance(fill, str) else type(fill)))
        val = np.concatenate(parts_by_name[cname], axis=0)
        if cname in ("token", "word", "example", "experiment", "run"):
            val = val.astype(str)
        out[cname] = (("example", "position") if val.ndim == 2 else ("example",), val)
    if has_pos:
        out["position"] = (("position",), np.arange(n_pos))
    return out


def _check_schemas(keys: Sequence[str], pieces: Sequence[ShardInfo]) -> None:
    for site in keys:
        first, ref = pieces[0].keys[site], pieces[0]
        for info in pieces:
            sch = info.keys[site]
            if sch.dims != first.dims or sch.hidden != first.hidden:
                raise CacheError(
                    f"schema mismatch for key {site}: {ref.path} holds dims {first.dims} with hidden size "
                    f"{first.hidden}, but {info.path} holds dims {sch.dims} with hidden size {sch.hidden}. "
                    "Expected one shape per key across the shards queried together. Filter by model= or "
                    "experiment= so only compatible shards are combined."
                )


def _build(p: "_sites.Site", keys: list[str], pieces: list[ShardInfo], counter: IOCounter | None, chunks) -> xr.DataArray:
    _check_schemas(keys, pieces)
    wildcard = any(isinstance(seg, (_sites.Star, _sites.Range)) for seg in p.path)
    stacked = len(keys) > 1 or wildcard
    parsed = [_sites.parse(k) for k in keys]
    stack_dim = None
    if stacked:
        by_layer = all(s.layer is not None for s in parsed) and len({(s.stream, s.component, s.port) for s in parsed}) == 1
        stack_dim = "layer" if by_layer else "site"
        shapes = {(pieces[0].keys[k].dims, pieces[0].keys[k].hidden) for k in keys}
        if len(shapes) != 1:
            desc = ", ".join(f"{k}: {pieces[0].keys[k].dims} hidden={pieces[0].keys[k].hidden}" for k in keys)
            raise CacheError(
                f"the keys matched by {p} have different shapes and cannot be stacked along {stack_dim!r}: "
                f"{desc}. Expected one shape for every key a pattern matches; query the keys separately."
            )
    arr = ShardedArray(pieces, keys, stacked, counter)
    dims = ["example"] + ([stack_dim] if stacked else []) + (["position"] if arr.has_pos else []) + ["hidden"]
    use_dask = chunks == "shards" or (chunks == "auto" and arr.nbytes > DASK_THRESHOLD_BYTES) or isinstance(chunks, dict)
    if use_dask:
        # One dask chunk per (shard, key); slicing a from_array chunk is fused into the read.
        block = (tuple(int(n) for n in arr.sizes),) + ((1,) * len(keys),) * stacked + tuple((n,) for n in arr.shape[1 + stacked :])
        name = "lalm-cache-" + str(abs(hash((str(p), tuple(str(i.path) for i in pieces), tuple(i.created for i in pieces)))))
        data = dsa.from_array(arr, chunks=block, name=name, asarray=True, lock=False, meta=np.empty((0,) * arr.ndim, arr.dtype))
    else:
        data = indexing.LazilyIndexedArray(_Backend(arr))
    coords = _coords(pieces, keys[0], arr.has_pos, arr.n_pos)
    out = xr.DataArray(xr.Variable(dims, data), coords=coords)
    if isinstance(chunks, dict):
        out = out.chunk(chunks)
    if stack_dim == "layer":
        out = out.assign_coords(layer=[s.layer for s in parsed], site=("layer", keys))
    elif stack_dim == "site":
        out = out.assign_coords(site=keys)
    else:
        out = out.assign_coords(site=keys[0])
        if parsed[0].layer is not None:
            out = out.assign_coords(layer=parsed[0].layer)
    out.attrs["original_dtype"] = ",".join(sorted({i.keys[k].original_dtype for i in pieces for k in keys}))
    return out


def _common_attrs(pieces: Sequence[ShardInfo], keys: list[str]) -> dict[str, str]:
    """Provenance fields shared by every shard (differing ones are listed joined by ' | ')."""
    out: dict[str, str] = {}
    for field_name in ("model", "revision", "weights_hash", "adapter_version", "dataset", "package_version", "spec"):
        vals = sorted({getattr(p.provenance, field_name) for p in pieces})
        out[field_name] = vals[0] if len(vals) == 1 else " | ".join(vals)
    out["experiments"] = ",".join(sorted({p.experiment for p in pieces}))
    out["runs"] = ",".join(sorted({p.run for p in pieces}))
    out["keys"] = ",".join(keys)
    return out
