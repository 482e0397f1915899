"""Segments streamed to training and evaluation: an on-disk crop cache + a torch Dataset over it.

:func:`prepare_segments` decodes and crops every segment once (``runtime.num_workers`` DataLoader
workers), runs the geometric part of the model's preprocessing (resize + centre crop) and stores
the result as uint8 arrays in a :class:`~opendas_encoder.data.cache.SegmentCache` on disk;
unusable segments (corrupt image, empty/tiny mask, label outside the vocabulary) are skipped and
counted. The returned :class:`PreparedSegments` is a map-style ``torch.utils.data.Dataset`` that
reads one crop per item and finishes the preprocessing (to tensor + normalise), so an item equals
``preprocess(crop)`` exactly while memory holds only the labels and indices (O(N) integers), never
the images. :class:`EpochShardSampler` orders the training batches (per seed, stage and epoch; a
data-parallel rank takes its share of every global batch).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler
from torchvision.transforms import Compose, PILToTensor, ToTensor

from ..data.cache import SegmentCache
from ..data.segments import DEFAULT_MIN_PIXELS, SegmentDataset, SegmentError, SkipReport


def split_preprocess(preprocess: Callable) -> Tuple[Compose, Callable]:
    """(PIL part, tensor part) of a preprocessing pipeline: ``tensor_part(pil_part(img)) == preprocess(img)``.

    The PIL part holds the steps before the first ``ToTensor`` / ``PILToTensor`` of a torchvision
    ``Compose`` (open_clip: resize, centre crop, RGB); its uint8 output is what the segment cache
    stores. A pipeline without that seam gets an empty PIL part: the cache keeps the raw crops.
    """
    steps = list(getattr(preprocess, "transforms", []))
    for k, step in enumerate(steps):
        if isinstance(step, (ToTensor, PILToTensor)):
            return Compose(steps[:k]), Compose(steps[k:])
    return Compose([]), preprocess


class PreparedSegments(Dataset):
    """The usable segments of a dataset: item ``i`` -> (image (3, S, S) float, label index).

    ``labels`` (N,) index ``label_names``; ``skips`` counts the segments left out; ``images`` is
    a tensor-like view (``images[a:b]`` reads and stacks those items) for sequential evaluation.
    """

    def __init__(self, cache: SegmentCache, indices: Sequence[int], labels: torch.Tensor, label_names: Sequence[str],
                 to_tensor: Callable, image_size: Sequence[int], skips: Optional[SkipReport] = None):
        self.cache = cache
        self.indices = torch.as_tensor(list(indices), dtype=torch.long)
        self.labels = labels
        self.label_names = list(label_names)
        self.to_tensor = to_tensor
        self.image_size = tuple(int(v) for v in image_size)
        self.skips = skips if skips is not None else SkipReport()

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int]:
        return self.image(i), int(self.labels[i])

    def image(self, i: int) -> torch.Tensor:
        """The preprocessed image (3, S, S) of usable segment ``i``."""
        return self.to_tensor(self.cache.get(int(self.indices[i])))

    @property
    def images(self) -> "SegmentImages":
        return SegmentImages(self)

    def label_strings(self) -> List[str]:
        return [self.label_names[i] for i in self.labels.tolist()]


class SegmentImages:
    """Tensor-like, read-only view of a :class:`PreparedSegments`' images, shape (N, 3, S, S).

    Indexing (an int, a slice, or a sequence / 1-D tensor of ints) reads those images from the
    cache and stacks them; nothing is kept in memory.
    """

    def __init__(self, segments: PreparedSegments):
        self.segments = segments

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.segments), 3, *self.segments.image_size))

    def __len__(self) -> int:
        return len(self.segments)

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, int):
            return self.segments.image(range(len(self.segments))[key])
        if isinstance(key, slice):
            rows = range(len(self.segments))[key]
        else:
            rows = [int(k) for k in key]
        if not len(rows):
            return torch.empty(0, 3, *self.segments.image_size)
        return torch.stack([self.segments.image(r) for r in rows])


class EpochShardSampler(DistributedSampler):
    """``DistributedSampler`` order without its padding: rank ``r`` of ``W`` yields ``perm[r::W]`` of
    the epoch's permutation (``torch.randperm`` seeded with ``seed + epoch``; call ``set_epoch``).

    With per-rank batches of ``batch_size / W`` the k-th batches of all ranks together are exactly
    the k-th batch ``perm[k*B:(k+1)*B]`` of one process, rank ``r`` holding that batch's positions
    ``r, r + W, ...``. ``DistributedSampler`` itself pads the last batch with repeated samples,
    which would break the equality with one process; here a rank's share of a short last batch may
    be empty instead (the trainer then takes a zero-gradient step).
    """

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0):
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=False)
        self.size = size
        self.num_samples = len(range(rank, size, num_replicas))

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=gen)[self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


def _remove_tree(path: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # never from a forked DataLoader worker holding a copy
        shutil.rmtree(path, ignore_errors=True)


def prepare_segments(segments: SegmentDataset, transform: Callable, label_names: Sequence[str],
                     image_size: Sequence[int], expand_ratio: float = 0.0, min_pixels: int = DEFAULT_MIN_PIXELS,
                     num_workers: int = 0, progress: bool = True, desc: Optional[str] = None,
                     cache_dir: Optional[str] = None) -> PreparedSegments:
    """Crop and cache every usable segment once; the segments of a run, streamed from disk.

    transform: the model's preprocessing; label_names: the label vocabulary (e.g. base classes for
    training, the test vocabulary for evaluation); segments labelled outside it are skipped and
    counted like unreadable ones. cache_dir: where the crops live (reused across runs with the same
    settings); default a temporary folder removed with the returned object.
    """
    label_names = list(label_names)
    index = {n: i for i, n in enumerate(label_names)}
    skips = SkipReport()
    if segments.enumeration_skips is not None:  # files the dataset dropped before indexing count too
        skips.merge(segments.enumeration_skips)
    candidates, labels = [], []
    for i in range(len(segments)):
        label = segments.label(i)
        if label in index:
            candidates.append(i)
            labels.append(index[label])
        else:
            skips.add(SegmentError(f"{segments.name}#{i}", f"label {label!r} outside the vocabulary"))
    temporary = cache_dir is None
    if temporary:
        cache_dir = tempfile.mkdtemp(prefix="opendas-segments-")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    shared = not temporary and world > 1  # data-parallel ranks: rank 0 fills the folder, the others then read it
    if shared and rank != 0:
        dist.barrier()
    pil_part, to_tensor = split_preprocess(transform)
    cache = SegmentCache(cache_dir, segments, image_size, expand_ratio, transform=pil_part, min_pixels=min_pixels)
    skips.merge(cache.build(candidates, progress=progress and rank == 0, num_workers=num_workers,
                            desc=desc or f"segments {segments.name}"))
    if shared and rank == 0:
        dist.barrier()
    keep = [k for k, i in enumerate(candidates) if i not in cache.skipped]
    if not keep:
        raise ValueError(f"{segments.name}: no usable segments ({skips.summary()})")
    prepared = PreparedSegments(cache, [candidates[k] for k in keep], torch.tensor([labels[k] for k in keep]),
                                label_names, to_tensor, image_size, skips)
    if temporary:
        weakref.finalize(prepared, _remove_tree, cache_dir, os.getpid())
    return prepared
