"""Sites: the one key for every place in a model that we read, corrupt, restore or edit.

A site is a short string parsed into a frozen :class:`Site`; ``str(site)`` round-trips::

    site    := stream ["." path] ["@" port]
    stream  := "audio" | "proj" | "text"
    path    := seg ("." seg)*
    seg     := name | int | "*" | [int] ":" [int]      (half-open range, ends optional)
    port    := "in" | "out"                           (default "out", omitted by str())

Examples: ``audio.conv2``, ``audio.layers.27.mlp``, ``audio.layers.*.attn``, ``proj``,
``text.layers.10.resid``, ``text.layers.5:15.mlp.down@in`` (a ROME key), ``text.layers.-1.resid``.

Canonical components (adapters map them to real modules): ``conv1 conv2 embed pool norm`` on a
stream, and per layer ``resid attn mlp mlp.down``. A pattern (``*`` or a range, negative layers)
is expanded against an adapter by :func:`expand` into concrete sites in forward order.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Union

from .errors import SiteError

if TYPE_CHECKING:  # pragma: no cover
    from .adapters.base import Adapter

STREAMS = ("audio", "proj", "text")
PORTS = ("in", "out")
LAYER_COMPONENTS = ("attn", "mlp.down", "mlp", "resid")
"""Per-layer canonical components, in forward order within a layer."""


@dataclass(frozen=True, order=True)
class Star:
    """``*``: any value of this segment."""

    def __str__(self) -> str:
        return "*"


@dataclass(frozen=True, order=True)
class Range:
    """``a:b``: integers ``a <= i < b``; ``None`` ends are open. Negative ends count from the end."""

    start: int | None = None
    stop: int | None = None

    def __str__(self) -> str:
        a = "" if self.start is None else str(self.start)
        b = "" if self.stop is None else str(self.stop)
        return f"{a}:{b}"

    def resolve(self, n: int) -> range:
        """The concrete indices for a stack of ``n`` layers (negative ends count from ``n``)."""
        a = 0 if self.start is None else (self.start + n if self.start < 0 else self.start)
        b = n if self.stop is None else (self.stop + n if self.stop < 0 else self.stop)
        return range(max(a, 0), min(b, n))


Seg = Union[str, int, Star, Range]

def suggest(wrong: str, valid: Iterable[str], *, n: int = 3, cutoff: float = 0.6) -> str:
    """`` Did you mean 'x'?`` (or ``'x' or 'y'``) for the closest valid names, else ``""``."""
    close = difflib.get_close_matches(str(wrong), [str(v) for v in valid], n=n, cutoff=cutoff)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_INT = re.compile(r"-?\d+\Z")
_RANGE = re.compile(r"(-?\d+)?:(-?\d+)?\Z")


def _parse_seg(text: str, whole: str) -> Seg:
    if text == "*":
        return Star()
    if _INT.match(text):
        return int(text)
    m = _RANGE.match(text)
    if m:
        a, b = m.groups()
        return Range(None if a is None else int(a), None if b is None else int(b))
    if _NAME.match(text):
        return text
    raise SiteError(
        f"site {whole!r}: segment {text!r} is not a name, an integer, '*' or a range 'a:b'. "
        "Write sites like 'audio.conv2', 'text.layers.5:15.mlp.down@in'.",
    )


@dataclass(frozen=True)
class Site:
    """A parsed site. Build with :func:`parse` (or ``Site.parse``); compare and hash freely."""

    stream: str
    path: tuple[Seg, ...] = ()
    port: str = "out"

    # ----------------------------------------------------------------- construction
    @staticmethod
    def parse(text: "str | Site") -> "Site":
        return parse(text)

    def __str__(self) -> str:
        s = ".".join([self.stream, *map(str, self.path)])
        return s if self.port == "out" else f"{s}@{self.port}"

    def __repr__(self) -> str:
        return f"Site({str(self)!r})"

    # ----------------------------------------------------------------- properties
    @property
    def is_pattern(self) -> bool:
        """True when the site holds ``*``, a range or a negative layer and must be expanded."""
        return any(isinstance(s, (Star, Range)) or (isinstance(s, int) and s < 0) for s in self.path)

    @property
    def layer(self) -> int | None:
        """The layer index of a per-layer site (``text.layers.10.mlp`` → 10), else ``None``."""
        if len(self.path) >= 2 and self.path[0] == "layers" and isinstance(self.path[1], int):
            return self.path[1]
        return None

    @property
    def is_layer_site(self) -> bool:
        return len(self.path) >= 1 and self.path[0] == "layers"

    @property
    def component(self) -> str:
        """The canonical component: ``mlp.down`` for ``text.layers.5.mlp.down@in``, ``conv2`` for
        ``audio.conv2``, ``""`` for ``proj``."""
        rest = self.path[2:] if self.is_layer_site else self.path
        return ".".join(map(str, rest))

    def with_layer(self, layer: int) -> "Site":
        """The same component at another layer."""
        if not self.is_layer_site:
            raise SiteError(f"site {self} has no layer to replace; only 'STREAM.layers.N...' sites do.")
        return Site(self.stream, ("layers", layer, *self.path[2:]), self.port)

    def with_port(self, port: str) -> "Site":
        if port not in PORTS:
            raise SiteError(f"port {port!r} is not one of {PORTS}.")
        return Site(self.stream, self.path, port)


def parse(text: "str | Site") -> Site:
    """Parse a site string. Raises :class:`SiteError` naming what is wrong."""
    if isinstance(text, Site):
        return text
    if not isinstance(text, str):
        raise SiteError(f"a site must be a string like 'text.layers.3.mlp', got {type(text).__name__}.")
    whole = text
    body, port = text, "out"
    if "@" in text:
        body, port = text.rsplit("@", 1)
        if port not in PORTS:
            raise SiteError(f"site {whole!r}: port {port!r} is not one of {list(PORTS)}."
                            + suggest(port, PORTS, cutoff=0.3))
    parts = body.split(".")
    if not body or any(p == "" for p in parts):
        raise SiteError(f"site {whole!r} has an empty segment; write e.g. 'audio.layers.3.attn'.")
    stream = parts[0]
    if stream not in STREAMS:
        raise SiteError(
            f"site {whole!r}: unknown stream {stream!r}; a site starts with one of {list(STREAMS)} "
            "(e.g. 'audio.conv2', 'proj', 'text.layers.10.resid')."
            + _fix_stream(stream, parts, port)
        )
    return Site(stream, tuple(_parse_seg(p, whole) for p in parts[1:]), port)


def _seg_matches(pat: Seg, val: Seg, n_layers: int | None) -> bool:
    if isinstance(pat, Star):
        return True
    if isinstance(pat, Range):
        return isinstance(val, int) and n_layers is not None and val in pat.resolve(n_layers)
    if isinstance(pat, int) and isinstance(val, int) and n_layers is not None and pat < 0:
        return val == pat + n_layers
    return pat == val


def matches(pattern: "str | Site", site: "str | Site", n_layers: int | None = None) -> bool:
    """Whether concrete ``site`` is matched by ``pattern`` (``n_layers`` resolves ranges/negatives)."""
    p, s = parse(pattern), parse(site)
    if p.stream != s.stream or p.port != s.port or len(p.path) != len(s.path):
        return False
    return all(_seg_matches(a, b, n_layers) for a, b in zip(p.path, s.path))


def expand(pattern: "str | Site | Iterable[str | Site]", adapter: "Adapter") -> list[Site]:
    """Expand one pattern (or several) into the adapter's concrete sites, in forward order.

    Raises :class:`SiteError` listing what exists when nothing matches or a layer is out of range.
    """
    if not isinstance(pattern, (str, Site)):
        out: dict[Site, None] = {}
        for p in pattern:
            out.update(dict.fromkeys(expand(p, adapter)))
        return sorted(out, key=adapter.forward_rank)
    p = parse(pattern)
    if p.stream not in adapter.streams:
        raise SiteError(
            f"site {p}: adapter {adapter.name!r} has no stream {p.stream!r}; it has {list(adapter.streams)}."
            + suggest(str(Site(adapter.streams[0], p.path, p.port)) if len(adapter.streams) == 1 else p.stream,
                      [str(s) for s in adapter.all_sites()] if len(adapter.streams) == 1 else adapter.streams,
                      n=1, cutoff=0.3)
        )
    n = adapter.n_layers(p.stream) if p.is_layer_site else None
    # An explicit layer index must exist: say so rather than 'no match'.
    if p.is_layer_site and len(p.path) >= 2 and isinstance(p.path[1], int):
        idx = p.path[1]
        if not (-n <= idx < n):
            raise SiteError(
                f"site {p}: layer {idx} is out of range; {adapter.name} has {n} {p.stream} layers "
                f"(0..{n - 1}, or -{n}..-1 from the end)."
            )
    if p.is_layer_site and len(p.path) >= 2 and isinstance(p.path[1], Range):
        r = p.path[1]
        for end in (r.start, r.stop):
            if end is not None and not (-n <= end <= n):
                raise SiteError(
                    f"site {p}: range {r} reaches past the {n} {p.stream} layers of {adapter.name} (0..{n})."
                )
    found = [s for s in adapter.all_sites() if matches(p, s, n)]
    if not found:
        known = sorted({_shape_of(s) for s in adapter.all_sites() if s.stream == p.stream})
        raise SiteError(
            f"site {p} matches nothing on {adapter.name}. Sites of stream {p.stream!r} look like: "
            + ", ".join(known) + "." + _closest_site(p, adapter)
        )
    return sorted(found, key=adapter.forward_rank)


def _fix_stream(stream: str, parts: list[str], port: str) -> str:
    """`` Did you mean 'text.layers.1.mlp'?`` for ``txt.layers.1.mlp`` (the closest stream)."""
    best = difflib.get_close_matches(stream, STREAMS, n=1, cutoff=0.5)
    if not best:
        return ""
    fixed = ".".join([best[0], *parts[1:]]) + ("" if port == "out" else f"@{port}")
    return f" Did you mean {fixed!r}?"


def _closest_site(p: Site, adapter: "Adapter") -> str:
    """`` Did you mean …?`` with the adapter's sites closest to ``p``, compared on the part after
    the layer index (which is kept: ``text.layers.1.mlpdown`` → ``text.layers.1.mlp.down``,
    ``text.layers.*.mlp.dwn@in`` → ``text.layers.*.mlp.down@in``); empty when nothing is close."""
    own = [s for s in adapter.all_sites() if s.stream == p.stream]
    if p.is_layer_site and len(p.path) >= 2:
        head = f"{p.stream}.layers.{p.path[1]}."
        rest = str(Site(p.stream, p.path[2:], p.port))[len(p.stream) + 1:]
        tails = sorted({str(Site(s.stream, s.path[2:], s.port))[len(s.stream) + 1:] for s in own if s.is_layer_site})
        close = difflib.get_close_matches(rest, tails, n=3, cutoff=0.6)
        return (" Did you mean " + " or ".join(repr(head + t) for t in close) + "?") if close else ""
    return suggest(str(p), sorted({_shape_of(s) for s in own}), cutoff=0.6)


def _shape_of(s: Site) -> str:
    if s.is_layer_site:
        return str(Site(s.stream, ("layers", Star(), *s.path[2:]), s.port)).replace(".*.", ".N.")
    return str(s)


def one(site: "str | Site", adapter: "Adapter") -> Site:
    """Parse and check a site that must be concrete (exactly one match)."""
    found = expand(site, adapter)
    if len(found) != 1:
        raise SiteError(
            f"site {site} must name exactly one place but expands to {len(found)} "
            f"({', '.join(map(str, found[:4]))}{', ...' if len(found) > 4 else ''}); give a layer index."
        )
    return found[0]
