"""A disk cache of classifier inputs: every segment decoded and cropped once, then read as PNG.

Layout: ``<cache_dir>/<key>/manifest.json`` and ``<cache_dir>/<key>/crops/<shard>/<index>.png``
where ``key`` fingerprints the dataset (name, number of segments, labels), the crop size and the
expand ratio, so caches of different settings never mix. The manifest records the settings and
the segments that could not be used (with their reason); a crop that is missing or unreadable is
rebuilt on access.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, Optional, Sequence, Tuple, Union

from PIL import Image
from tqdm import tqdm

from .segments import SegmentDataset, SegmentError, SkipReport, crop_segment

SHARD_SIZE = 1000
MANIFEST_VERSION = 1


def _size_pair(image_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    w, h = (int(v) for v in image_size)
    return (w, h)


class SegmentCache:
    """Cached ``crop_segment`` outputs of ``dataset``, resized to ``image_size`` (PIL RGB images).

    ``get(i)`` builds missing entries lazily and raises :class:`SegmentError` for unusable segments
    (also when recorded as such by an earlier build). ``build()`` fills the whole cache and returns
    a :class:`SkipReport`.
    """

    def __init__(self, cache_dir: str, dataset: SegmentDataset, image_size: Union[int, Sequence[int]] = 224,
                 expand_ratio: float = 0.0):
        self.dataset = dataset
        self.image_size = _size_pair(image_size)
        self.expand_ratio = float(expand_ratio)
        labels = [dataset.label(i) for i in range(len(dataset))]
        self.settings = {
            "version": MANIFEST_VERSION,
            "dataset": dataset.name,
            "num_segments": len(dataset),
            "labels_sha1": hashlib.sha1("\n".join(labels).encode("utf-8")).hexdigest(),
            "image_size": list(self.image_size),
            "expand_ratio": self.expand_ratio,
        }
        key = hashlib.sha1(json.dumps(self.settings, sort_keys=True).encode("utf-8")).hexdigest()[:12]
        safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset.name)[:60]
        self.dir = os.path.join(cache_dir, f"{safe_name}-{key}")
        self.manifest_path = os.path.join(self.dir, "manifest.json")
        self.skipped: Dict[int, str] = {}
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

    def _save_manifest(self, complete: bool) -> None:
        os.makedirs(self.dir, exist_ok=True)
        data = {"settings": self.settings, "complete": complete,
                "skipped": {str(k): v for k, v in sorted(self.skipped.items())}}
        tmp = self.manifest_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, self.manifest_path)

    # ------------------------------------------------------------------ entries
    def path(self, index: int) -> str:
        return os.path.join(self.dir, "crops", f"{index // SHARD_SIZE:05d}", f"{index:08d}.png")

    def __len__(self) -> int:
        return len(self.dataset)

    def label(self, index: int) -> str:
        return self.dataset.label(index)

    def _read(self, index: int) -> Optional[Image.Image]:
        p = self.path(index)
        if not os.path.isfile(p):
            return None
        try:
            with Image.open(p) as im:
                im.load()
                img = im.convert("RGB")
        except Exception:
            return None  # corrupt entry: rebuilt by the caller
        return img if img.size == self.image_size else None

    def _make(self, index: int) -> Image.Image:
        seg = self.dataset.load(index)
        crop = crop_segment(seg.image, seg.mask, expand_ratio=self.expand_ratio)
        img = crop.resize(self.image_size, Image.BICUBIC)
        p = self.path(index)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        tmp = p + ".tmp.png"
        img.save(tmp)
        os.replace(tmp, p)
        return img

    def get(self, index: int) -> Image.Image:
        """The cached crop of segment ``index`` (built now if missing or corrupt)."""
        if not 0 <= index < len(self.dataset):
            raise IndexError(f"segment index {index} out of range (0..{len(self.dataset) - 1})")
        if index in self.skipped:
            raise SegmentError(self.dataset.name + f"[{index}]", self.skipped[index])
        img = self._read(index)
        if img is not None:
            return img
        try:
            return self._make(index)
        except SegmentError as err:
            self.skipped[index] = err.reason
            raise

    def build(self, progress: bool = True) -> SkipReport:
        """Decode and crop every segment not yet cached; unusable ones are counted and recorded."""
        report = SkipReport()
        for i in tqdm(range(len(self.dataset)), desc=f"cache {self.dataset.name}", disable=not progress, leave=False):
            if i in self.skipped:
                report.add(SegmentError(self.dataset.name + f"[{i}]", self.skipped[i]))
                continue
            if self._read(i) is not None:
                continue
            try:
                self._make(i)
            except SegmentError as err:
                self.skipped[i] = err.reason
                report.add(err)
        self._save_manifest(complete=True)
        return report
