"""Activations of one spoken prompt, in memory and labelled: what ``AudioLM.run_with_cache`` returns.

The role TransformerLens's ``ActivationCache`` plays: one object, indexed by site, holding one
:class:`xarray.DataArray` per concrete site with plain dims ``(position, hidden)``:

- ``position``: integer positions 0..T-1 on the site's own time axis (audio frames at the site's
  rate, or LLM sequence positions);
- coordinates on ``position``: ``time_s`` (centre of each audio frame in seconds; on LLM positions
  the audio tokens' centres and NaN elsewhere), ``token`` (the token strings, LLM positions only),
  ``valid`` (``False`` on the padding frames of the encoder window), and, when word timings were
  given, ``word`` and ``is_subject``;
- scalar coordinates ``site`` and ``layer`` (layer sites), so per-layer arrays stack along ``layer``.

``acts["text.layers.5.mlp"]`` is one array; a pattern (``acts["text.layers.*.mlp"]``) is expanded
over the sites held, as sites expand against a model, and stacked along ``layer`` (or along ``site``
when the matches are not one component over layers). Persistence is the store's job:
``Store.put(acts, experiment)`` writes one shard and ``Store.activations(experiment, example)``
reads back an identical object (:meth:`Activations.identical`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np
import xarray as xr

from .. import sites as _sites
from .batch import Batch, Positions
from .errors import CacheError
from .provenance import Provenance

EXTRA_KEY = "lalm_interp_activations"
"""``Provenance.extra`` key under which a shard written by ``Store.put`` keeps the object's attrs."""
COORDS = ("token", "word", "time_s", "is_subject", "valid")
"""Per-position coordinates an :class:`Activations` array may carry (those the store keeps)."""


@dataclass(eq=False)
class Activations(Mapping[str, xr.DataArray]):
    """Per-site activations of one example; a read-only mapping ``site string → DataArray``.

    arrays: concrete site string (``text.layers.5.mlp``) → ``(position, hidden)`` DataArray.
    attrs: what produced them: ``example`` (id), ``model``, ``revision``, ``weights_hash``,
        ``adapter`` (name@version), ``instruction`` and ``n_layers`` (layers per stream).
    """

    arrays: dict[str, xr.DataArray]
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.arrays = {str(_sites.parse(k)): v for k, v in self.arrays.items()}

    # ------------------------------------------------------------------ mapping
    def __getitem__(self, key: "str | _sites.Site") -> xr.DataArray:
        p = _sites.parse(key)
        if not p.is_pattern:
            s = str(p)
            if s in self.arrays:
                return self.arrays[s]
            raise CacheError(f"site {s} is not among the {len(self.arrays)} sites these activations hold: "
                             f"{self._shown()}.{_sites.suggest(s, list(self.arrays))} Fix: ask run_with_cache "
                             "for it (sites=[...]), or pick one of those.")
        found = self.match(p)
        if not found:
            raise CacheError(f"pattern {p} matches none of the sites these activations hold: {self._shown()}. "
                             "Expected a pattern over them (e.g. 'text.layers.*.mlp').")
        return stack([self.arrays[s] for s in found], str(p))

    def match(self, pattern: "str | _sites.Site") -> list[str]:
        """The held sites a site pattern matches, in the order they were read (forward order)."""
        p = _sites.parse(pattern)
        n = dict(self.attrs.get("n_layers") or {}).get(p.stream)
        return [s for s in self.arrays if _sites.matches(p, s, n)]

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)

    def __contains__(self, key: object) -> bool:
        try:
            return str(_sites.parse(key)) in self.arrays  # type: ignore[arg-type]
        except Exception:
            return False

    @property
    def sites(self) -> list[str]:
        """The concrete sites held, in forward order."""
        return list(self.arrays)

    @property
    def example(self) -> str:
        return str(self.attrs.get("example", ""))

    # ------------------------------------------------------------------ comparison, display
    def identical(self, other: "Activations") -> bool:
        """Same sites, same attrs, and every array identical (values, dims, coordinates, attrs)."""
        return (isinstance(other, Activations) and list(self.arrays) == list(other.arrays)
                and _plain(self.attrs) == _plain(other.attrs)
                and all(self.arrays[s].identical(other.arrays[s]) for s in self.arrays))

    def __eq__(self, other: object) -> bool:
        return self.identical(other) if isinstance(other, Activations) else NotImplemented  # type: ignore[return-value]

    __hash__ = None  # type: ignore[assignment]

    def _shown(self) -> str:
        keys = list(self.arrays)
        return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")

    def __repr__(self) -> str:
        a = self.attrs
        head = f"Activations({len(self.arrays)} sites, example {self.example!r}, model {a.get('model', '?')!r})"
        if not self.arrays:
            return head
        width = max(len(s) for s in self.arrays)
        lines = []
        for s, da in list(self.arrays.items())[:20]:
            shape = ", ".join(f"{d}: {n}" for d, n in da.sizes.items())
            extra = [c for c in COORDS if c in da.coords]
            lines.append(f"  {s:<{width}}  ({shape})  {da.dtype}  coords: {', '.join(extra)}")
        if len(self.arrays) > 20:
            lines.append(f"  ... and {len(self.arrays) - 20} more")
        return "\n".join([head, *lines])

    # ------------------------------------------------------------------ persistence (used by Store)
    def provenance(self, **fields: Any) -> Provenance:
        """The :class:`Provenance` of a shard holding these activations (``fields`` win)."""
        a = self.attrs
        base = {"model": a.get("model") or "unknown", "revision": a.get("revision", ""),
                "weights_hash": a.get("weights_hash", ""), "adapter_version": a.get("adapter", ""),
                "n_layers": a.get("n_layers") or {}}
        base.update({k: v for k, v in fields.items() if v not in (None, "")})
        extra = dict(base.pop("extra", {}) or {})
        extra[EXTRA_KEY] = json.dumps({"attrs": _plain(a), "sites": list(self.arrays)}, sort_keys=True)
        return Provenance(**base, extra=extra)

    def to_batch(self) -> Batch:
        """One example: a :class:`~lalm_interp.cache.Batch` for ``ShardWriter.write``."""
        values, positions = {}, {}
        for s, da in self.arrays.items():
            if da.dims != ("position", "hidden"):
                raise CacheError(f"activations at {s} have dims {da.dims}; the store keeps ('position', 'hidden') "
                                 "arrays. Fix: store the arrays run_with_cache returned, unchanged.")
            values[s] = da.values[None]
            coords = {c: np.asarray(da.coords[c].values)[None] for c in COORDS if c in da.coords}
            positions[s] = Positions(**coords)
        return Batch(examples=[self.example or "example"], values=values, positions=positions)

    @classmethod
    def from_store(cls, arrays: Mapping[str, xr.DataArray], provenance: Provenance) -> "Activations":
        """Rebuild from one-example arrays read back from a shard (``Store.activations``)."""
        meta = json.loads(provenance.extra.get(EXTRA_KEY, "{}") or "{}")
        attrs = meta.get("attrs") or {"model": provenance.model, "revision": provenance.revision,
                                      "weights_hash": provenance.weights_hash,
                                      "adapter": provenance.adapter_version, "n_layers": dict(provenance.n_layers)}
        order = [s for s in meta.get("sites", []) if s in arrays]
        order += [s for s in arrays if s not in order]
        out = {}
        for s, da in ((k, arrays[k]) for k in order):
            da = da.isel(example=0).drop_vars(["example", "experiment", "run", "shard", "site", "layer"],
                                              errors="ignore")
            da = xr.DataArray(np.asarray(da.values), dims=da.dims,
                              coords={k: (v.dims, np.asarray(v.values)) for k, v in da.coords.items()},
                              name=s)
            out[s] = label(da, s)
        return cls(out, attrs)


def label(da: xr.DataArray, site: str) -> xr.DataArray:
    """``da`` with the scalar coordinates ``site`` (and ``layer`` for layer sites) and its name set;
    the one definition both :func:`capture`-style readers and the store use."""
    s = _sites.parse(site)
    coords: dict[str, Any] = {"site": str(s)}
    if s.layer is not None and s.is_layer_site:
        coords["layer"] = int(s.layer)
    da = da.assign_coords(coords)
    da.name = str(s)
    da.attrs = {}
    return da


def stack(arrays: list[xr.DataArray], name: str) -> xr.DataArray:
    """Several sites as one array: along ``layer`` when they are one component over layers (same
    shape), else along ``site``; one array is returned as it is."""
    if len(arrays) == 1:
        return arrays[0]
    parsed = [_sites.parse(str(a.coords["site"].values)) for a in arrays]
    by_layer = (all(p.layer is not None and p.is_layer_site for p in parsed)
                and len({(p.stream, p.component, p.port) for p in parsed}) == 1)
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        desc = ", ".join(f"{p}: {a.shape}" for p, a in zip(parsed, arrays))
        raise CacheError(f"the sites matched by {name} have different shapes and cannot be stacked: {desc}. "
                         "Expected one shape for every site a pattern matches; index them one by one.")
    if by_layer:
        out = xr.concat(arrays, dim="layer", coords="different", compat="equals", join="exact")
    else:
        out = xr.concat([a.drop_vars("layer", errors="ignore") for a in arrays], dim="site",
                        coords="different", compat="equals", join="exact")
    out.name = name
    return out


def _plain(obj: Any) -> Any:
    """JSON-shaped copy (tuples → lists, numpy scalars → Python) so attrs compare after a round trip."""
    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
