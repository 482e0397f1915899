"""Prompt averaging over a training stage (an option; the paper keeps the last iterate).

:class:`PromptAverager` keeps a running average of a stage's trainable tensors with torch's
``torch.optim.swa_utils.AveragedModel`` (over those tensors only, never the frozen open_clip model)
and one of two averaging functions:

* ``ema``: the bias-corrected exponentially weighted mean of the iterates, after every optimizer
  step ``t``: ``sum_s d^(t-s) p_s / sum_s d^(t-s)`` (:func:`ema_avg_fn`);
* ``gaussian``: PromptSRC's Gaussian-weighted prompt aggregation, one snapshot per epoch ``e`` with
  weight ``exp(-(e - mu)^2 / (2 sigma^2))`` (:func:`gaussian_epoch_weights`, :func:`weighted_avg_fn`).

Both are written in the running form ``avg <- avg + (p - avg) * w_n / W_n`` (``W_n`` the sum of
the weights so far) that ``AveragedModel.update_parameters`` applies per tensor; its first update
copies the iterate. :meth:`PromptAverager.state` / :meth:`PromptAverager.restore` are what the
training state saves, so a resumed run averages exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Sequence

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

AvgFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def ema_avg_fn(decay: float) -> AvgFn:
    """``AveragedModel`` averaging function of the bias-corrected EMA with per-update ``decay``.

    The n-th update (n = number averaged so far, >= 1) weighs the new iterate by
    ``(1 - d) / (1 - d^(n+1))``: the normalised sum of ``d^(t-s)`` weights, not a pull toward the start.
    """
    def avg_fn(averaged: torch.Tensor, current: torch.Tensor, n_averaged) -> torch.Tensor:
        n = int(n_averaged)
        return averaged + (current - averaged) * ((1.0 - decay) / (1.0 - decay ** (n + 1)))

    return avg_fn


def gaussian_epoch_weights(epochs: int, mean: float, std: float) -> List[float]:
    """Unnormalised weights of epochs 1..E: ``exp(-(e - mean * E)^2 / (2 std^2))`` (PromptSRC's GPA)."""
    mu = mean * epochs
    return [math.exp(-((e - mu) ** 2) / (2.0 * std ** 2)) for e in range(1, epochs + 1)]


def weighted_avg_fn(weights: Sequence[float]) -> AvgFn:
    """``AveragedModel`` averaging function of the weighted mean ``sum_k w_k p_k / sum_k w_k`` (update k)."""
    cumulative = [sum(weights[:k + 1]) for k in range(len(weights))]

    def avg_fn(averaged: torch.Tensor, current: torch.Tensor, n_averaged) -> torch.Tensor:
        n = int(n_averaged)
        if n >= len(weights):
            raise RuntimeError(f"weighted average: update {n + 1} of {len(weights)} weights")
        if cumulative[n] == 0.0:
            return averaged
        return averaged + (current - averaged) * (weights[n] / cumulative[n])

    return avg_fn


class PromptAverager:
    """Running average of ``params`` (a stage's trainable tensors) named ``names`` (checkpoint names).

    mode ``ema``: call :meth:`after_step` after every optimizer step; mode ``gaussian``: call
    :meth:`after_epoch` once per epoch (``epochs`` of them). :meth:`apply` writes the average into
    ``params`` (at the end of the stage).
    """

    def __init__(self, params: Sequence[nn.Parameter], names: Sequence[str], mode: str, epochs: int,
                 ema_decay: float = 0.9, gaussian_mean: float = 0.75, gaussian_std: float = 1.0):
        if mode not in ("ema", "gaussian"):
            raise ValueError(f"unknown averaging mode {mode!r}; known: ema, gaussian")
        self.mode = mode
        self.params = list(params)
        self.names = list(names)
        if mode == "ema":
            avg_fn = ema_avg_fn(ema_decay)
        else:
            weights = gaussian_epoch_weights(epochs, gaussian_mean, gaussian_std)
            avg_fn = weighted_avg_fn(weights)
        self._holder = nn.ParameterList(self.params)  # what AveragedModel copies and reads: these tensors only
        self.averaged = AveragedModel(self._holder, avg_fn=avg_fn, use_buffers=False)

    @property
    def count(self) -> int:
        """Number of iterates averaged so far."""
        return int(self.averaged.n_averaged)

    def after_step(self) -> None:
        if self.mode == "ema":
            self.averaged.update_parameters(self._holder)

    def after_epoch(self) -> None:
        if self.mode == "gaussian":
            self.averaged.update_parameters(self._holder)

    @torch.no_grad()
    def apply(self) -> None:
        """Write the running average into the trained tensors (no-op before the first update)."""
        if self.count == 0:
            return
        for p, avg in zip(self.params, self.averaged.module.parameters()):
            p.copy_(avg)

    def state(self) -> Dict[str, torch.Tensor]:
        """The running average by tensor name, and ``__count__``: what a training state stores."""
        out = {f"{n}": a.detach().cpu().clone() for n, a in zip(self.names, self.averaged.module.parameters())}
        out["__count__"] = self.averaged.n_averaged.detach().cpu().clone()
        return out

    @torch.no_grad()
    def restore(self, state: Dict[str, torch.Tensor], source: str = "training state") -> None:
        missing = [n for n in self.names + ["__count__"] if n not in state]
        if missing:
            raise ValueError(f"{source}: the prompt average lacks {missing} (saved with another averaging setting?)")
        for n, avg in zip(self.names, self.averaged.module.parameters()):
            if tuple(state[n].shape) != tuple(avg.shape):
                raise ValueError(f"{source}: averaged {n!r} has shape {tuple(state[n].shape)}, expected {tuple(avg.shape)}")
            avg.copy_(state[n].to(avg.device, avg.dtype))
        self.averaged.n_averaged.copy_(state["__count__"].to(self.averaged.n_averaged.device))
