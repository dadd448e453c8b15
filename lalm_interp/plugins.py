"""A registry of named plug-ins (adapters, editors): built-ins register in code, third parties also
through an entry point group, loaded once and lazily; a broken plug-in warns, never breaks import."""

from __future__ import annotations

import warnings
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Named plug-ins of one kind.

    kind: what they are, for messages (``"adapter"``). group: the entry point group.
    accepts: whether an object is a valid plug-in. name_of: its registry name.
    error: the exception class raised for bad registrations.
    """

    def __init__(self, kind: str, group: str, accepts: Callable[[Any], bool], name_of: Callable[[T], str],
                 error: type[Exception]):
        self.kind, self.group, self.accepts, self.name_of, self.error = kind, group, accepts, name_of, error
        self.items: dict[str, T] = {}
        self._entry_points_loaded = False

    def register(self, obj: T, *, replace: bool = False) -> T:
        if not self.accepts(obj):
            raise self.error(f"register() takes a {self.kind} plug-in, got {obj!r}.")
        name = self.name_of(obj)
        if name in self.items and self.items[name] is not obj and not replace:
            raise self.error(f"a {self.kind} named {name!r} is already registered; pass replace=True to override.")
        self.items[name] = obj
        return obj

    def available(self) -> dict[str, T]:
        """Everything registered, entry points included."""
        if not self._entry_points_loaded:
            self._entry_points_loaded = True
            for ep in entry_points(group=self.group):
                try:
                    obj = ep.load()
                except Exception as err:  # a broken plug-in must not break the package
                    warnings.warn(f"{self.kind} entry point {ep.name!r} failed to load: {err}", stacklevel=2)
                    continue
                if self.accepts(obj) and self.name_of(obj) not in self.items:
                    self.register(obj)
        return dict(self.items)
