"""ScanNet++ Offices (paper Appendix E) as a segment dataset, its scene split and its vocabularies.

:class:`ScanNetPPOffices` renders the annotated mesh of each scene into every stride-th posed frame
(:mod:`.render`, open3d; cached), and enumerates one segment per object visible in a frame.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence

from tqdm import tqdm

from ...vocab import Vocabulary
from ..generic import LabelFrame, LabelMapSegmentDataset
from ..registry import register_dataset
from ..resources import resource_path
from ..segments import DEFAULT_MIN_PIXELS
from .render import render_scene_instance_maps
from .scene import ScanNetPPScene, annotation_labels


def offices_split(path: Optional[str] = None) -> Dict[str, List[str]]:
    """{"train": 14 scene ids, "test": 16 scene ids} (paper Appendix E)."""
    if path is None:
        path = resource_path("scannetpp_offices_split.json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return {"train": list(data["train"]), "test": list(data["test"])}


def split_scene_ids(split: str, split_file: Optional[str] = None) -> List[str]:
    aliases = {"train": "train", "training": "train", "test": "test", "val": "test", "validation": "test"}
    if split not in aliases:
        raise ValueError(f"ScanNet++ Offices split must be one of {sorted(aliases)}, got {split!r}")
    return offices_split(split_file)[aliases[split]]


class ScanNetPPOffices(LabelMapSegmentDataset):
    """Segments of ScanNet++ scenes: one per annotated object visible in a rendered frame.

    root: ScanNet++ release folder. split: "train" (14 scenes) or "test" (16 scenes) of the Offices
    split, or give ``scene_ids``. stride: keep every stride-th posed frame. render_scale: render
    the masks (and load the RGB) at this fraction of the RGB resolution. render_dir: where the
    instance maps are cached (default ``~/.cache/opendas_encoder/scannetpp_renders``).
    pose_source / allow_unaligned_poses: see :meth:`ScanNetPPScene.frames` (frames without an
    ``aligned_pose`` are refused unless allow_unaligned_poses=True).
    classes: the labels of the split's annotated objects (sorted).
    """

    def __init__(self, root: str, split: str = "train", stride: int = 10, min_pixels: int = DEFAULT_MIN_PIXELS,
                 render_scale: float = 0.25, render_dir: Optional[str] = None,
                 scene_ids: Optional[Sequence[str]] = None, split_file: Optional[str] = None,
                 pose_source: str = "auto", allow_unaligned_poses: bool = False, threads: int = 0,
                 index_cache: Optional[str] = None, progress: bool = True):
        if not 0 < render_scale <= 1:
            raise ValueError(f"render_scale must be in (0, 1], got {render_scale}")
        ids = list(scene_ids) if scene_ids is not None else split_scene_ids(split, split_file)
        scenes = [ScanNetPPScene(root, sid) for sid in ids]  # raises for a missing scene folder
        self.render_dir = os.path.join(render_dir or os.path.expanduser("~/.cache/opendas_encoder/scannetpp_renders"),
                                       f"scale_{render_scale:g}")
        frames, all_labels = [], set()
        for scene in tqdm(scenes, desc="ScanNet++ scenes", disable=not progress, leave=False):
            fr = scene.frames(stride, source=pose_source, allow_unaligned_poses=allow_unaligned_poses)
            maps = render_scene_instance_maps(scene, fr, self.render_dir, render_scale, threads, progress)
            labels = scene.instance_labels()
            all_labels.update(labels.values())
            frames += [LabelFrame(f.rgb_path, m, labels, resize_image=True) for f, m in zip(fr, maps)]
        super().__init__(f"scannetpp-offices/{split}" if scene_ids is None else "scannetpp", sorted(all_labels), min_pixels)
        self.root, self.scene_ids, self.stride = root, ids, stride
        self._enumerate(frames, progress, index_cache)


def offices_vocabulary(root: str, split_file: Optional[str] = None) -> Vocabulary:
    """base = labels of the training scenes, test = labels of the test scenes (novel = test - base)."""
    split = offices_split(split_file)
    return Vocabulary(base=annotation_labels(root, split["train"]), test=annotation_labels(root, split["test"]),
                      name="scannetpp-offices")


def vocabulary_report(vocab: Vocabulary) -> str:
    c = vocab.counts()
    return (f"training labels: {c['base']}\ntest labels: {c['test']}\n"
            f"base (test labels seen in training): {c['test_base']}\nnovel (test - training): {c['novel']}")


@register_dataset("scannetpp-offices")
def _build(root: str, split: Optional[str], **kw) -> ScanNetPPOffices:
    return ScanNetPPOffices(root, split=split or "train", **kw)
