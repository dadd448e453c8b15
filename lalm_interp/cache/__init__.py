"""The activation cache: labelled activations in plain HDF5/netCDF shards, keyed by sites.

Write (from a tracing run)::

    from lalm_interp.cache import Batch, Positions, Provenance, Store

    store = Store()                                   # ./cache, or $LALM_INTERP_CACHE
    w = store.writer("capitals", run="clean", provenance=Provenance(model="Qwen/Qwen2-Audio-7B",
                     revision="abc123", dataset="capitals-v1", n_layers={"audio": 32, "text": 32}))
    for i, batch in enumerate(batches):
        if not w.is_complete(i):                      # resume: complete shards are skipped
            w.write(i, Batch(examples=ids, values={"text.layers.5.mlp": acts},
                             positions={"text": Positions(token=tokens, is_subject=mask)}))

Read::

    da = store.get("text.layers.5:15.mlp", run="clean", model="Qwen/Qwen2-Audio-7B")
    da.sel(layer=7, example="ex-003")                 # lazy until .values / .load()

Statistics for editors::

    stats = store.key_stats("text.layers.8.mlp.down@in", model=fingerprint, corpus="wiki:100k",
                            compute=lambda: key_batches())
    P = nullspace_projector(stats, threshold=2e-2)   # AlphaEdit's projector (absolute cut)
"""

from .activations import Activations
from .batch import Batch, Positions
from .catalog import Catalog, CorruptShard
from .errors import CacheError
from .gc import GcReport
from .layout import ENV_VAR, resolve_root
from .provenance import Provenance, model_fingerprint
from .shards import KeySchema, ShardInfo
from .stats import SecondMoment, nullspace_projector
from .store import ExperimentInfo, KeyInfo, Store
from .writer import ShardWriter

__all__ = [
    "Activations",
    "Batch",
    "CacheError",
    "Catalog",
    "CorruptShard",
    "ENV_VAR",
    "ExperimentInfo",
    "GcReport",
    "KeyInfo",
    "KeySchema",
    "Positions",
    "Provenance",
    "SecondMoment",
    "ShardInfo",
    "ShardWriter",
    "Store",
    "model_fingerprint",
    "nullspace_projector",
    "resolve_root",
]
