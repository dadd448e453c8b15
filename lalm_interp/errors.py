"""Exceptions of lalm-interp. Every error names what was wrong, what was expected, how to fix it,
and the docs page that explains it (``docs/errors/<page>.md``)."""

from __future__ import annotations

DOCS_ROOT = "docs/errors"


class LalmInterpError(Exception):
    """Base class. ``page`` is the docs page (without ``.md``) under ``docs/errors/``."""

    page = "index"

    def __init__(self, message: str, *, page: str | None = None):
        self.page = page or type(self).page
        super().__init__(f"{message}\n  see {DOCS_ROOT}/{self.page}.md")


class SiteError(LalmInterpError, ValueError):
    """A site string does not parse, or does not exist on the model's adapter."""

    page = "sites"


class AdapterError(LalmInterpError, LookupError):
    """No adapter for a model, or an adapter that does not fit the model it wraps."""

    page = "adapters"


class AudioInputError(LalmInterpError, ValueError):
    """Audio that the model cannot take: wrong rate, stereo, empty, too long."""

    page = "audio-input"


class SpanError(LalmInterpError, ValueError):
    """A word or time span that does not map onto valid audio positions."""

    page = "spans"


class ScoringError(LalmInterpError, ValueError):
    """An object string that cannot be scored (tokenizes to nothing, ...)."""

    page = "scoring"


class LoadError(LalmInterpError, OSError):
    """A model name or path that cannot be loaded offline."""

    page = "loading"
