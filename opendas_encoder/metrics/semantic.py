"""2D semantic segmentation metrics (mIoU, mAcc, fwIoU, pAcc, percent) with the rules of Detectron2's
``SemSegEvaluator`` (current and v0.6, see :func:`semseg_metrics`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["semseg_metrics", "SemSegConfusion", "split_iou"]


def semseg_metrics(confusion: np.ndarray) -> dict:
    """mIoU, mAcc, fwIoU, pAcc (percent) from a (C, C) confusion matrix.

    ``confusion[g, p]`` counts pixels of ground-truth class ``g`` predicted as ``p`` (rows = ground
    truth; ignored pixels already left out). Note Detectron2 stores the transpose
    (``conf[pred, gt]``); the formulas below are written for rows = ground truth.

    Current rule (Detectron2 main, ``detectron2/evaluation/sem_seg_evaluation.py`` lines 186-200
    at commit 02b5c4e295e990042a714712c21dc79b731e8833; introduced by f3c1bc19 on 2022-07-06,
    after v0.6 and in no release tag): ``acc_valid = gt_pixels > 0`` and
    ``iou_valid = acc_valid & (union > 0)``; classes absent from the ground truth are left out of
    ``miou``, ``macc`` and ``fwiou``.

    ``miou_legacy``: Detectron2 v0.6 (tag v0.6 = d1e04565, same file lines 136-142):
    ``miou = sum(iou[gt_pixels > 0]) / count(gt_pixels + pred_pixels > 0)``, i.e. the mean over
    classes with union > 0, where a class predicted but absent from the ground truth has IoU 0.
    The two rules differ only when a class is absent from the ground truth of the whole set.
    OVSeg's published numbers use the legacy rule: its ``GeneralizedSemSegEvaluator``
    (facebookresearch/ov-seg @ 36f49d4,
    ``open_vocab_seg/evaluation/generalized_sem_seg_evaluation.py`` lines 115-121) overrides
    ``evaluate`` with these v0.6 lines, ``train_net.py`` line 76 uses that evaluator, and
    ``INSTALL.md`` line 21 pins ``detectron2==0.6``.

    Returns ``miou``, ``miou_legacy``, ``macc``, ``fwiou``, ``pacc`` (floats, nan when the
    confusion is empty); ``per_class_iou`` / ``per_class_acc`` (float arrays (C,), percent, nan
    where the current rule excludes the class); ``per_class_iou_legacy`` ((C,), IoU wherever
    union > 0, so 0 for a predicted class absent from the ground truth; nan where union == 0);
    ``valid`` ((C,) bool, classes with ground-truth pixels).
    """
    conf = np.asarray(confusion)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion must be a square (C, C) matrix, got shape {conf.shape}")
    if not np.issubdtype(conf.dtype, np.integer):
        raise ValueError(f"confusion must hold integer pixel counts, got dtype {conf.dtype}")
    if (conf < 0).any():
        raise ValueError("confusion contains negative counts")
    conf = conf.astype(np.float64)
    tp = np.diag(conf)
    gt_pixels = conf.sum(axis=1)
    pred_pixels = conf.sum(axis=0)
    union = gt_pixels + pred_pixels - tp
    total = gt_pixels.sum()

    valid = gt_pixels > 0  # current rule: acc_valid, and iou_valid (union > 0 is then implied)
    acc = np.full(len(tp), np.nan)
    iou = np.full(len(tp), np.nan)
    acc[valid] = tp[valid] / gt_pixels[valid]
    iou[valid] = tp[valid] / union[valid]
    legacy_valid = union > 0
    iou_legacy = np.full(len(tp), np.nan)
    iou_legacy[legacy_valid] = tp[legacy_valid] / union[legacy_valid]

    nan = float("nan")

    def mean(x: np.ndarray) -> float:
        return 100.0 * float(x.mean()) if x.size else nan

    return {
        "miou": mean(iou[valid]),
        "miou_legacy": mean(iou_legacy[legacy_valid]),
        "macc": mean(acc[valid]),
        "fwiou": 100.0 * float(np.sum(iou[valid] * gt_pixels[valid]) / total) if total else nan,
        "pacc": 100.0 * float(tp.sum() / total) if total else nan,
        "per_class_iou": 100.0 * iou,
        "per_class_acc": 100.0 * acc,
        "per_class_iou_legacy": 100.0 * iou_legacy,
        "valid": valid,
    }


class SemSegConfusion:
    """Accumulates a (C, C) int64 confusion matrix (rows = ground truth) over images.

    ``update(pred, gt)``: int arrays of equal shape (H, W); pixels with ``gt == ignore_label`` are
    left out; other ground-truth or any predicted values outside [0, C) raise ``ValueError``.
    """

    def __init__(self, num_classes: int, ignore_label: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"pred shape {pred.shape} differs from gt shape {gt.shape}")
        for name, arr in (("pred", pred), ("gt", gt)):
            if not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"{name} must be an integer label map, got dtype {arr.dtype}")
        keep = gt != self.ignore_label
        gt = gt[keep].astype(np.int64)
        pred = pred[keep].astype(np.int64)
        c = self.num_classes
        for name, arr in (("gt", gt), ("pred", pred)):
            bad = (arr < 0) | (arr >= c)
            if bad.any():
                raise ValueError(
                    f"{name} has labels outside [0, {c}) (ignore_label={self.ignore_label}): "
                    f"{np.unique(arr[bad])[:10].tolist()}"
                )
        self.confusion += np.bincount(gt * c + pred, minlength=c * c).reshape(c, c)

    def metrics(self) -> dict:
        """``semseg_metrics`` of the accumulated confusion."""
        return semseg_metrics(self.confusion)


def split_iou(
    per_class_iou: np.ndarray,
    class_names: Sequence[str],
    base: Sequence[str],
    novel: Sequence[str],
) -> dict:
    """Mean IoU over base and over novel classes, ignoring nan entries (excluded classes).

    ``per_class_iou``: (C,) aligned with ``class_names`` (any unit; the means keep it). Returns
    ``{"base_miou", "novel_miou", "n_base", "n_novel"}`` (counts of non-nan classes; a mean over
    zero classes is nan). Pass ``per_class_iou_legacy`` to reproduce OVSeg's per-set mIoU.
    """
    iou = np.asarray(per_class_iou, dtype=np.float64)
    names = list(class_names)
    if iou.shape != (len(names),):
        raise ValueError(f"per_class_iou has shape {iou.shape}, expected ({len(names)},)")
    index = {n: i for i, n in enumerate(names)}
    out = {}
    for split, members in (("base", base), ("novel", novel)):
        unknown = [m for m in members if m not in index]
        if unknown:
            raise ValueError(f"{split} classes not in class_names: {unknown[:10]}")
        vals = iou[[index[m] for m in members]]
        vals = vals[~np.isnan(vals)]
        out[f"{split}_miou"] = float(vals.mean()) if vals.size else float("nan")
        out[f"n_{split}"] = int(vals.size)
    return out
