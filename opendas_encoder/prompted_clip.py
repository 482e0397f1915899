"""PromptedCLIP: a frozen open_clip model steered by deep visual and deep text prompts.

The wrapper owns only the prompt tensors. The forward pass is driven through open_clip's own
submodules (patch embedding, transformer blocks, pooling, projections): no open_clip code is
forked, so any open_clip ViT model (``-quickgelu``, ``-336``, custom configs) works.

Visual prompts (paper Sec. 4.2): ``visual_prompts[i]`` (K_v tokens) are appended after the patch
tokens at the input of vision layer ``i`` for ``i < visual_depth``, replacing the previous layer's
outputs at those positions; above ``visual_depth`` those outputs are carried on. Prompt tokens never
enter the image pooling.

Text prompts: the sequence is ``[SOT, ctx_1..ctx_K, class-name tokens, EOT, pad...]``. Layer-0
context ``text_prompts[0]`` replaces the placeholder embeddings (initialised from ``text_init``);
``text_prompts[i]`` replaces the context outputs at the input of text layer ``i < text_depth``.
Pooling stays at the end-of-text token.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .config import PromptConfig
from .encoder_base import FrozenCLIPEncoder
from .towers import (  # noqa: F401  (re-exported: the baselines and adapters import them from here)
    TextTowerView,
    UnsupportedModelError,
    _check_vision_tower,
    _pool_text,
    _run_block,
    _trim_after_end_of_text,
    as_token_ids,
    base_signature,
)

TextInput = Union[str, Sequence[str], torch.Tensor]


class PromptedCLIP(FrozenCLIPEncoder):
    """A frozen open_clip model with learnable deep visual and text prompts.

    Args:
        clip_model: an open_clip ``CLIP`` / ``CustomTextCLIP`` with a ViT vision tower; frozen here.
        prompts: the :class:`PromptConfig` (depths default to every layer).
        tokenizer: open_clip tokenizer; default ``SimpleTokenizer`` with the model's context length.
        preprocess: PIL -> tensor transform; default open_clip's validation transform for the model.
        model_name, pretrained: recorded in checkpoints so that the base model can be rebuilt.
        freeze_base: freeze the open_clip model (default). ``False`` leaves its ``requires_grad`` flags
            untouched, for a view that shares a model someone else trains (e.g. a zero-shot evaluator).

    Parameters: ``visual_prompts`` (visual_depth, K_v, vision width) and ``text_prompts``
    (text_depth, K_t, text width); a tower with zero tokens has no parameter (``None``).
    """

    method = "opendas"

    def __init__(self, clip_model: nn.Module, prompts: PromptConfig = PromptConfig(), tokenizer=None,
                 preprocess=None, model_name: Optional[str] = None, pretrained: Optional[str] = None,
                 freeze_base: bool = True):
        if not isinstance(prompts, PromptConfig):
            raise TypeError(f"prompts must be a PromptConfig, got {type(prompts).__name__}")
        super().__init__(clip_model, prompts, tokenizer, preprocess, model_name, pretrained, freeze_base)
        text = TextTowerView.of(clip_model)
        self.prompt_config = prompts.resolved(len(clip_model.visual.transformer.resblocks),
                                              len(text.transformer.resblocks))
        self.config = self.prompt_config
        cfg = self.prompt_config
        ref = next(clip_model.parameters())
        vw = clip_model.visual.transformer.width
        tw = text.transformer.width
        if cfg.visual_tokens:
            self.visual_prompts = nn.Parameter(torch.empty(cfg.visual_depth, cfg.visual_tokens, vw,
                                                           device=ref.device, dtype=torch.float32))
            nn.init.normal_(self.visual_prompts, std=cfg.init_std)
        else:
            self.register_parameter("visual_prompts", None)
        if cfg.text_tokens:
            self.text_prompts = nn.Parameter(torch.empty(cfg.text_depth, cfg.text_tokens, tw,
                                                         device=ref.device, dtype=torch.float32))
            nn.init.normal_(self.text_prompts, std=cfg.init_std)
            self._init_text_context(text)
        else:
            self.register_parameter("text_prompts", None)

    # ------------------------------------------------------------------ construction helpers
    def _init_text_context(self, text: TextTowerView) -> None:
        phrase = self.prompt_config.text_init.strip()
        if not phrase:
            return
        tokens = self.tokenizer([phrase])[0]
        end = int(tokens.argmax()) if text.pool_type == "argmax" else int((tokens != 0).sum()) - 1
        ids = tokens[1:end]
        k = self.prompt_config.text_tokens
        if len(ids) > k:
            raise ValueError(f"text_init {phrase!r} has {len(ids)} tokens but text_tokens={k}; "
                             "use more text tokens or a shorter phrase")
        with torch.no_grad():
            emb = text.token_embedding.weight[ids.to(text.token_embedding.weight.device)]
            self.text_prompts[0, k - len(ids):] = emb.float()
        if self.prompt_config.text_deep_init == "carry":
            self._carry_deep_text_prompts(text)

    @torch.no_grad()
    def _carry_deep_text_prompts(self, text: TextTowerView) -> None:
        """Deep text prompts := the frozen tower's hidden states at the context positions.

        Runs [SOT, layer-0 context] through the frozen blocks and stores, for each layer i < text_depth,
        its input at the context positions. With a causal tower these states are what the untrained
        encoder would carry anyway, so replacing them changes nothing until training moves them.
        """
        k = self.prompt_config.text_tokens
        device = text.token_embedding.weight.device
        cast_dtype = text.transformer.get_cast_dtype()
        sot = self.tokenizer([""])[0, :1].to(device)
        x = torch.cat([text.token_embedding(sot).to(cast_dtype).unsqueeze(0),
                       self.text_prompts[0].to(cast_dtype).unsqueeze(0)], dim=1)
        x = x + text.positional_embedding[:1 + k].to(cast_dtype)
        mask = text.attn_mask[:1 + k, :1 + k] if text.attn_mask is not None else None
        for i, block in enumerate(text.transformer.resblocks):
            if 0 < i < self.prompt_config.text_depth:
                self.text_prompts[i] = x[0, 1:].float()
            x = block(x, attn_mask=mask)

    def prompt_parameters(self) -> List[nn.Parameter]:
        """The learnable prompts only (what an optimizer should get)."""
        return [p for p in (self.visual_prompts, self.text_prompts) if p is not None]

    def set_trainable(self, visual: bool = True, text: bool = True) -> None:
        """Choose which prompt groups receive gradients (stage 1: visual only; stage 2: text only)."""
        if self.visual_prompts is not None:
            self.visual_prompts.requires_grad_(visual)
        if self.text_prompts is not None:
            self.text_prompts.requires_grad_(text)

    def config_dict(self) -> dict:
        """Method configuration stored in checkpoints."""
        return self.prompt_config.to_dict()

    # ------------------------------------------------------------------ image tower
    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """images (B, 3, H, W), preprocessed -> features (B, embed_dim)."""
        visual = self.clip.visual
        blocks = visual.transformer.resblocks
        use_ckpt = bool(getattr(visual.transformer, "grad_checkpointing", False))
        x = visual._embeds(images)  # (B, 1 + grid**2, width), after ln_pre
        if not getattr(visual.transformer, "batch_first", True):
            raise UnsupportedModelError("sequence-first open_clip transformers are not supported")
        n_tokens = x.shape[1]
        prompts = self.visual_prompts
        depth = self.prompt_config.visual_depth if prompts is not None else 0
        for i, block in enumerate(blocks):
            if i < depth:
                p = prompts[i].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :n_tokens], p], dim=1)
            x = _run_block(block, x, None, use_ckpt)
        pooled, _ = visual._pool(x[:, :n_tokens])
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return F.normalize(pooled, dim=-1) if normalize else pooled

    # ------------------------------------------------------------------ text tower
    def tokenize(self, text: TextInput) -> torch.Tensor:
        """Class names (or token ids from the tokenizer) -> token ids (B, L) with K_t placeholders after SOT."""
        tokens = as_token_ids(text, self.tokenizer)
        k = self.prompt_config.text_tokens
        if not k:
            return tokens
        length = tokens.shape[1]
        eot_pos = tokens.argmax(dim=1)
        eot_val = tokens[torch.arange(tokens.shape[0]), eot_pos]
        placeholder = torch.zeros(tokens.shape[0], k, dtype=tokens.dtype, device=tokens.device)
        out = torch.cat([tokens[:, :1], placeholder, tokens[:, 1:length - k]], dim=1)
        cut = eot_pos + k >= length  # the end-of-text token fell off: put it back at the end
        out[cut, -1] = eot_val[cut]
        return out

    def encode_text(self, text: TextInput, normalize: bool = False) -> torch.Tensor:
        """Class names (list of str) or token ids (B, L) -> features (B, embed_dim).

        Each class name is encoded as "<learned context> <class name>"; token ids are taken as the
        tokenizer produced them (start token first) and the context is inserted after the start token.
        """
        text_tower = TextTowerView.of(self.clip)
        device = text_tower.token_embedding.weight.device
        tokens = _trim_after_end_of_text(self.tokenize(text).to(device), text_tower)
        cast_dtype = text_tower.transformer.get_cast_dtype()
        length = tokens.shape[1]
        x = text_tower.token_embedding(tokens).to(cast_dtype)
        prompts = self.text_prompts
        k = self.prompt_config.text_tokens
        depth = self.prompt_config.text_depth if prompts is not None else 0
        batch = x.shape[0]

        def with_context(h: torch.Tensor, layer: int) -> torch.Tensor:
            ctx = prompts[layer].to(h.dtype).unsqueeze(0).expand(batch, -1, -1)
            return torch.cat([h[:, :1], ctx, h[:, 1 + k:]], dim=1)

        if depth:
            x = with_context(x, 0)
        x = x + text_tower.positional_embedding[:length].to(cast_dtype)
        attn_mask = text_tower.attn_mask
        if attn_mask is not None:
            attn_mask = attn_mask[:length, :length]
        use_ckpt = bool(getattr(text_tower.transformer, "grad_checkpointing", False))
        for i, block in enumerate(text_tower.transformer.resblocks):
            if 0 < i < depth:
                x = with_context(x, i)
            x = _run_block(block, x, attn_mask, use_ckpt)
        x = text_tower.ln_final(x)
        pooled = _pool_text(x, tokens, text_tower.pool_type, text_tower.eos_id)
        proj = text_tower.text_projection
        if proj is not None:
            pooled = proj(pooled) if isinstance(proj, nn.Module) else pooled @ proj
        return F.normalize(pooled, dim=-1) if normalize else pooled

    def extra_repr(self) -> str:
        c = self.prompt_config
        return (f"model={self.model_name!r}, visual={c.visual_tokens}x{c.visual_depth}, "
                f"text={c.text_tokens}x{c.text_depth}, trainable={sum(p.numel() for p in self.prompt_parameters())}")
