"""Segment classification metrics: Acc, weighted F1 and its base / novel restrictions (the paper's
Acc, W-F1, B-F1, N-F1), and confusion counts; computed with scikit-learn, scores in percent."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
from sklearn.metrics import confusion_matrix as _sk_confusion_matrix

__all__ = ["classification_metrics", "confusion_matrix"]


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
