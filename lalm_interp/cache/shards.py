"""One shard = one immutable HDF5 file holding a batch of examples for every key of a run.

File layout (netCDF-4 via ``h5netcdf``, so plain ``xarray`` and plain ``h5py`` both read it)::

    /                               attrs: lalm_interp_format, experiment, run, shard, n_examples,
                                           provenance (JSON), keys (JSON schema), created, and the
                                           provenance fields flattened (model, revision, ...)
    /<site>/                        one group per key, e.g. "text.layers.5.mlp.down@in"
        example      (example)              example ids (str)           dimension coordinate
        position     (position)             0..P-1 (int64)              dimension coordinate
        token|word   (example, position)    str                         when given
        time_s       (example, position) or (position)  float64         when given
        is_subject   (example, position)    int8 + attr dtype="bool"    xarray decodes to bool
        valid        (example, position)    int8 + attr dtype="bool"
        activation   (example, position, hidden)  float16|float32, attrs: site, original_dtype

Open one key with ``xr.open_dataset(path, engine="h5netcdf", group="text.layers.5.mlp")``.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import h5netcdf
import h5py
import numpy as np

from .. import sites as _sites
from .atomic import publish, temp_path
from .batch import Batch, Positions, convert
from .errors import CacheError
from .provenance import Provenance

FORMAT_VERSION = 1
SHARD_RE = re.compile(r"shard-(\d{6,})\.h5\Z")
VALUE = "activation"
COORD_NAMES = ("token", "word", "time_s", "is_subject", "valid")
BOOL_COORDS = ("is_subject", "valid")
STR_COORDS = ("token", "word")


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.h5"


@dataclass(frozen=True)
class KeySchema:
    """What one key holds in one shard: ``dims`` and ``shape`` of its activation, on-disk ``dtype``,
    the ``original_dtype`` it was given in, the HDF5 ``chunks`` and which coordinates exist."""

    site: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    original_dtype: str
    chunks: tuple[int, ...]
    coords: tuple[str, ...] = ()

    @property
    def hidden(self) -> int:
        return self.shape[-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "dims": list(self.dims),
            "shape": list(self.shape),
            "dtype": self.dtype,
            "original_dtype": self.original_dtype,
            "chunks": list(self.chunks),
            "coords": list(self.coords),
        }

    @classmethod
    def from_dict(cls, site: str, d: Mapping[str, Any]) -> "KeySchema":
        return cls(
            site,
            tuple(d["dims"]),
            tuple(int(i) for i in d["shape"]),
            str(d["dtype"]),
            str(d["original_dtype"]),
            tuple(int(i) for i in d["chunks"]),
            tuple(d.get("coords", ())),
        )


@dataclass(frozen=True)
class ShardInfo:
    """The header of one complete shard, read from its root attributes only (cheap)."""

    path: Path
    experiment: str
    run: str
    index: int
    n_examples: int
    provenance: Provenance
    keys: Mapping[str, KeySchema] = field(default_factory=dict)
    created: float = 0.0

    __hash__ = None  # type: ignore[assignment]


def _bad_file(path: Path, err: Exception) -> CacheError:
    return CacheError(
        f"shard {path} cannot be read ({type(err).__name__}: {err}); it is truncated or corrupt. "
        "Complete shards are only ever published whole, so the file was damaged afterwards (disk "
        "full, partial copy, manual edit). Expected a readable HDF5 shard. Fix: run "
        "`lalm-interp cache gc --quarantine` to move it aside, then re-run the writer, which "
        "rewrites the missing shard."
    )


def read_header(path: Path) -> ShardInfo:
    """Read a shard's header. Raises :class:`CacheError` for truncated/corrupt/foreign files."""
    path = Path(path)
    try:
        with HANDLES.lock:
            attrs = dict(HANDLES.get(path).attrs)
    except (OSError, KeyError, RuntimeError, ValueError) as err:
        raise _bad_file(path, err) from err
    if "lalm_interp_format" not in attrs:
        raise CacheError(
            f"{path} is an HDF5 file but not a lalm-interp shard (no 'lalm_interp_format' attribute). "
            "Expected only shards under <cache>/experiments/<experiment>/runs/<run>/. Move the file elsewhere."
        )
    try:
        keys = json.loads(_s(attrs["keys"]))
        return ShardInfo(
            path=path,
            experiment=_s(attrs["experiment"]),
            run=_s(attrs["run"]),
            index=int(_scalar(attrs["shard"])),
            n_examples=int(_scalar(attrs["n_examples"])),
            provenance=Provenance.from_dict(json.loads(_s(attrs["provenance"]))),
            keys={k: KeySchema.from_dict(k, v) for k, v in keys.items()},
            created=float(_scalar(attrs.get("created", 0.0))),
        )
    except (KeyError, ValueError, TypeError) as err:
        raise _bad_file(path, err) from err


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _scalar(v: Any) -> Any:
    """netCDF stores numeric attributes as 1-element arrays; unwrap them."""
    arr = np.asarray(v)
    return arr.reshape(-1)[0].item() if arr.size == 1 else v


def write_shard(
    final: Path,
    batch: Batch,
    *,
    experiment: str,
    run: str,
    index: int,
    provenance: Provenance,
    dtype: str | None = None,
    chunk_examples: int = 1,
) -> bool:
    """Write ``batch`` to a temp file next to ``final`` and publish it atomically.

    Returns ``False`` (and leaves the existing file alone) when ``final`` was published by another
    writer meanwhile. Raises :class:`CacheError` for inconsistent batches.
    """
    sites = batch.sites()
    if not sites:
        raise CacheError("a shard needs at least one key; Batch.values is empty.")
    examples = [str(e) for e in batch.examples]
    n = len(examples)
    if n == 0:
        raise CacheError("a shard needs at least one example; Batch.examples is empty.")
    if len(set(examples)) != n:
        dup = sorted({e for e in examples if examples.count(e) > 1})[:5]
        raise CacheError(f"example ids must be unique within a shard; duplicated: {dup}.")

    prepared: list[tuple[str, np.ndarray, str, dict[str, np.ndarray]]] = []
    for key, site in zip(batch.values, sites):
        arr, original = convert(batch.values[key], site, dtype)
        if arr.ndim not in (2, 3) or arr.shape[0] != n:
            raise CacheError(
                f"activations for {site} have shape {tuple(arr.shape)}; expected (example={n}, position, "
                f"hidden) or (example={n}, hidden), one row per example id."
            )
        coords: dict[str, np.ndarray] = {}
        if arr.ndim == 3:
            pos = batch.positions_for(site)
            coords = (pos or Positions()).coords(n, arr.shape[1], f"shard {index} key {site}")
        prepared.append((site, arr, original, coords))

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    schema: dict[str, dict[str, Any]] = {}
    try:
        with h5netcdf.File(tmp, "w") as f:
            for site, arr, original, coords in prepared:
                schema[site] = _write_key(f, site, arr, original, coords, examples, chunk_examples).to_dict()
            f.attrs["lalm_interp_format"] = FORMAT_VERSION
            f.attrs["experiment"] = experiment
            f.attrs["run"] = run
            f.attrs["shard"] = int(index)
            f.attrs["n_examples"] = n
            f.attrs["created"] = time.time()
            f.attrs["provenance"] = provenance.to_json()
            f.attrs["keys"] = json.dumps(schema, sort_keys=True)
            for name, value in provenance.to_dict().items():
                if isinstance(value, str):
                    f.attrs[name] = value
        return publish(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_key(
    f: h5netcdf.File,
    site: str,
    arr: np.ndarray,
    original: str,
    coords: Mapping[str, np.ndarray],
    examples: list[str],
    chunk_examples: int,
) -> "KeySchema":
    n = arr.shape[0]
    g = f.create_group(site)
    dims: tuple[str, ...] = ("example", "position", "hidden") if arr.ndim == 3 else ("example", "hidden")
    g.dimensions = dict(zip(dims, arr.shape))
    ex = g.create_variable("example", ("example",), dtype=h5py.string_dtype())
    ex[:] = np.array(examples, dtype=object)
    if arr.ndim == 3:
        pos = g.create_variable("position", ("position",), dtype="int64")
        pos[:] = np.arange(arr.shape[1])
    for name, value in coords.items():
        cdims = ("position",) if value.ndim == 1 else ("example", "position")
        if name in STR_COORDS:
            v = g.create_variable(name, cdims, dtype=h5py.string_dtype())
            v[:] = value
        elif name in BOOL_COORDS:
            v = g.create_variable(name, cdims, dtype="int8")
            v[:] = value.astype(np.int8)
            v.attrs["dtype"] = "bool"  # xarray's convention: decoded back to bool
        else:
            v = g.create_variable(name, cdims, dtype="float64")
            v[:] = value
            v.attrs["units"] = "s"
    chunks = (max(1, min(int(chunk_examples), n)), *arr.shape[1:])
    v = g.create_variable(VALUE, dims, dtype=arr.dtype, chunks=chunks)
    v[...] = arr
    v.attrs["site"] = site
    v.attrs["original_dtype"] = original
    if coords:
        v.attrs["coordinates"] = " ".join(coords)
    g.attrs["site"] = site
    g.attrs["original_dtype"] = original
    parsed = _sites.parse(site)
    if parsed.layer is not None:
        g.attrs["layer"] = int(parsed.layer)
    return KeySchema(site, dims, tuple(arr.shape), arr.dtype.name, original, chunks, tuple(coords))


# ----------------------------------------------------------------------------- lazy reading
class IOCounter:
    """Bytes and chunk reads done by lazy arrays of one store (for benchmarks and tests)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes_read = 0
        self.reads = 0

    def add(self, nbytes: int) -> None:
        with self._lock:
            self.bytes_read += int(nbytes)
            self.reads += 1

    def reset(self) -> None:
        with self._lock:
            self.bytes_read = 0
            self.reads = 0


class _Handles:
    """A small per-process LRU of read-only h5py handles to complete (immutable) shards, keyed by
    (path, mtime, size) so a file replaced after quarantine is reopened. One lock serialises
    access (h5py serialises HDF5 calls anyway) so a handle is never closed mid-read."""

    def __init__(self, capacity: int = 64):
        self.capacity = capacity
        self.lock = threading.RLock()
        self._files: "OrderedDict[tuple, h5py.File]" = OrderedDict()
        self._pid = os.getpid()

    def get(self, path: Path) -> h5py.File:
        if self._pid != os.getpid():  # forked: never share HDF5 handles with a parent process
            self._files.clear()
            self._pid = os.getpid()
        st = os.stat(path)
        key = (str(path), st.st_mtime_ns, st.st_size)
        f = self._files.get(key)
        if f is not None and f.id.valid:
            self._files.move_to_end(key)
            return f
        for stale in [k for k in self._files if k[0] == key[0]]:  # same path, file changed
            self._files.pop(stale).close()
        f = h5py.File(path, "r")
        self._files[key] = f
        while len(self._files) > self.capacity:
            _, old = self._files.popitem(last=False)
            old.close()
        return f

    def clear(self) -> None:
        with self.lock:
            for f in self._files.values():
                f.close()
            self._files.clear()


HANDLES = _Handles()


class LazyActivation:
    """An array-like over one key of one shard, read through the shared handle cache only when
    sliced (no handle is held by the object, so dask graphs stay picklable)."""

    def __init__(self, path: Path, schema: KeySchema, counter: IOCounter | None = None):
        self.path = Path(path)
        self.site = schema.site
        self.shape = schema.shape
        self.dtype = np.dtype(schema.dtype)
        self.ndim = len(schema.shape)
        self.counter = counter

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            with HANDLES.lock:
                out = HANDLES.get(self.path)[self.site][VALUE][key]
        except (OSError, KeyError, RuntimeError) as err:
            raise _bad_file(self.path, err) from err
        if self.counter is not None:
            self.counter.add(out.nbytes)
        return out


def read_coords(path: Path, site: str) -> dict[str, np.ndarray]:
    """Eagerly read a key's coordinates (small): ``example`` ids and per-position coordinates,
    per-position ones always as ``(example, position)`` arrays."""
    try:
        with HANDLES.lock:
            g = HANDLES.get(path)[site]
            out: dict[str, np.ndarray] = {"example": np.asarray(g["example"].asstr()[...], dtype=object)}
            n = out["example"].shape[0]
            for name in COORD_NAMES:
                if name not in g:
                    continue
                ds = g[name]
                if name in STR_COORDS:
                    val = np.asarray(ds.asstr()[...], dtype=object)
                elif name in BOOL_COORDS:
                    val = ds[...].astype(bool)
                else:
                    val = ds[...].astype(np.float64)
                if val.ndim == 1:
                    val = np.broadcast_to(val, (n, val.shape[0])).copy()
                out[name] = val
    except (OSError, KeyError, RuntimeError) as err:
        raise _bad_file(path, err) from err
    return out
