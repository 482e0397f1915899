"""Multi-view CLIP features of 3D mask proposals (OpenMask3D's mask-feature step, our code).

For each mask: the top-k frames by visible pixel count, ``num_levels`` expanding crops around the
projected (optionally SAM-refined) mask in each, every crop encoded by the image encoder, and the
L2-normalised crop embeddings averaged (not re-normalised, as in OpenMask3D). A mask seen in no
frame gets a zero vector. Crops of all masks are planned first and encoded in batches, frame by
frame, so each colour image is decoded once.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator, List, Optional

import numpy as np
import torch
from tqdm import tqdm

from .crops import SamRefiner, mask_to_box, multi_level_boxes, rescale_box
from .projection import visible_points
from .scene import Scene3D
from .views import ViewStats, compute_view_stats, frame_mask_pixels, top_k_views


@dataclass
class MaskFeatureConfig:
    """Settings of the mask-feature step (defaults: OpenMask3D's ``openmask3d_*.yaml``)."""

    top_k: int = 5                  # views per mask
    num_levels: int = 3             # crop levels per view
    expansion_ratio: float = 0.1    # box growth per level, fraction of box size
    vis_threshold: float = 0.2      # metres, |sensor depth - point depth| for visibility
    batch_size: int = 64            # crops per encoder call
    pixel_rounding: str = "floor"   # "trunc" reproduces OpenMask3D's int cast exactly

    def __post_init__(self):
        if self.top_k < 1 or self.num_levels < 1 or self.batch_size < 1:
            raise ValueError(f"top_k, num_levels and batch_size must be >= 1, got {self}")
        if self.expansion_ratio < 0 or self.vis_threshold <= 0:
            raise ValueError(f"expansion_ratio must be >= 0 and vis_threshold > 0, got {self}")
        if self.pixel_rounding not in ("floor", "trunc"):
            raise ValueError(f"pixel_rounding must be 'floor' or 'trunc', got {self.pixel_rounding!r}")


@dataclass
class CropPlan:
    """All crops of a scene: one row per crop, sorted by frame.

    mask_index, frame_index, level: int64 (C,); boxes: int64 (C, 4) in colour-image pixels.
    """

    mask_index: np.ndarray
    frame_index: np.ndarray
    level: np.ndarray
    boxes: np.ndarray
    num_masks: int

    def __len__(self) -> int:
        return int(len(self.mask_index))


def _sam_boxes(scene: Scene3D, masks: np.ndarray, frame_idx: int, wanted: List[int], refiner: SamRefiner,
               cfg: MaskFeatureConfig, image: np.ndarray) -> dict:
    """SAM-refined level-0 boxes (colour pixels) of the masks ``wanted`` in one frame."""
    frame = scene.frames[frame_idx]
    depth = frame.load_depth()
    visible, pixels = visible_points(scene.points, frame.cam_to_world, frame.intrinsic_for(depth.shape), depth,
                                     cfg.vis_threshold, cfg.pixel_rounding)
    mask_idx, cols, rows = frame_mask_pixels(pixels, visible, masks[:, wanted])
    sy, sx = image.shape[0] / depth.shape[0], image.shape[1] / depth.shape[1]
    refiner.set_image(image)
    out = {}
    for j, mask in enumerate(wanted):
        sel = mask_idx == j
        best = refiner.refine((cols[sel] + 0.5) * sx - 0.5, (rows[sel] + 0.5) * sy - 0.5, image.shape[:2])
        out[mask] = mask_to_box(best) if best is not None else None
    return out


def plan_crops(scene: Scene3D, masks: np.ndarray, cfg: MaskFeatureConfig = MaskFeatureConfig(),
               stats: Optional[ViewStats] = None, refiner: Optional[SamRefiner] = None,
               progress: bool = False) -> CropPlan:
    """Choose views and crop boxes for every mask (bool (N, K)) of ``scene``."""
    masks = np.asarray(masks, dtype=bool)
    if stats is None:
        stats = compute_view_stats(scene, masks, cfg.vis_threshold, progress=progress, rounding=cfg.pixel_rounding)
    views = top_k_views(stats.counts, cfg.top_k)
    by_frame: "OrderedDict[int, List[int]]" = OrderedDict()
    for mask, frames in enumerate(views):
        for f in frames:
            by_frame.setdefault(int(f), []).append(mask)
    rows = []
    for f in sorted(by_frame):
        frame = scene.frames[f]
        depth_hw = tuple(int(v) for v in stats.depth_hw[f])
        sam = None
        if refiner is not None:
            image = np.asarray(frame.load_color())
            color_hw = image.shape[:2]
            sam = _sam_boxes(scene, masks, f, by_frame[f], refiner, cfg, image)
        else:
            color_hw = frame.color_size()
        for mask in by_frame[f]:
            box = sam.get(mask) if sam is not None else None
            if box is None:
                box = rescale_box(tuple(stats.boxes[f, mask]), depth_hw, color_hw)
            for level, b in enumerate(multi_level_boxes(box, cfg.num_levels, cfg.expansion_ratio,
                                                         color_hw[1], color_hw[0])):
                rows.append((mask, f, level) + tuple(b))
    table = np.asarray(rows, dtype=np.int64).reshape(-1, 7)
    return CropPlan(mask_index=table[:, 0], frame_index=table[:, 1], level=table[:, 2], boxes=table[:, 3:],
                    num_masks=masks.shape[1])


def _encoder_device(encoder) -> torch.device:
    try:
        return next(encoder.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _crop_tensors(scene: Scene3D, plan: CropPlan, rows: np.ndarray, preprocess) -> Iterator[torch.Tensor]:
    """Preprocessed crops (3, S, S) of the plan rows ``rows``, decoding each frame once in turn."""
    current, image = None, None
    for r in rows:
        f = int(plan.frame_index[r])
        if f != current:
            current, image = f, scene.frames[f].load_color()
        yield preprocess(image.crop(tuple(int(v) for v in plan.boxes[r])))


@torch.no_grad()
def encode_crops(scene: Scene3D, plan: CropPlan, encoder, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """L2-normalised image embeddings float32 (C, D) of all crops, in plan order, ``batch_size``
    crops per encoder call (crops of different masks share batches)."""
    device = _encoder_device(encoder)
    chunks = []
    order = np.arange(len(plan))
    batches = range(0, len(plan), batch_size)
    for start in tqdm(batches, desc=f"{scene.name}: crops", leave=False, disable=not progress):
        rows = order[start:start + batch_size]
        batch = torch.stack(list(_crop_tensors(scene, plan, rows, encoder.preprocess))).to(device)
        emb = encoder.encode_image(batch).float()
        chunks.append(torch.nn.functional.normalize(emb, dim=-1).cpu())
    if not chunks:
        return torch.zeros(0, _embed_dim(encoder))
    return torch.cat(chunks)


def _embed_dim(encoder) -> int:
    dim = getattr(encoder, "embed_dim", None)
    if dim is None:
        raise ValueError("encoder has no embed_dim; cannot size features of a scene with no visible mask")
    return int(dim)


def aggregate_crop_features(mask_index: np.ndarray, crop_features: torch.Tensor, num_masks: int) -> np.ndarray:
    """Mean of the crop embeddings of each mask: float32 (num_masks, D); zero rows for masks
    without crops. mask_index: (C,) owner of each crop; crop_features: (C, D)."""
    dim = crop_features.shape[1]
    sums = torch.zeros(num_masks, dim, dtype=torch.float64)
    sums.index_add_(0, torch.as_tensor(mask_index, dtype=torch.long), crop_features.double())
    counts = torch.bincount(torch.as_tensor(mask_index, dtype=torch.long), minlength=num_masks).double()
    out = sums / counts.clamp(min=1)[:, None]
    return out.float().numpy()


def compute_mask_features(scene: Scene3D, masks: np.ndarray, encoder, cfg: MaskFeatureConfig = MaskFeatureConfig(),
                          refiner: Optional[SamRefiner] = None, progress: bool = False,
                          plan: Optional[CropPlan] = None) -> np.ndarray:
    """Features float32 (K, D) of the K masks (bool (num_points, K)) of ``scene``; batched."""
    if plan is None:
        plan = plan_crops(scene, masks, cfg, refiner=refiner, progress=progress)
    if len(plan) == 0:
        return np.zeros((plan.num_masks, _embed_dim(encoder)), dtype=np.float32)
    feats = encode_crops(scene, plan, encoder, cfg.batch_size, progress=progress)
    return aggregate_crop_features(plan.mask_index, feats, plan.num_masks)


@torch.no_grad()
def compute_mask_features_loop(scene: Scene3D, plan: CropPlan, encoder) -> np.ndarray:
    """Reference: one encoder call per mask over that mask's crops (OpenMask3D's loop structure).

    Same result as :func:`compute_mask_features` for the same plan; used by tests and benchmarks.
    """
    device = _encoder_device(encoder)
    out = np.zeros((plan.num_masks, _embed_dim(encoder)), dtype=np.float32)
    images = {}
    for mask in range(plan.num_masks):
        rows = np.nonzero(plan.mask_index == mask)[0]
        if len(rows) == 0:
            continue
        crops = []
        for r in rows:
            f = int(plan.frame_index[r])
            if f not in images:
                images[f] = scene.frames[f].load_color()
            crops.append(encoder.preprocess(images[f].crop(tuple(int(v) for v in plan.boxes[r]))))
        emb = encoder.encode_image(torch.stack(crops).to(device)).float()
        out[mask] = torch.nn.functional.normalize(emb, dim=-1).mean(dim=0).cpu().numpy()
    return out
