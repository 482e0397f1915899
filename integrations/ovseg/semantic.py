"""Semantic segmentation from mask proposals without Detectron2 (OVSeg's inference, CLIP branch).

Given an image and class-agnostic mask proposals (from files, or ground-truth masks), each valid
proposal is classified by :class:`~integrations.ovseg.adapter.RegionClassifier` and the class
scores are painted into a semantic map with OVSeg's einsum. When MaskFormer logits are stored with
the proposals, OVSeg's geometric ensemble is applied as well.

Proposal files: one ``<image stem>.npz`` per image with ``masks`` (N, H, W) bool (or soft
probabilities in [0, 1]) and optionally ``mask_logits`` (N, C + 1) MaskFormer class logits
(last column = no object).
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import torch

from .adapter import RegionClassifier, clip_only_class_probs, ensemble_class_probs, semantic_scores


def segment_image(
    classifier: RegionClassifier,
    image: np.ndarray,
    masks: np.ndarray,
    class_names: Sequence[str],
    mask_logits: Optional[np.ndarray] = None,
    ensemble_weight: float = 0.7,
) -> np.ndarray:
    """Predicted label map (H, W) int64 in [0, C) for one image.

    image: uint8 (H, W, 3) RGB; masks: (N, H, W) bool or soft; mask_logits: (N, C + 1) or None.
    Without ``mask_logits`` only the CLIP branch classifies (OVSeg with ensemble weight <= 0):
    the valid masks, weighted by their CLIP class probabilities. Pixels no mask covers get class 0
    (the argmax of an all-zero score column), as in OVSeg.
    """
    h, w = image.shape[:2]
    num_classes = len(class_names)
    masks_t = torch.as_tensor(np.asarray(masks))
    if masks_t.ndim != 3 or tuple(masks_t.shape[1:]) != (h, w):
        raise ValueError(f"masks must be (N, {h}, {w}), got {tuple(masks_t.shape)}")
    masks_t = masks_t.float()
    image_t = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)
    clip_logits, _, valid = classifier(image_t, class_names, masks_t)
    clip_logits = None if clip_logits is None else clip_logits.cpu()
    if mask_logits is not None:
        mask_logits_t = torch.as_tensor(np.asarray(mask_logits), dtype=torch.float32)
        if tuple(mask_logits_t.shape) != (masks_t.shape[0], num_classes + 1):
            raise ValueError(f"mask_logits must be ({masks_t.shape[0]}, {num_classes + 1}), got {tuple(mask_logits_t.shape)}")
        probs = ensemble_class_probs(mask_logits_t, clip_logits, valid.cpu(), ensemble_weight)
        scores = semantic_scores(probs, masks_t)
    else:
        probs = clip_only_class_probs(clip_logits, num_classes)
        scores = semantic_scores(probs, masks_t[valid.cpu()])
    return scores.argmax(dim=0).numpy().astype(np.int64)


def load_proposals(path: str, shape: tuple, num_classes: Optional[int] = None):
    """Read one proposal file; returns (masks (N, H, W), mask_logits (N, C + 1) or None).

    Raises FileNotFoundError / ValueError naming ``path`` when it is missing or malformed.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"proposal file not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
        arrays = None
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                arrays = {k: np.asarray(data[k]) for k in data.files}
    except (OSError, EOFError, ValueError) as exc:  # not an npz / truncated / pickled objects
        raise ValueError(f"{path}: unreadable proposal file ({type(exc).__name__}: {exc})") from None
    if arrays is None or "masks" not in arrays:
        raise ValueError(f"{path}: no 'masks' array (found {sorted(arrays or [])})")
    masks, logits = arrays["masks"], arrays.get("mask_logits")
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(shape):
        raise ValueError(f"{path}: masks must be (N, {shape[0]}, {shape[1]}), got {masks.shape}")
    if masks.dtype != bool:
        if not np.issubdtype(masks.dtype, np.number) or masks.size and (masks.min() < 0 or masks.max() > 1):
            raise ValueError(f"{path}: masks must be bool or probabilities in [0, 1] (dtype {masks.dtype})")
    if logits is not None and num_classes is not None and logits.shape != (masks.shape[0], num_classes + 1):
        raise ValueError(f"{path}: mask_logits must be ({masks.shape[0]}, {num_classes + 1}), got {logits.shape}")
    return masks, logits


def gt_proposals(gt: np.ndarray, ignore_label: int = 255) -> np.ndarray:
    """Ground-truth masks as proposals: one bool mask (N, H, W) per class present in ``gt`` (H, W)."""
    ids = [int(c) for c in np.unique(gt) if c != ignore_label]
    if not ids:
        return np.zeros((0,) + gt.shape, dtype=bool)
    return np.stack([gt == c for c in ids])
