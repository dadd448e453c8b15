"""Per-example causal-tracing results a notebook user can slice, and their average over examples.

One example's result is an :class:`xarray.DataTree`::

    /                      p_clean, p_corrupt, p:<patch> (scalars); attrs: example, target, words,
    │                      experiment (the spec JSON), adapter, forwards, run_key, ...
    ├── text.mlp           ie (layer, position); coords layer (int), position (int), label (str)
    └── audio.resid.each   ie (layer, position); + time_s, word, is_subject on position

one child node per restoration family (the node name is ``Restore.label``), with plain dimension
names, so the usual xarray idioms work::

    res["text.resid"].ie.sel(layer=4)              # IE over positions at centre layer 4
    res["text.mlp"].ie.sel(label="last_token")     # span-mode families: select by span name
    res["audio.resid.each"].ie.plot()              # a layer × position heatmap
    res["audio.resid.each"].ie.swap_dims(position="time_s").sel(time_s=0.5, method="nearest")

``position`` is the integer index of the restored position group: the frame/token index for
``positions="each"``, the index of the span in ``Restore.positions`` otherwise; ``label`` carries
the position key of format 2 (the span name, ``words<i>-<j>``, ``all``, or the index as a string)
and is indexed, so ``.sel(label=...)`` works. Files are netCDF4 with one group per family
(:func:`write_example`, :func:`read_example`); :func:`read_example` also reads the format-2 files
of earlier versions (one flat Dataset with ``ie:<family>`` variables over ``layer:<family>`` /
``position:<family>`` dims) and converts them, so old runs stay readable.

:func:`aggregate` stacks many examples into the AIE arrays (``example``, ``family``, ``span``,
``layer``); see ``docs/usage/tracing.md``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import xarray as xr

from ..atomic import atomic_write
from ..sites import Site
from ..specs import SpecError

FORMAT = 3
"""The per-example file format this module writes (format 2: one flat Dataset, ``ie:<family>``)."""

IE = "ie"
"""The name of the indirect-effect variable in every family node."""

IE_ATTRS = {"long_name": "IE (P_restored − P_corrupt)", "description":
            "indirect effect: P(object) with the clean values restored at (layer window, position), "
            "minus P(object) in the corrupted run"}
SCALAR_ATTRS = {"p_clean": {"long_name": "P_clean"}, "p_corrupt": {"long_name": "P_corrupt"}}


@dataclass(frozen=True, repr=False)
class FamilyGrid:
    """The IE grid of one restoration family of one example (what :func:`example_result` stores).

    family: ``Restore.label`` (``"text.resid"``, or the Restore's ``name``).
    site: the Restore's ``at`` pattern (``"text.layers.*.resid"``).
    positions: the Restore's positions mode: ``"each"``, ``"all"`` or the span names joined by
        ``","`` (:func:`positions_mode`).
    layers: the centre layers (rows of ``values``).
    keys: the position keys (columns of ``values``): span names, ``words<i>-<j>``, ``all``, or
        ``str(index)`` for ``"each"``.
    values: ``(len(layers), len(keys))`` IE = P_restored − P_corrupt.
    coords: extra coordinates over the positions, ``{name: ("position", values)}`` (``time_s``,
        ``word``, ``token``, ``is_audio``, ``is_subject``; empty for span modes).
    """

    family: str
    site: str
    positions: str
    layers: list[int]
    keys: list[str]
    values: np.ndarray
    coords: dict[str, tuple[str, list]]

    def __repr__(self) -> str:
        shape = "×".join(str(n) for n in np.shape(self.values))
        extra = f", coords {sorted(self.coords)}" if self.coords else ""
        keys = self.keys if len(self.keys) <= 4 else [*self.keys[:3], "…", self.keys[-1]]
        return (f"FamilyGrid({self.family!r}, site={self.site!r}, positions={self.positions!r}, "
                f"layers {_span_text(self.layers)}, keys {keys}, values {shape}{extra})")


def _span_text(layers: Sequence[int]) -> str:
    ls = [int(v) for v in layers]
    if ls and ls == list(range(ls[0], ls[-1] + 1)) and len(ls) > 2:
        return f"{ls[0]}..{ls[-1]}"
    return str(ls)


def positions_mode(positions: Any) -> str:
    """``FamilyGrid.positions`` for a ``Restore.positions``: ``"each"``/``"all"`` as they are, a
    tuple of spans as their position keys joined by ``","`` (a word range ``(i, j)`` →
    ``words<i>-<j>``, the key :class:`~lalm_interp.tracing.causal.Prepared` gives it)."""
    if isinstance(positions, str):
        return positions
    return ",".join(p if isinstance(p, str) else f"words{int(p[0])}-{int(p[1])}" for p in positions)


# ------------------------------------------------------------------------------------ building
def family_node(grid: FamilyGrid) -> xr.Dataset:
    """The Dataset of one family node: ``ie (layer, position)`` with its coordinates."""
    values = np.asarray(grid.values, dtype=float)
    layers = [int(v) for v in grid.layers]
    keys = [str(k) for k in grid.keys]
    if values.shape != (len(layers), len(keys)):
        raise SpecError(f"family {grid.family!r}: values have shape {values.shape}, expected "
                        f"(len(layers), len(keys)) = ({len(layers)}, {len(keys)}); pass one IE per "
                        "(centre layer, position key).")
    if len(set(keys)) != len(keys):
        raise SpecError(f"family {grid.family!r}: position keys repeat ({keys}); each key names one "
                        "restored position group, so they must be distinct.")
    coords: dict[str, Any] = {"layer": ("layer", np.asarray(layers, dtype=np.int64)),
                              "position": ("position", np.arange(len(keys), dtype=np.int64)),
                              "label": ("position", keys)}
    for name, spec in grid.coords.items():
        dim, vals = spec
        if name in coords or name == IE:
            raise SpecError(f"family {grid.family!r}: coordinate {name!r} clashes with a built-in name "
                            "(layer, position, label, ie); rename it.")
        if dim != "position" or len(vals) != len(keys):
            raise SpecError(f"family {grid.family!r}: coordinate {name!r} is over {dim!r} with "
                            f"{len(vals)} values; expected 'position' with one value per key ({len(keys)}).")
        coords[name] = ("position", list(vals) if not isinstance(vals, np.ndarray) else vals)
    ds = xr.Dataset({IE: (("layer", "position"), values, dict(IE_ATTRS))}, coords=coords,
                    attrs={"site": str(grid.site), "positions": str(grid.positions)})
    ds["layer"].attrs["long_name"] = "centre layer"
    ds["position"].attrs["long_name"] = "position index"
    return _index_labels(ds)


def _index_labels(ds: xr.Dataset) -> xr.Dataset:
    """Index the ``label`` coordinate, so that ``.sel(label="last_token")`` works."""
    if "label" in ds.coords and "label" not in ds.xindexes:
        ds = ds.set_xindex("label")
    return ds


def example_result(grids: Sequence[FamilyGrid], scalars: dict[str, float], attrs: dict) -> xr.DataTree:
    """One example's result: the root holds ``scalars`` (``p_clean``, ``p_corrupt``, ``p:<patch>``)
    as 0-d variables and ``attrs``; one child node per family (in ``grids`` order) holds its IE grid
    (:func:`family_node`)."""
    names = [g.family for g in grids]
    for f in names:
        if not f or "/" in f or f in (".", ".."):
            raise SpecError(f"family name {f!r} cannot name a result group: it must be non-empty and "
                            "contain no '/'; give the Restore another name=.")
    dup = sorted({f for f in names if names.count(f) > 1})
    if dup:
        raise SpecError(f"family {dup[0]!r} occurs more than once; family names must be distinct "
                        "(give each Restore its own name=).")
    clash = sorted(set(names) & set(scalars))
    if clash:
        raise SpecError(f"family {clash[0]!r} has the name of a scalar result; give the Restore another name=.")
    root = xr.Dataset({k: ((), float(v), dict(SCALAR_ATTRS.get(k, {}))) for k, v in scalars.items()},
                      attrs=dict(attrs))
    tree = xr.DataTree(root)
    for g in grids:
        tree[g.family] = xr.DataTree(family_node(g))
    return tree


def families(result: "xr.DataTree | xr.Dataset") -> list[str]:
    """The restoration families of one example's result, in the experiment's order (also for a
    format-2 Dataset)."""
    if isinstance(result, xr.Dataset):
        return [str(k)[3:] for k in result.data_vars if str(k).startswith("ie:")]
    return [str(name) for name, node in result.children.items() if IE in node.ds.data_vars]


# ------------------------------------------------------------------------------------ format 2
def is_format2(ds: Any) -> bool:
    """Whether ``ds`` is a format-2 per-example Dataset (flat, ``ie:<family>`` variables)."""
    return isinstance(ds, xr.Dataset) and any(str(k).startswith("ie:") for k in ds.data_vars)


def _restores_of(attrs: dict) -> dict[str, dict[str, Any]]:
    """{family label: restore dict} from the spec JSON in ``attrs['experiment']`` ({} without one)."""
    raw = attrs.get("experiment")
    try:
        doc = json.loads(raw) if isinstance(raw, (str, bytes)) else dict(raw or {})
    except (TypeError, ValueError):
        return {}
    out = {}
    for r in doc.get("restores", []) if isinstance(doc, dict) else []:
        try:
            s = Site.parse(str(r.get("at", "")))
            label = r.get("name") or f"{s.stream}.{s.component}"
        except Exception:  # noqa: BLE001 - a spec this version cannot parse: no site/positions then
            continue
        out[str(label)] = r
    return out


def from_dataset(ds: xr.Dataset) -> xr.DataTree:
    """Convert a format-2 per-example Dataset (``ie:<family>`` over ``layer:<family>`` ×
    ``position:<family>``, coordinates ``<name>:<family>``) to the DataTree of this format."""
    restores = _restores_of(ds.attrs)
    grids = []
    for f in families(ds):
        ldim, pdim = f"layer:{f}", f"position:{f}"
        da = ds[f"ie:{f}"].transpose(ldim, pdim)
        keys = [str(k) for k in ds[pdim].values]
        coords = {}
        for c in ds.coords:
            c = str(c)
            if c in (ldim, pdim) or not c.endswith(f":{f}") or ds[c].dims != (pdim,):
                continue
            coords[c[: -len(f) - 1]] = ("position", ds[c].values)
        r = restores.get(f)
        if r is not None:
            site, positions = str(r.get("at", "")), positions_mode(r.get("positions", ""))
        else:  # no spec recorded: infer the mode from the keys
            site = ""
            positions = "each" if keys and all(k.isdigit() for k in keys) else ",".join(keys)
        grids.append(FamilyGrid(f, site, positions, [int(v) for v in ds[ldim].values], keys,
                                np.asarray(da.values, dtype=float), coords))
    scalars = {str(k): float(ds[k]) for k in ds.data_vars if not str(k).startswith("ie:") and ds[k].ndim == 0}
    return example_result(grids, scalars, dict(ds.attrs))


def as_result(obj: "xr.DataTree | xr.Dataset") -> xr.DataTree:
    """A per-example result as a DataTree: a DataTree as it is (its ``label`` coordinates indexed),
    a format-2 Dataset converted (:func:`from_dataset`)."""
    if isinstance(obj, xr.DataTree):
        return _with_label_index(obj)
    if isinstance(obj, xr.Dataset):
        if is_format2(obj):
            return from_dataset(obj)
        return xr.DataTree(obj)
    raise TypeError(f"expected a per-example result (xarray DataTree, or a format-2 Dataset), got "
                    f"{type(obj).__name__}; read files with lalm_interp.interventions.results.read_example.")


def _with_label_index(tree: xr.DataTree) -> xr.DataTree:
    if all("label" not in n.ds.coords or "label" in n.ds.xindexes for n in tree.children.values()):
        return tree
    out = tree.copy(deep=False)
    for name, node in tree.children.items():
        if "label" in node.ds.coords and "label" not in node.ds.xindexes:
            out[name] = xr.DataTree(_index_labels(node.to_dataset(inherit=False)), children=dict(node.children))
    return out


# ------------------------------------------------------------------------------------ files
def write_example(result: "xr.DataTree | xr.Dataset", path: "str | os.PathLike") -> None:
    """Write one example's result to ``path`` (netCDF4 groups, engine h5netcdf) atomically: a
    hidden temp file next to it, then a rename (:func:`lalm_interp.atomic.atomic_write`), with
    ordinary permissions. A format-2 Dataset is converted first."""
    tree = as_result(result)
    with atomic_write(path) as tmp:
        tree.to_netcdf(tmp, engine="h5netcdf")


def read_example(path: "str | os.PathLike", *, chunks: Any = None) -> xr.DataTree:
    """Read one example's result: a file of this format, or a format-2 file of earlier versions
    (converted, see :func:`from_dataset`). ``chunks`` (e.g. ``{}``): open lazily with dask instead
    of loading (format-2 files are always loaded). Errors of the backend (a damaged file) propagate."""
    if chunks is None:
        tree = xr.load_datatree(path, engine="h5netcdf")
    else:
        tree = xr.open_datatree(path, engine="h5netcdf", chunks=chunks)
    root = tree.to_dataset(inherit=False)
    if is_format2(root):
        if chunks is not None:
            root = root.load()
            tree.close()
        return from_dataset(root)
    return _with_label_index(tree)


# ------------------------------------------------------------------------------------ aggregate
def _is_span_mode(exp: Any, family: str) -> bool:
    for r in exp.restores:
        if r.label == family:
            return r.positions != "each"
    return False


def aggregate(results: Sequence["xr.DataTree | xr.Dataset"], exp: Any) -> xr.Dataset:
    """Stack per-example span-mode results into AIE arrays.

    Returns a Dataset with ``ie`` (example, family, span, layer) — NaN where a family's stream has
    fewer layers — ``aie`` (family, span, layer) = mean over examples, and ``p_clean`` /
    ``p_corrupt`` (example). Families restored at ``each`` position are summarised by their
    subject-span mean (span ``subject_mean``) when they have an ``is_subject`` coordinate.
    ``results``: DataTrees of this format (format-2 Datasets are converted).
    """
    if not results:
        raise SpecError("no per-example results to aggregate; trace at least one example.")
    results = [as_result(r) for r in results]
    fams = [r.label for r in exp.restores]
    spans: list[str] = []
    max_layer = 0
    for res in results:
        for f in fams:
            node = res[f]
            spans.extend(str(s) for s in node["label"].values if _is_span_mode(exp, f))
            max_layer = max(max_layer, int(node["layer"].max()) + 1)
    if any(not _is_span_mode(exp, f) for f in fams):
        spans.append("subject_mean")
    spans = list(dict.fromkeys(spans)) or ["all"]
    ie = np.full((len(results), len(fams), len(spans), max_layer), np.nan)
    for i, res in enumerate(results):
        for j, f in enumerate(fams):
            node = res[f]
            grid = np.asarray(node[IE].transpose("layer", "position").values)
            layers = node["layer"].values
            if not _is_span_mode(exp, f):
                if "is_subject" in node.coords and bool(node["is_subject"].values.any()):
                    mean = grid[:, node["is_subject"].values.astype(bool)].mean(axis=1)
                    for layer, v in zip(layers, mean):
                        ie[i, j, spans.index("subject_mean"), int(layer)] = v
                continue
            for p, s in enumerate(node["label"].values):
                k = spans.index(str(s))
                for layer, v in zip(layers, grid[:, p]):
                    ie[i, j, k, int(layer)] = v
    streams = [Site.parse(r.at).stream for r in exp.restores]
    kinds = [Site.parse(r.at).component for r in exp.restores]
    out = xr.Dataset(
        {
            "ie": (("example", "family", "span", "layer"), ie),
            "p_clean": (("example",), [float(res["p_clean"]) for res in results]),
            "p_corrupt": (("example",), [float(res["p_corrupt"]) for res in results]),
        },
        coords={
            "example": [res.attrs["example"] for res in results],
            "family": fams,
            "span": spans,
            "layer": np.arange(max_layer),
            "stream": ("family", streams),
            "kind": ("family", kinds),
        },
    )
    out["aie"] = out["ie"].mean("example")
    out.attrs["experiment"] = exp.to_json()
    return out


__all__ = ["FORMAT", "FamilyGrid", "example_result", "family_node", "families", "positions_mode", "from_dataset",
           "as_result", "is_format2", "read_example", "write_example", "aggregate"]
