"""Datasets by name: ``build_dataset(name, root, split, **kw) -> SegmentDataset``.

A dataset module registers its builder when it is imported::

    @register_dataset("my-dataset")
    def build(root, split, **kw) -> SegmentDataset: ...

and is found by name through the entry-point group ``opendas_encoder.datasets`` (name -> module),
which this package's ``pyproject.toml`` fills for its own datasets ("generic", "ade20k-150",
"kitti-360", "scannetpp-offices", and the generated world's "generated-world") and which other
distributions may extend. Looking up a name that is not registered yet imports the module its entry
point names, so an optional dependency of one dataset never affects the others.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Callable, Dict, List, Optional

from .segments import SegmentDataset

Builder = Callable[..., SegmentDataset]

#: Entry-point group: ``<dataset name> = <module that registers it>``.
ENTRY_POINT_GROUP = "opendas_encoder.datasets"


class _Entry:
    def __init__(self, builder: Builder, needs_root: bool):
        self.builder, self.needs_root = builder, needs_root


_REGISTRY: Dict[str, _Entry] = {}


def register_dataset(name: str, builder: Optional[Builder] = None, *, needs_root: bool = True,
                     overwrite: bool = False):
    """Register ``builder(root, split, **kw) -> SegmentDataset`` under ``name``; usable as a decorator.

    needs_root: ``build_dataset`` refuses a missing ``root`` for this dataset (False for datasets
    that are generated rather than read). Registering a taken name is an error unless ``overwrite``.
    """
    def add(fn: Builder) -> Builder:
        if name in _REGISTRY and not overwrite and _REGISTRY[name].builder is not fn:
            raise ValueError(f"dataset {name!r} is already registered (by {_REGISTRY[name].builder.__module__})")
        _REGISTRY[name] = _Entry(fn, needs_root)
        return fn

    return add if builder is None else add(builder)


def _entry_points():
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _load(name: str) -> None:
    """Import the module that the entry point ``name`` names (it registers the dataset)."""
    ep = _entry_points().get(name)
    if ep is not None:
        ep.load()
        if name not in _REGISTRY:
            raise RuntimeError(f"entry point {ENTRY_POINT_GROUP}:{name} = {ep.value} did not register "
                               f"a dataset named {name!r}")


def list_datasets() -> List[str]:
    """Names of the registered datasets and of those an entry point offers (nothing is imported)."""
    return sorted(set(_REGISTRY) | set(_entry_points()))


def build_dataset(name: str, root: Optional[str] = None, split: Optional[str] = None, **kw) -> SegmentDataset:
    """Build the dataset registered as ``name`` (keyword arguments go to its constructor)."""
    if name not in _REGISTRY:
        _load(name)
    if name not in _REGISTRY:
        hint = "" if _entry_points() else (f" (no {ENTRY_POINT_GROUP!r} entry points are installed: "
                                           "install the package, e.g. pip install -e .)")
        raise ValueError(f"unknown dataset {name!r}; known: {list_datasets()}{hint}")
    entry = _REGISTRY[name]
    if root is None and entry.needs_root:
        raise ValueError(f"dataset {name!r} needs a root folder")
    return entry.builder(root, split, **kw)
