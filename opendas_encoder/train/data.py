"""From segment datasets to classifier-input tensors, skipping (and counting) unusable segments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data.segments import SegmentDataset, SegmentError, SkipReport, crop_segment

#: Materialise all segments in memory when they fit in this many bytes (float32); else decode lazily.
DEFAULT_MEMORY_BUDGET = 3 * 1024 ** 3


class SegmentTensorDataset(Dataset):
    """A torch view of a :class:`SegmentDataset`: item -> dict(image (3, S, S), label, ok, source, reason).

    Unusable segments (corrupt image, empty/tiny mask, label outside ``label_index``) come back with
    ``ok = False`` and a zero image so that a DataLoader never crashes; callers skip and count them.
    """

    def __init__(self, segments: SegmentDataset, transform: Callable, label_index: Dict[str, int],
                 image_size: Sequence[int], expand_ratio: float = 0.0, min_pixels: int = 16):
        self.segments = segments
        self.transform = transform
        self.label_index = label_index
        self.image_size = tuple(image_size)
        self.expand_ratio = expand_ratio
        self.min_pixels = min_pixels

    def __len__(self) -> int:
        return len(self.segments)

    def __getitem__(self, i: int) -> dict:
        label = self.segments.label(i)
        try:
            if label not in self.label_index:
                raise SegmentError(f"{self.segments.name}#{i}", f"label {label!r} outside the vocabulary")
            seg = self.segments.load(i).validate(self.min_pixels)
            image = self.transform(crop_segment(seg.image, seg.mask, self.expand_ratio))
            return {"image": image, "label": self.label_index[label], "ok": True, "source": seg.source, "reason": ""}
        except SegmentError as err:
            return {"image": torch.zeros(3, *self.image_size), "label": -1, "ok": False,
                    "source": err.source, "reason": err.reason}


@dataclass
class PreparedSegments:
    """Classifier inputs of the usable segments: images (N, 3, S, S), labels (N,) into ``label_names``."""

    images: torch.Tensor
    labels: torch.Tensor
    label_names: List[str]
    sources: List[str]
    skips: SkipReport = field(default_factory=SkipReport)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def label_strings(self) -> List[str]:
        return [self.label_names[i] for i in self.labels.tolist()]


def _collate(items: List[dict]) -> dict:
    return {
        "image": torch.stack([it["image"] for it in items]),
        "label": torch.tensor([it["label"] for it in items], dtype=torch.long),
        "ok": torch.tensor([it["ok"] for it in items], dtype=torch.bool),
        "source": [it["source"] for it in items],
        "reason": [it["reason"] for it in items],
    }


def prepare_segments(segments: SegmentDataset, transform: Callable, label_names: Sequence[str],
                     image_size: Sequence[int], expand_ratio: float = 0.0, min_pixels: int = 16,
                     batch_size: int = 64, num_workers: int = 0, progress: bool = True,
                     desc: Optional[str] = None) -> PreparedSegments:
    """Crop, preprocess and stack every usable segment once (the segment cache of a run).

    label_names: the label vocabulary (e.g. base classes for training, the test vocabulary for
    evaluation); segments labelled outside it are skipped and counted like unreadable ones.
    """
    label_names = list(label_names)
    index = {n: i for i, n in enumerate(label_names)}
    tds = SegmentTensorDataset(segments, transform, index, image_size, expand_ratio, min_pixels)
    loader = DataLoader(tds, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_collate)
    images, labels, sources, skips = [], [], [], SkipReport()
    for batch in tqdm(loader, desc=desc or f"segments {segments.name}", disable=not progress, leave=False):
        ok = batch["ok"]
        for src, reason, good in zip(batch["source"], batch["reason"], ok.tolist()):
            if not good:
                skips.add(SegmentError(src, reason))
        images.append(batch["image"][ok])
        labels.append(batch["label"][ok])
        sources.extend(s for s, good in zip(batch["source"], ok.tolist()) if good)
    if not sources:
        raise ValueError(f"{segments.name}: no usable segments ({skips.summary()})")
    return PreparedSegments(torch.cat(images), torch.cat(labels), label_names, sources, skips)
