"""Prompt configuration (the only hyper-parameters of the encoder itself)."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Optional


@dataclass(frozen=True)
class PromptConfig:
    """Deep prompts of OpenDAS (paper Sec. 4.2).

    visual_tokens: K_v, learnable tokens appended after the patch tokens of every prompted layer.
    visual_depth: number of vision layers that get fresh prompts (None = every layer of the tower).
    text_tokens: K_t, learnable context tokens placed right after the start-of-text token.
    text_depth: number of text layers that get fresh prompts (None = every layer of the tower).
    text_init: phrase whose token embeddings initialise the layer-0 text prompts ("" = random);
        it must tokenize to at most ``text_tokens`` tokens (it fills the last ones, right before the
        class name; the others start random).
    init_std: standard deviation of the random initialisation (normal) of all other prompts.
    text_deep_init: how the text prompts of layers 1..text_depth-1 start. "random" (the paper's,
        following MaPLe: normal with ``init_std``) or "carry": the frozen model's own hidden states at
        the context positions for the layer-0 context, so the untrained encoder equals CLIP with the
        hand-written prompt ("a photo of a <class>") exactly — the text tower is causal, so those
        states do not depend on the class name.

    On ViT-L-14 the defaults give 8 x 24 x 1024 + 4 x 12 x 768 = 233,472 parameters (the paper's).
    """

    visual_tokens: int = 8
    visual_depth: Optional[int] = None
    text_tokens: int = 4
    text_depth: Optional[int] = None
    text_init: str = "a photo of a"
    init_std: float = 0.02
    text_deep_init: str = "random"

    def __post_init__(self):
        for name in ("visual_tokens", "text_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"PromptConfig.{name} must be an integer >= 0, got {v!r}")
        for name in ("visual_depth", "text_depth"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"PromptConfig.{name} must be None (all layers) or an integer >= 1, got {v!r}")
        if not isinstance(self.text_init, str):
            raise ValueError(f"PromptConfig.text_init must be a string, got {self.text_init!r}")
        if self.text_deep_init not in ("random", "carry"):
            raise ValueError(f"PromptConfig.text_deep_init must be 'random' or 'carry', got {self.text_deep_init!r}")
        if not (isinstance(self.init_std, (int, float)) and self.init_std >= 0):
            raise ValueError(f"PromptConfig.init_std must be a number >= 0, got {self.init_std!r}")

    def resolved(self, vision_layers: int, text_layers: int) -> "PromptConfig":
        """Copy with depths filled in for a tower of the given sizes; raise if a depth is too large."""
        vd = vision_layers if self.visual_depth is None else self.visual_depth
        td = text_layers if self.text_depth is None else self.text_depth
        if vd > vision_layers:
            raise ValueError(f"visual_depth={vd} exceeds the vision tower's {vision_layers} layers")
        if td > text_layers:
            raise ValueError(f"text_depth={td} exceeds the text tower's {text_layers} layers")
        return PromptConfig(self.visual_tokens, vd, self.text_tokens, td, self.text_init, self.init_std,
                            self.text_deep_init)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "PromptConfig") -> "PromptConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            warnings.warn(f"{source}: ignoring unknown prompt config keys {unknown}", stacklevel=2)
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)
