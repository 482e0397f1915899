"""CoCoOp (Zhou et al., CVPR 2022): learned text context shifted by an image-conditioned meta-net.

Text for class c and image b is ``[SOT, ctx + pi_b, "<class name>", ".", EOT]`` with ``ctx`` (n_ctx,
text width) initialised from "a photo of a" and ``pi_b = meta_net(normalised image feature b)``;
the meta-net is ``Linear(D, D // 16) -> ReLU -> Linear(D // 16, text width)`` (D = embed dim). The
image tower is untouched.

On ViT-L-14: ctx 4 x 768 = 3,072; meta-net 768 x 48 + 48 = 36,912 and 48 x 768 + 768 = 37,632;
total 77,616 (paper Tab. 1: 77K).

Because text features depend on the image, ``image_conditioned_text`` is True and trainers use
:meth:`CoCoOp.compute_logits`. ``encode_text`` without an image (what segmentation pipelines call)
uses the context with a zero meta-net shift (pi = 0).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from ..core import engine
from ..core.encoder import AdaptedCLIP, MethodConfig, check_int
from ..core.registry import register_method
from .context import context_template, initial_context


@dataclass(frozen=True)
class CoCoOpConfig(MethodConfig):
    """n_ctx: learned context tokens; ctx_init: phrase whose first n_ctx tokens initialise them ("" = random);
    suffix: fixed text after the class name; meta_reduction: meta-net hidden width = embed dim // this;
    init_std: std of the random context initialisation."""

    n_ctx: int = 4
    ctx_init: str = "a photo of a"
    suffix: str = "."
    meta_reduction: int = 16
    init_std: float = 0.02

    def __post_init__(self):
        check_int("CoCoOpConfig", "n_ctx", self.n_ctx, 1)
        check_int("CoCoOpConfig", "meta_reduction", self.meta_reduction, 1)
        if not isinstance(self.ctx_init, str) or not isinstance(self.suffix, str):
            raise ValueError("CoCoOpConfig.ctx_init and .suffix must be strings")


@register_method
class CoCoOp(AdaptedCLIP):
    """Frozen open_clip + CoCoOp context and meta-net. Parameters: ``ctx`` (n_ctx, text width), ``meta_net``."""

    method = "cocoop"
    config_class = CoCoOpConfig
    learned_towers = {"ctx": "text", "meta_net": "text"}
    image_conditioned_text = True

    def __init__(self, clip_model: nn.Module, config: CoCoOpConfig = CoCoOpConfig(), **kwargs):
        super().__init__(clip_model, config, **kwargs)
        cfg = self.config
        self.template = context_template(self.tokenizer, cfg.n_ctx, cfg.ctx_init, cfg.suffix, "CoCoOpConfig")
        self.ctx = nn.Parameter(initial_context(self.text_view, self.template, cfg.n_ctx, cfg.ctx_init, cfg.init_std))
        hidden = self.embed_dim // cfg.meta_reduction
        if hidden < 1:
            raise ValueError(f"CoCoOpConfig.meta_reduction={cfg.meta_reduction} leaves no hidden units "
                             f"for embed dim {self.embed_dim}")
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(self.embed_dim, hidden)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(hidden, self.text_width)),
        ])).to(self._ref().device)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """images (B, 3, H, W) -> (B, embed_dim): the unchanged CLIP image features."""
        return self._maybe_normalize(engine.encode_image(self.clip.visual, images), normalize)

    def encode_text(self, text, normalize: bool = False) -> torch.Tensor:
        """Class names or token ids (C, L) -> (C, embed_dim) with the bare context (meta-net shift 0)."""
        tokens = self.template(text)
        features = engine.encode_text(self.text_view, tokens, lambda i: self.ctx if i == 0 else None,
                                      self.template.context_start)
        return self._maybe_normalize(features, normalize)

    def encode_text_for_images(self, image_features: torch.Tensor, text, normalize: bool = False) -> torch.Tensor:
        """Normalised image features (B, D) and C classes -> image-conditioned text features (B, C, D)."""
        tokens = self.template(text)
        n_img, n_cls = image_features.shape[0], tokens.shape[0]
        shift = self.meta_net(image_features.float())                      # (B, text width)
        ctx = self.ctx.unsqueeze(0) + shift.unsqueeze(1)                   # (B, n_ctx, text width)
        ctx = ctx.repeat_interleave(n_cls, dim=0)                          # (B * C, n_ctx, text width)
        features = engine.encode_text(self.text_view, tokens.repeat(n_img, 1), lambda i: ctx if i == 0 else None,
                                      self.template.context_start)
        return self._maybe_normalize(features.view(n_img, n_cls, -1), normalize)

    def compute_logits(self, images: torch.Tensor, text) -> torch.Tensor:
        """images (B, 3, H, W), C classes -> logits (B, C), logit scale included (CoCoOp's classifier)."""
        image_features = self.encode_image(images, normalize=True)
        text_features = self.encode_text_for_images(image_features, text, normalize=True)
        logits = torch.einsum("bd,bcd->bc", image_features.float(), text_features.float())
        return self.clip.logit_scale.exp() * logits
