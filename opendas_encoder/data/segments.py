"""Segments: the classifier input of OpenDAS (an image region given by a mask and a label).

Every dataset (the real ones, the generic user format and the generated world) implements
:class:`SegmentDataset`: an indexable list of segments whose labels are known without decoding
images. :func:`crop_segment` turns an image + mask into the classifier input the way the paper
(Appendix D) and OVSeg do it: pixels outside the mask are filled with CLIP's mean pixel, the image
is cropped to the mask's bounding box (optionally expanded) and padded to a square, then the
model's own preprocessing runs.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

#: CLIP's mean pixel on the 0-255 scale (OpenAI CLIP training images; OVSeg's PIXEL_MEAN).
CLIP_MEAN_PIXEL: Tuple[float, float, float] = (122.7709383, 116.7460125, 104.09373615)

#: Segments with fewer mask pixels than this are skipped by default.
DEFAULT_MIN_PIXELS = 16


class SegmentError(Exception):
    """A segment that cannot be used (unreadable image, empty or tiny mask, bad shape).

    ``source`` names the file, ``reason`` says what is wrong; the message contains both.
    """

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass
class Segment:
    """One segment.

    image: uint8 array (H, W, 3), RGB.
    mask: bool array (H, W); True = pixel belongs to the segment.
    label: class name.
    source: the file (or generated id) the segment comes from, used in error reports.
    """

    image: np.ndarray
    mask: np.ndarray
    label: str
    source: str = ""

    def validate(self, min_pixels: int = DEFAULT_MIN_PIXELS) -> "Segment":
        """Raise :class:`SegmentError` if the segment is unusable; return self otherwise."""
        img, mask = self.image, self.mask
        if img is None or img.ndim != 3 or img.shape[2] != 3:
            raise SegmentError(self.source, f"image must be (H, W, 3), got {None if img is None else img.shape}")
        if mask is None or mask.shape != img.shape[:2]:
            raise SegmentError(self.source, f"mask shape {None if mask is None else mask.shape} != image {img.shape[:2]}")
        n = int(np.count_nonzero(mask))
        if n == 0:
            raise SegmentError(self.source, "empty mask")
        if n < min_pixels:
            raise SegmentError(self.source, f"mask has {n} pixels (< min_pixels={min_pixels})")
        return self


class SegmentDataset(abc.ABC):
    """An indexable collection of segments.

    Implementations enumerate their segments when built (reading annotations only), so that
    ``len(ds)`` and ``ds.label(i)`` are cheap; ``ds[i]`` decodes the image and mask and may raise
    :class:`SegmentError` for a corrupt file or an empty mask (callers skip and count those).
    """

    #: Human-readable name, used in reports ("ade20k-150/validation", "generated world/target").
    name: str = "segments"
    #: Segments (or whole files) dropped while enumerating, before indexing (unreadable label map, no
    #: annotation, tiny mask, ...); None when the dataset drops nothing there. Reports include them.
    enumeration_skips: Optional["SkipReport"] = None

    @property
    @abc.abstractmethod
    def classes(self) -> List[str]:
        """The dataset's vocabulary (all class names it can label), in a fixed order."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of enumerated segments."""

    @abc.abstractmethod
    def label(self, index: int) -> str:
        """Class name of segment ``index`` without decoding its image."""

    @abc.abstractmethod
    def load(self, index: int) -> Segment:
        """Decode segment ``index``; raise :class:`SegmentError` if it is unusable."""

    def __getitem__(self, index: int) -> Segment:
        return self.load(index)

    def labels(self) -> List[str]:
        return [self.label(i) for i in range(len(self))]


class ListSegmentDataset(SegmentDataset):
    """Segments already in memory (tests, generated data)."""

    def __init__(self, segments: Sequence[Segment], classes: Optional[Sequence[str]] = None, name: str = "segments"):
        self._segments = list(segments)
        self._classes = list(classes) if classes is not None else sorted({s.label for s in self._segments})
        self.name = name

    @property
    def classes(self) -> List[str]:
        return self._classes

    def __len__(self) -> int:
        return len(self._segments)

    def label(self, index: int) -> str:
        return self._segments[index].label

    def load(self, index: int) -> Segment:
        return self._segments[index]


class SubsetSegmentDataset(SegmentDataset):
    """A view on some indices of another dataset (e.g. the segments of base classes only)."""

    def __init__(self, parent: SegmentDataset, indices: Sequence[int], name: Optional[str] = None):
        self.parent = parent
        self.indices = list(indices)
        self.name = name or parent.name
        self.enumeration_skips = parent.enumeration_skips

    @property
    def classes(self) -> List[str]:
        return self.parent.classes

    def __len__(self) -> int:
        return len(self.indices)

    def label(self, index: int) -> str:
        return self.parent.label(self.indices[index])

    def load(self, index: int) -> Segment:
        return self.parent.load(self.indices[index])


@dataclass
class SkipReport:
    """Counts of skipped segments by reason, with the first few distinct sources (files) for each."""

    max_examples: int = 5
    counts: dict = field(default_factory=dict)
    examples: dict = field(default_factory=dict)

    def add(self, error: SegmentError) -> None:
        key = "tiny mask" if error.reason.startswith("mask has") else error.reason.split(" (")[0]
        self.counts[key] = self.counts.get(key, 0) + 1
        ex = self.examples.setdefault(key, [])
        if len(ex) < self.max_examples and error.source not in ex:  # a file with several segments: named once
            ex.append(error.source)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def merge(self, other: "SkipReport") -> None:
        for k, n in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + n
            ex = self.examples.setdefault(k, [])
            for s in other.examples.get(k, []):
                if len(ex) < self.max_examples and s not in ex:
                    ex.append(s)

    def summary(self) -> str:
        if not self.total:
            return "skipped segments: none"
        lines = [f"skipped segments: {self.total}"]
        for k in sorted(self.counts):
            lines.append(f"  {k}: {self.counts[k]} (first: {', '.join(self.examples.get(k, []))})")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"total": self.total, "counts": dict(self.counts), "examples": {k: list(v) for k, v in self.examples.items()}}


def mask_box(mask: np.ndarray, expand_ratio: float = 0.0) -> Tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1), exclusive end, of a non-empty bool mask (H, W).

    ``expand_ratio`` grows each side by that fraction of the box size, clipped to the image.
    """
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise ValueError("empty mask has no box")
    x0, x1 = int(xs.min()), int(xs.max()) + 1
    y0, y1 = int(ys.min()), int(ys.max()) + 1
    if expand_ratio:
        dw = (x1 - x0) * expand_ratio
        dh = (y1 - y0) * expand_ratio
        h, w = mask.shape
        x0, x1 = max(0, int(np.floor(x0 - dw))), min(w, int(np.ceil(x1 + dw)))
        y0, y1 = max(0, int(np.floor(y0 - dh))), min(h, int(np.ceil(y1 + dh)))
    return x0, y0, x1, y1


def crop_segment(
    image: np.ndarray,
    mask: np.ndarray,
    expand_ratio: float = 0.0,
    fill: Sequence[float] = CLIP_MEAN_PIXEL,
    square: bool = True,
) -> Image.Image:
    """Classifier input for one segment, as a PIL RGB image (before the model's preprocessing).

    image: uint8 (H, W, 3); mask: bool (H, W), non-empty. Pixels outside the mask take ``fill``
    (CLIP's mean pixel, rounded to uint8), the result is cropped to the mask box grown by
    ``expand_ratio`` and, with ``square``, padded with ``fill`` to a centred square so that a
    centre-crop preprocessing keeps the whole segment.
    """
    fill_px = np.asarray(np.round(np.asarray(fill, dtype=np.float64)), dtype=np.uint8)
    x0, y0, x1, y1 = mask_box(mask, expand_ratio)
    crop = image[y0:y1, x0:x1].copy()
    crop[~mask[y0:y1, x0:x1].astype(bool)] = fill_px
    if square:
        h, w = crop.shape[:2]
        side = max(h, w)
        canvas = np.empty((side, side, 3), dtype=np.uint8)
        canvas[:] = fill_px
        oy, ox = (side - h) // 2, (side - w) // 2
        canvas[oy:oy + h, ox:ox + w] = crop
        crop = canvas
    return Image.fromarray(crop, mode="RGB")


def read_rgb(path: str) -> np.ndarray:
    """Read an image file as uint8 (H, W, 3); raise :class:`SegmentError` naming the file if unreadable."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as exc:  # PIL raises several types for truncated / non-image files
        raise SegmentError(str(path), f"unreadable image ({type(exc).__name__}: {exc})") from None


def read_label_png(path: str) -> np.ndarray:
    """Read an integer label map (PNG, 8 or 16 bit) as an int64 array (H, W)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im).astype(np.int64)
    except Exception as exc:
        raise SegmentError(str(path), f"unreadable label map ({type(exc).__name__}: {exc})") from None
