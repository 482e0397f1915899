"""Segment datasets: the shared interface, the generic user format and the real datasets."""

from .segments import (
    CLIP_MEAN_PIXEL,
    ListSegmentDataset,
    Segment,
    SegmentDataset,
    SegmentError,
    SkipReport,
    SubsetSegmentDataset,
    crop_segment,
    mask_box,
)

__all__ = [
    "CLIP_MEAN_PIXEL",
    "ListSegmentDataset",
    "Segment",
    "SegmentDataset",
    "SegmentError",
    "SkipReport",
    "SubsetSegmentDataset",
    "crop_segment",
    "mask_box",
]
