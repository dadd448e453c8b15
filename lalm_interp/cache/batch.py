"""What one shard holds: a batch of examples, activations per site and per-position coordinates.

Activations are ``(example, position, hidden)`` arrays (or ``(example, hidden)`` for sites read at
one position). Float16 stays float16; bfloat16, float32 and float64 are stored as float32 unless
the writer asks for ``dtype="float16"``. netCDF has no bfloat16, so the original dtype is recorded
in the attribute ``original_dtype``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .. import sites as _sites
from .errors import CacheError

try:  # jaxtyping only annotates; it is never required at runtime
    from jaxtyping import Bool, Float, Shaped
except ImportError:  # pragma: no cover
    Bool = Float = Shaped = None  # type: ignore[assignment]

STORAGE_DTYPES = ("float16", "float32")


def dtype_name(x: Any) -> str:
    """``bfloat16`` for ``torch.bfloat16``, ``float32`` for ``np.float32`` ..."""
    dt = getattr(x, "dtype", None)
    if dt is None:
        return np.asarray(x).dtype.name
    text = str(dt)
    return text.split(".", 1)[1] if text.startswith("torch.") else np.dtype(dt).name


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy view of an array or torch tensor (bfloat16 is widened to float32 on the way)."""
    if type(x).__module__.startswith("torch"):
        import torch

        t = x.detach()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.cpu().numpy()
    return np.asarray(x)


def storage_dtype(original: str, requested: str | None) -> np.dtype:
    """The on-disk dtype for values of dtype ``original`` (see module docstring)."""
    if requested is not None:
        if requested not in STORAGE_DTYPES:
            raise CacheError(
                f"storage dtype {requested!r} is not supported; expected one of {list(STORAGE_DTYPES)} "
                "(netCDF/HDF5 have no bfloat16). Pass dtype='float16' to halve the size, or leave it None."
            )
        return np.dtype(requested)
    return np.dtype("float16") if original == "float16" else np.dtype("float32")


def convert(values: Any, site: str, requested: str | None) -> tuple[np.ndarray, str]:
    """Values as a NumPy array in their storage dtype, plus the original dtype name."""
    original = dtype_name(values)
    arr = to_numpy(values)
    if arr.dtype.kind != "f":
        raise CacheError(
            f"activations for {site} have dtype {original}; the cache stores floating activations "
            "(float16/bfloat16/float32/float64). Cast masks or ids to coordinates instead."
        )
    target = storage_dtype(original, requested)
    if arr.dtype == target:
        return arr, original
    with np.errstate(over="ignore"):
        out = arr.astype(target)
    if target == np.float16:
        overflow = np.isinf(out) & np.isfinite(arr)
        if overflow.any():
            big = float(np.abs(arr[overflow]).max())
            raise CacheError(
                f"activations for {site} ({original}) reach |x| = {big:.4g}, beyond float16's max 65504; "
                "storing them as float16 would turn them into inf. Store as float32 (dtype=None or "
                "'float32'). See docs/gotchas/cache-dtypes.md."
            )
    return out, original


@dataclass(frozen=True)
class Positions:
    """Per-position coordinates of one stream (or one site) for one batch.

    Every field is ``(example, position)`` shaped, except ``time_s`` which may also be ``(position,)``
    when all examples share frame times. ``None`` fields are not stored.

    - ``token``: token strings (text stream).
    - ``word``: the spoken word each audio frame falls in (``""`` between words).
    - ``time_s``: start time of each audio frame in seconds.
    - ``is_subject``: ``True`` where the position belongs to the subject span.
    - ``valid``: ``False`` on padding; defaults to all ``True``. Padding added when shards of
      different lengths are concatenated is also ``valid == False``.
    """

    token: Shaped[np.ndarray, "example position"] | None = None
    word: Shaped[np.ndarray, "example position"] | None = None
    time_s: Float[np.ndarray, "example position"] | Float[np.ndarray, "position"] | None = None
    is_subject: Bool[np.ndarray, "example position"] | None = None
    valid: Bool[np.ndarray, "example position"] | None = None

    def coords(self, n_examples: int, n_positions: int, where: str) -> dict[str, np.ndarray]:
        """The coordinates as checked NumPy arrays (``valid`` filled in)."""
        out: dict[str, np.ndarray] = {}
        for name in ("token", "word", "time_s", "is_subject", "valid"):
            value = getattr(self, name)
            if value is None:
                if name == "valid":
                    out[name] = np.ones((n_examples, n_positions), dtype=bool)
                continue
            arr = to_numpy(value)
            ok_shapes = [(n_examples, n_positions)] + ([(n_positions,)] if name == "time_s" else [])
            if arr.shape not in ok_shapes:
                raise CacheError(
                    f"{where}: coordinate {name!r} has shape {arr.shape}, expected "
                    f"{' or '.join(map(str, ok_shapes))} (example, position) to match the activations."
                )
            if name in ("token", "word"):
                arr = arr.astype(str).astype(object)
            elif name in ("is_subject", "valid"):
                arr = arr.astype(bool)
            else:
                arr = arr.astype(np.float64)
            out[name] = arr
        return out


@dataclass(frozen=True)
class Batch:
    """One shard's worth of results.

    - ``examples``: example ids, one per row (strings; unique within an experiment run).
    - ``values``: site (string or :class:`~lalm_interp.sites.Site`, concrete) → activations shaped
      ``(example, position, hidden)`` or ``(example, hidden)``; NumPy arrays or torch tensors.
    - ``positions``: coordinates per stream (``"text"``, ``"audio"``) or per site string (which
      wins over its stream), e.g. ``{"text": Positions(token=..., is_subject=...),
      "audio.conv1": Positions(time_s=...)}``.
    """

    examples: Sequence[str]
    values: Mapping[Any, Any]
    positions: Mapping[str, Positions] = field(default_factory=dict)

    def sites(self) -> list[str]:
        out = []
        for key in self.values:
            site = _sites.parse(key)
            if site.is_pattern:
                raise CacheError(
                    f"cache key {site} is a pattern; written keys must be concrete sites like "
                    "'text.layers.5.mlp' (patterns are for queries)."
                )
            out.append(str(site))
        if len(set(out)) != len(out):
            raise CacheError(f"batch has duplicate keys after parsing: {sorted(out)}; give each site once.")
        return out

    def positions_for(self, site: str) -> Positions | None:
        if site in self.positions:
            return self.positions[site]
        return self.positions.get(_sites.parse(site).stream)
