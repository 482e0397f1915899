"""Uniform access to open_clip's towers: checks, shape facts and the small forward helpers.

Everything here drives open_clip's own submodules; nothing of open_clip is forked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class UnsupportedModelError(ValueError):
    """The open_clip model has a tower this wrapper cannot prompt (non-ViT, CoCa, HF text, ...)."""


@dataclass(frozen=True)
class TextTowerView:
    """Uniform access to the text tower of ``open_clip.CLIP`` and ``open_clip.CustomTextCLIP``."""

    token_embedding: nn.Embedding
    positional_embedding: torch.Tensor
    transformer: nn.Module
    ln_final: nn.Module
    text_projection: Optional[Union[nn.Module, torch.Tensor]]
    attn_mask: Optional[torch.Tensor]
    pool_type: str
    eos_id: Optional[int]

    @staticmethod
    def of(clip_model: nn.Module) -> "TextTowerView":
        owner = getattr(clip_model, "text", None)
        if owner is None:
            owner = clip_model
            pool_type = getattr(clip_model, "text_pool_type", "argmax")
            eos_id = getattr(clip_model, "text_eos_id", None)
        else:
            if not hasattr(owner, "token_embedding") or not hasattr(owner, "transformer"):
                raise UnsupportedModelError(
                    f"text tower {type(owner).__name__} is not an open_clip TextTransformer "
                    "(Hugging Face text towers are not supported)")
            if getattr(owner, "cls_emb", None) is not None:
                raise UnsupportedModelError("text towers with an appended class token (CoCa) are not supported")
            if getattr(owner, "use_pad_mask", False):
                raise UnsupportedModelError("bidirectional text towers with padding masks are not supported")
            pool_type = getattr(owner, "pool_type", "argmax")
            eos_id = getattr(owner, "eos_id", None)
        for name in ("token_embedding", "positional_embedding", "transformer", "ln_final"):
            if not hasattr(owner, name):
                raise UnsupportedModelError(f"model has no text-tower attribute {name!r}")
        if pool_type not in ("argmax", "eos", "first", "last"):
            raise UnsupportedModelError(f"text pool type {pool_type!r} is not supported")
        return TextTowerView(owner.token_embedding, owner.positional_embedding, owner.transformer,
                             owner.ln_final, getattr(owner, "text_projection", None),
                             getattr(owner, "attn_mask", None), pool_type, eos_id)


def _check_vision_tower(visual: nn.Module) -> None:
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise UnsupportedModelError(
            f"vision tower {type(visual).__name__} is not an open_clip VisionTransformer; "
            "OpenDAS prompts need a ViT image encoder (e.g. ViT-B-16, ViT-L-14)")
    if getattr(visual, "attn_pool", None) is not None:
        raise UnsupportedModelError("vision towers with attentional pooling (CoCa) are not supported")
    for name in ("_embeds", "_pool"):
        if not hasattr(visual, name):
            raise UnsupportedModelError(f"open_clip VisionTransformer lacks {name}; install open_clip_torch>=3.1,<3.4")


def base_signature(clip_model: nn.Module) -> dict:
    """Shape facts of an open_clip ViT model: widths, depths, embedding size, image size."""
    text = TextTowerView.of(clip_model)
    visual = clip_model.visual
    return {
        "embed_dim": int(visual.output_dim),
        "image_size": list(visual.image_size),
        "text_layers": len(text.transformer.resblocks),
        "text_width": int(text.transformer.width),
        "vision_layers": len(visual.transformer.resblocks),
        "vision_width": int(visual.transformer.width),
    }


def _is_causal(mask: Optional[torch.Tensor]) -> bool:
    """True when ``mask`` (additive -inf or boolean, (L, L)) blocks exactly the positions above the diagonal."""
    if mask is None:
        return False
    square = mask.reshape(mask.shape[-2:])
    blocked = square if square.dtype == torch.bool else torch.isneginf(square)
    return torch.equal(blocked, torch.ones_like(blocked, dtype=torch.bool).triu(1))


def _trim_after_end_of_text(tokens: torch.Tensor, text: TextTowerView) -> torch.Tensor:
    """Drop padding after the last end-of-text token (exact for causal towers pooled at that token).

    With a causal mask no position attends to later ones, so the pooled end-of-text output does not
    depend on the padding; 77 positions shrink to the longest prompt (e.g. 9 for short class names).
    Tokens come back unchanged for non-causal towers, other pooling, or a missing eos token.
    """
    if text.pool_type not in ("argmax", "eos") or not _is_causal(text.attn_mask):
        return tokens
    if text.pool_type == "argmax":
        ends = tokens.argmax(dim=1)
    else:
        if text.eos_id is None or not bool((tokens == text.eos_id).any(dim=1).all()):
            return tokens
        ends = (tokens == text.eos_id).int().argmax(dim=1)
    keep = int(ends.max()) + 1
    return tokens[:, :keep] if keep < tokens.shape[1] else tokens


def _run_block(block: nn.Module, x: torch.Tensor, attn_mask: Optional[torch.Tensor], use_ckpt: bool) -> torch.Tensor:
    if use_ckpt and x.requires_grad:
        return checkpoint(lambda t: block(t, attn_mask=attn_mask), x, use_reentrant=False)
    return block(x, attn_mask=attn_mask)


def _pool_text(x: torch.Tensor, tokens: torch.Tensor, pool_type: str, eos_id: Optional[int]) -> torch.Tensor:
    from open_clip.transformer import text_global_pool

    return text_global_pool(x, tokens, pool_type=pool_type, eos_token_id=eos_id)




def as_token_ids(text, tokenizer) -> torch.Tensor:
    """Class names (str or list of str) or token ids (B, L) -> token ids (B, L), validated."""
    if isinstance(text, str):
        text = [text]
    if isinstance(text, torch.Tensor):
        tokens = text.long()
        if tokens.ndim != 2:
            raise ValueError(f"token input must be (B, L), got shape {tuple(tokens.shape)}")
        return tokens
    text = list(text)
    if not all(isinstance(t, str) for t in text):
        raise TypeError("text input must be class names (str) or token ids (LongTensor (B, L))")
    return tokenizer(text)
