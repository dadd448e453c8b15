"""Writing one run of one experiment as immutable shards, resumably and concurrently."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..atomic import write_text_atomic
from .batch import Batch, to_numpy
from .errors import CacheError
from .layout import check_name, manifest_path, run_dir
from .provenance import Provenance
from .shards import SHARD_RE, ShardInfo, read_header, shard_name, write_shard

_COMPARED = ("model", "revision", "weights_hash", "adapter_version", "dataset", "spec")


def ensure_manifest(root: Path, experiment: str, provenance: Provenance) -> None:
    """Publish the experiment manifest once; later writers check they agree with it."""
    path = manifest_path(root, experiment)
    if not path.exists():
        write_text_atomic(path, json.dumps({"experiment": experiment, "provenance": provenance.to_dict()}, indent=2, sort_keys=True))
    try:
        stored = Provenance.from_dict(json.loads(path.read_text())["provenance"])
    except (OSError, ValueError, KeyError) as err:
        raise CacheError(f"manifest {path} is unreadable ({err}); expected JSON written by lalm-interp. Remove it to let the next writer recreate it.") from err
    diff = [f for f in _COMPARED if getattr(stored, f) != getattr(provenance, f)]
    if diff:
        detail = "; ".join(f"{f}: cached {getattr(stored, f)!r} vs now {getattr(provenance, f)!r}" for f in diff)
        raise CacheError(
            f"experiment {experiment!r} already holds results with different provenance ({detail}). "
            "Expected every shard of an experiment to come from the same model, dataset and spec. "
            "Use a new experiment name, or delete the old experiment directory."
        )


@dataclass
class ShardWriter:
    """Writes shards of ``experiment``/``run``. Obtain it from :meth:`Store.writer`.

    Fields: ``root`` (cache root), ``experiment``, ``run``, ``provenance``; ``dtype`` on-disk float
    dtype (``None``: float16 stays float16, everything else float32; or ``"float16"``/``"float32"``);
    ``chunk_examples``: examples per HDF5 chunk (1 makes per-example lazy reads cheapest).

    A tracing loop resumes by skipping complete shards::

        w = store.writer("capitals", run="clean", provenance=prov)
        for i, examples in enumerate(batches(dataset, 16)):
            if w.is_complete(i):
                continue
            w.write(i, Batch(examples=ids, values={site: acts, ...}, positions=...))
    """

    root: Path
    experiment: str
    run: str
    provenance: Provenance
    dtype: str | None = None
    chunk_examples: int = 1

    def __post_init__(self) -> None:
        check_name("experiment", self.experiment)
        check_name("run", self.run)
        ensure_manifest(self.root, self.experiment, self.provenance)
        self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def dir(self) -> Path:
        return run_dir(self.root, self.experiment, self.run)

    def path(self, index: int) -> Path:
        return self.dir / shard_name(index)

    def complete(self) -> set[int]:
        """Indices of shards already published (complete by construction)."""
        return {int(m.group(1)) for p in self.dir.iterdir() if (m := SHARD_RE.match(p.name))}

    def is_complete(self, index: int) -> bool:
        return self.path(index).exists()

    def missing(self, indices: Iterable[int]) -> list[int]:
        done = self.complete()
        return [i for i in indices if i not in done]

    def _reference(self) -> ShardInfo | None:
        for p in sorted(self.dir.iterdir()):
            if SHARD_RE.match(p.name):
                try:
                    return read_header(p)
                except CacheError:
                    continue
        return None

    def write(self, index: int, batch: Batch, *, exist_ok: bool = False) -> bool:
        """Publish shard ``index``. Raises if it is already complete unless ``exist_ok`` (then the
        existing shard is kept and ``False`` returned). Checks key shapes against an existing shard."""
        if index < 0:
            raise CacheError(f"shard index must be >= 0, got {index}.")
        final = self.path(index)
        if final.exists():
            if exist_ok:
                return False
            raise CacheError(
                f"shard {index} of {self.experiment}/{self.run} is already complete ({final}); shards are "
                "immutable. Skip it with writer.is_complete(index) to resume, or pass exist_ok=True."
            )
        ref = self._reference()
        if ref is not None:
            self._check_schema(ref, batch)
        won = write_shard(
            final,
            batch,
            experiment=self.experiment,
            run=self.run,
            index=index,
            provenance=self.provenance,
            dtype=self.dtype,
            chunk_examples=self.chunk_examples,
        )
        if not won and not exist_ok:
            raise CacheError(
                f"shard {index} of {self.experiment}/{self.run} was published by another writer while this "
                "one was writing it; the first copy is kept. Give concurrent writers disjoint shard indices."
            )
        return won

    def _check_schema(self, ref: ShardInfo, batch: Batch) -> None:
        for key, site in zip(batch.values, batch.sites()):
            if site not in ref.keys:
                continue
            shape = tuple(getattr(batch.values[key], "shape", None) or to_numpy(batch.values[key]).shape)
            want = ref.keys[site]
            if len(shape) != len(want.shape) or shape[-1] != want.hidden:
                raise CacheError(
                    f"schema mismatch for key {site} in {self.experiment}/{self.run}: shard {ref.index} holds "
                    f"{want.dims} with hidden size {want.hidden}, the new batch has shape {shape}. Expected "
                    "the same hidden size for a key across shards. Is this the same model? Use a new experiment."
                )
