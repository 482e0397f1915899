"""Evaluation metrics: segment classification, 2D semantic segmentation, 3D instance AP.

All scores are percentages (0-100), as in the paper's tables. Numpy and scikit-learn only.

* ``classification_metrics`` / ``confusion_matrix``: Acc, weighted F1 and its base / novel
  restrictions (the paper's W-F1, B-F1, N-F1), computed with scikit-learn.
* ``semseg_metrics`` / ``SemSegConfusion`` / ``split_iou``: mIoU, mAcc, fwIoU, pAcc with the rules
  of Detectron2's ``SemSegEvaluator`` (current and v0.6, see ``semseg_metrics``).
* ``instance_ap`` / ``format_ap_table``: ScanNet 3D instance AP, AP50, AP25 (see ``instance_ap``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
from sklearn.metrics import confusion_matrix as _sk_confusion_matrix

__all__ = [
    "classification_metrics",
    "confusion_matrix",
    "semseg_metrics",
    "SemSegConfusion",
    "split_iou",
    "SCANNET_OVERLAPS",
    "instance_ap",
    "format_ap_table",
]


# --------------------------------------------------------------------------------------------------
# Classification (segment-level) metrics
# --------------------------------------------------------------------------------------------------


def _check_vocabulary(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    base_classes: Sequence[str],
    novel_classes: Sequence[str],
    labels: Sequence[str] | None,
) -> list[str]:
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} entries but y_pred has {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("no samples to evaluate (y_true is empty)")
    overlap = set(base_classes) & set(novel_classes)
    if overlap:
        raise ValueError(f"classes listed as both base and novel: {sorted(overlap)}")
    if labels is None:
        labels = list(dict.fromkeys([*base_classes, *novel_classes]))
    labels = list(labels)
    if len(set(labels)) != len(labels):
        raise ValueError("labels contains duplicate class names")
    known = set(labels)
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{name} contains classes outside the test vocabulary: {unknown[:10]}")
    missing = sorted((set(base_classes) | set(novel_classes)) - known)
    if missing:
        raise ValueError(f"base/novel classes missing from labels: {missing[:10]}")
    return labels


def _weighted_f1(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> float:
    if len(y_true) == 0:
        return float("nan")
    return 100.0 * float(
        f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
    )


def classification_metrics(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    base_classes: Sequence[str],
    novel_classes: Sequence[str],
    labels: Sequence[str] | None = None,
) -> dict:
    """Accuracy and the F1 family for predicted class names (the paper's Acc, W-F1, B-F1, N-F1).

    Args:
        y_true, y_pred: class names, one per sample (length n).
        base_classes, novel_classes: disjoint class-name lists (seen / unseen during adaptation).
        labels: the full test vocabulary; default ``base_classes + novel_classes``. Every name in
            ``y_true`` and ``y_pred`` must be in it (``ValueError`` otherwise).

    Returns a dict (scores in percent):
        ``acc``; ``weighted_f1``: scikit-learn ``f1_score(average="weighted")`` over all samples;
        ``base_f1`` / ``novel_f1``: the same weighted F1 over only the samples whose ground truth is
        a base / novel class. Predictions still range over the full vocabulary, so a base sample
        predicted as a novel class is an error for its base class. A split with no samples gives
        ``float('nan')``. ``n``, ``n_base``, ``n_novel``: sample counts. ``per_class``:
        ``{class: {"precision", "recall", "f1" (percent), "support" (int)}}`` over ``labels``
        (scikit-learn ``precision_recall_fscore_support``, ``zero_division=0``).
    """
    labels = _check_vocabulary(y_true, y_pred, base_classes, novel_classes, labels)
    yt = np.asarray(list(y_true), dtype=object)
    yp = np.asarray(list(y_pred), dtype=object)
    in_base = np.isin(yt, list(base_classes))
    in_novel = np.isin(yt, list(novel_classes))

    precision, recall, f1, support = precision_recall_fscore_support(
        yt, yp, labels=labels, zero_division=0
    )
    per_class = {
        name: {
            "precision": 100.0 * float(precision[i]),
            "recall": 100.0 * float(recall[i]),
            "f1": 100.0 * float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(labels)
    }
    return {
        "acc": 100.0 * float(accuracy_score(yt, yp)),
        "weighted_f1": _weighted_f1(yt, yp, labels),
        "base_f1": _weighted_f1(yt[in_base], yp[in_base], labels),
        "novel_f1": _weighted_f1(yt[in_novel], yp[in_novel], labels),
        "n": int(len(yt)),
        "n_base": int(in_base.sum()),
        "n_novel": int(in_novel.sum()),
        "per_class": per_class,
    }


def confusion_matrix(
    y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]
) -> np.ndarray:
    """Confusion counts, int array (C, C) over ``labels``: rows = ground truth, cols = predicted."""
    labels = list(labels)
    if not labels:
        raise ValueError("labels must name at least one class")
    return _sk_confusion_matrix(list(y_true), list(y_pred), labels=labels)


# --------------------------------------------------------------------------------------------------
# Semantic segmentation (Detectron2 SemSegEvaluator rules)
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# 3D instance AP (ScanNet benchmark rules)
# --------------------------------------------------------------------------------------------------

#: ScanNet's ``np.append(np.arange(0.5, 0.95, 0.05), 0.25)``: 0.50..0.90 (0.95 is not reached by
#: ``arange``) plus 0.25. AP averages every overlap except 0.25.
SCANNET_OVERLAPS = np.append(np.arange(0.5, 0.95, 0.05), 0.25)


@dataclass
class _SceneClassData:
    """One scene, one class: ground-truth instances and kept predictions (point counts)."""

    gt_sizes: np.ndarray  # (G,) points per gt instance of this class
    pred_sizes: np.ndarray  # (P,) points per prediction
    pred_scores: np.ndarray  # (P,)
    pred_void: np.ndarray  # (P,) points of the prediction on void (label not in class_ids, or 0)
    inter: np.ndarray  # (P, G) intersection counts


def _scene_tables(
    scene: str, gt_ids: np.ndarray, pred: Mapping, class_ids: np.ndarray, min_region_size: int
) -> dict[int, _SceneClassData]:
    gt_ids = np.asarray(gt_ids)
    if gt_ids.ndim != 1 or not np.issubdtype(gt_ids.dtype, np.integer):
        raise ValueError(f"scene {scene!r}: ground truth must be a 1-D int array, got "
                         f"{gt_ids.dtype} {gt_ids.shape}")
    for key in ("masks", "scores", "classes"):
        if key not in pred:
            raise ValueError(f"scene {scene!r}: predictions lack {key!r}")
    masks = np.asarray(pred["masks"])
    scores = np.asarray(pred["scores"], dtype=np.float64).reshape(-1)
    classes = np.asarray(pred["classes"]).reshape(-1)
    if masks.ndim != 2 or masks.shape[0] != gt_ids.shape[0]:
        raise ValueError(f"scene {scene!r}: masks must be (num_points={gt_ids.shape[0]}, N), "
                         f"got {masks.shape}")
    if not (len(scores) == len(classes) == masks.shape[1]):
        raise ValueError(f"scene {scene!r}: {masks.shape[1]} masks, {len(scores)} scores, "
                         f"{len(classes)} classes")
    masks = masks != 0

    # Ground-truth instances: every non-zero id whose label (id // 1000) is evaluated, in id order.
    # Void points: unannotated (0) or of a class that is not evaluated.
    inst_ids, inverse, sizes = np.unique(gt_ids, return_inverse=True, return_counts=True)
    labels = inst_ids // 1000
    evaluated = (inst_ids != 0) & np.isin(labels, class_ids)

    # Predictions of other classes, below min_region_size or empty are dropped.
    pred_sizes = masks.sum(axis=0)
    kept = np.flatnonzero(np.isin(classes, class_ids) & (pred_sizes >= max(min_region_size, 1)))
    points, preds = np.nonzero(masks)  # one pass over the (num_points, N) masks
    n_ids = len(inst_ids)
    counts = np.bincount(  # (N, n_ids): points of prediction j carrying gt id k
        preds * n_ids + inverse.reshape(-1)[points], minlength=masks.shape[1] * n_ids
    ).reshape(masks.shape[1], n_ids)
    pred_void = counts[:, ~evaluated].sum(axis=1)

    tables = {}
    for cid in class_ids:
        gt_sel = np.flatnonzero(evaluated & (labels == cid))
        pred_idx = kept[classes[kept] == cid]
        tables[int(cid)] = _SceneClassData(
            gt_sizes=sizes[gt_sel],
            pred_sizes=pred_sizes[pred_idx],
            pred_scores=scores[pred_idx],
            pred_void=pred_void[pred_idx],
            inter=counts[np.ix_(pred_idx, gt_sel)],
        )
    return tables


def _match_scene(data: _SceneClassData, th: float, min_region_size: int):
    """ScanNet matching at one overlap threshold. Returns (is_tp, scores, hard_false_negatives)."""
    n_pred, n_gt = data.inter.shape
    iou = data.inter / np.maximum(
        data.gt_sizes[None, :] + data.pred_sizes[:, None] - data.inter, 1
    )
    big_gt = data.gt_sizes >= min_region_size  # smaller gt instances are ignored
    visited = np.zeros(n_pred, dtype=bool)
    is_tp: list[float] = []
    scores: list[float] = []
    hard_fn = 0
    for g in np.flatnonzero(big_gt):
        # Walk the overlapping predictions in prediction order (ScanNet's order); a later match of
        # an already matched gt adds a false positive with the lower of the two scores.
        best = None
        for p in np.flatnonzero(data.inter[:, g] > 0):
            if visited[p] or not iou[p, g] > th:
                continue
            conf = float(data.pred_scores[p])
            if best is None:
                best = conf
                visited[p] = True
            else:
                is_tp.append(0.0)
                scores.append(min(best, conf))
                best = max(best, conf)
        if best is None:
            hard_fn += 1
        else:
            is_tp.append(1.0)
            scores.append(best)
    # Unmatched predictions are false positives unless mostly on ignored points (void, small gt).
    for p in range(n_pred):
        if (iou[p] > th).any():
            continue
        ignored = data.pred_void[p] + data.inter[p, ~big_gt].sum()
        if ignored / data.pred_sizes[p] <= th:
            is_tp.append(0.0)
            scores.append(float(data.pred_scores[p]))
    return is_tp, scores, hard_fn


def _scannet_average_precision(is_tp: np.ndarray, scores: np.ndarray, hard_fn: int) -> float:
    """ScanNet's AP (fraction): precision/recall at each distinct score threshold, integrated
    with step widths (r[i-1] - r[i+1]) / 2, r[-1] = r[0], after a closing point (P=1, R=0)."""
    order = np.argsort(scores, kind="stable")
    scores, is_tp = scores[order], is_tp[order]
    _, first = np.unique(scores, return_index=True)
    n, n_true = len(scores), float(is_tp.sum())
    tp_below = np.concatenate([[0.0], np.cumsum(is_tp)])[first]  # true positives below threshold
    tp = n_true - tp_below
    n_at_or_above = n - first
    precision = np.append(tp / n_at_or_above, 1.0)
    recall = np.append(tp / (n_true + hard_fn), 0.0)
    prev = np.concatenate([[recall[0]], recall[:-1]])
    nxt = np.append(recall[1:], 0.0)
    return float(np.dot(precision, (prev - nxt) / 2.0))


def instance_ap(
    predictions: Mapping[str, Mapping],
    ground_truth: Mapping[str, np.ndarray],
    class_ids: Sequence[int],
    class_names: Sequence[str],
    min_region_size: int = 100,
    overlaps: Sequence[float] | None = None,
) -> dict:
    """3D instance AP / AP50 / AP25 (percent) following ScanNet's ``evaluate_semantic_instance.py``.

    Reimplemented from ScanNet/ScanNet @ 3830fce ``BenchmarkScripts/3d_evaluation/
    evaluate_semantic_instance.py`` and the copy OpenMask3D runs (OpenMask3D/openmask3d @ 3bc3fc5
    ``openmask3d/evaluation/eval_semantic_instance.py``); the results match theirs.

    Args:
        predictions: scene -> ``{"masks": bool (num_points, N), "scores": (N,), "classes": (N,)
            label ids}``. Predictions of ids not in ``class_ids`` or with fewer than
            ``min_region_size`` points are dropped.
        ground_truth: scene -> int array (num_points,) of ``label_id * 1000 + instance + 1``
            (0 = unannotated). Both mappings must have the same scenes. As in ScanNet, every
            non-zero id whose label is in ``class_ids`` is one ground-truth instance, including
            a bare ``label_id * 1000`` (ScanNet's ``instance_id >= 1000`` check never excludes
            it). Points whose label is not in ``class_ids`` (or 0) are void.
        class_ids: evaluated label ids (>= 1); ``class_names``: their names.
        min_region_size: ground-truth instances below it are ignored (neither TP nor FN, and
            predictions on them are not false positives).
        overlaps: IoU thresholds; default ``SCANNET_OVERLAPS`` (0.50..0.90 step 0.05, plus 0.25).
            Must contain 0.5 and 0.25; ``ap`` averages all thresholds except 0.25.

    Matching per class and threshold (IoU strictly greater than the threshold): each ground-truth
    instance takes its overlapping predictions in prediction order (a prediction matches at most
    one instance); when several match, the highest score is the true positive and the others are
    false positives. An unmatched prediction is a false positive unless the fraction of its points
    on void points or on ignored (small) instances exceeds the threshold.

    Classes without (large enough) ground truth get AP nan, as ScanNet does
    (``ap_current = float('nan')``), and are left out of the means (ScanNet's ``np.nanmean``); a
    class with ground truth but no prediction gets AP 0. Returns ``{"ap", "ap50", "ap25",
    "per_class": {name: {"ap", "ap50", "ap25"}}, "overlaps": list}``.
    """
    class_ids = np.asarray(class_ids, dtype=np.int64).reshape(-1)
    class_names = list(class_names)
    if len(class_ids) != len(class_names):
        raise ValueError(f"{len(class_ids)} class_ids but {len(class_names)} class_names")
    if (class_ids < 1).any() or len(set(class_ids.tolist())) != len(class_ids):
        raise ValueError("class_ids must be distinct label ids >= 1")
    overlaps = SCANNET_OVERLAPS if overlaps is None else np.asarray(overlaps, dtype=np.float64)
    o50 = np.isclose(overlaps, 0.5)
    o25 = np.isclose(overlaps, 0.25)
    if not o50.any() or not o25.any():
        raise ValueError(f"overlaps must contain 0.5 and 0.25, got {overlaps.tolist()}")
    if set(predictions) != set(ground_truth):
        missing = sorted(set(ground_truth) - set(predictions))
        extra = sorted(set(predictions) - set(ground_truth))
        raise ValueError(f"scenes differ: without predictions {missing[:10]}, "
                         f"without ground truth {extra[:10]}")

    tables = [
        _scene_tables(scene, ground_truth[scene], predictions[scene], class_ids, min_region_size)
        for scene in sorted(ground_truth)
    ]
    ap = np.full((len(class_ids), len(overlaps)), np.nan)
    for ci, cid in enumerate(class_ids.tolist()):
        per_scene = [t[cid] for t in tables]
        has_gt = any((d.gt_sizes >= min_region_size).any() for d in per_scene)
        has_pred = any(len(d.pred_scores) for d in per_scene)
        if not has_gt:
            continue
        for oi, th in enumerate(overlaps):
            if not has_pred:
                ap[ci, oi] = 0.0
                continue
            is_tp, scores, hard_fn = [], [], 0
            for d in per_scene:
                t, s, h = _match_scene(d, float(th), min_region_size)
                is_tp += t
                scores += s
                hard_fn += h
            ap[ci, oi] = _scannet_average_precision(np.asarray(is_tp), np.asarray(scores), hard_fn)

    ap *= 100.0
    main = ~o25

    def nanmean(x: np.ndarray) -> float:
        x = x[~np.isnan(x)]
        return float(x.mean()) if x.size else float("nan")

    per_class = {
        name: {
            "ap": nanmean(ap[ci, main]),
            "ap50": float(ap[ci, o50][0]),
            "ap25": float(ap[ci, o25][0]),
        }
        for ci, name in enumerate(class_names)
    }
    return {
        "ap": nanmean(ap[:, main].ravel()),
        "ap50": nanmean(ap[:, o50].ravel()),
        "ap25": nanmean(ap[:, o25].ravel()),
        "per_class": per_class,
        "overlaps": overlaps.tolist(),
    }


def format_ap_table(
    result: Mapping, base: Sequence[str] | None = None, novel: Sequence[str] | None = None
) -> str:
    """Markdown table of ``instance_ap`` results: one row per class, the mean, and the mean over
    ``base`` / ``novel`` classes when given (nan classes left out; "-" for nan)."""

    def fmt(x: float) -> str:
        return "-" if x is None or math.isnan(x) else f"{x:.1f}"

    per_class = result["per_class"]
    keys = ("ap", "ap50", "ap25")
    lines = ["| class | AP | AP50 | AP25 |", "|---|---:|---:|---:|"]
    for name, row in per_class.items():
        lines.append(f"| {name} | " + " | ".join(fmt(row[k]) for k in keys) + " |")
    lines.append("| **mean** | " + " | ".join(fmt(result[k]) for k in keys) + " |")
    for split_name, members in (("base", base), ("novel", novel)):
        if members is None:
            continue
        unknown = [m for m in members if m not in per_class]
        if unknown:
            raise ValueError(f"{split_name} classes not in the result: {unknown[:10]}")
        cells = []
        for k in keys:
            vals = np.array([per_class[m][k] for m in members], dtype=np.float64)
            vals = vals[~np.isnan(vals)]
            cells.append(fmt(float(vals.mean()) if vals.size else float("nan")))
        lines.append(f"| **{split_name} mean** | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
