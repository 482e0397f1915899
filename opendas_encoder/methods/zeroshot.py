"""Zero-shot CLIP: the frozen open_clip model with the hand-written prompt, nothing learned.

The "No adaptation" row of every table and the reference that adapted encoders are compared with.
Class names are wrapped in ``template`` (``"a photo of a {}."``), so its ``encode_text`` takes bare
names or ``tokenizer(names)`` ids like every other method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core import engine
from ..core.encoder import AdaptedCLIP, MethodConfig
from ..core.registry import register_method
from ..core.tokens import ZERO_SHOT_TEMPLATE, TemplateTokenizer, TextInput, split_template


@dataclass(frozen=True)
class ZeroShotConfig(MethodConfig):
    """template: the hand-written prompt around the class name."""

    template: str = ZERO_SHOT_TEMPLATE

    def __post_init__(self):
        split_template(self.template, "ZeroShotConfig")


@register_method
class ZeroShotCLIP(AdaptedCLIP):
    """open_clip as it is, with ``template`` around class names. ``freeze_base=False`` leaves the
    model's ``requires_grad`` flags alone (a zero-shot view of a model that another encoder trains)."""

    method = "zeroshot"
    config_class = ZeroShotConfig

    def __init__(self, clip_model: nn.Module, config: ZeroShotConfig = ZeroShotConfig(), **kwargs):
        super().__init__(clip_model, config, **kwargs)
        self.template = TemplateTokenizer(self.tokenizer, *split_template(self.config.template, "ZeroShotConfig"))

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """images (B, 3, H, W) -> (B, embed_dim), open_clip's own image features."""
        return self._maybe_normalize(engine.encode_image(self.clip.visual, images), normalize)

    def encode_text(self, text: TextInput, normalize: bool = False) -> torch.Tensor:
        """Class names or ``tokenizer(names)`` ids (C, L) -> (C, embed_dim) of the template."""
        return self._maybe_normalize(engine.encode_text(self.text_view, self.template(text)), normalize)
