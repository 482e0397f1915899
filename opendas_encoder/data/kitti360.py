"""KITTI-360 2D semantics as segments (37 classes).

Layout (the official release)::

    KITTI-360/data_2d_raw/<sequence>/image_00/data_rect/<frame:010d>.png
    KITTI-360/data_2d_semantics/train/<sequence>/image_00/semantic/<frame:010d>.png   8-bit label ``id``
    KITTI-360/data_2d_semantics/train/<sequence>/image_00/instance/<frame:010d>.png   16-bit, id * 1000 + k
    KITTI-360/data_2d_semantics/train/2013_05_28_drive_{train,val}_frames.txt

Each frame-list line is ``<rgb path> <semantic path>``, relative to the KITTI-360 root. Instance
maps hold ``semantic id * 1000 + instance`` for pixels of an instance and the plain semantic id
(< 1000) elsewhere, so reading the instance map gives one segment per instance where there is one
and one per class region otherwise (the semantic map is the fallback when no instance map exists).

The 37 classes are the labels of the official table with a KITTI-360 id (``kittiId`` 1..37);
names and ids come from the ``kitti360scripts`` package (``pip install kitti360scripts``).
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional

from .generic import LabelFrame, LabelMapSegmentDataset, require_dir
from .registry import register_dataset
from .segments import DEFAULT_MIN_PIXELS

FRAME_LISTS = {"train": "2013_05_28_drive_train_frames.txt", "val": "2013_05_28_drive_val_frames.txt"}
INSTANCE_FACTOR = 1000


def kitti360_labels():
    """The official label table (list of ``kitti360scripts.helpers.labels.Label``)."""
    try:
        from kitti360scripts.helpers import labels as k360labels
    except ImportError as exc:
        raise ImportError("KITTI-360 labels need the kitti360scripts package: pip install kitti360scripts "
                          "(or pip install 'opendas_encoder[datasets]')") from exc
    return list(k360labels.labels)


def kitti360_classes() -> Dict[int, str]:
    """The 37 classes: semantic ``id`` -> name, for labels with a KITTI-360 id (kittiId >= 1), by id."""
    table = {lab.id: lab.name for lab in kitti360_labels() if lab.kittiId is not None and lab.kittiId >= 1}
    if len(table) != 37:
        raise RuntimeError(f"kitti360scripts label table gives {len(table)} classes with a kittiId, expected 37")
    return dict(sorted(table.items()))


def instance_path_for(semantic_path: str) -> str:
    """``.../image_00/semantic/x.png`` -> ``.../image_00/instance/x.png``."""
    folder, fname = os.path.split(semantic_path)
    return os.path.join(os.path.dirname(folder), "instance", fname)


def read_frame_list(path: str) -> List[List[str]]:
    """Lines of ``<rgb> <semantic>`` relative paths; errors name the file and line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"KITTI-360 frame list not found: {path}")
    pairs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise ValueError(f"{path}:{n}: expected '<rgb path> <semantic path>', got {line.strip()!r}")
            pairs.append(parts)
    return pairs


class KittiLabelRule:
    """Label-map value -> class name: ``id * 1000 + k`` (instance) or ``id`` (class region) -> name."""

    def __init__(self, id_to_name: Dict[int, str]):
        self.id_to_name = dict(id_to_name)

    def __call__(self, value: int) -> Optional[str]:
        return self.id_to_name.get(value // INSTANCE_FACTOR if value >= INSTANCE_FACTOR else value)


class KITTI360(LabelMapSegmentDataset):
    """KITTI-360 segments for split "train" or "val" (the official 2D semantic frame lists).

    stride: keep every stride-th frame of the list. use_instances: read instance maps when present.
    index_cache: JSON file caching the label-map histograms (a second construction reads no map).
    """

    def __init__(self, root: str, split: str = "val", min_pixels: int = DEFAULT_MIN_PIXELS, stride: int = 1,
                 use_instances: bool = True, max_frames: Optional[int] = None, index_cache: Optional[str] = None,
                 progress: bool = True):
        if split not in FRAME_LISTS:
            raise ValueError(f"KITTI-360 split must be one of {sorted(FRAME_LISTS)}, got {split!r}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        id_to_name = kitti360_classes()
        super().__init__(f"kitti-360/{split}", list(id_to_name.values()), min_pixels)
        self.root = require_dir(root, "KITTI-360 root")
        sem_root = require_dir(os.path.join(root, "data_2d_semantics", "train"), "KITTI-360 2D semantics folder")
        list_file = os.path.join(sem_root, FRAME_LISTS[split])
        pairs = read_frame_list(list_file)[::stride]
        if max_frames is not None:
            pairs = pairs[:max_frames]

        rule = KittiLabelRule(id_to_name)
        frames = []
        for rgb_rel, sem_rel in pairs:
            rgb, sem = os.path.join(root, rgb_rel), os.path.join(root, sem_rel)
            for p in (rgb, sem):
                if not os.path.isfile(p):
                    raise FileNotFoundError(f"{list_file} names a missing file: {p}")
            inst = instance_path_for(sem)
            frames.append(LabelFrame(rgb, inst if use_instances and os.path.isfile(inst) else sem, rule))
        self._enumerate(frames, progress, index_cache)


@register_dataset("kitti-360")
def _build(root: str, split: Optional[str], **kw) -> KITTI360:
    return KITTI360(root, split=split or "val", **kw)
