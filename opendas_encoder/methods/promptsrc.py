"""PromptSRC (Khattak et al., ICCV 2023): deep vision + text prompts regulated toward the frozen CLIP.

The encoder is IVLP's, i.e. OpenDAS's prompted CLIP (:class:`~.opendas.PromptedCLIP`, the same
engine) with PromptSRC's base-to-novel configuration (``muzairkhattak/PromptSRC``,
``configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml``): 4 vision and 4 text prompt
tokens in the first 9 layers of each tower (``PROMPT_DEPTH_VISION/TEXT: 9``; a tower with fewer
layers is prompted in all of them), the layer-0 text context initialised from "a photo of a".
ViT-B/16: 4 x 9 x 768 + 4 x 9 x 512 = 46,080 parameters (the paper's "46K").

What makes it PromptSRC is its training, which the engine's OpenDAS options already implement;
:attr:`PromptSRC.training_defaults` are the values of that config and ``trainers/promptsrc.py``:

* three self-regulating terms (``consistency``): ``TEXT_LOSS_WEIGHT: 25`` x L1(prompted text, frozen
  text), ``IMAGE_LOSS_WEIGHT: 10`` x L1(prompted image, frozen image), 1 x KL(frozen || prompted
  logits) summed and divided by the number of logits (``kl_reduction: per-logit``);
* textual diversity (``consistency.text_target: ensemble``): the frozen text target of each class is
  the mean over many hand-made templates of zero-shot CLIP's text features, normalised (its 60
  ``IMAGENET_TEMPLATES`` from OpenAI's ImageNet prompt-engineering notebook; here open_clip's copy of
  that notebook's 80, ``open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES``); the frozen logits
  use it too;
* Gaussian prompt aggregation (``averaging.mode: gaussian``): one snapshot per epoch weighted by
  N(epoch; mean 15, std 1) over 20 epochs, i.e. ``gaussian_mean`` 15 / 20 = 0.75 of the stage.

Its schedule (SGD, lr 0.0025, cosine, 1 warm-up epoch at 1e-5) is the engine's default one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict

from torch import nn

from ..core.registry import register_method
from .opendas import PromptConfig, PromptedCLIP


@dataclass(frozen=True)
class PromptSRCConfig(PromptConfig):
    """:class:`~.opendas.PromptConfig` with PromptSRC's defaults (4 + 4 tokens, depth 9 in each tower);
    a depth above the tower's layer count prompts every layer of that tower."""

    visual_tokens: int = 4
    visual_depth: int = 9
    text_tokens: int = 4
    text_depth: int = 9

    def resolved(self, vision_layers: int, text_layers: int) -> "PromptSRCConfig":
        cap = lambda depth, layers: layers if depth is None else min(depth, layers)  # noqa: E731
        capped = replace(self, visual_depth=cap(self.visual_depth, vision_layers),
                         text_depth=cap(self.text_depth, text_layers))
        return PromptConfig.resolved(capped, vision_layers, text_layers)


@register_method
class PromptSRC(PromptedCLIP):
    """Deep vision + text prompts (IVLP) trained with PromptSRC's regularisers (:attr:`training_defaults`)."""

    method = "promptsrc"
    config_class = PromptSRCConfig
    #: training options a config gets for this method unless it writes them (``train.config``)
    training_defaults: Dict[str, dict] = {
        "consistency": {"text": 25.0, "image": 10.0, "logits": 1.0, "distance": "l1", "kl_reduction": "per-logit",
                        "text_target": "ensemble"},
        "averaging": {"mode": "gaussian", "gaussian_mean": 0.75, "gaussian_std": 1.0},
    }

    def __init__(self, clip_model: nn.Module, config: PromptSRCConfig = PromptSRCConfig(), **kwargs):
        if not isinstance(config, PromptSRCConfig):
            raise TypeError(f"config must be a PromptSRCConfig, got {type(config).__name__}")
        super().__init__(clip_model, config, **kwargs)
