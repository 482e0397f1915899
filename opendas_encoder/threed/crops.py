"""Crop boxes around projected masks: multi-level expansion and optional SAM refinement.

Boxes are (x1, y1, x2, y2) integer pixels with exclusive x2/y2 (PIL's ``Image.crop`` order).
Level ``l`` of a box of size (w, h) grows it by ``int(w * ratio) * l`` / ``int(h * ratio) * l``
on each side, clipped to the image (OpenMask3D's multi-level crops).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

Box = Tuple[int, int, int, int]


def mask_to_box(mask: np.ndarray) -> Optional[Box]:
    """Tight box of a bool (H, W) mask; None if the mask is empty."""
    rows = np.nonzero(mask.any(axis=1))[0]
    cols = np.nonzero(mask.any(axis=0))[0]
    if len(rows) == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def expand_box(box: Box, level: int, ratio: float, width: int, height: int) -> Box:
    """Grow ``box`` for expansion level ``level`` and clip it to a (height, width) image."""
    x1, y1, x2, y2 = box
    if level == 0:
        return x1, y1, x2, y2
    dx = int(abs(x2 - x1) * ratio) * level
    dy = int(abs(y2 - y1) * ratio) * level
    return max(0, x1 - dx), max(0, y1 - dy), min(width, x2 + dx), min(height, y2 + dy)


def multi_level_boxes(box: Box, num_levels: int, ratio: float, width: int, height: int) -> List[Box]:
    """The ``num_levels`` boxes (level 0 = ``box`` itself) of one mask in one view."""
    return [expand_box(box, level, ratio, width, height) for level in range(num_levels)]


def rescale_box(box: Box, from_hw: Tuple[int, int], to_hw: Tuple[int, int]) -> Box:
    """Map a pixel box between two resolutions of the same view (outward rounding)."""
    if tuple(from_hw) == tuple(to_hw):
        return tuple(int(v) for v in box)
    sx, sy = to_hw[1] / from_hw[1], to_hw[0] / from_hw[0]
    x1, y1, x2, y2 = box
    return (int(np.floor(x1 * sx)), int(np.floor(y1 * sy)),
            min(to_hw[1], int(np.ceil(x2 * sx))), min(to_hw[0], int(np.ceil(y2 * sy))))


class SamRefiner:
    """Refine a projected mask with Segment Anything (optional; OpenMask3D's default).

    ``predictor`` is a ``segment_anything.SamPredictor`` (or any object with ``set_image(rgb)`` and
    ``predict(point_coords, point_labels, multimask_output) -> (masks, scores, logits)``).
    For each view, ``rounds`` random subsets of ``points`` projected pixels prompt SAM; the mask
    with the highest score wins. A fixed seed makes the choice reproducible.
    """

    def __init__(self, predictor, rounds: int = 10, points: int = 5, seed: int = 0):
        self.predictor = predictor
        self.rounds = rounds
        self.points = points
        self.rng = np.random.default_rng(seed)

    @classmethod
    def from_checkpoint(cls, checkpoint: str, model_type: str = "vit_h", device: str = "cpu", **kwargs) -> "SamRefiner":
        """Build from a SAM checkpoint (needs ``pip install segment-anything`` and the weights file)."""
        try:
            from segment_anything import SamPredictor, sam_model_registry
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("SAM refinement needs `pip install segment-anything` and a SAM checkpoint") from exc
        import os
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"SAM checkpoint not found: {checkpoint}")
        sam = sam_model_registry[model_type](checkpoint=checkpoint)
        sam.to(device)
        return cls(SamPredictor(sam), **kwargs)

    def set_image(self, image: np.ndarray) -> None:
        """image: uint8 (H, W, 3) RGB."""
        self.predictor.set_image(image)

    def refine(self, cols: np.ndarray, rows: np.ndarray, image_hw: Tuple[int, int]) -> Optional[np.ndarray]:
        """Best SAM mask bool (H, W) for the projected pixels (cols, rows) of the current image, or
        None when SAM returns nothing with a positive score."""
        coords = np.stack([cols, rows], axis=1).astype(np.float64)
        best_score, best = 0.0, None
        for _ in range(self.rounds):
            pick = self.rng.permutation(len(coords))[: self.points]
            masks, scores, _ = self.predictor.predict(point_coords=coords[pick], point_labels=np.ones(len(pick)),
                                                      multimask_output=False)
            if float(scores[0]) > best_score:
                best_score, best = float(scores[0]), np.asarray(masks[0], dtype=bool)
        if best is not None and best.shape != tuple(image_hw):
            raise ValueError(f"SAM mask shape {best.shape} != image {tuple(image_hw)}")
        return best
