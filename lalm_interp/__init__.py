"""lalm-interp: mechanistic interpretability and knowledge editing for large audio-language models."""

from ._version import __version__  # noqa: E402

from .sites import Site, parse as parse_site  # noqa: E402
from .speech.audio import load_audio  # noqa: E402


def load(name_or_path, **kwargs):
    """Load a model, its processor and its adapter. See :func:`lalm_interp.loading.load`."""
    from .loading import load as _load

    return _load(name_or_path, **kwargs)


__all__ = ["Site", "parse_site", "load", "load_audio", "__version__"]
