"""Learning-rate and triplet-weight schedules (per stage).

Learning rate (the paper's Dassl setting, ``ConstantWarmupScheduler`` over
``CosineAnnealingLR(T_max=max_epoch)``), built from torch's own schedulers and stepped once per
epoch: the first ``warmup_epochs`` epochs run at the constant ``warmup_lr``, the next epoch at the
base rate, then cosine annealing over the stage's epochs continues from there (it lags the epoch
count by the warm-up). For 5 epochs, base 0.0025, warm-up 1 epoch at 1e-5:
1e-5, 0.0025, 0.00226, 0.00164, 0.00086. Its ``state_dict()`` is plain JSON (saved with the
training state, so ``--resume`` continues the same rates).

Triplet weight: lambda rises linearly from ``start`` (0) at the first iteration of stage 2 to ``end``
(5) at its last iteration: ``lambda(t) = start + (end - start) * t / max(1, T - 1)``.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LRScheduler, SequentialLR


def lr_scheduler(optimizer: torch.optim.Optimizer, epochs: int, warmup_epochs: int = 1,
                 warmup_lr: float = 1e-5) -> LRScheduler:
    """The per-epoch scheduler of a stage of ``epochs`` epochs; the optimizer's lr is the base rate."""
    base_lr = optimizer.param_groups[0]["lr"]
    cosine = CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if warmup_epochs <= 0:
        return cosine
    if not 0 < warmup_lr <= base_lr:
        raise ValueError(f"schedule.warmup_lr ({warmup_lr:g}) must be > 0 and <= schedule.lr ({base_lr:g})")
    warmup = ConstantLR(optimizer, factor=warmup_lr / base_lr, total_iters=warmup_epochs)
    return SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_epochs])


def triplet_weight(step: int, total_steps: int, start: float = 0.0, end: float = 5.0) -> float:
    """Triplet-loss weight lambda at iteration ``step`` (0-based) of ``total_steps``."""
    if total_steps <= 1:
        return end
    t = min(max(step, 0), total_steps - 1) / (total_steps - 1)
    return start + (end - start) * t
