"""Few-shot training data: K segments per base class, sampled per class and seeded (``data.shots``).

:func:`sample_shots` picks, for every class, ``min(K, available)`` of its usable segments: a numpy
``Generator`` seeded with ``(seed, crc32(class name))`` permutes the class's segments (in dataset
order) and the first K are kept. So the K-shot set

* depends only on the usable training segments, K and the seed: every method trained at a seed
  sees the same segments (the method is no input);
* of a class does not depend on the other classes (each class has its own generator);
* is nested over K at a seed (the 1-shot set is in the 2-shot set, ...): a learning curve adds
  segments instead of redrawing them.

sklearn's ``StratifiedShuffleSplit`` / ``train_test_split(stratify=...)`` allocate in proportion to
the class frequencies, not a fixed K per class, so the per-class permutation is numpy's.

:func:`few_shot_segments` applies it to prepared segments (:class:`~.data.PreparedSegments`; the
sample is drawn among the segments that survived the crop checks, so a class has exactly
``min(K, usable)`` segments) and returns the record that the pipeline writes to ``shots.json``
in the run folder: K, the seed, per class the source ids and dataset indices of the chosen
segments, the number available, and the classes that had fewer than K.
"""

from __future__ import annotations

import zlib
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
import torch

from .data import PreparedSegments

Shots = Union[int, str]
SHOTS_FILE = "shots.json"


def class_generator(seed: int, class_name: str) -> np.random.Generator:
    """The generator that orders ``class_name``'s segments at ``seed`` (crc32: stable across processes)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(class_name.encode("utf-8"))]))


def sample_shots(labels: Sequence[int], label_names: Sequence[str], shots: Shots, seed: int) -> np.ndarray:
    """Sorted positions into ``labels`` of the K-shot set: ``min(K, n_c)`` positions of every class ``c``.

    ``labels``: class index per segment (into ``label_names``); ``shots``: K >= 1 or ``"all"``.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if isinstance(shots, str):
        if shots != "all":
            raise ValueError(f"shots must be a positive integer or 'all', got {shots!r}")
        return np.arange(labels.size)
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots < 1:
        raise ValueError(f"shots must be a positive integer or 'all', got {shots!r}")
    chosen = []
    for c in np.unique(labels):
        positions = np.flatnonzero(labels == c)
        chosen.append(class_generator(seed, label_names[int(c)]).permutation(positions)[:int(shots)])
    return np.sort(np.concatenate(chosen)) if chosen else np.arange(0)


def segment_source(dataset, index: int) -> str:
    """The id of segment ``index`` of ``dataset``: its ``source(index)`` where the dataset has one
    (generic, generated world), else ``"<dataset name>#<index>"``."""
    source = getattr(dataset, "source", None)
    return str(source(index)) if callable(source) else f"{dataset.name}#{index}"


def subset_segments(segments: PreparedSegments, positions: Sequence[int]) -> PreparedSegments:
    """The prepared segments at ``positions`` (same cache, label names and skip report)."""
    positions = torch.as_tensor(np.asarray(positions, dtype=np.int64))
    subset = PreparedSegments(segments.cache, segments.indices[positions], segments.labels[positions],
                              segments.label_names, segments.to_tensor, segments.image_size, segments.skips)
    subset.parent = segments  # keeps a temporary cache folder (removed with its owner) alive
    return subset


def few_shot_segments(segments: PreparedSegments, shots: Shots, seed: int) -> Tuple[PreparedSegments, dict]:
    """The K-shot subset of ``segments`` at ``seed`` and its record (what ``shots.json`` holds)."""
    positions = sample_shots(segments.labels.tolist(), segments.label_names, shots, seed)
    subset = subset_segments(segments, positions)
    dataset = segments.cache.dataset
    counts = np.bincount(segments.labels.numpy(), minlength=len(segments.label_names))
    available: Dict[str, int] = {name: int(n) for name, n in zip(segments.label_names, counts)}
    classes: Dict[str, dict] = {name: {"available": n, "indices": [], "sources": []} for name, n in available.items()}
    for index, c in zip(subset.indices.tolist(), subset.labels.tolist()):
        entry = classes[segments.label_names[c]]
        entry["indices"].append(int(index))
        entry["sources"].append(segment_source(dataset, int(index)))
    short = {name: n for name, n in available.items() if shots != "all" and n < shots}
    record = {"shots": shots, "seed": int(seed), "dataset": dataset.name, "segments": len(subset),
              "available": len(segments), "classes": classes, "short_classes": short,
              "sampling": "per class: numpy default_rng(SeedSequence([seed, crc32(class name)])).permutation of the "
                          "class's usable segments in dataset order, first min(K, available) kept"}
    return subset, record


def short_classes_note(record: dict) -> str:
    """One line naming the classes that had fewer than K usable segments (they keep all of theirs)."""
    short = record["short_classes"]
    if not short:
        return ""
    listed = ", ".join(f"{name!r} ({n})" for name, n in sorted(short.items()))
    return (f"{len(short)} base class(es) have fewer than {record['shots']} usable training segments and keep all "
            f"of theirs: {listed}")


def shots_summary(record: dict) -> str:
    """``shots: K per base class (seed s): N of M training segments; ...`` for reports."""
    line = (f"shots: {record['shots']} per base class (seed {record['seed']}): {record['segments']} of "
            f"{record['available']} usable training segments ({len(record['classes'])} classes)")
    note = short_classes_note(record)
    return line + (f"; {note}" if note else "")


__all__: List[str] = ["SHOTS_FILE", "class_generator", "few_shot_segments", "sample_shots", "segment_source",
                      "short_classes_note", "shots_summary", "subset_segments"]
