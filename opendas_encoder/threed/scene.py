"""The 3D scene data model shared by the readers and the mask classifier.

A :class:`Scene3D` is a point cloud (mesh vertices) plus posed RGB-D frames. Frames decode their
images lazily so that a scene with thousands of frames costs little until it is used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from .projection import scale_intrinsic


@dataclass
class PosedFrame:
    """One RGB-D frame.

    color_path / depth_path: image files (depth: 16-bit PNG, ``depth_scale`` units per metre).
    cam_to_world: (4, 4) camera-to-world pose. intrinsic: (3, 3) pixels, valid for images of size
    ``intrinsic_hw`` (H, W); None = the colour image's size.
    """

    color_path: str
    depth_path: str
    cam_to_world: np.ndarray
    intrinsic: np.ndarray
    depth_scale: float = 1000.0
    intrinsic_hw: Optional[Tuple[int, int]] = None
    name: str = ""

    def load_color(self) -> Image.Image:
        """The colour image as RGB PIL image."""
        if not os.path.isfile(self.color_path):
            raise FileNotFoundError(f"colour frame not found: {self.color_path}")
        with Image.open(self.color_path) as img:
            return img.convert("RGB")

    def load_depth(self) -> np.ndarray:
        """Depth in metres, float32 (H, W); 0 where the sensor has no measurement."""
        if not os.path.isfile(self.depth_path):
            raise FileNotFoundError(f"depth frame not found: {self.depth_path}")
        with Image.open(self.depth_path) as img:
            raw = np.asarray(img)
        if raw.ndim != 2:
            raise ValueError(f"{self.depth_path}: depth image must be single-channel, got shape {raw.shape}")
        return raw.astype(np.float32) / float(self.depth_scale)

    def color_size(self) -> Tuple[int, int]:
        """(H, W) of the colour image (reads only the header)."""
        with Image.open(self.color_path) as img:
            return img.height, img.width

    def intrinsic_for(self, hw: Tuple[int, int]) -> np.ndarray:
        """The intrinsic matrix rescaled to an image of size ``hw`` (H, W)."""
        base_hw = self.intrinsic_hw if self.intrinsic_hw is not None else self.color_size()
        return scale_intrinsic(self.intrinsic, base_hw, hw)


@dataclass
class Scene3D:
    """A scene: points float (N, 3) in metres, posed frames, and a name."""

    name: str
    points: np.ndarray
    frames: List[PosedFrame] = field(default_factory=list)

    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])


@dataclass
class InstanceGroundTruth:
    """3D instance ground truth in the ScanNet encoding.

    ids: int64 (num_points,) = ``label_id * 1000 + instance + 1``; 0 = unlabelled / ignored.
    class_names: label_id -> class name for every label id that may occur.
    """

    ids: np.ndarray
    class_names: dict

    def instance_masks(self) -> Tuple[np.ndarray, np.ndarray]:
        """One mask per ground-truth instance: (masks bool (N, K), label ids (K,)), sorted by id."""
        uniq = np.unique(self.ids)
        uniq = uniq[uniq > 0]
        masks = self.ids[:, None] == uniq[None, :]
        return masks, (uniq // 1000).astype(np.int64)
