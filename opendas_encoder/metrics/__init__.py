"""Evaluation metrics; all scores are percentages (0-100), as in the paper's tables.

* :mod:`.classification`: ``classification_metrics`` / ``confusion_matrix``: Acc, weighted F1 and its
  base / novel restrictions (the paper's W-F1, B-F1, N-F1), computed with scikit-learn.
* :mod:`.semantic`: ``semseg_metrics`` / ``SemSegConfusion`` / ``split_iou``: mIoU, mAcc, fwIoU, pAcc
  with the rules of Detectron2's ``SemSegEvaluator``.
* :mod:`.instance`: ``instance_ap`` / ``format_ap_table``: ScanNet 3D instance AP, AP50, AP25.
* :mod:`.intervals`: ``mean_std`` (mean ± sample std over seeds) and ``paired_segment_bootstrap`` (the
  paired bootstrap interval of a difference to a reference over test segments).
"""

from .classification import classification_metrics, confusion_matrix
from .instance import SCANNET_OVERLAPS, format_ap_table, instance_ap
from .semantic import SemSegConfusion, semseg_metrics, split_iou

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
