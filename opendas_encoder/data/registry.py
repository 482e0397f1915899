"""Datasets by name: ``build_dataset(name, root, split, **kw) -> SegmentDataset``.

Names: "generic", "ade20k-150", "kitti-360", "scannetpp-offices", "generated-world". Builders are
imported lazily so that an optional dependency of one dataset never affects the others.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional

from .segments import SegmentDataset

Builder = Callable[..., SegmentDataset]

RESOURCES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "resources")


def resource_path(name: str) -> str:
    """Absolute path of a packaged resource file (``opendas_encoder/resources/<name>``); must exist."""
    path = os.path.join(RESOURCES_DIR, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"packaged resource not found: {path}")
    return path


def _generic(root, split, **kw):
    from .generic import GenericSegmentDataset
    return GenericSegmentDataset(root, split=split, **kw)


def _ade20k(root, split, **kw):
    from .ade20k import ADE20K150
    return ADE20K150(root, split=split or "validation", **kw)


def _kitti360(root, split, **kw):
    from .kitti360 import KITTI360
    return KITTI360(root, split=split or "val", **kw)


def _scannetpp(root, split, **kw):
    from .scannetpp import ScanNetPPOffices
    return ScanNetPPOffices(root, split=split or "train", **kw)


def _generated_world(root, split, **kw):
    try:
        from ..world import make_target_domain
    except ImportError as exc:
        raise ImportError("the generated world (opendas_encoder.world.make_target_domain) is not available") from exc
    if root is not None:
        kw["root"] = root
    return make_target_domain(split=split, **kw)


_REGISTRY: Dict[str, Builder] = {
    "generic": _generic,
    "ade20k-150": _ade20k,
    "kitti-360": _kitti360,
    "scannetpp-offices": _scannetpp,
    "generated-world": _generated_world,
}


def register_dataset(name: str, builder: Builder, overwrite: bool = False) -> None:
    """Add a dataset builder ``builder(root, split, **kw) -> SegmentDataset`` under ``name``."""
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"dataset {name!r} is already registered")
    _REGISTRY[name] = builder


def list_datasets() -> List[str]:
    return sorted(_REGISTRY)


def build_dataset(name: str, root: Optional[str] = None, split: Optional[str] = None, **kw) -> SegmentDataset:
    """Build the dataset registered as ``name`` (keyword arguments go to its constructor)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; known: {list_datasets()}")
    if root is None and name != "generated-world":
        raise ValueError(f"dataset {name!r} needs a root folder")
    return _REGISTRY[name](root, split, **kw)
