"""MaPLe, multi-modal prompt learning (Khattak et al., CVPR 2023): text prompts coupled into vision.

``text_ctx[i]`` (n_ctx, text width) for ``i < depth`` are the learned text context: layer 0 replaces
the first ``n_ctx`` tokens of "a photo of a" (initialised from them; "of a" stays fixed text, as in
the original code) and text layer ``i`` gets ``text_ctx[i]`` at those positions while ``i`` is below
both ``depth`` and the text tower's depth. A coupling function per depth, ``Linear(text width ->
vision width)``, maps ``text_ctx[i]`` to the ``n_ctx`` visual prompts appended at vision layer ``i``
(layer 0 through ``ln_pre``; deeper ones replace the previous outputs). Vision prompts never enter
the pooling.

"Prompt depth 24" as counted in the paper (Tab. 1: 18,935K on ViT-L-14) is MaPLe's ``PROMPT_DEPTH``
= 24: 24 text contexts and 24 couplings. The 12-layer text tower consumes contexts 0..11 directly;
contexts 12..23 reach the model only through their couplings into vision layers 12..23 (the
original code's deeper text prompts beyond the text tower's depth feed only the vision side too).
Count per depth: 2 x 768 (context) + 768 x 1024 + 1024 (coupling) = 788,992; x 24 = 18,935,808.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..core import engine
from ..core.encoder import AdaptedCLIP, MethodConfig, check_int, normal_
from ..core.registry import register_method
from .context import context_template, initial_context


@dataclass(frozen=True)
class MaPLeConfig(MethodConfig):
    """n_ctx: context tokens per layer; ctx_init: phrase whose first n_ctx tokens initialise layer 0
    ("" = random); suffix: fixed text after the class name; depth: prompt depth (None = the deeper
    tower's layer count, 24 on ViT-L-14); init_std: std of the deeper contexts' initialisation."""

    n_ctx: int = 2
    ctx_init: str = "a photo of a"
    suffix: str = "."
    depth: Optional[int] = None
    init_std: float = 0.02

    def __post_init__(self):
        check_int("MaPLeConfig", "n_ctx", self.n_ctx, 1)
        check_int("MaPLeConfig", "depth", self.depth, 1, allow_none=True)
        if not isinstance(self.ctx_init, str) or not isinstance(self.suffix, str):
            raise ValueError("MaPLeConfig.ctx_init and .suffix must be strings")


@register_method
class MaPLe(AdaptedCLIP):
    """Frozen open_clip + MaPLe: ``text_ctx`` (depth, n_ctx, text width) and per-depth couplings
    ``coupling_weight`` (depth, vision width, text width), ``coupling_bias`` (depth, vision width)."""

    method = "maple"
    config_class = MaPLeConfig

    def __init__(self, clip_model: nn.Module, config: MaPLeConfig = MaPLeConfig(), **kwargs):
        super().__init__(clip_model, config, **kwargs)
        cfg = self.config
        deepest = max(self.vision_layers, self.text_layers)
        self.depth = deepest if cfg.depth is None else cfg.depth
        if self.depth > deepest:
            raise ValueError(f"MaPLeConfig.depth={self.depth} exceeds the deeper tower's {deepest} layers")
        self.template = context_template(self.tokenizer, cfg.n_ctx, cfg.ctx_init, cfg.suffix, "MaPLeConfig")
        ref = self._ref()
        ctx = normal_((self.depth, cfg.n_ctx, self.text_width), cfg.init_std, ref)
        ctx[0] = initial_context(self.text_view, self.template, cfg.n_ctx, cfg.ctx_init, cfg.init_std)
        self.text_ctx = nn.Parameter(ctx)
        bound = 1.0 / math.sqrt(self.text_width)  # nn.Linear's default initialisation
        self.coupling_weight = nn.Parameter(torch.empty(self.depth, self.vision_width, self.text_width,
                                                        device=ref.device).uniform_(-bound, bound))
        self.coupling_bias = nn.Parameter(torch.empty(self.depth, self.vision_width,
                                                      device=ref.device).uniform_(-bound, bound))

    def visual_prompts(self) -> torch.Tensor:
        """Coupled visual prompts (min(depth, vision layers), n_ctx, vision width)."""
        d = min(self.depth, self.vision_layers)
        return torch.einsum("dnt,dvt->dnv", self.text_ctx[:d], self.coupling_weight[:d]) + \
            self.coupling_bias[:d].unsqueeze(1)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """images (B, 3, H, W) -> (B, embed_dim)."""
        prompts = self.visual_prompts()
        features = engine.encode_image(self.clip.visual, images, lambda i: prompts[i] if i < prompts.shape[0] else None)
        return self._maybe_normalize(features, normalize)

    def encode_text(self, text, normalize: bool = False) -> torch.Tensor:
        """Class names or token ids (C, L) -> (C, embed_dim) with the deep text context."""
        d = min(self.depth, self.text_layers)
        features = engine.encode_text(self.text_view, self.template(text), lambda i: self.text_ctx[i] if i < d else None,
                                      self.template.context_start)
        return self._maybe_normalize(features, normalize)
