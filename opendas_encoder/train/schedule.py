"""Learning-rate and triplet-weight schedules (per stage).

Learning rate (the paper's Dassl setting): epoch 0 of a stage runs at the constant warm-up rate
(1e-5); from epoch 1 on, cosine annealing over the stage's epochs,
``lr(e) = base_lr * (1 + cos(pi * e / epochs)) / 2``, stepped once per epoch — the same values as
Dassl's ``ConstantWarmupScheduler`` wrapped around ``CosineAnnealingLR(T_max=epochs)``.

Triplet weight: lambda rises linearly from ``start`` (0) at the first iteration of stage 2 to ``end``
(5) at its last iteration: ``lambda(t) = start + (end - start) * t / max(1, T - 1)``.
"""

from __future__ import annotations

import math


def epoch_lr(epoch: int, epochs: int, base_lr: float, warmup_epochs: int = 1, warmup_lr: float = 1e-5) -> float:
    """Learning rate of ``epoch`` (0-based) in a stage of ``epochs`` epochs."""
    if epoch < 0 or epoch >= max(epochs, 1):
        raise ValueError(f"epoch {epoch} outside a stage of {epochs} epochs")
    if epoch < warmup_epochs:
        return warmup_lr
    return base_lr * (1.0 + math.cos(math.pi * epoch / epochs)) / 2.0


def triplet_weight(step: int, total_steps: int, start: float = 0.0, end: float = 5.0) -> float:
    """Triplet-loss weight lambda at iteration ``step`` (0-based) of ``total_steps``."""
    if total_steps <= 1:
        return end
    t = min(max(step, 0), total_steps - 1) / (total_steps - 1)
    return start + (end - start) * t
