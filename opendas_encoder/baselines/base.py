"""The encoder contract shared by every baseline (same API as :class:`~opendas_encoder.PromptedCLIP`).

A baseline owns a frozen open_clip model (``clip``, always in eval mode) and its own learned
tensors. Subclasses define ``method``, ``encode_image`` and ``encode_text``; this base supplies the
properties, the open_clip-style ``forward``, strict checkpoint tensors and the method config.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, fields

import torch

from ..encoder_base import FrozenCLIPEncoder, default_preprocess, default_tokenizer  # noqa: F401
from ..towers import TextTowerView, _check_vision_tower, base_signature  # noqa: F401


class MethodConfig:
    """Mixin for a baseline's frozen config dataclass: JSON dict round trip (unknown keys warn)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "method config"):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            warnings.warn(f"{source}: ignoring unknown {cls.__name__} keys {unknown}", stacklevel=2)
        return cls(**{k: v for k, v in d.items() if k in known})


def check_int(owner: str, name: str, value, minimum: int, allow_none: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is an int >= minimum (or None when allowed)."""
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        hint = "None or " if allow_none else ""
        raise ValueError(f"{owner}.{name} must be {hint}an integer >= {minimum}, got {value!r}")


def normal_(shape, std: float, like: torch.Tensor) -> torch.Tensor:
    """A float32 tensor of ``shape`` on ``like``'s device drawn from N(0, std^2)."""
    return torch.empty(shape, device=like.device, dtype=torch.float32).normal_(std=std)


BaselineEncoder = FrozenCLIPEncoder  # the baselines' name for the shared encoder contract
