"""Segments read from images + integer label maps, and the generic on-disk format for users' domains.

:class:`LabelMapSegmentDataset` is the shared engine of every 2D loader here (generic, ADE20K-150,
KITTI-360, ScanNet++ renders): a list of frames, each an RGB image plus one integer label map
(semantic class ids or instance ids) and a rule mapping map values to class names. Segments are
enumerated once, from the label maps only (never the RGB images), as (frame, map value) pairs:
one segment per distinct mapped value in a frame. Masks under ``min_pixels`` are dropped and
counted in ``enumeration_skips``; ``load(i)`` decodes the image and the map.

The generic format (see docs/datasets.md)::

    <root>/classes.txt                          one class name per line (line k -> class id k, from 1)
    <root>/images/<split>/<stem>.{jpg,jpeg,png}
    <root>/semantic/<split>/<stem>.png          8/16-bit, pixel = class id, 0 = unlabeled
    <root>/instances/<split>/<stem>.png         8/16-bit, pixel = instance id, 0 = no instance
    <root>/instances/<split>/<stem>.json        {"<instance id>": "<class name>", ...}

Each image needs a semantic map or an instance map + JSON (the instance map wins if both exist);
``split`` may be None for a flat layout without the ``<split>`` level.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..errors import InputError, read_json
from ..files import atomic_write_bytes
from ..vocab import read_class_list
from .registry import register_dataset
from .segments import (DEFAULT_MIN_PIXELS, Segment, SegmentDataset, SegmentError, SkipReport,
                       read_label_png, read_rgb)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

#: Maps a label-map value to a class name (None = not a segment, e.g. unlabeled or ignored).
LabelRule = Union[Mapping[int, str], Callable[[int], Optional[str]]]


@dataclass
class LabelFrame:
    """One image and its label map.

    image: RGB file. label_map: integer PNG (H, W) whose values select segments.
    labels: value -> class name (a dict, or a function returning None for values to ignore).
    expected: values that must appear in the map (e.g. instances listed in a JSON); a missing one
        is counted as an "empty mask" skip.
    resize_image: resize the RGB image to the label map's size on load (for maps rendered at a
        reduced resolution); otherwise a size mismatch is an error.
    """

    image: str
    label_map: str
    labels: LabelRule
    expected: Sequence[int] = ()
    resize_image: bool = False

    def label_of(self, value: int) -> Optional[str]:
        if callable(self.labels):
            return self.labels(int(value))
        return self.labels.get(int(value))


@dataclass(frozen=True)
class SegmentRef:
    """Where a segment lives: frame index, label-map value, class name, mask size in pixels."""

    frame: int
    value: int
    label: str
    pixels: int


class LabelMapSegmentDataset(SegmentDataset):
    """Segments = (frame, label-map value) pairs, enumerated from the label maps at construction.

    Subclasses build ``frames`` and call :meth:`_enumerate`. ``enumeration_skips`` counts the
    segments dropped while enumerating ("tiny mask", "empty mask", "unreadable label map").
    """

    def __init__(self, name: str, classes: Sequence[str], min_pixels: int = DEFAULT_MIN_PIXELS):
        if min_pixels < 1:
            raise ValueError(f"min_pixels must be >= 1, got {min_pixels}")
        self.name = name
        self._classes = list(classes)
        self.min_pixels = int(min_pixels)
        self.frames: List[LabelFrame] = []
        self.segments: List[SegmentRef] = []
        self.enumeration_skips = SkipReport()
        self._cached_map: Tuple[Optional[str], Optional[np.ndarray]] = (None, None)

    # ------------------------------------------------------------------ enumeration
    def read_label_map(self, frame: LabelFrame) -> np.ndarray:
        """The frame's label map as int64 (H, W); raise SegmentError if unreadable."""
        return read_label_png(frame.label_map)

    def _enumerate(self, frames: Sequence[LabelFrame], progress: bool = True, index_cache: Optional[str] = None) -> None:
        """Enumerate the segments of ``frames``. ``index_cache``: a JSON file keeping each label map's
        value histogram (keyed by path, size and mtime), so that a second run reads no map."""
        self.frames = list(frames)
        self.segments = []
        hist_cache = _load_index_cache(index_cache)
        changed = False
        for fi, frame in enumerate(tqdm(self.frames, desc=f"enumerate {self.name}", unit="map",
                                        disable=not progress, leave=False)):
            key = _file_key(frame.label_map)
            cached = hist_cache.get(frame.label_map)
            if cached is not None and cached[0] == key:
                present = {int(v): int(n) for v, n in cached[1]}
            else:
                try:
                    lmap = self.read_label_map(frame)
                except SegmentError as err:
                    self.enumeration_skips.add(err)
                    continue
                values, counts = np.unique(lmap, return_counts=True)
                present = dict(zip(values.tolist(), counts.tolist()))
                if index_cache:
                    hist_cache[frame.label_map] = [key, sorted(present.items())]
                    changed = True
            for v in frame.expected:
                if int(v) not in present:
                    self.enumeration_skips.add(SegmentError(f"{frame.label_map}#{v}", "empty mask"))
            for v, n in present.items():
                label = frame.label_of(v)
                if label is None:
                    continue
                if n < self.min_pixels:
                    self.enumeration_skips.add(SegmentError(
                        f"{frame.label_map}#{v}", f"mask has {n} pixels (< min_pixels={self.min_pixels})"))
                    continue
                self.segments.append(SegmentRef(fi, int(v), label, int(n)))
        if index_cache and changed:
            _save_index_cache(index_cache, hist_cache)

    # ------------------------------------------------------------------ SegmentDataset API
    @property
    def classes(self) -> List[str]:
        return self._classes

    def __len__(self) -> int:
        return len(self.segments)

    def label(self, index: int) -> str:
        return self.segments[index].label

    def source(self, index: int) -> str:
        ref = self.segments[index]
        return f"{self.frames[ref.frame].image}#{ref.value}"

    def _label_map_cached(self, frame: LabelFrame) -> np.ndarray:
        # Segments of one frame are consecutive, so a one-slot cache avoids re-decoding the map.
        key, lmap = self._cached_map
        if key != frame.label_map:
            lmap = self.read_label_map(frame)
            self._cached_map = (frame.label_map, lmap)
        return lmap

    def load(self, index: int) -> Segment:
        ref = self.segments[index]
        frame = self.frames[ref.frame]
        source = f"{frame.image}#{ref.value}"
        lmap = self._label_map_cached(frame)
        image = read_rgb(frame.image)
        if image.shape[:2] != lmap.shape:
            if not frame.resize_image:
                raise SegmentError(source, f"image size {image.shape[:2]} != label map {lmap.shape} ({frame.label_map})")
            h, w = lmap.shape
            image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
        mask = lmap == ref.value
        return Segment(image=image, mask=mask, label=ref.label, source=source).validate(self.min_pixels)

    def class_counts(self) -> Dict[str, int]:
        """Number of segments per class name."""
        out: Dict[str, int] = {}
        for ref in self.segments:
            out[ref.label] = out.get(ref.label, 0) + 1
        return out


def _file_key(path: str) -> list:
    try:
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns]
    except OSError:
        return [-1, -1]


def _load_index_cache(path: Optional[str]) -> dict:
    if not path or not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}  # a corrupt index is rebuilt


def _save_index_cache(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_bytes(path, json.dumps(data).encode("utf-8"))


def require_dir(path: str, what: str) -> str:
    """Return ``path`` if it is a directory, else raise FileNotFoundError naming it."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def find_image(folder: str, stem: str) -> Optional[str]:
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        p = os.path.join(folder, stem + ext)
        if os.path.isfile(p):
            return p
    return None


def read_instance_json(path: str) -> Dict[int, str]:
    """``{"<instance id>": "<class name>"}`` -> {int id: name}; errors name the file."""
    data = read_json(path, "instance JSON")
    if not isinstance(data, dict):
        raise InputError(path, "expected an object {instance id: class name}")
    out = {}
    for k, v in data.items():
        try:
            iid = int(k)
        except ValueError:
            raise InputError(path, f"instance id {k!r} is not an integer") from None
        if iid <= 0:
            raise InputError(path, f"instance id {iid} must be >= 1 (0 means no instance)")
        if not isinstance(v, str) or not v.strip():
            raise InputError(path, f"instance {k} has no class name")
        out[iid] = v.strip()
    return out


class GenericSegmentDataset(LabelMapSegmentDataset):
    """The generic user format (module docstring, docs/datasets.md).

    root: dataset folder with ``classes.txt``; split: sub-folder name (e.g. "train") or None.
    index_cache: optional JSON file caching the label-map histograms (see :meth:`_enumerate`).
    Images without any annotation map are counted in ``enumeration_skips`` ("no annotation").
    """

    def __init__(self, root: str, split: Optional[str] = "train", min_pixels: int = DEFAULT_MIN_PIXELS,
                 class_file: str = "classes.txt", index_cache: Optional[str] = None, progress: bool = True):
        require_dir(root, "generic dataset root")
        classes = read_class_list(os.path.join(root, class_file))
        if len(set(classes)) != len(classes):
            dup = sorted({c for c in classes if classes.count(c) > 1})
            raise InputError(os.path.join(root, class_file), f"duplicate class names {dup}")
        super().__init__(f"generic:{os.path.basename(os.path.normpath(root))}" + (f"/{split}" if split else ""),
                         classes, min_pixels)
        self.root = root
        sub = (lambda kind: os.path.join(root, kind, split)) if split else (lambda kind: os.path.join(root, kind))
        image_dir = require_dir(sub("images"), "image folder")
        sem_dir, inst_dir = sub("semantic"), sub("instances")
        if not os.path.isdir(sem_dir) and not os.path.isdir(inst_dir):
            raise FileNotFoundError(f"no annotation folder: expected {sem_dir} or {inst_dir}")
        by_id = {i + 1: c for i, c in enumerate(classes)}
        known = set(classes)
        frames = []
        for fname in sorted(os.listdir(image_dir)):
            stem, ext = os.path.splitext(fname)
            if ext.lower() not in IMAGE_EXTENSIONS:
                continue
            image = os.path.join(image_dir, fname)
            inst_png, inst_json = os.path.join(inst_dir, stem + ".png"), os.path.join(inst_dir, stem + ".json")
            sem_png = os.path.join(sem_dir, stem + ".png")
            if os.path.isfile(inst_png):
                if not os.path.isfile(inst_json):
                    raise FileNotFoundError(f"instance map {inst_png} has no class JSON: {inst_json}")
                mapping = read_instance_json(inst_json)
                unknown = sorted(set(mapping.values()) - known)
                if unknown:
                    raise InputError(inst_json, f"class names not in {class_file}: {unknown}")
                frames.append(LabelFrame(image, inst_png, mapping, expected=sorted(mapping)))
            elif os.path.isfile(sem_png):
                frames.append(LabelFrame(image, sem_png, by_id))
            else:
                self.enumeration_skips.add(SegmentError(image, "no annotation"))
        self._enumerate(frames, progress, index_cache)


@register_dataset("generic")
def _build(root: str, split: Optional[str], **kw) -> GenericSegmentDataset:
    return GenericSegmentDataset(root, split=split, **kw)
