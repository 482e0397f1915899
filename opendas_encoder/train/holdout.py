"""Choosing on held-out BASE classes treated as novel (issue 24): the split, its score, and option selection.

The novel classes are never looked at. :func:`holdout_split` keeps a quarter of the base classes (at least
one, chosen with the run's seed) out of training, and every fifth segment of each trained class; a model
trained on the rest is scored (:func:`heldout_accuracy`) by its accuracy on the held-out segments of the
trained classes and on every segment of the held-out classes, classifying among all base class names,
and by the harmonic mean of the two. The low-rank option's merge coefficients
(:mod:`opendas_encoder.train.lowrank`) and a config's ``selection.options`` (:func:`choose_options`: every
combination of the listed values trains on the split, the best harmonic mean wins, ties to the earlier
combination) are chosen this way.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from .data import PreparedSegments
from .shots import subset_segments

HOLDOUT_FRACTION = 0.25
#: every k-th segment of each trained class is kept out of the selection run's training
BASE_VAL_EVERY = 5
SELECTION_FILE = "selection.json"
#: fewest base classes with training segments a split can hold a quarter of out of (and keep two to train)
MIN_CLASSES = 3


class TooFewToHoldOut(ValueError):
    """The training data cannot be split into trained and held-out base classes (with validation segments)."""


def holdout_split(segments: PreparedSegments, seed: int) -> Dict[str, object]:
    """{"held_out": class names, "trained": class names, "train": positions, "base_val": positions,
    "novel_val": positions} of ``segments`` (labels index ``segments.label_names``)."""
    names = list(segments.label_names)
    present = sorted({names[int(i)] for i in segments.labels.tolist()})
    if len(present) < MIN_CLASSES:
        raise TooFewToHoldOut(f"choosing on held-out base classes (selection.options, prompts.lowrank_rank) needs at "
                              f"least {MIN_CLASSES} base classes with training segments (got {len(present)})")
    n_out = max(1, int(round(HOLDOUT_FRACTION * len(present))))
    rng = np.random.default_rng(seed)
    held = sorted(rng.choice(present, size=n_out, replace=False).tolist())
    train, base_val, novel_val = [], [], []
    seen: Dict[str, int] = {}
    for pos, label in enumerate(segments.labels.tolist()):
        name = names[int(label)]
        if name in held:
            novel_val.append(pos)
            continue
        k = seen.get(name, 0)
        seen[name] = k + 1
        (base_val if k % BASE_VAL_EVERY == BASE_VAL_EVERY - 1 else train).append(pos)
    return {"held_out": held, "trained": [n for n in present if n not in held], "train": train,
            "base_val": base_val, "novel_val": novel_val}


def relabelled(segments: PreparedSegments, positions: Sequence[int], names: List[str]) -> PreparedSegments:
    """The segments at ``positions`` with labels indexing ``names`` (every one of theirs must be in it)."""
    subset = subset_segments(segments, positions)
    index = {n: i for i, n in enumerate(names)}
    labels = torch.tensor([index[segments.label_names[int(i)]] for i in subset.labels.tolist()], dtype=torch.long)
    out = PreparedSegments(subset.cache, subset.indices, labels, names, subset.to_tensor, subset.image_size,
                           subset.skips)
    out.parent = segments
    return out


def harmonic_mean(a: float, b: float) -> float:
    """2ab / (a + b); 0 when either is 0."""
    return 0.0 if min(a, b) <= 0 else 2 * a * b / (a + b)


def heldout_accuracy(model, base_val: PreparedSegments, novel_val: PreparedSegments, names: List[str], device,
                     batch_size: int = 64) -> Tuple[float, float]:
    """(accuracy on ``base_val``, on ``novel_val``) in percent, classifying among ``names`` (their labels index it)
    with the evaluation's own :func:`~.evaluate.class_scores`."""
    from .evaluate import class_scores

    accs = []
    for data in (base_val, novel_val):
        pred = class_scores(model, data.images, names, device, batch_size).argmax(dim=1)
        accs.append(100.0 * int((pred == data.labels).sum()) / max(len(data), 1))
    return accs[0], accs[1]


def holdout_data(data, seed: int) -> dict:
    """The split of ``data`` (an ExperimentData) for a selection run: {"train", "base_val", "novel_val"
    (PreparedSegments), "label_space" (trained names + negative queries that name no base class), "names"
    (every base class with segments, the scoring label space), "held_out", "trained"}."""
    split = holdout_split(data.train, seed)
    trained, held = split["trained"], split["held_out"]
    all_base = list(data.train.label_names)
    names = sorted(trained + held, key=all_base.index)
    out = {"held_out": held, "trained": trained, "names": names,
           "label_space": trained + [q for q in data.negatives.queries if q not in held and q not in trained],
           "train": relabelled(data.train, split["train"], trained),
           "base_val": relabelled(data.train, split["base_val"], names),
           "novel_val": relabelled(data.train, split["novel_val"], names)}
    if not len(out["base_val"]) or not len(out["novel_val"]):
        raise TooFewToHoldOut("choosing on held-out base classes: too few training segments to hold out a validation "
                              f"part ({len(out['base_val'])} base, {len(out['novel_val'])} held-out-class segments)")
    return out


def choose_options(config, data, device, run_dir: str, progress: bool = False) -> dict:
    """``config.selection.options`` chosen on held-out base classes (module docstring).

    Each combination (``config.selection_choices()``, in order) trains a fresh encoder on the split in
    ``run_dir/selection/candidate<i>`` (without distillation: its unlabelled images are of the real label
    space) and is scored; ``run_dir/selection.json`` records every score as it is measured, so an
    interrupted choice continues where it stopped. Returns {"options": the chosen {key: value},
    "candidates": [{"options", "base_acc", "novel_acc", "hm"}], "held_out", "trained", "segments"}.
    """
    from .pipeline import build_model
    from .trainer import fit
    from ..files import atomic_write_bytes

    choices = config.selection_choices()
    path = os.path.join(run_dir, SELECTION_FILE)
    rows = _recorded(config, run_dir)[1]
    split = holdout_data(data, config.seed)
    record = {"held_out": split["held_out"], "trained": split["trained"],
              "segments": {k: len(split[k]) for k in ("train", "base_val", "novel_val")}}
    for i, choice in enumerate(choices):
        if i < len(rows):
            continue
        cfg = config.with_choice(choice)
        sub_dir = os.path.join(run_dir, "selection", f"candidate{i}")
        model = build_model(cfg)
        fit(model, split["train"], split["label_space"], cfg.updated(output_dir=sub_dir, distill={"weight": 0.0}),
            sub_dir, progress=progress)
        base_acc, novel_acc = heldout_accuracy(model, split["base_val"], split["novel_val"], split["names"], device,
                                               cfg.runtime.eval_batch_size)
        rows.append({"options": choice, "base_acc": base_acc, "novel_acc": novel_acc,
                     "hm": harmonic_mean(base_acc, novel_acc)})
        atomic_write_bytes(path, json.dumps(dict(record, candidates=rows), indent=1).encode())
    best = max(range(len(rows)), key=lambda i: (rows[i]["hm"], -i))
    record = dict(record, candidates=rows, options=rows[best]["options"])
    atomic_write_bytes(path, json.dumps(record, indent=1).encode())
    return record


def _recorded(config, run_dir: str) -> Tuple[dict, List[dict]]:
    """(``run_dir/selection.json`` or {}, its candidate rows that score ``config``'s combinations, in order, as far
    as they go)."""
    path = os.path.join(run_dir, SELECTION_FILE)
    if not os.path.isfile(path):
        return {}, []
    with open(path) as f:
        recorded = json.load(f)
    rows = []
    for row, choice in zip(recorded.get("candidates", []), config.selection_choices()):
        if row.get("options") != choice:
            break
        rows.append(row)
    return recorded, rows


def recorded_choice(config, run_dir: str):
    """The options a finished choice in ``run_dir`` recorded for ``config`` (None: none finished)."""
    if not config.selection.options:
        return None
    recorded, rows = _recorded(config, run_dir)
    if "options" not in recorded or len(rows) != len(config.selection_choices()):
        return None
    return recorded["options"]
