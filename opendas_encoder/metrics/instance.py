"""3D instance segmentation AP / AP50 / AP25 (percent) with the ScanNet benchmark's rules (see
:func:`instance_ap`), and a markdown table of the result."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

__all__ = ["SCANNET_OVERLAPS", "instance_ap", "format_ap_table"]


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
