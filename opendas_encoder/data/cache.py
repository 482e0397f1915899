"""A disk cache of classifier inputs: every segment decoded and cropped once, then read as uint8 arrays.

Training streams its segments from here (``opendas_encoder.train.data.prepare_segments``): the
cache holds the output of the geometric part of the model's preprocessing (resize + centre crop:
uint8 RGB (H, W, 3), stored as it is in ``.npy`` files), so memory does not grow with the number of
segments and a read gives exactly the pixels the preprocessing would have produced. Uncompressed:
3 * S * S bytes per segment (147 KiB at 224 px); measured on this machine for a 224 px crop, a read
takes about 0.2 ms against 1-4 ms for PNG (zlib level 1) and a write 0.2 ms against 6-18 ms, at
about half to the same size for PNG.

Layout: ``<cache_dir>/<name>-<key>/manifest.json`` and ``<cache_dir>/<name>-<key>/crops/<shard>/<index>.npy``
where ``key`` fingerprints the dataset (name, number of segments, labels), the image transform
(or crop size), the expand ratio and ``min_pixels``, so caches of different settings never mix.
The manifest records the settings and the segments that could not be used (with their reason); a
crop that is missing or unreadable is rebuilt on access. The key does not see the image files'
contents: delete the cache folder after changing a dataset's images in place.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..files import atomic_write_bytes
from .segments import DEFAULT_MIN_PIXELS, SegmentDataset, SegmentError, SkipReport, crop_segment

SHARD_SIZE = 1000
MANIFEST_VERSION = 2


def _size_pair(image_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    w, h = (int(v) for v in image_size)
    return (w, h)


def describe_transform(transform: Callable) -> str:
    """A stable text description of an image transform (part of the cache key).

    ``repr`` of torchvision transforms lists their settings; plain functions are named by module
    and qualified name (their ``repr`` holds a memory address that changes between runs).
    """
    inner = getattr(transform, "transforms", None)
    if isinstance(inner, (list, tuple)):
        return f"{type(transform).__name__}[{', '.join(describe_transform(t) for t in inner)}]"
    if hasattr(transform, "__qualname__") and not isinstance(transform, type):
        return f"{getattr(transform, '__module__', '')}.{transform.__qualname__}"
    return repr(transform)


class SegmentCache:
    """Cached ``crop_segment`` outputs of ``dataset`` (PIL RGB images).

    Each crop is resized to ``image_size`` (bicubic) or, when ``transform`` is given, passed through
    ``transform`` instead (a PIL -> PIL RGB function, e.g. the resize + centre crop of a model's
    preprocessing). Segments failing ``Segment.validate(min_pixels)`` count as unusable.

    ``get(i)`` builds missing entries lazily and raises :class:`SegmentError` for unusable segments
    (also when recorded as such by an earlier build). ``build()`` fills the whole cache (or the
    given indices) and returns a :class:`SkipReport`.
    """

    def __init__(self, cache_dir: str, dataset: SegmentDataset, image_size: Union[int, Sequence[int]] = 224,
                 expand_ratio: float = 0.0, transform: Optional[Callable[[Image.Image], Image.Image]] = None,
                 min_pixels: int = DEFAULT_MIN_PIXELS):
        self.dataset = dataset
        self.image_size = _size_pair(image_size)
        self.expand_ratio = float(expand_ratio)
        self.transform = transform
        self.min_pixels = int(min_pixels)
        labels = [dataset.label(i) for i in range(len(dataset))]
        self.settings = {
            "version": MANIFEST_VERSION,
            "dataset": dataset.name,
            "num_segments": len(dataset),
            "labels_sha1": hashlib.sha1("\n".join(labels).encode("utf-8")).hexdigest(),
            "image_size": list(self.image_size),
            "transform": describe_transform(transform) if transform is not None else "resize bicubic",
            "expand_ratio": self.expand_ratio,
            "min_pixels": self.min_pixels,
        }
        key = hashlib.sha1(json.dumps(self.settings, sort_keys=True).encode("utf-8")).hexdigest()[:12]
        safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset.name)[:60]
        self.dir = os.path.join(cache_dir, f"{safe_name}-{key}")
        self.manifest_path = os.path.join(self.dir, "manifest.json")
        self.skipped: Dict[int, str] = {}  # index -> reason
        self.skipped_sources: Dict[int, str] = {}  # index -> the file that failed (reports name it)
        self._load_manifest()

    # ------------------------------------------------------------------ manifest
    def _load_manifest(self) -> None:
        if not os.path.isfile(self.manifest_path):
            return
        try:
            with open(self.manifest_path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError):
            return  # a corrupt manifest is rebuilt by the next build()
        if data.get("settings") != self.settings:
            return
        self.skipped = {int(k): str(v) for k, v in data.get("skipped", {}).items()}
        self.skipped_sources = {int(k): str(v) for k, v in data.get("skipped_sources", {}).items()}

    def _save_manifest(self, complete: bool) -> None:
        os.makedirs(self.dir, exist_ok=True)
        data = {"settings": self.settings, "complete": complete,
                "skipped": {str(k): v for k, v in sorted(self.skipped.items())},
                "skipped_sources": {str(k): v for k, v in sorted(self.skipped_sources.items())}}
        # a unique temporary name per call: data-parallel ranks may share the folder
        atomic_write_bytes(self.manifest_path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))

    # ------------------------------------------------------------------ entries
    def path(self, index: int) -> str:
        return os.path.join(self.dir, "crops", f"{index // SHARD_SIZE:05d}", f"{index:08d}.npy")

    def __len__(self) -> int:
        return len(self.dataset)

    def label(self, index: int) -> str:
        return self.dataset.label(index)

    def _read(self, index: int) -> Optional[Image.Image]:
        p = self.path(index)
        if not os.path.isfile(p):
            return None
        try:
            arr = np.load(p, allow_pickle=False)
        except Exception:
            return None  # corrupt entry: rebuilt by the caller
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            return None
        img = Image.fromarray(arr, mode="RGB")
        if self.transform is None and img.size != self.image_size:
            return None
        return img

    def _make(self, index: int) -> Image.Image:
        seg = self.dataset.load(index).validate(self.min_pixels)
        crop = crop_segment(seg.image, seg.mask, expand_ratio=self.expand_ratio)
        if self.transform is None:
            img = crop.resize(self.image_size, Image.BICUBIC)
        else:
            img = self.transform(crop)
            if not isinstance(img, Image.Image) or img.mode != "RGB":
                raise TypeError(f"SegmentCache transform {describe_transform(self.transform)} must return a PIL "
                                f"RGB image, got {type(img).__name__} {getattr(img, 'mode', '')}")
        p = self.path(index)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        tmp = f"{p}.{os.getpid()}.tmp"  # a DataLoader worker per process may build entries
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(img, dtype=np.uint8), allow_pickle=False)
        os.replace(tmp, p)
        return img

    def get(self, index: int) -> Image.Image:
        """The cached crop of segment ``index`` (built now if missing or corrupt)."""
        if not 0 <= index < len(self.dataset):
            raise IndexError(f"segment index {index} out of range (0..{len(self.dataset) - 1})")
        if index in self.skipped:
            raise SegmentError(self._skipped_source(index), self.skipped[index])
        img = self._read(index)
        if img is not None:
            return img
        try:
            return self._make(index)
        except SegmentError as err:
            self.skipped[index], self.skipped_sources[index] = err.reason, err.source
            raise

    def _skipped_source(self, index: int) -> str:
        """The file a skipped segment failed on (the segment's name for manifests that did not record it)."""
        return self.skipped_sources.get(index, self.dataset.name + f"[{index}]")

    def _ensure(self, index: int) -> Optional[Tuple[str, str]]:
        """Build entry ``index`` unless its file exists; (source, reason) if the segment is unusable
        (plain strings: they travel back from DataLoader workers)."""
        if index in self.skipped:
            return self._skipped_source(index), self.skipped[index]
        if os.path.isfile(self.path(index)):
            return None  # present; a corrupt file is rebuilt by get()
        try:
            self._make(index)
        except SegmentError as err:
            return err.source, err.reason
        return None

    def build(self, indices: Optional[Iterable[int]] = None, progress: bool = True, num_workers: int = 0,
              desc: Optional[str] = None) -> SkipReport:
        """Decode and crop every segment (or ``indices``) not yet cached, with ``num_workers``
        DataLoader worker processes; unusable ones are counted and recorded in the manifest."""
        from torch.utils.data import DataLoader

        todo = list(range(len(self.dataset))) if indices is None else [int(i) for i in indices]
        report = SkipReport()
        jobs = DataLoader(_BuildJobs(self, todo), batch_size=None, num_workers=num_workers)
        for index, error in tqdm(jobs, total=len(todo), desc=desc or f"cache {self.dataset.name}",
                                 disable=not progress, leave=False):
            if error is not None:
                self.skipped_sources[index], self.skipped[index] = error
                report.add(SegmentError(*error))
        self._save_manifest(complete=indices is None)
        return report


class _BuildJobs:
    """Map-style dataset for ``SegmentCache.build``: item k builds entry ``indices[k]`` (in a worker)."""

    def __init__(self, cache: SegmentCache, indices: List[int]):
        self.cache = cache
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> Tuple[int, Optional[Tuple[str, str]]]:
        index = self.indices[k]
        return index, self.cache._ensure(index)
