"""The one error type of the activation cache."""

from __future__ import annotations

from ..errors import LalmInterpError


class CacheError(LalmInterpError, ValueError):
    """A cache root, shard, key or statistic that cannot be written or read as asked.

    Messages say what was wrong, what was expected and how to fix it; the docs page is
    ``docs/errors/cache.md``.
    """

    page = "cache"
