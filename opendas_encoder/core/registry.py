"""Registries filled by the modules that define their entries, found through Python entry points.

A method module registers its encoder class with ``@register_method`` when imported; the core
never imports a method. To find a name that nobody imported yet, a registry loads the entry point
of that name from its group (``[project.entry-points."opendas_encoder.methods"]`` in
pyproject.toml: ``vpt = "opendas_encoder.methods.vpt"``), so a new method is one module plus one
entry-point line, in this package or in any installed package.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Dict, Generic, List, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """name -> entry; ``kind`` names what it holds in messages, ``group`` is its entry-point group."""

    def __init__(self, kind: str, group: str):
        self.kind = kind
        self.group = group
        self._entries: Dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.kind} {name!r} is registered twice ({self._entries[name]!r} and {entry!r})")
        self._entries[name] = entry
        return entry

    def _load(self, name=None) -> None:
        for ep in entry_points(group=self.group):
            if (name is None or ep.name == name) and ep.name not in self._entries:
                ep.load()  # importing the module registers its entries

    def get(self, name: str) -> T:
        if name not in self._entries:
            self._load(name)
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {self.names()} (more are found through the "
                             f"{self.group!r} entry points of installed packages)")
        return self._entries[name]

    def names(self) -> List[str]:
        """Every registered name, after loading all entry points of the group."""
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        try:
            self.get(name)
        except ValueError:
            return False
        return True


#: method name -> encoder class (an :class:`~opendas_encoder.core.encoder.AdaptedCLIP` subclass with
#: ``method`` and ``config_class``)
METHODS: Registry = Registry("method", "opendas_encoder.methods")


def register_method(cls: type) -> type:
    """Class decorator: make ``cls`` buildable and loadable under ``cls.method``."""
    for attr in ("method", "config_class"):
        if not getattr(cls, attr, None):
            raise TypeError(f"{cls.__name__} needs a class attribute {attr!r} to be registered")
    return METHODS.register(cls.method, cls)


def get_method(name: str) -> type:
    """The encoder class registered under ``name`` (loading its entry point if needed)."""
    return METHODS.get(name)


def method_names() -> List[str]:
    """Every known method name, "opendas" first."""
    names = METHODS.names()
    return sorted(names, key=lambda n: (n != "opendas", n))

