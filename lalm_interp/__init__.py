"""lalm-interp: mechanistic interpretability and knowledge editing for large audio-language models.

The public API (one page: ``docs/usage/api.md``)::

    import lalm_interp
    lm = lalm_interp.load("organism")             # an AudioLM; unpacks as model, processor, adapter
    clip = lalm_interp.load_audio("fact.wav")     # mono float32 at 16 kHz
    acts = lm.run_with_cache(clip, sample_rate=16000, sites=["text.layers.*.mlp"])

``import lalm_interp`` stays light (no torch): the names that need torch, xarray or nnsight are
imported on first use (module ``__getattr__``).
"""

import importlib

from ._version import __version__  # noqa: E402

from .sites import Site, parse as parse_site  # noqa: E402
from .speech.audio import load_audio  # noqa: E402

_LAZY = {
    # models
    "AudioLM": ("lalm_interp.handle", "AudioLM"),
    "register_model": ("lalm_interp.loading", "register_model"),
    "MODELS": ("lalm_interp.loading", "MODELS"),
    # prompts
    "SpokenPrompt": ("lalm_interp.prompts", "SpokenPrompt"),
    "Word": ("lalm_interp.spans", "Word"),
    "Benchmark": ("lalm_interp.bench", "Benchmark"),
    # tracing
    "Experiment": ("lalm_interp.specs", "Experiment"),
    "Corrupt": ("lalm_interp.specs", "Corrupt"),
    "Restore": ("lalm_interp.specs", "Restore"),
    "Patch": ("lalm_interp.specs", "Patch"),
    "Read": ("lalm_interp.specs", "Read"),
    "trace_example": ("lalm_interp.tracing", "trace_example"),
    # activations
    "Activations": ("lalm_interp.cache.activations", "Activations"),
    "Store": ("lalm_interp.cache.store", "Store"),
}


def load(name_or_path, **kwargs) -> "AudioLM":  # noqa: F821 (lazy name)
    """Load a model by name into an :class:`AudioLM` (model, processor, adapter, identity, spec);
    it unpacks as ``model, processor, adapter = lalm_interp.load(...)``. ``name_or_path``: a
    registered name (``organism``, ``tiny-random``, ...), a checkpoint folder or a hub id; keywords
    ``device`` (``"auto"``: a GPU when there is one), ``dtype``, ``local_files_only``, ``adapter``.
    See :func:`lalm_interp.loading.load_model`, the one loader."""
    from .handle import AudioLM

    return AudioLM.load(name_or_path, **kwargs)


def __getattr__(name: str):
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'lalm_interp' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["__version__", "load", "AudioLM", "register_model", "MODELS", "load_audio", "SpokenPrompt", "Word",
           "Benchmark", "Site", "parse_site", "Experiment", "Corrupt", "Restore", "Patch", "Read", "trace_example",
           "Activations", "Store"]
