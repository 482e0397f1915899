"""Uniform access to open_clip's towers: which models are accepted, their shape facts and identity.

Nothing of open_clip is forked: these helpers read its modules (``VisionTransformer``,
``TextTransformer`` or the text tower built into ``CLIP``) and say, by name, why a model is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Union

import torch
from torch import nn


class UnsupportedModelError(ValueError):
    """The open_clip model has a tower the prompt engine cannot drive (non-ViT, CoCa, HF text, ...)."""


@dataclass(frozen=True)
class TextTowerView:
    """The text tower of ``open_clip.CLIP`` / ``open_clip.CustomTextCLIP`` seen through one interface."""

    token_embedding: nn.Embedding
    positional_embedding: torch.Tensor  # (context_length, width)
    transformer: nn.Module
    ln_final: nn.Module
    text_projection: Optional[Union[nn.Module, torch.Tensor]]
    attn_mask: Optional[torch.Tensor]  # (L, L) additive causal mask or None
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
        if pool_type not in ("argmax", "eos"):
            raise UnsupportedModelError(
                f"text pool type {pool_type!r} is not supported: the engine places learned context after the "
                "start token and pools at the end-of-text token ('argmax' or 'eos' pooling)")
        if not getattr(owner.transformer, "batch_first", True):
            raise UnsupportedModelError("sequence-first open_clip transformers are not supported")
        return TextTowerView(owner.token_embedding, owner.positional_embedding, owner.transformer,
                             owner.ln_final, getattr(owner, "text_projection", None),
                             getattr(owner, "attn_mask", None), pool_type, eos_id)

    @property
    def context_length(self) -> int:
        return int(self.positional_embedding.shape[0])

    @property
    def causal(self) -> bool:
        return is_causal(self.attn_mask)


def check_vision_tower(visual: nn.Module) -> None:
    """Raise :class:`UnsupportedModelError` unless ``visual`` is an open_clip ViT the engine can drive."""
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise UnsupportedModelError(
            f"vision tower {type(visual).__name__} is not an open_clip VisionTransformer; "
            "prompt methods need a ViT image encoder (e.g. ViT-B-16, ViT-L-14)")
    if getattr(visual, "attn_pool", None) is not None:
        raise UnsupportedModelError("vision towers with attentional pooling (CoCa) are not supported")
    for name in ("_embeds", "_pool"):
        if not hasattr(visual, name):
            raise UnsupportedModelError(f"open_clip VisionTransformer lacks {name}; install open_clip_torch>=3.1,<3.4")
    if not getattr(visual.transformer, "batch_first", True):
        raise UnsupportedModelError("sequence-first open_clip transformers are not supported")


def check_tokenizer(tokenizer, context_length: int) -> None:
    """Refuse tokenizers whose ids break the engine's assumptions, naming the tokenizer.

    The engine inserts context right after a start token at position 0 and finds the end of the
    text by ``argmax`` (open_clip's ``SimpleTokenizer``: start-of-text 49406 first, end-of-text
    49407 = the largest id). Hugging Face tokenizers (SigLIP, MT5, ...) do not give that layout.
    """
    try:
        ids = tokenizer(["a"])
    except Exception as exc:  # the tokenizer itself failed: say which one
        raise UnsupportedModelError(f"tokenizer {type(tokenizer).__name__} failed on ['a']: {exc}") from exc
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.shape[1] != context_length:
        raise UnsupportedModelError(
            f"tokenizer {type(tokenizer).__name__} must return (B, {context_length}) token ids for this text "
            f"tower, got {getattr(ids, 'shape', type(ids).__name__)}")
    sot, eot = getattr(tokenizer, "sot_token_id", None), getattr(tokenizer, "eot_token_id", None)
    row = ids[0]
    end = int(row.argmax())
    if sot is None or eot is None or int(row[0]) != sot or int(row[end]) != eot or end < 2:
        raise UnsupportedModelError(
            f"tokenizer {type(tokenizer).__name__} does not put a start token first and an end-of-text token "
            "with the largest id after the text (open_clip's SimpleTokenizer layout); prompt methods need it")


def base_signature(clip_model: nn.Module) -> dict:
    """Shape facts of an open_clip ViT model that a checkpoint must match (JSON-able)."""
    text = TextTowerView.of(clip_model)
    visual = clip_model.visual
    return {
        "context_length": text.context_length,
        "embed_dim": int(visual.output_dim),
        "grid_size": list(visual.grid_size),
        "image_size": list(visual.image_size),
        "patch_size": list(visual.patch_size),
        "text_layers": len(text.transformer.resblocks),
        "text_width": int(text.transformer.width),
        "vision_layers": len(visual.transformer.resblocks),
        "vision_width": int(visual.transformer.width),
    }


#: Frozen tensors whose values identify a base model's weights (present in every open_clip ViT CLIP).
_FINGERPRINT_TENSORS = ("visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding",
                        "token_embedding.weight", "positional_embedding", "text.token_embedding.weight",
                        "text.positional_embedding", "logit_scale")


def weights_fingerprint(params: Dict[str, torch.Tensor]) -> Dict[str, List[float]]:
    """A few numbers per identifying tensor of ``params`` (``dict(clip.named_parameters())``):
    name -> [mean, std, a fixed random projection].

    Numbers rather than a byte hash, so the same weights in fp16/bf16 or on another device still
    match (:func:`fingerprints_match` compares with a tolerance); different weights do not.
    """
    out = {}
    for name in _FINGERPRINT_TENSORS:
        if name not in params:
            continue
        t = params[name].detach().to("cpu", torch.float64).flatten()
        seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
        direction = torch.randn(t.numel(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        out[name] = [float(t.mean()), float(t.std()) if t.numel() > 1 else 0.0,
                     float(t @ direction) / max(1.0, t.numel() ** 0.5)]
    return out


def fingerprints_match(expected: Dict[str, List[float]], actual: Dict[str, List[float]],
                       rtol: float = 1e-2, atol: float = 1e-3) -> List[str]:
    """Names of the tensors whose fingerprints differ (empty list: the same base weights)."""
    differ = sorted(set(expected) ^ set(actual))
    for name in sorted(set(expected) & set(actual)):
        for e, a in zip(expected[name], actual[name]):
            if abs(e - a) > atol + rtol * abs(e):
                differ.append(name)
                break
    return differ


def is_causal(mask: Optional[torch.Tensor]) -> bool:
    """True when ``mask`` (additive -inf or boolean, (L, L)) blocks exactly the positions above the diagonal."""
    if mask is None:
        return False
    square = mask.reshape(mask.shape[-2:])
    blocked = square if square.dtype == torch.bool else torch.isneginf(square)
    return torch.equal(blocked, torch.ones_like(blocked, dtype=torch.bool).triu(1))
