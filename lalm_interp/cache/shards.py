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

Integrity: every numeric dataset is written chunked with HDF5's fletcher32 checksum filter, which
HDF5 verifies on every read (a flipped byte makes the read fail instead of returning wrong numbers;
we turn that failure into a :class:`CacheError` naming the shard and dataset). Variable-length string
datasets cannot carry HDF5 filters, so they hold a ``sha256`` attribute of their content, checked
when coordinates are read. The root attribute ``checksums`` says which scheme a shard uses; shards
written before checksums existed have none and still read (unverified). ``verify_shard`` reads every
dataset of a shard (``lalm-interp cache gc --check``).

Open one key with ``xr.open_dataset(path, engine="h5netcdf", group="text.layers.5.mlp")``.
"""

from __future__ import annotations

import hashlib
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
from ..atomic import publish, temp_path
from .batch import Batch, Positions, convert
from .errors import CacheError
from .provenance import Provenance

FORMAT_VERSION = 1
SHARD_RE = re.compile(r"shard-(\d{6,})\.h5\Z")
VALUE = "activation"
COORD_NAMES = ("token", "word", "time_s", "is_subject", "valid")
BOOL_COORDS = ("is_subject", "valid")
STR_COORDS = ("token", "word")
CHECKSUMS = "fletcher32+sha256"
"""Root attribute ``checksums`` of shards written with integrity checks (absent on older shards)."""
SHA_ATTR = "sha256"
"""Attribute of a variable-length string dataset: sha256 of its content (see :func:`strings_digest`)."""
FIX_DAMAGED = (
    "Fix: run `lalm-interp cache gc --check` to list every damaged shard, `lalm-interp cache gc --check "
    "--quarantine` to move them to <cache>/quarantine/, then re-run the writer (e.g. the same `trace run`), "
    "which recomputes the missing shards."
)


def strings_digest(values: Any) -> str:
    """sha256 (hex) of a string array's content: the canonical JSON of its nested list."""
    data = np.asarray(values, dtype=object).tolist()
    return hashlib.sha256(json.dumps(data, ensure_ascii=False).encode("utf-8")).hexdigest()


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


def _stored_digest(var: Any) -> str:
    """Digest of a string variable as HDF5 stored it (read back, so what readers see is what is hashed)."""
    return strings_digest(np.asarray(var._h5ds.asstr()[...], dtype=object))


def damaged(path: Path, dataset: str, detail: str) -> CacheError:
    """The error for a dataset whose checksum does not match its bytes."""
    return CacheError(
        f"shard {path}: dataset '{dataset}' failed its checksum ({detail}); the file's bytes changed after "
        "it was written (disk fault, partial copy, manual edit), so its values cannot be trusted and were "
        f"not returned. Expected every dataset to match the checksum written with it. {FIX_DAMAGED}"
    )


def _read_failed(path: Path, ds: "h5py.Dataset | None", name: str, err: Exception) -> CacheError:
    """A failed dataset read: a checksum mismatch when the dataset has fletcher32, else damage."""
    try:
        checked = ds is not None and bool(ds.fletcher32)
    except Exception:  # pragma: no cover - a handle too broken to ask
        checked = False
    if checked and isinstance(err, OSError):
        return damaged(path, name, f"HDF5 fletcher32 mismatch: {err}")
    return _bad_file(path, err)


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
            f.attrs["checksums"] = CHECKSUMS
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
    ex.attrs[SHA_ATTR] = _stored_digest(ex)
    if arr.ndim == 3:
        pos = g.create_variable("position", ("position",), dtype="int64", fletcher32=True)
        pos[:] = np.arange(arr.shape[1])
    for name, value in coords.items():
        cdims = ("position",) if value.ndim == 1 else ("example", "position")
        if name in STR_COORDS:  # HDF5 cannot filter variable-length strings: a content digest instead
            v = g.create_variable(name, cdims, dtype=h5py.string_dtype())
            v[:] = value
            v.attrs[SHA_ATTR] = _stored_digest(v)
        elif name in BOOL_COORDS:
            v = g.create_variable(name, cdims, dtype="int8", fletcher32=True)
            v[:] = value.astype(np.int8)
            v.attrs["dtype"] = "bool"  # xarray's convention: decoded back to bool
        else:
            v = g.create_variable(name, cdims, dtype="float64", fletcher32=True)
            v[:] = value
            v.attrs["units"] = "s"
    chunks = (max(1, min(int(chunk_examples), n)), *arr.shape[1:])
    v = g.create_variable(VALUE, dims, dtype=arr.dtype, chunks=chunks, fletcher32=True)
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
        ds = None
        try:
            with HANDLES.lock:
                ds = HANDLES.get(self.path)[self.site][VALUE]
                out = ds[key]
        except (OSError, KeyError, RuntimeError) as err:
            raise _read_failed(self.path, ds, f"{self.site}/{VALUE}", err) from err
        if self.counter is not None:
            self.counter.add(out.nbytes)
        return out


def read_coords(path: Path, site: str) -> dict[str, np.ndarray]:
    """Eagerly read a key's coordinates (small): ``example`` ids and per-position coordinates,
    per-position ones always as ``(example, position)`` arrays."""
    ds = None
    name = "example"
    try:
        with HANDLES.lock:
            g = HANDLES.get(path)[site]
            ds = g["example"]
            out: dict[str, np.ndarray] = {"example": _read_strings(path, ds, f"{site}/example")}
            n = out["example"].shape[0]
            for name in COORD_NAMES:
                if name not in g:
                    continue
                ds = g[name]
                if name in STR_COORDS:
                    val = _read_strings(path, ds, f"{site}/{name}")
                elif name in BOOL_COORDS:
                    val = ds[...].astype(bool)
                else:
                    val = ds[...].astype(np.float64)
                if val.ndim == 1:
                    val = np.broadcast_to(val, (n, val.shape[0])).copy()
                out[name] = val
    except (OSError, KeyError, RuntimeError) as err:
        raise _read_failed(path, ds, f"{site}/{name}", err) from err
    return out


def _read_strings(path: Path, ds: "h5py.Dataset", name: str) -> np.ndarray:
    """A string dataset's values, checked against its ``sha256`` attribute when it has one."""
    try:
        val = np.asarray(ds.asstr()[...], dtype=object)
    except UnicodeDecodeError as err:
        raise damaged(path, name, f"its strings are not valid UTF-8: {err}") from err
    want = ds.attrs.get(SHA_ATTR)
    if want is not None and strings_digest(val) != _s(want):
        raise damaged(path, name, "sha256 of the strings does not match")
    return val


@dataclass(frozen=True)
class ShardCheck:
    """What :func:`verify_shard` found in one file: ``damaged`` lists ``(dataset, message)`` pairs
    that failed to read or to match their checksum; ``unverified`` lists datasets holding data
    without any checksum (shards written before checksums existed); ``n_datasets`` were read."""

    path: Path
    damaged: tuple[tuple[str, str], ...] = ()
    unverified: tuple[str, ...] = ()
    n_datasets: int = 0

    @property
    def ok(self) -> bool:
        return not self.damaged


def verify_shard(path: Path) -> ShardCheck:
    """Read every dataset of an HDF5 file written by the cache (a shard or a statistics file) in
    full, chunk by chunk, so HDF5 verifies every fletcher32 checksum; compare string datasets with
    their ``sha256`` attribute. Never raises for damage: it is reported in the :class:`ShardCheck`."""
    path = Path(path)
    bad: list[tuple[str, str]] = []
    unverified: list[str] = []
    names: list[str] = []
    try:
        f = h5py.File(path, "r")
    except (OSError, RuntimeError, ValueError) as err:
        return ShardCheck(path, (("/", str(_bad_file(path, err))),))
    with f:
        try:
            f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        except (OSError, RuntimeError, ValueError) as err:
            bad.append(("/", str(_bad_file(path, err))))
        for name in names:
            try:
                ds = f[name]
                if "not a netCDF variable" in _s(ds.attrs.get("NAME", b"")):
                    continue  # h5netcdf's placeholder for a dimension without a coordinate: no data
                if ds.dtype.kind == "O" or h5py.check_string_dtype(ds.dtype) is not None:
                    if ds.size:
                        _read_strings(path, ds, name)
                        if SHA_ATTR not in ds.attrs:
                            unverified.append(name)
                    continue
                if ds.size == 0 or ds.shape is None:
                    continue
                if ds.chunks is not None:
                    for sel in ds.iter_chunks():
                        ds[sel]
                else:
                    ds[()]
                if not ds.fletcher32 and ds.shape != ():
                    unverified.append(name)
            except CacheError as err:
                bad.append((name, str(err)))
            except (OSError, KeyError, RuntimeError, ValueError, TypeError) as err:
                ds_obj = f.get(name) if name else None
                bad.append((name, str(_read_failed(path, ds_obj if isinstance(ds_obj, h5py.Dataset) else None, name, err))))
    return ShardCheck(path, tuple(bad), tuple(unverified), len(names))
