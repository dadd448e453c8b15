"""Streaming first and second moments of keys at a site (the statistics knowledge editors need),
and the null-space projector AlphaEdit builds from them.

Accumulation is in float64 with Chan et al.'s pairwise update: each batch contributes its own mean
and centred scatter, merged exactly, so ``merge`` of shard sums equals one pass over everything
and the covariance does not suffer the cancellation of ``E[kk^T] - mu mu^T``.

Storage and arithmetic only: the keys come from the caller (``key_stats(..., compute=...)``; the
editors capture them, :func:`lalm_interp.editors.keys.key_stats`), so the cache imports nothing from
the editors or the intervention engine.
"""

from __future__ import annotations

import hashlib
import os
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import h5netcdf
import h5py
import numpy as np

from .._version import __version__
from .. import sites as _sites
from ..atomic import publish, temp_path
from .batch import to_numpy
from .errors import CacheError
from .shards import verify_shard

try:
    from jaxtyping import Float
except ImportError:  # pragma: no cover
    Float = None  # type: ignore[assignment]

ArrayLike = Any  # np.ndarray or torch.Tensor


class SecondMoment:
    """Running count, mean and centred scatter ``M2 = sum (k - mean)(k - mean)^T`` of row vectors.

    - ``update(x)``: add a batch ``x`` of shape ``(n, d)`` (NumPy or torch, any float dtype incl.
      bfloat16; leading dims are flattened, so ``(batch, position, d)`` works too).
    - ``merge(other)``: add another accumulator's data (e.g. from another process/shard).
    - ``count``, ``mean`` (d,), ``second_moment`` (d, d) = E[k k^T] (uncentred, what ROME calls
      C and AlphaEdit thresholds), ``sum_outer`` (d, d) = K K^T = count * E[k k^T],
      ``covariance`` (d, d) with ``ddof=1`` like ``np.cov`` (``covariance_ddof(0)`` for the biased one).
    All results are float64 NumPy arrays.
    """

    def __init__(self, dim: int | None = None):
        self.dim = dim
        self.count = 0
        self._mean: np.ndarray | None = None if dim is None else np.zeros(dim)
        self._m2: np.ndarray | None = None if dim is None else np.zeros((dim, dim))

    # ------------------------------------------------------------------ accumulation
    def update(self, x: "Float[np.ndarray, 'n d'] | ArrayLike") -> "SecondMoment":
        arr = to_numpy(x)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim < 2:
            raise CacheError(f"SecondMoment.update expects rows of keys shaped (n, d), got shape {arr.shape}.")
        arr = arr.reshape(-1, arr.shape[-1]).astype(np.float64, copy=False)
        n = arr.shape[0]
        if n == 0:
            return self
        mean = arr.mean(axis=0)
        centred = arr - mean
        m2 = centred.T @ centred
        self._combine(n, mean, m2)
        return self

    def merge(self, other: "SecondMoment") -> "SecondMoment":
        """Add ``other``'s data into this accumulator (in place; returns ``self``)."""
        if other.count == 0:
            return self
        assert other._mean is not None and other._m2 is not None
        self._combine(other.count, other._mean, other._m2)
        return self

    def __add__(self, other: "SecondMoment") -> "SecondMoment":
        out = SecondMoment(self.dim)
        return out.merge(self).merge(other)

    def _combine(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        d = mean_b.shape[0]
        if self.dim is None:
            self.dim = d
        if d != self.dim:
            raise CacheError(
                f"SecondMoment has dimension {self.dim} but got keys of dimension {d}; feed keys of one "
                "site only (e.g. all 'text.layers.8.mlp.down@in')."
            )
        if self.count == 0 or self._mean is None or self._m2 is None:
            self.count, self._mean, self._m2 = n_b, mean_b.copy(), m2_b.copy()
            return
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (n_a * n_b / n)
        self.count = n

    # ------------------------------------------------------------------ results
    def _need(self, what: str, at_least: int = 1) -> None:
        if self.count < at_least:
            raise CacheError(
                f"SecondMoment.{what} needs at least {at_least} key(s), has {self.count}; call update() "
                "with batches of keys first."
            )

    @property
    def mean(self) -> "Float[np.ndarray, 'd']":
        self._need("mean")
        return self._mean.copy()  # type: ignore[union-attr]

    @property
    def centred_scatter(self) -> "Float[np.ndarray, 'd d']":
        self._need("centred_scatter")
        return self._m2.copy()  # type: ignore[union-attr]

    @property
    def second_moment(self) -> "Float[np.ndarray, 'd d']":
        """E[k k^T] (uncentred)."""
        self._need("second_moment")
        return self._m2 / self.count + np.outer(self._mean, self._mean)  # type: ignore[operator]

    @property
    def sum_outer(self) -> "Float[np.ndarray, 'd d']":
        """K K^T = sum over keys of k k^T."""
        return self.second_moment * self.count

    def covariance_ddof(self, ddof: int) -> "Float[np.ndarray, 'd d']":
        self._need(f"covariance_ddof({ddof})", ddof + 1)
        return self._m2 / (self.count - ddof)  # type: ignore[operator]

    @property
    def covariance(self) -> "Float[np.ndarray, 'd d']":
        """Unbiased covariance (``ddof=1``), equal to ``np.cov(K, rowvar=False)``."""
        return self.covariance_ddof(1)

    def __repr__(self) -> str:
        return f"SecondMoment(dim={self.dim}, count={self.count})"

    # ------------------------------------------------------------------ persistence
    def save(self, path: "str | Path", attrs: dict[str, Any] | None = None) -> bool:
        """Write atomically (no clobber) as netCDF-4: ``count`` (scalar, int64), ``mean`` (hidden),
        ``centred_scatter`` (hidden, hidden_t), float64. Returns whether this call wrote the file."""
        self._need("save")
        final = Path(path)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(final)
        try:
            with h5netcdf.File(tmp, "w") as f:
                f.dimensions = {"hidden": self.dim, "hidden_t": self.dim}
                c = f.create_variable("count", (), dtype="int64")
                c[...] = self.count
                f.create_variable("mean", ("hidden",), data=self._mean, fletcher32=True)
                f.create_variable("centred_scatter", ("hidden", "hidden_t"), data=self._m2, fletcher32=True)
                for k, v in (attrs or {}).items():
                    f.attrs[k] = v
                f.attrs["lalm_interp_stats"] = 1
                f.attrs["count_keys"] = int(self.count)
            return publish(tmp, final)
        finally:
            if tmp.exists():
                tmp.unlink()

    @classmethod
    def load(cls, path: "str | Path") -> "SecondMoment":
        try:
            with h5py.File(path, "r") as f:
                mean = f["mean"][...].astype(np.float64)
                m2 = f["centred_scatter"][...].astype(np.float64)
                count = int(f["count"][()])
        except OSError as err:
            check = verify_shard(Path(path))
            if check.damaged and "checksum" in check.damaged[0][1]:
                raise CacheError(
                    f"statistics file {path}: dataset '{check.damaged[0][0]}' failed its checksum; the file "
                    "changed after it was written, so it was not used. Expected a complete stats file. Delete "
                    "it (or `lalm-interp cache gc --check --quarantine`) and it is recomputed on next use."
                ) from err
            raise CacheError(
                f"statistics file {path} cannot be read ({type(err).__name__}: {err}). Expected a "
                "complete stats file. Delete it (or `lalm-interp cache gc --quarantine`) to recompute."
            ) from err
        except (KeyError, RuntimeError, ValueError) as err:
            raise CacheError(
                f"statistics file {path} cannot be read ({type(err).__name__}: {err}). Expected a "
                "complete stats file. Delete it (or `lalm-interp cache gc --quarantine`) to recompute."
            ) from err
        if m2.shape != (mean.shape[0], mean.shape[0]):
            raise CacheError(f"statistics file {path}: mean {mean.shape} and scatter {m2.shape} disagree; delete it to recompute.")
        out = cls(mean.shape[0])
        out.count, out._mean, out._m2 = count, mean, m2
        return out


def nullspace_projector(
    matrix: "SecondMoment | Float[np.ndarray, 'd d'] | ArrayLike",
    threshold: float = 1e-2,
    *,
    relative: bool = False,
) -> Any:
    """Projector onto the span of eigenvectors of a symmetric PSD matrix with small eigenvalues.

    ``matrix`` is typically E[k k^T] (pass a :class:`SecondMoment` to use its ``second_moment``).
    Eigenvalues ``< threshold`` span the null space; ``threshold`` is **absolute** by default
    (AlphaEdit's code uses 2e-2 on the count-normalised covariance), or a fraction of the largest
    eigenvalue with ``relative=True``. Returns ``P = U U^T`` (float64) with ``U`` the small-eigenvalue
    eigenvectors, so ``P k ≈ 0`` for keys in the preserved span, ``P = P^T = P P``. A torch input
    gives a torch float64 tensor on the same device; otherwise NumPy.
    """
    if isinstance(matrix, SecondMoment):
        matrix = matrix.second_moment
    is_torch = type(matrix).__module__.startswith("torch")
    device = getattr(matrix, "device", None)
    on_device = is_torch and getattr(device, "type", "cpu") != "cpu"
    # on an accelerator the float64 eigendecomposition runs where the matrix lives (at
    # Qwen2-Audio-7B's text key width, 11,008, a host eigh takes minutes per site); CPU tensors keep
    # the NumPy path, so CPU results are unchanged
    m = matrix.double() if on_device else to_numpy(matrix).astype(np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise CacheError(f"nullspace_projector needs a square (d, d) matrix, got shape {tuple(m.shape)}.")
    if threshold < 0:
        raise CacheError(f"threshold must be >= 0, got {threshold}.")
    if on_device:
        import torch

        w, v = torch.linalg.eigh((m + m.T) / 2)
    else:
        w, v = np.linalg.eigh((m + m.T) / 2)
    cut = threshold * max(float(w.max()), 0.0) if relative else threshold
    u = v[:, w < cut]
    p = u @ u.T
    if is_torch and not on_device:
        import torch

        return torch.from_numpy(p).to(device)
    return p


# ---------------------------------------------------------------------------- stats keys
def stats_path(stats_root: Path, site: str, model: str, corpus: str) -> Path:
    """``stats/<site>/<sha256(site, model, corpus)[:20]>.h5``."""
    digest = hashlib.sha256(json.dumps([site, model, corpus]).encode()).hexdigest()[:20]
    return stats_root / site / f"{digest}.h5"


def key_stats(
    stats_root: Path,
    site: "str | _sites.Site",
    *,
    model: str,
    corpus: str,
    compute: Callable[[], Iterable[ArrayLike]] | None = None,
    recompute: bool = False,
) -> SecondMoment:
    """Cached statistics for (site, model fingerprint, corpus id), computing them when missing.

    ``compute()`` returns an iterable of ``(n, d)`` key batches. The result is written atomically;
    concurrent computations of the same statistics are harmless (the first published file wins).
    """
    s = _sites.parse(site)
    if s.is_pattern:
        raise CacheError(f"key statistics need one concrete site, got the pattern {s}; give a layer index.")
    if not model or not corpus:
        raise CacheError(
            "key statistics are keyed by model fingerprint and corpus id; both must be non-empty "
            f"(got model={model!r}, corpus={corpus!r}). Use model_fingerprint(name, revision, weights_hash) "
            "and a corpus id that also names sample count/limits, e.g. 'wikitext-103:100k'."
        )
    path = stats_path(stats_root, str(s), model, corpus)
    if path.exists() and not recompute:
        return SecondMoment.load(path)
    if compute is None:
        raise CacheError(
            f"no cached statistics for {s} (model={model!r}, corpus={corpus!r}) under {stats_root}, and "
            "no compute= was given. Pass compute=lambda: batches_of_keys to compute and cache them."
        )
    acc = SecondMoment()
    for batch in compute():
        acc.update(batch)
    if acc.count == 0:
        raise CacheError(f"compute() for {s} yielded no keys; expected at least one (n, d) batch.")
    return save_key_stats(stats_root, s, acc, model=model, corpus=corpus, replace=recompute)


def save_key_stats(
    stats_root: Path, site: "str | _sites.Site", stats: SecondMoment, *, model: str, corpus: str, replace: bool = False
) -> SecondMoment:
    """Write ``stats`` as the cached statistics of (site, model, corpus) atomically. An existing file
    is kept unless ``replace`` (then it is swapped atomically). Returns what is now cached."""
    if stats.count == 0:
        raise CacheError(f"refusing to cache empty statistics for {site}; update the SecondMoment with keys first.")
    s = str(_sites.parse(site))
    path = stats_path(stats_root, s, model, corpus)
    attrs = {"site": s, "model": model, "corpus": corpus, "package_version": __version__, "created": time.time()}
    if replace and path.exists():
        staged = path.with_name(path.name + ".new")
        if staged.exists():
            staged.unlink()
        stats.save(staged, attrs)
        os.replace(staged, path)
        return stats
    if not stats.save(path, attrs):  # another process published first: use theirs
        return SecondMoment.load(path)
    return stats


def list_stats(stats_root: Path) -> list[dict[str, Any]]:
    """Every readable statistics file with its attrs (site, model, corpus, count, dim, path)."""
    out = []
    if not stats_root.is_dir():
        return out
    for path in sorted(stats_root.rglob("*.h5")):
        try:
            with h5py.File(path, "r") as f:
                attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
                dim = int(f["mean"].shape[0])
        except (OSError, KeyError, RuntimeError):
            out.append({"path": str(path), "error": "unreadable"})
            continue
        out.append({"path": str(path), "site": attrs.get("site"), "model": attrs.get("model"),
                    "corpus": attrs.get("corpus"), "count": int(np.asarray(attrs.get("count_keys", 0)).reshape(-1)[0]), "dim": dim})
    return out
