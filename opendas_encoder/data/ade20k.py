"""ADE20K-150 (MIT SceneParsing, ``ADEChallengeData2016``) as segments: one per class region per image.

Layout (the official release)::

    ADEChallengeData2016/images/{training,validation}/ADE_*_00000001.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_*_00000001.png   8-bit, 0 = other (ignored),
                                                                               k = class k of the 150

As in the paper (Appendix D, following OVSeg), every class present in an image's annotation gives
one segment: the mask of all its pixels.
"""

from __future__ import annotations

import os
from typing import List, Optional

from ..vocab import read_class_list
from .generic import LabelFrame, LabelMapSegmentDataset, require_dir
from .registry import register_dataset
from .resources import resource_path
from .segments import DEFAULT_MIN_PIXELS

SPLIT_ALIASES = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}


def ade20k_150_classes() -> List[str]:
    """The 150 class names in label order (annotation value k -> names[k - 1])."""
    names = read_class_list(resource_path("ade20k_150_classes.txt"))
    if len(names) != 150:
        raise ValueError(f"{resource_path('ade20k_150_classes.txt')}: expected 150 names, got {len(names)}")
    return names


def resolve_ade_root(root: str) -> str:
    """Accept the ``ADEChallengeData2016`` folder itself or its parent."""
    inner = os.path.join(root, "ADEChallengeData2016")
    return inner if os.path.isdir(inner) else root


class ADE20K150(LabelMapSegmentDataset):
    """ADE20K-150 segments. split: "training"/"train" or "validation"/"val".

    max_images: use only the first images (sorted names). index_cache: JSON file caching the
    annotation histograms so that a second construction reads no annotation.
    """

    def __init__(self, root: str, split: str = "validation", min_pixels: int = DEFAULT_MIN_PIXELS,
                 max_images: Optional[int] = None, index_cache: Optional[str] = None, progress: bool = True):
        if split not in SPLIT_ALIASES:
            raise ValueError(f"ADE20K-150 split must be one of {sorted(SPLIT_ALIASES)}, got {split!r}")
        split = SPLIT_ALIASES[split]
        classes = ade20k_150_classes()
        super().__init__(f"ade20k-150/{split}", classes, min_pixels)
        self.root = resolve_ade_root(root)
        image_dir = require_dir(os.path.join(self.root, "images", split), "ADE20K image folder")
        ann_dir = require_dir(os.path.join(self.root, "annotations", split), "ADE20K annotation folder")
        by_value = {k + 1: c for k, c in enumerate(classes)}
        frames = []
        for fname in sorted(os.listdir(ann_dir)):
            stem, ext = os.path.splitext(fname)
            if ext.lower() != ".png":
                continue
            image = os.path.join(image_dir, stem + ".jpg")
            if not os.path.isfile(image):
                raise FileNotFoundError(f"ADE20K image for annotation {os.path.join(ann_dir, fname)} not found: {image}")
            frames.append(LabelFrame(image, os.path.join(ann_dir, fname), by_value))
            if max_images is not None and len(frames) >= max_images:
                break
        if not frames:
            raise FileNotFoundError(f"no ADE20K annotations (*.png) in {ann_dir}")
        self._enumerate(frames, progress, index_cache)


@register_dataset("ade20k-150")
def _build(root: str, split: Optional[str], **kw) -> ADE20K150:
    return ADE20K150(root, split=split or "validation", **kw)
