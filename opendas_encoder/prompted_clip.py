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

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import PromptConfig

TextInput = Union[str, Sequence[str], torch.Tensor]


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


def _trim_after_end_of_text(tokens: torch.Tensor, text: TextTowerView) -> torch.Tensor:
    """Drop padding after the last end-of-text token (exact for causal towers pooled at that token).

    With a causal mask no position attends to later ones, so the pooled end-of-text output does not
    depend on the padding; 77 positions shrink to the longest prompt (e.g. 9 for short class names).
    """
    if text.attn_mask is None or text.pool_type not in ("argmax", "eos"):
        return tokens
    if text.pool_type == "argmax":
        ends = tokens.argmax(dim=1)
    else:
        ends = (tokens == text.eos_id).int().argmax(dim=1)
    return tokens[:, :int(ends.max()) + 1]


def _run_block(block: nn.Module, x: torch.Tensor, attn_mask: Optional[torch.Tensor], use_ckpt: bool) -> torch.Tensor:
    if use_ckpt and x.requires_grad:
        return checkpoint(lambda t: block(t, attn_mask=attn_mask), x, use_reentrant=False)
    return block(x, attn_mask=attn_mask)


def _pool_text(x: torch.Tensor, tokens: torch.Tensor, pool_type: str, eos_id: Optional[int]) -> torch.Tensor:
    from open_clip.transformer import text_global_pool

    return text_global_pool(x, tokens, pool_type=pool_type, eos_token_id=eos_id)


class PromptedCLIP(nn.Module):
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
        super().__init__()
        if not isinstance(prompts, PromptConfig):
            raise TypeError(f"prompts must be a PromptConfig, got {type(prompts).__name__}")
        _check_vision_tower(clip_model.visual)
        self.clip = clip_model
        self.model_name = model_name
        self.pretrained = pretrained
        if freeze_base:
            self.clip.requires_grad_(False)
        self.clip.eval()
        text = TextTowerView.of(clip_model)
        vision_layers = len(clip_model.visual.transformer.resblocks)
        text_layers = len(text.transformer.resblocks)
        self.prompt_config = prompts.resolved(vision_layers, text_layers)
        cfg = self.prompt_config
        self.tokenizer = tokenizer if tokenizer is not None else self._default_tokenizer()
        self.preprocess = preprocess if preprocess is not None else self._default_preprocess()

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
    def _default_tokenizer(self):
        from open_clip.tokenizer import SimpleTokenizer

        return SimpleTokenizer(context_length=int(TextTowerView.of(self.clip).positional_embedding.shape[0]))

    def _default_preprocess(self):
        from open_clip.model import get_model_preprocess_cfg
        from open_clip.transform import PreprocessCfg, image_transform_v2

        return image_transform_v2(PreprocessCfg(**get_model_preprocess_cfg(self.clip)), is_train=False)

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

    # ------------------------------------------------------------------ properties
    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale

    @property
    def embed_dim(self) -> int:
        return int(self.clip.visual.output_dim)

    @property
    def image_size(self) -> Tuple[int, int]:
        return tuple(self.clip.visual.image_size)

    @property
    def context_length(self) -> int:
        return int(TextTowerView.of(self.clip).positional_embedding.shape[0])

    def train(self, mode: bool = True) -> "PromptedCLIP":
        """Set train mode on the prompts; the frozen open_clip model always stays in eval mode."""
        super().train(mode)
        self.clip.eval()
        return self

    def prompt_parameters(self) -> List[nn.Parameter]:
        """The learnable prompts only (what an optimizer should get)."""
        return [p for p in (self.visual_prompts, self.text_prompts) if p is not None]

    def set_trainable(self, visual: bool = True, text: bool = True) -> None:
        """Choose which prompt groups receive gradients (stage 1: visual only; stage 2: text only)."""
        if self.visual_prompts is not None:
            self.visual_prompts.requires_grad_(visual)
        if self.text_prompts is not None:
            self.text_prompts.requires_grad_(text)

    def prompt_state_dict(self) -> Dict[str, torch.Tensor]:
        """Prompt tensors by name (what a checkpoint stores), detached fp32 CPU copies."""
        out = {}
        for name in ("visual_prompts", "text_prompts"):
            p = getattr(self, name)
            if p is not None:
                out[name] = p.detach().float().cpu().contiguous().clone()
        return out

    def load_prompt_state_dict(self, tensors: Dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Strictly load prompt tensors; every missing, unexpected or mis-shaped tensor is named."""
        expected = {n: getattr(self, n) for n in ("visual_prompts", "text_prompts") if getattr(self, n) is not None}
        problems = [f"missing tensor {n!r} {tuple(p.shape)}" for n, p in expected.items() if n not in tensors]
        problems += [f"unexpected tensor {n!r}" for n in tensors if n not in expected]
        problems += [f"tensor {n!r} has shape {tuple(tensors[n].shape)}, model expects {tuple(p.shape)}"
                     for n, p in expected.items() if n in tensors and tuple(tensors[n].shape) != tuple(p.shape)]
        if problems:
            raise ValueError(f"{source}: prompts do not match the model: " + "; ".join(problems))
        with torch.no_grad():
            for n, p in expected.items():
                p.copy_(tensors[n].to(device=p.device, dtype=p.dtype))

    def config_dict(self) -> dict:
        """Method configuration stored in checkpoints."""
        return self.prompt_config.to_dict()

    def base_signature(self) -> dict:
        """Shape facts of the frozen base model; checkpoints are refused on a mismatch."""
        return base_signature(self.clip)

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
        if isinstance(text, str):
            text = [text]
        if isinstance(text, torch.Tensor):
            tokens = text.long()
            if tokens.ndim != 2:
                raise ValueError(f"token input must be (B, L), got shape {tuple(tokens.shape)}")
        else:
            tokens = self.tokenizer(list(text))
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

    # ------------------------------------------------------------------ CLIP-style forward
    def forward(self, images: Optional[torch.Tensor] = None, text: Optional[TextInput] = None):
        """Like open_clip: (normalised image features, normalised text features, logit_scale.exp())."""
        image_features = self.encode_image(images, normalize=True) if images is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        return image_features, text_features, self.clip.logit_scale.exp()

    def extra_repr(self) -> str:
        c = self.prompt_config
        return (f"model={self.model_name!r}, visual={c.visual_tokens}x{c.visual_depth}, "
                f"text={c.text_tokens}x{c.text_depth}, trainable={sum(p.numel() for p in self.prompt_parameters())}")
