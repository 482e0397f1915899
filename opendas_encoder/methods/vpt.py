"""VPT-deep (Jia et al., ECCV 2022) on CLIP's image tower; the text side stays a fixed hand-made prompt.

``prompts[i]`` (n_tokens, vision width) are appended after the patch tokens at the input of vision
layer ``i`` for every ``i < depth``, replacing the previous layer's outputs there (layer-0 prompts go
through ``ln_pre`` with the patch tokens, as in the original code); prompt outputs never enter the
pooling. Text is the frozen CLIP encoding of ``template`` ("a photo of a {}.").

On ViT-L-14: 32 tokens x 24 layers x 1024 = 786,432 parameters (paper Tab. 1: 786K).
With ``n_tokens=0`` the model is vanilla CLIP with the template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..core import engine
from ..core.encoder import AdaptedCLIP, MethodConfig, check_int, normal_
from ..core.registry import register_method
from ..core.tokens import ZERO_SHOT_TEMPLATE, TemplateTokenizer, split_template


@dataclass(frozen=True)
class VPTConfig(MethodConfig):
    """n_tokens: prompts per layer; depth: prompted vision layers (None = all);
    template: fixed text prompt; init_std: std of the normal initialisation."""

    n_tokens: int = 32
    depth: Optional[int] = None
    template: str = ZERO_SHOT_TEMPLATE
    init_std: float = 0.02

    def __post_init__(self):
        check_int("VPTConfig", "n_tokens", self.n_tokens, 0)
        check_int("VPTConfig", "depth", self.depth, 1, allow_none=True)
        split_template(self.template, "VPTConfig")


@register_method
class VPT(AdaptedCLIP):
    """Frozen open_clip + deep visual prompts ``prompts`` (depth, n_tokens, vision width)."""

    method = "vpt"
    config_class = VPTConfig
    learned_towers = {"prompts": "visual"}

    def __init__(self, clip_model: nn.Module, config: VPTConfig = VPTConfig(), **kwargs):
        super().__init__(clip_model, config, **kwargs)
        cfg = self.config
        self.depth = self.vision_layers if cfg.depth is None else cfg.depth
        if self.depth > self.vision_layers:
            raise ValueError(f"VPTConfig.depth={self.depth} exceeds the vision tower's {self.vision_layers} layers")
        self.template = TemplateTokenizer(self.tokenizer, *split_template(cfg.template, "VPTConfig"))
        if cfg.n_tokens:
            self.prompts = nn.Parameter(normal_((self.depth, cfg.n_tokens, self.vision_width), cfg.init_std,
                                                self._ref()))
        else:
            self.register_parameter("prompts", None)

    def _prompts_at(self, layer: int) -> Optional[torch.Tensor]:
        return self.prompts[layer] if self.prompts is not None and layer < self.depth else None

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """images (B, 3, H, W) -> (B, embed_dim)."""
        return self._maybe_normalize(engine.encode_image(self.clip.visual, images, self._prompts_at), normalize)

    def encode_text(self, text, normalize: bool = False) -> torch.Tensor:
        """Class names or token ids (C, L) -> (C, embed_dim): frozen CLIP text of the template."""
        return self._maybe_normalize(engine.encode_text(self.text_view, self.template(text)), normalize)
