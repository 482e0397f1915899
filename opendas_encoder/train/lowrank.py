"""The merge coefficients of OpenDAS's low-rank option, chosen on held-out BASE classes treated as novel.

With ``prompts.lowrank_rank > 0`` each tower has low-rank q/k/v updates scaled by a merge coefficient
``c`` (``W + c s B A``: WiSE-FT for the low-rank delta, 0 = zero-shot weights). The novel classes are
never looked at; instead (:func:`select_lowrank_merge`):

1. a quarter of the base classes (at least one, chosen with the run's seed) is held out: a selection
   run trains a fresh encoder on the other base classes only (their names and the negative queries
   that are not held-out names form its label space), without every fifth segment of each trained
   class, which is kept to measure base accuracy;
2. for every pair ``(c_visual, c_text)`` of :data:`MERGE_GRID` it classifies the held-out segments of
   the trained classes and every segment of the held-out classes among all base class names; the pair
   with the best harmonic mean of the two accuracies wins (ties: the smaller coefficients, closer to
   zero-shot CLIP);
3. the caller applies the pair to the encoder trained on every base class.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from typing import List

import torch

from .data import PreparedSegments
from .holdout import harmonic_mean, holdout_data

#: merge coefficients tried per tower
MERGE_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


@torch.no_grad()
def merge_scores(model, base_val: PreparedSegments, novel_val: PreparedSegments, names: List[str], device,
                 batch_size: int = 64) -> List[dict]:
    """Accuracy on ``base_val`` and ``novel_val`` (labels index ``names``) for every grid pair; the model's
    coefficients are restored afterwards."""
    original = model.config
    model.eval().to(device)
    tokens = model.tokenizer(names)

    def image_features(data: PreparedSegments) -> torch.Tensor:
        return torch.cat([model.encode_image(data.images[i:i + batch_size].to(device), normalize=True).float()
                          for i in range(0, len(data), batch_size)])

    try:
        images, texts = {}, {}
        for c in MERGE_GRID:
            model.config = replace(original, lowrank_merge_visual=c, lowrank_merge_text=c)
            images[c] = (image_features(base_val), image_features(novel_val))
            texts[c] = model.encode_text(tokens, normalize=True).float()
    finally:
        model.config = original
    rows = []
    for cv in MERGE_GRID:
        for ct in MERGE_GRID:
            accs = []
            for feats, data in zip(images[cv], (base_val, novel_val)):
                pred = (feats @ texts[ct].T).argmax(dim=1).cpu()
                accs.append(float((pred == data.labels).float().mean()) * 100.0)
            hm = harmonic_mean(accs[0], accs[1])
            rows.append({"visual": cv, "text": ct, "base_acc": accs[0], "novel_acc": accs[1], "hm": hm})
    return rows


def select_lowrank_merge(config, data, device, run_dir: str, progress: bool = False) -> dict:
    """Train the selection run (module docstring) in ``run_dir/lowrank_selection`` and score the grid.

    config: the run's TrainConfig (OpenDAS, ``prompts.lowrank_rank > 0``); data: its ExperimentData.
    Returns {"visual": c, "text": c, "held_out": [...], "grid": rows, ...}.
    """
    from .pipeline import build_model
    from .trainer import fit

    split = holdout_data(data, config.seed)
    train, base_val, novel_val, present = split["train"], split["base_val"], split["novel_val"], split["names"]
    sub_dir = os.path.join(run_dir, "lowrank_selection")
    model = build_model(config)
    # the selection run trains without distillation (its unlabelled images are of the real label space)
    fit(model, train, split["label_space"], config.updated(output_dir=sub_dir, distill={"weight": 0.0}), sub_dir,
        progress=progress)
    rows = merge_scores(model, base_val, novel_val, present, device, config.runtime.eval_batch_size)
    best = max(rows, key=lambda r: (r["hm"], -r["visual"] - r["text"]))
    return {"visual": best["visual"], "text": best["text"], "held_out": split["held_out"], "trained": split["trained"],
            "segments": {"train": len(train), "base_val": len(base_val), "novel_val": len(novel_val)},
            "grid": rows, "best": best}


def apply_merge(model, visual: float, text: float) -> None:
    """Set the encoder's merge coefficients (recorded in its config, hence in its checkpoint)."""
    if not math.isfinite(visual) or not math.isfinite(text):
        raise ValueError("merge coefficients must be finite")
    model.config = replace(model.config, lowrank_merge_visual=float(visual), lowrank_merge_text=float(text))
