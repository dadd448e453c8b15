"""Benchmark the activation cache against raw h5py.

1. Throughput: write + read ~``--gb`` GB of float16 activations (shards of 4 keys × (examples,
   positions, hidden)) through ``Store`` vs. plain ``h5py.create_dataset`` files (same data, same
   fsync), printed as ratios (target ≥ 0.5 of raw).
2. Lazy query: many small shards; select one example of one layer from a ``text.layers.*.mlp``
   query and report bytes read and time vs. a full read.

usage: python benchmarks/bench_cache.py [--gb 1.0] [--dir TMPDIR] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from lalm_interp.cache import Batch, Positions, Provenance, Store
from lalm_interp.atomic import fsync_file

N_KEYS, EXAMPLES, POSITIONS, HIDDEN = 4, 16, 256, 4096


def _batch(i: int, rng: np.random.Generator) -> Batch:
    values = {f"text.layers.{l}.mlp": rng.standard_normal((EXAMPLES, POSITIONS, HIDDEN), dtype=np.float32).astype(np.float16) for l in range(N_KEYS)}
    tokens = np.array([[f"t{p}" for p in range(POSITIONS)]] * EXAMPLES)
    return Batch([f"ex{i:05d}_{e}" for e in range(EXAMPLES)], values, {"text": Positions(token=tokens)})


def throughput(tmp: Path, gb: float) -> None:
    shard_bytes = N_KEYS * EXAMPLES * POSITIONS * HIDDEN * 2
    n_shards = max(1, round(gb * 1e9 / shard_bytes))
    rng = np.random.default_rng(0)
    batches = [_batch(i, rng) for i in range(min(n_shards, 2))]  # reuse data: measure I/O, not RNG
    total = n_shards * shard_bytes
    print(f"throughput: {n_shards} shards x {N_KEYS} keys x ({EXAMPLES}, {POSITIONS}, {HIDDEN}) float16 = {total / 1e9:.2f} GB")

    raw_dir = tmp / "raw"
    raw_dir.mkdir()
    t = time.perf_counter()
    for i in range(n_shards):
        b = batches[i % len(batches)]
        path = raw_dir / f"{i}.h5"
        with h5py.File(path, "w") as f:
            for k, v in b.values.items():
                f.create_dataset(k, data=v)
        fsync_file(path)
    raw_w = time.perf_counter() - t

    store = Store(tmp / "store")
    w = store.writer("bench", provenance=Provenance(model="bench"))
    t = time.perf_counter()
    for i in range(n_shards):
        w.write(i, batches[i % len(batches)])
    store_w = time.perf_counter() - t

    t = time.perf_counter()
    n = 0
    for i in range(n_shards):
        with h5py.File(raw_dir / f"{i}.h5", "r") as f:
            for k in f:
                n += f[k][...].nbytes
    raw_r = time.perf_counter() - t

    t = time.perf_counter()
    da = store.get("text.layers.*.mlp")
    m = 0
    for l in range(N_KEYS):  # one layer at a time keeps memory at 1/N_KEYS of the total
        m += da.isel(layer=l).values.nbytes
    store_r = time.perf_counter() - t
    assert m == n == total, (m, n, total)

    t = time.perf_counter()
    direct = store.get("text.layers.*.mlp", chunks=None)  # lazily indexed, no dask: reads straight into NumPy
    m = sum(direct.isel(layer=l).values.nbytes for l in range(N_KEYS))
    store_r_direct = time.perf_counter() - t
    assert m == total

    gbs = lambda s: total / s / 1e9  # noqa: E731
    print(f"  write: raw h5py {gbs(raw_w):6.2f} GB/s  store {gbs(store_w):6.2f} GB/s  ratio {raw_w / store_w:.2f}")
    print(f"  read : raw h5py {gbs(raw_r):6.2f} GB/s  store (default chunks='auto', dask above 256 MiB) "
          f"{gbs(store_r):6.2f} GB/s  ratio {raw_r / store_r:.2f}")
    print(f"  read : raw h5py {gbs(raw_r):6.2f} GB/s  store (chunks=None, lazily indexed) "
          f"{gbs(store_r_direct):6.2f} GB/s  ratio {raw_r / store_r_direct:.2f}")
    print("  (reads are mostly from the page cache for both; the write includes fsync for both)")


def lazy_query(tmp: Path, n_shards: int = 200) -> None:
    store = Store(tmp / "lazy")
    w = store.writer("lazy", provenance=Provenance(model="bench", n_layers={"text": 8}))
    rng = np.random.default_rng(1)
    for i in range(n_shards):
        vals = {f"text.layers.{l}.mlp": rng.standard_normal((4, 32, 256), dtype=np.float32).astype(np.float16) for l in range(8)}
        w.write(i, Batch([f"ex{i:04d}_{e}" for e in range(4)], vals))
    t = time.perf_counter()
    da = store.get("text.layers.*.mlp")
    t_open = time.perf_counter() - t
    store.io.reset()
    t = time.perf_counter()
    sel = da.sel(example="ex0123_2", layer=5).values
    t_sel = time.perf_counter() - t
    sel_bytes, sel_reads = store.io.bytes_read, store.io.reads
    store.io.reset()
    t = time.perf_counter()
    full = da.values
    t_full = time.perf_counter() - t
    print(f"lazy query: {n_shards} shards x 8 layers, array {full.nbytes / 1e6:.1f} MB; building the DataArray took {t_open:.2f} s")
    print(f"  one example x one layer: {sel_bytes} bytes in {sel_reads} chunk read(s), {t_sel * 1e3:.1f} ms")
    print(f"  full read              : {store.io.bytes_read} bytes in {store.io.reads} chunk reads, {t_full * 1e3:.1f} ms")
    print(f"  selected/full bytes = {sel_bytes / store.io.bytes_read:.2e}, time ratio = {t_sel / t_full:.3f}")
    assert sel.shape == (32, 256)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gb", type=float, default=1.0, help="data volume for the throughput test (GB)")
    ap.add_argument("--dir", default=None, help="where to write (default: a fresh temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the files")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_cache_", dir=args.dir))
    try:
        throughput(tmp, args.gb)
        lazy_query(tmp)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"(files under {tmp}{' kept' if args.keep else ' removed'}; cpu count {os.cpu_count()})")


if __name__ == "__main__":
    main()
