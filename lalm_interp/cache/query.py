"""Resolve a site pattern against the keys present in the store (no model needed) and assemble
one lazily loaded, labelled DataArray across every matching shard and experiment."""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import dask.array as dsa
import numpy as np
import xarray as xr

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
) -> xr.DataArray:
    """One DataArray for ``pattern`` across ``catalog``'s shards (already filtered)."""
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
    per_key = [_one_key(k, pieces, counter) for k in keys]
    wildcard = any(isinstance(seg, (_sites.Star, _sites.Range)) for seg in p.path)
    if len(per_key) == 1 and not wildcard:
        out = per_key[0]
    else:
        out = _stack(per_key, keys)
    out.attrs.update(_common_attrs(pieces, keys))
    out.attrs["query"] = str(p)
    out.name = str(p)
    return out


def _one_key(site: str, pieces: Sequence[ShardInfo], counter: IOCounter | None) -> xr.DataArray:
    schemas = [info.keys[site] for info in pieces]
    first = schemas[0]
    for info, sch in zip(pieces, schemas):
        if sch.dims != first.dims or sch.shape[-1] != first.shape[-1]:
            raise CacheError(
                f"schema mismatch for key {site}: {pieces[0].path} holds dims {first.dims} with hidden "
                f"size {first.shape[-1]}, but {info.path} holds dims {sch.dims} with hidden size "
                f"{sch.shape[-1]}. Expected one shape per key across the shards queried together. "
                "Filter by model= or experiment= so only compatible shards are combined."
            )
    has_pos = first.dims[1:2] == ("position",)
    n_pos = max(s.shape[1] for s in schemas) if has_pos else 0
    dtype = np.result_type(*[np.dtype(s.dtype) for s in schemas])
    arrays, coords_parts = [], []
    for info, sch in zip(pieces, schemas):
        lazy = LazyActivation(info.path, sch, counter)
        name = f"lalm-{site}-{info.path}-{info.created}"
        arr = dsa.from_array(lazy, chunks=sch.chunks, name=name, asarray=True, lock=False, meta=np.empty((0,) * len(sch.shape), dtype=sch.dtype))
        if arr.dtype != dtype:
            arr = arr.astype(dtype)
        coords = read_coords(info.path, site)
        if has_pos and sch.shape[1] < n_pos:
            pad = n_pos - sch.shape[1]
            filler = dsa.full((sch.shape[0], pad, *sch.shape[2:]), np.nan, dtype=dtype, chunks=(sch.chunks[0], pad, *sch.shape[2:]))
            arr = dsa.concatenate([arr, filler], axis=1)
            for cname in COORD_NAMES:
                if cname in coords:
                    fill = np.full((sch.shape[0], pad), _FILL[cname], dtype=coords[cname].dtype)
                    coords[cname] = np.concatenate([coords[cname], fill], axis=1)
        coords["experiment"] = np.full(sch.shape[0], info.experiment, dtype=object)
        coords["run"] = np.full(sch.shape[0], info.run, dtype=object)
        coords["shard"] = np.full(sch.shape[0], info.index, dtype=np.int64)
        arrays.append(arr)
        coords_parts.append(coords)
    data = dsa.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0]
    coord_vars: dict[str, tuple] = {}
    names = ["example", "experiment", "run", "shard"] + [c for c in COORD_NAMES if has_pos]
    for cname in names:
        if not any(cname in c for c in coords_parts):
            continue
        parts = []
        for c, sch in zip(coords_parts, schemas):
            if cname in c:
                parts.append(c[cname])
            else:  # coordinate absent from this shard: fill with its neutral value
                fill = _FILL[cname]
                parts.append(np.full((sch.shape[0], n_pos), fill, dtype=object if isinstance(fill, str) else type(fill)))
        val = np.concatenate(parts, axis=0)
        if cname in ("token", "word", "example", "experiment", "run"):
            val = val.astype(str)
        coord_vars[cname] = (("example", "position") if val.ndim == 2 else ("example",), val)
    if has_pos:
        coord_vars["position"] = (("position",), np.arange(n_pos))
    parsed = _sites.parse(site)
    da = xr.DataArray(data, dims=first.dims, coords=coord_vars, name=site)
    da = da.assign_coords(site=site)
    if parsed.layer is not None:
        da = da.assign_coords(layer=parsed.layer)
    da.attrs["original_dtype"] = ",".join(sorted({s.original_dtype for s in schemas}))
    return da


def _stack(per_key: list[xr.DataArray], keys: list[str]) -> xr.DataArray:
    parsed = [_sites.parse(k) for k in keys]
    by_layer = all(s.layer is not None for s in parsed) and len(
        {(s.stream, s.component, s.port) for s in parsed}
    ) == 1
    dim = "layer" if by_layer else "site"
    shapes = {(d.dims, d.shape) for d in per_key}
    if len(shapes) != 1:
        desc = ", ".join(f"{k}: {dict(zip(d.dims, d.shape))}" for k, d in zip(keys, per_key))
        raise CacheError(
            f"the matched keys have different shapes and cannot be stacked along {dim!r}: {desc}. "
            "Expected one shape for every key a pattern matches; query the keys separately."
        )
    first = per_key[0]
    data = dsa.stack([d.data for d in per_key], axis=1)
    dims = (first.dims[0], dim, *first.dims[1:])
    coords = {name: c for name, c in first.coords.items() if name not in ("site", "layer")}
    out = xr.DataArray(data, dims=dims, coords=coords)
    if by_layer:
        out = out.assign_coords(layer=[s.layer for s in parsed], site=("layer", keys))
    else:
        out = out.assign_coords(site=keys)
    out.attrs["original_dtype"] = ",".join(sorted({d.attrs["original_dtype"] for d in per_key}))
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
