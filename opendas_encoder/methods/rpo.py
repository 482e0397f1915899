"""RPO, read-only prompt optimisation (Lee et al., ICCV 2023).

K prompt pairs: ``text_prompts`` (K, text width) appended after the text tokens of "a photo of a
{}." and ``visual_prompts`` (K, vision width) appended after the patch tokens, at the input only.
Masked attention makes them read-only: the original tokens never attend to the prompts (their
outputs are exactly vanilla CLIP's), and each prompt attends only to the original tokens (text: up
to the end-of-text token). Initialisation as published: the end-of-text token embedding (text) or
the class embedding (vision) plus 0.1 x a random unit vector; text prompts get no positional
embedding; visual ones pass ``ln_pre`` with the patch tokens.

Each prompt's output goes through ``ln_final`` + text projection / ``ln_post`` + visual projection.
RPO's logit is the mean over k of the scaled cosine between visual prompt k and text prompt k. To
serve that through the plain encoder API, a feature is the concatenation of the K unit-normalised
per-prompt features divided by sqrt(K): it has unit norm (``normalize`` changes nothing) and
``image @ text.T`` is exactly RPO's mean cosine. Hence ``embed_dim`` is K x the CLIP embed dim.

On ViT-L-14: 24 x 768 + 24 x 1024 = 43,008 parameters (paper Tab. 1: 43K).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..core import engine
from ..core.encoder import AdaptedCLIP, MethodConfig, check_int
from ..core.registry import register_method
from ..core.tokens import ZERO_SHOT_TEMPLATE, TemplateTokenizer, split_template, trim_after_end_of_text
from ..core.towers import UnsupportedModelError


@dataclass(frozen=True)
class RPOConfig(MethodConfig):
    """k: prompt pairs; template: fixed text around the class name; init_noise: size of the random
    unit-vector perturbation of the initial token embeddings."""

    k: int = 24
    template: str = ZERO_SHOT_TEMPLATE
    init_noise: float = 0.1

    def __post_init__(self):
        check_int("RPOConfig", "k", self.k, 1)
        split_template(self.template, "RPOConfig")
        if not isinstance(self.init_noise, (int, float)) or self.init_noise < 0:
            raise ValueError(f"RPOConfig.init_noise must be a number >= 0, got {self.init_noise!r}")


def _near(token: torch.Tensor, k: int, noise: float) -> torch.Tensor:
    """(W,) -> (k, W) fp32: copies of ``token`` plus ``noise`` x random unit vectors."""
    direction = F.normalize(torch.randn(k, token.shape[-1], device=token.device), dim=-1)
    return token.detach().float().unsqueeze(0).repeat(k, 1) + noise * direction


@register_method
class RPO(AdaptedCLIP):
    """Frozen open_clip + K read-only prompt pairs ``text_prompts`` / ``visual_prompts``."""

    method = "rpo"
    config_class = RPOConfig
    learned_towers = {"text_prompts": "text", "visual_prompts": "visual"}

    def __init__(self, clip_model: nn.Module, config: RPOConfig = RPOConfig(), **kwargs):
        super().__init__(clip_model, config, **kwargs)
        cfg = self.config
        view = self.text_view
        if not (view.causal and view.pool_type == "argmax" and self.vision_view.kind == "open_clip"):
            raise UnsupportedModelError(
                "RPO reads its prompts at CLIP's end-of-text token of a causal text tower (argmax pooling) and "
                f"projects per-prompt tokens of an open_clip ViT; this model has a {view.pool_type!r}-pooled "
                f"{'causal' if view.causal else 'bidirectional'} text tower and a {self.vision_view.kind} ViT")
        self.template = TemplateTokenizer(self.tokenizer, *split_template(cfg.template, "RPOConfig"))
        eot = self.template.layout.end_ids[0]
        embedding = self.text_view.token_embedding.weight
        self.text_prompts = nn.Parameter(_near(embedding[eot], cfg.k, cfg.init_noise))
        self.visual_prompts = nn.Parameter(_near(self.clip.visual.class_embedding, cfg.k, cfg.init_noise))

    @property
    def embed_dim(self) -> int:
        return self.config.k * int(self.clip.visual.output_dim)

    def _ensemble(self, per_prompt: torch.Tensor) -> torch.Tensor:
        """(B, K, D) -> (B, K * D): unit-normalised per prompt, scaled by 1/sqrt(K) (unit norm overall)."""
        return (F.normalize(per_prompt, dim=-1) / math.sqrt(self.config.k)).flatten(1)

    # ------------------------------------------------------------------ image tower
    def image_tokens(self, images: torch.Tensor) -> Tuple[torch.Tensor, int]:
        """images (B, 3, H, W) -> (last-block outputs (B, N + K, W), N original tokens)."""
        n = int(self.clip.visual.positional_embedding.shape[0])  # class token + patches
        k = self.config.k
        mask = torch.zeros(n + k, n + k, device=images.device)
        mask[:, n:] = float("-inf")  # nobody attends to a prompt: originals stay vanilla, prompts only read
        return engine.run_vision(self.clip.visual, images, lambda i: self.visual_prompts if i == 0 else None, mask)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """images (B, 3, H, W) -> (B, K * D) ensemble feature (unit norm; see the module docstring)."""
        x, n = self.image_tokens(images)
        return self._ensemble(engine.project_visual_tokens(self.clip.visual, x[:, n:]))

    # ------------------------------------------------------------------ text tower
    def text_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Template token ids (C, L) -> last-block outputs (C, L + K, W), before ``ln_final``."""
        view = self.text_view
        tokens = tokens.to(view.token_embedding.weight.device)
        x = engine.embed_text(view, tokens)
        n_cls, length = tokens.shape
        k = self.config.k
        prompts = self.text_prompts.to(x.dtype).unsqueeze(0).expand(n_cls, -1, -1)
        x = torch.cat([x, prompts], dim=1)
        mask = torch.full((n_cls, length + k, length + k), float("-inf"), device=x.device)
        base = engine.causal_mask(view, length)
        mask[:, :length, :length] = 0.0 if base is None else base.to(mask)
        readable = torch.arange(length, device=x.device).unsqueeze(0) <= tokens.argmax(dim=1, keepdim=True)
        mask[:, length:, :length] = torch.where(readable, 0.0, float("-inf")).unsqueeze(1)
        heads = view.transformer.resblocks[0].attn.num_heads
        return engine.run_text_blocks(view, x, mask.repeat_interleave(heads, dim=0))

    def encode_text(self, text, normalize: bool = False) -> torch.Tensor:
        """Class names or token ids (C, L) -> (C, K * D) ensemble feature (unit norm)."""
        tokens = trim_after_end_of_text(self.template(text), self.text_view)  # exact: nothing reads the padding
        x = self.text_view.ln_final(self.text_tokens(tokens)[:, tokens.shape[1]:])
        return self._ensemble(engine.project_text_tokens(self.text_view, x))
