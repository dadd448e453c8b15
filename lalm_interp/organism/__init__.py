"""The organism: a tiny real Qwen2-Audio trained on spoken CounterFact facts, shipped in
``lalm_interp/assets/organism`` and loaded with ``lalm_interp.load("organism")``.

Modules: :mod:`.recipe` (every knob), :mod:`.facts` (facts, renditions, selection), :mod:`.data`
(cached tensors, collate, augmentation), :mod:`.train`, :mod:`.evaluate` (accuracy groups,
subject corruption at conv2), :mod:`.export` (checkpoint + manifest), :mod:`.pipeline`
(train → evaluate → export). See ``docs/organism.md``.
"""

from .recipe import Recipe

__all__ = ["Recipe"]
