"""Datasets by name: ``build_dataset(name, root, split, **kw) -> SegmentDataset``.

A dataset module registers its builder when it is imported::

    @register_dataset("my-dataset")
    def build(root, split, **kw) -> SegmentDataset: ...

and is found by name through the entry-point group ``opendas_encoder.datasets`` (name -> module; the
same mechanism as the method registry, :class:`opendas_encoder.core.registry.Registry`). This
package's ``pyproject.toml`` names its own datasets there ("generic", "ade20k-150", "kitti-360",
"scannetpp-offices", and the generated world's "generated-world"); other installed packages may add
theirs. A name is imported only when it is looked up, so an optional dependency of one dataset never
affects the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, List, Optional

from ..core.registry import Registry
from .segments import SegmentDataset

Builder = Callable[..., SegmentDataset]


#: A file of this name at a dataset's root marks generated data written in a real layout
#: (``opendas_encoder.generated`` writes it); results on such data are labelled "generated".
GENERATED_MARKER = "GENERATED"


@dataclass(frozen=True)
class DatasetEntry:
    """builder(root, split, **kw) -> SegmentDataset; needs_root: a missing root is refused;
    generated: the dataset is generated (not a real dataset), whatever its root."""

    builder: Builder
    needs_root: bool = True
    generated: bool = False


DATASETS: Registry = Registry("dataset", "opendas_encoder.datasets")


def register_dataset(name: str, builder: Optional[Builder] = None, *, needs_root: bool = True,
                     generated: bool = False):
    """Register ``builder(root, split, **kw) -> SegmentDataset`` under ``name``; usable as a decorator.

    needs_root: ``build_dataset`` refuses a missing ``root`` (False for datasets that are generated,
    not read). generated: every dataset of this name is generated data (reports and model cards say
    so). A name registered twice with different builders is an error.
    """
    def add(fn: Builder) -> Builder:
        DATASETS.register(name, DatasetEntry(fn, needs_root, generated))
        return fn

    return add if builder is None else add(builder)


def list_datasets() -> List[str]:
    """Every known dataset name (imports the modules of all ``opendas_encoder.datasets`` entry points)."""
    return DATASETS.names()


def root_is_generated(root: Optional[str]) -> bool:
    """True when ``root`` (or its parent, e.g. for ``ADEChallengeData2016``) holds :data:`GENERATED_MARKER`."""
    if not root:
        return False
    return any(os.path.isfile(os.path.join(d, GENERATED_MARKER))
               for d in (root, os.path.dirname(os.path.normpath(root))))


def dataset_is_generated(name: str, root: Optional[str] = None) -> bool:
    """Whether the dataset ``name`` at ``root`` is generated data: its registry entry says so (the
    generated world) or its root carries the generated marker (generated data in a real layout)."""
    return DATASETS.get(name).generated or root_is_generated(root)


def build_dataset(name: str, root: Optional[str] = None, split: Optional[str] = None, **kw) -> SegmentDataset:
    """Build the dataset registered as ``name`` (keyword arguments go to its constructor)."""
    entry: DatasetEntry = DATASETS.get(name)
    if root is None and entry.needs_root:
        raise ValueError(f"dataset {name!r} needs a root folder")
    return entry.builder(root, split, **kw)
