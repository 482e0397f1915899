"""Uniform access to open_clip's towers: which models are accepted, their shape facts and identity.

Nothing of open_clip is forked: these helpers read its modules (``VisionTransformer``,
``TextTransformer`` or the text tower built into ``CLIP``) and say, by name, why a model is refused.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple, Union

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
        if pool_type not in ("argmax", "eos", "last"):
            raise UnsupportedModelError(
                f"text pool type {pool_type!r} is not supported: the engine pools where the tower does, at the "
                "end-of-text token ('argmax', 'eos') or the last position ('last', SigLIP)")
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


@dataclass(frozen=True)
class VisionTowerView:
    """A ViT image tower seen through one interface: open_clip's ``VisionTransformer`` (CLIP, CLIPA,
    MetaCLIP, CoCa's image side) or a timm ``VisionTransformer`` inside open_clip's ``TimmModel``
    (SigLIP, SigLIP 2). ``embed`` gives the tokens entering block 0 (N = prefix + patch tokens),
    ``pre_norm`` is what the patch tokens went through before block 0 (layer-0 prompts take it too),
    ``pool`` turns the N original block outputs into image features."""

    module: nn.Module
    kind: str  # "open_clip" or "timm"
    blocks: nn.Module
    pre_norm: nn.Module
    width: int
    image_size: Tuple[int, int]
    patch_size: Tuple[int, int]
    grid_size: Tuple[int, int]
    output_dim: int

    @property
    def layers(self) -> int:
        return len(self.blocks)

    @property
    def grad_checkpointing(self) -> bool:
        owner = self.module.transformer if self.kind == "open_clip" else self.module.trunk
        return bool(getattr(owner, "grad_checkpointing", False))

    @staticmethod
    def of(visual: nn.Module) -> "VisionTowerView":
        from open_clip.transformer import VisionTransformer

        if isinstance(visual, VisionTransformer):
            for name in ("_embeds", "_pool"):
                if not hasattr(visual, name):
                    raise UnsupportedModelError(f"open_clip VisionTransformer lacks {name}; "
                                                "install open_clip_torch>=3.1,<3.4")
            if not getattr(visual.transformer, "batch_first", True):
                raise UnsupportedModelError("sequence-first open_clip transformers are not supported")
            return VisionTowerView(visual, "open_clip", visual.transformer.resblocks, visual.ln_pre,
                                   int(visual.transformer.width), tuple(visual.image_size), tuple(visual.patch_size),
                                   tuple(visual.grid_size), int(visual.output_dim))
        trunk = getattr(visual, "trunk", None)
        if trunk is not None:
            return VisionTowerView._of_timm(visual, trunk)
        raise UnsupportedModelError(
            f"vision tower {type(visual).__name__} is not a ViT (open_clip VisionTransformer or a timm "
            "VisionTransformer); prompt methods insert tokens between transformer blocks")

    @staticmethod
    def _of_timm(visual: nn.Module, trunk: nn.Module) -> "VisionTowerView":
        from timm.models.vision_transformer import VisionTransformer as TimmViT

        if not isinstance(trunk, TimmViT):
            why = {"Eva": "EVA towers use rotary position embeddings, which give prompt tokens no position"}
            reason = why.get(type(trunk).__name__, "it is not a transformer over patch tokens")
            raise UnsupportedModelError(f"timm vision tower {type(trunk).__name__} is not supported: {reason}")
        if "pool" in getattr(visual, "head", {}):
            raise UnsupportedModelError("timm towers with open_clip's attention-pool head (abs_attn / rot_attn) "
                                        "are not supported")
        patch = tuple(trunk.patch_embed.patch_size)
        grid = tuple(trunk.patch_embed.grid_size)
        out_dim = int(getattr(trunk, "num_classes", 0) or trunk.num_features)  # timm's head, if any
        for layer in visual.head.modules():  # then open_clip's projection head ("linear" / "mlp")
            if isinstance(layer, nn.Linear):
                out_dim = int(layer.out_features)
        return VisionTowerView(visual, "timm", trunk.blocks, trunk.norm_pre, int(trunk.embed_dim),
                               tuple(visual.image_size), patch, grid, out_dim)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> tokens entering block 0 (B, N, W)."""
        if self.kind == "open_clip":
            return self.module._embeds(images)
        trunk = self.module.trunk
        x = trunk._pos_embed(trunk.patch_embed(images))
        return trunk.norm_pre(trunk.patch_drop(x))

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The N original block outputs (B, N, W) -> image features (B, D), the tower's own pooling."""
        if self.kind == "open_clip":
            pooled, _ = self.module._pool(tokens)
            return pooled @ self.module.proj if self.module.proj is not None else pooled
        trunk = self.module.trunk
        return self.module.head(trunk.forward_head(trunk.norm(tokens)))

    def project_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Any block outputs (..., W) -> the final norm and projection (..., D), as for the class token."""
        if self.kind != "open_clip":
            raise UnsupportedModelError("per-token projection (RPO) needs an open_clip VisionTransformer")
        tokens = self.module.ln_post(tokens)
        return tokens @ self.module.proj if self.module.proj is not None else tokens


def check_vision_tower(visual: nn.Module) -> None:
    """Raise :class:`UnsupportedModelError` unless ``visual`` is a ViT the engine can drive."""
    VisionTowerView.of(visual)


def base_signature(clip_model: nn.Module) -> dict:
    """Shape facts of the base model that a checkpoint must match (JSON-able)."""
    text = TextTowerView.of(clip_model)
    vision = VisionTowerView.of(clip_model.visual)
    return {
        "context_length": text.context_length,
        "embed_dim": vision.output_dim,
        "grid_size": list(vision.grid_size),
        "image_size": list(vision.image_size),
        "patch_size": list(vision.patch_size),
        "text_layers": len(text.transformer.resblocks),
        "text_width": int(text.transformer.width),
        "vision_layers": vision.layers,
        "vision_width": vision.width,
    }


#: Version of :func:`weights_fingerprint` recorded in checkpoints (1: :func:`weights_fingerprint_v1`).
FINGERPRINT_VERSION = 2
_DIGEST_CHARS = 16  # 64 bits of sha256 per tensor: a collision by chance is out of reach


def weights_fingerprint(state: Mapping[str, torch.Tensor]) -> dict:
    """Identity of every tensor of a base model (``clip.state_dict()``): ``{"version": 2, "sha256":
    {name: the first 16 hex digits of sha256(name, dtype, shape, bytes)}}`` in the state dict's order.

    Exact: one changed bit of any tensor, another dtype (the same weights in fp16) or another shape
    gives another digest. Streamed tensor by tensor (one CPU copy at a time).
    """
    digests = {}
    for name, tensor in state.items():
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h = hashlib.sha256(f"{name}|{str(t.dtype).removeprefix('torch.')}|{list(tensor.shape)}|".encode())
        h.update(memoryview(t.view(torch.uint8).numpy()))
        digests[name] = h.hexdigest()[:_DIGEST_CHARS]
    return {"version": FINGERPRINT_VERSION, "sha256": digests}


def fingerprint_differences(expected: dict, actual: dict) -> List[str]:
    """Names of the tensors whose digests differ between two :func:`weights_fingerprint` records, in
    ``actual``'s order (the model's), then those ``actual`` lacks (empty list: the same weights)."""
    want, have = expected.get("sha256", {}), actual.get("sha256", {})
    return [n for n in have if want.get(n) != have[n]] + [n for n in want if n not in have]


def fingerprint_tensor_names(params: Dict[str, torch.Tensor]) -> List[str]:
    """The six tensors fingerprint version 1 looked at: for the image tower and for the rest (text tower,
    logit scale), the first two parameters in registration order and the largest one."""
    names = list(params)
    picked = []
    for group in ([n for n in names if n.startswith("visual.")], [n for n in names if not n.startswith("visual.")]):
        if group:
            largest = max(group, key=lambda n: params[n].numel())
            picked += [n for n in dict.fromkeys(group[:2] + [largest]) if n not in picked]
    return picked


def weights_fingerprint_v1(params: Dict[str, torch.Tensor]) -> Dict[str, List[float]]:
    """Fingerprint version 1 (checkpoints before format 3; kept to check them): a few numbers per tensor of
    :func:`fingerprint_tensor_names` of ``dict(clip.named_parameters())``: name -> [mean, std, a fixed
    random projection], compared with a tolerance by :func:`fingerprints_match_v1`. Other tensors are not seen.
    """
    out = {}
    for name in fingerprint_tensor_names(params):
        t = params[name].detach().to("cpu", torch.float64).flatten()
        seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
        direction = torch.randn(t.numel(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        out[name] = [float(t.mean()), float(t.std()) if t.numel() > 1 else 0.0,
                     float(t @ direction) / max(1.0, t.numel() ** 0.5)]
    return out


def fingerprints_match_v1(expected: Dict[str, List[float]], actual: Dict[str, List[float]],
                          rtol: float = 1e-2, atol: float = 1e-3) -> List[str]:
    """Names of the tensors whose version-1 fingerprints differ (empty list: those tensors match)."""
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
