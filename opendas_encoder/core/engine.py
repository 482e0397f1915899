"""The prompted-tower engine: the one forward pass every prompt method runs.

A method says *what* its learned tokens are; the engine puts them *where* the description says,
driving open_clip's own submodules (patch embedding ``VisionTransformer._embeds``, residual blocks,
``_pool`` / ``ln_post`` / ``proj``, token embedding, ``ln_final``, ``text_projection``,
``text_global_pool``). Nothing of open_clip is forked and nothing here branches on a method.

Vision (deep visual prompts, VPT-deep / IVLP / MaPLe / OpenDAS), over an open_clip or timm ViT
(:class:`~.towers.VisionTowerView`): ``prompts_at(i)`` gives P tokens
placed after the N original tokens (class token + patches) at the input of block ``i``, replacing
the previous block's outputs there; None keeps them. **Convention for every method:** layer-0
prompts pass through ``ln_pre`` together with the patch tokens (they are concatenated before the
pre-norm in the VPT, MaPLe/IVLP and RPO reference code); deeper prompts enter as they are. Prompt
outputs never enter the image pooling.

Text (deep text context, CoOp / MaPLe / OpenDAS): the template (see :mod:`.tokens`) leaves K context
positions right after the start token (position 1.. for CLIP, 0.. for SigLIP, which has none);
``context_at(i)`` replaces them at the input of block ``i``
(layer 0: the token embeddings, before positional embeddings are added; deeper: the previous
block's outputs). Features are pooled at the end-of-text token. For a causal tower the padding after
the last end-of-text token is cut first (exact: nothing attends to later positions).

Without autograd (inference, evaluation, cached features) prompts and context are written into the
previous block's output in place (:func:`insert_tokens`) rather than into a new sequence per layer;
under autograd the sequence is rebuilt, since the blocks saved it for their backward. Same features
bit for bit (tested).
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .tokens import trim_after_end_of_text
from .towers import TextTowerView, VisionTowerView

#: layer index -> tokens (P, W) or (B, P, W) inserted at the input of that layer, or None
LayerTokens = Callable[[int], Optional[torch.Tensor]]


def _batched(tokens: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
    tokens = tokens.to(dtype)
    return tokens.unsqueeze(0).expand(batch, -1, -1) if tokens.ndim == 2 else tokens


def _writable_in_place(x: torch.Tensor, tokens: torch.Tensor) -> bool:
    """True when ``tokens`` may be written into ``x`` in place: autograd records nothing here (inference,
    evaluation, frozen towers). Under autograd the sequence is rebuilt (``torch.cat``), since the blocks
    saved ``x`` for their backward."""
    return not (torch.is_grad_enabled() and (x.requires_grad or tokens.requires_grad))


def insert_tokens(x: torch.Tensor, tokens: torch.Tensor, start: int, keep_rest: bool = True) -> torch.Tensor:
    """(B, L, W) with ``tokens`` (K, W) or (B, K, W) at positions start..start+K-1; what followed them
    stays (``keep_rest``, text context) or is dropped (vision: the prompts replace everything after the
    original tokens). Without autograd, when the positions exist, they are overwritten in ``x`` itself
    (a block's fresh output, owned by the engine): no new sequence per layer."""
    tokens = tokens.to(x.dtype)
    end = start + tokens.shape[-2]
    fits = end <= x.shape[1] if keep_rest else end == x.shape[1]
    if fits and _writable_in_place(x, tokens):
        x[:, start:end] = tokens
        return x
    rest = x[:, end:] if keep_rest else x[:, :0]
    return torch.cat([x[:, :start], _batched(tokens, x.shape[0], x.dtype), rest], dim=1)


def run_block(block: nn.Module, x: torch.Tensor, attn_mask: Optional[torch.Tensor], use_ckpt: bool) -> torch.Tensor:
    """One residual block (through activation checkpointing when the tower has it on and x needs grad)."""
    def call(t):
        return block(t, attn_mask=attn_mask) if attn_mask is not None else block(t)

    if use_ckpt and x.requires_grad:
        return checkpoint(call, x, use_reentrant=False)
    return call(x)


# ---------------------------------------------------------------------------------------------- vision
def run_vision(visual: nn.Module, images: torch.Tensor, prompts_at: Optional[LayerTokens] = None,
               attn_mask: Optional[torch.Tensor] = None, layer0_ln_pre: bool = True) -> Tuple[torch.Tensor, int]:
    """images (B, 3, H, W) -> (every block-output token (B, N + P, W), N original tokens).

    ``visual`` is an open_clip or timm ViT tower (:class:`VisionTowerView`). ``attn_mask`` (N + P, N + P),
    additive, is given to every block (RPO's read-only prompts). ``layer0_ln_pre=False`` exists only to
    reproduce OpenDAS checkpoints of format 1, whose layer-0 prompts skipped ``ln_pre``.
    """
    tower = VisionTowerView.of(visual)
    use_ckpt = tower.grad_checkpointing
    x = tower.embed(images)
    n_tokens = x.shape[1]
    for i, block in enumerate(tower.blocks):
        prompts = prompts_at(i) if prompts_at is not None else None
        if prompts is not None:
            prompts = _batched(prompts, x.shape[0], x.dtype)
            if i == 0 and layer0_ln_pre:
                prompts = tower.pre_norm(prompts)
            x = insert_tokens(x, prompts, n_tokens, keep_rest=False)
        x = run_block(block, x, attn_mask, use_ckpt)
    return x, n_tokens


def pool_image(visual: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Original output tokens (B, N, W) -> image features (B, D), the tower's own pooling and projection."""
    return VisionTowerView.of(visual).pool(tokens)


def encode_image(visual: nn.Module, images: torch.Tensor, prompts_at: Optional[LayerTokens] = None,
                 layer0_ln_pre: bool = True) -> torch.Tensor:
    """images (B, 3, H, W) -> image features (B, D) with deep visual prompts (never pooled)."""
    x, n = run_vision(visual, images, prompts_at, layer0_ln_pre=layer0_ln_pre)
    return pool_image(visual, x[:, :n])


def project_visual_tokens(visual: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Any output tokens (..., W) -> final norm and projection (..., D), as for the class token."""
    return VisionTowerView.of(visual).project_tokens(tokens)


# ---------------------------------------------------------------------------------------------- text
def replace_context(x: torch.Tensor, context: torch.Tensor, start: int = 1) -> torch.Tensor:
    """Hidden states (B, L, W) with positions start..start+K-1 replaced by ``context`` (K, W) or (B, K, W)
    (in place when autograd records nothing, see :func:`insert_tokens`)."""
    return insert_tokens(x, context, start)


def embed_text(view: TextTowerView, tokens: torch.Tensor, context: Optional[torch.Tensor] = None,
               start: int = 1) -> torch.Tensor:
    """Token ids (B, L) -> input embeddings (B, L, W): ``context`` after the start tokens, then positions."""
    cast_dtype = view.transformer.get_cast_dtype()
    x = view.token_embedding(tokens).to(cast_dtype)
    if context is not None:
        x = replace_context(x, context, start)
    return x + view.positional_embedding[:tokens.shape[1]].to(cast_dtype)


def causal_mask(view: TextTowerView, length: int) -> Optional[torch.Tensor]:
    """The text tower's additive causal mask cut to ``length`` (None if it has none)."""
    return view.attn_mask[:length, :length] if view.attn_mask is not None else None


def run_text_blocks(view: TextTowerView, x: torch.Tensor, attn_mask: Optional[torch.Tensor],
                    context_at: Optional[LayerTokens] = None, start: int = 1) -> torch.Tensor:
    """Run every text block on (B, L, W); ``context_at(i)`` for i >= 1 replaces the context positions first."""
    use_ckpt = bool(getattr(view.transformer, "grad_checkpointing", False))
    for i, block in enumerate(view.transformer.resblocks):
        context = context_at(i) if (context_at is not None and i > 0) else None
        if context is not None:
            x = replace_context(x, context, start)
        x = run_block(block, x, attn_mask, use_ckpt)
    return x


def project_text_tokens(view: TextTowerView, tokens: torch.Tensor) -> torch.Tensor:
    """Hidden states (..., W) after ``ln_final`` -> text projection (..., D)."""
    proj = view.text_projection
    if proj is None:
        return tokens
    return proj(tokens) if isinstance(proj, nn.Module) else tokens @ proj


def pool_text(view: TextTowerView, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Block outputs (B, L, W) -> ``ln_final``, pooled at the end-of-text token, projected (B, D)."""
    from open_clip.transformer import text_global_pool

    x = view.ln_final(x)
    pooled = text_global_pool(x, tokens, pool_type=view.pool_type, eos_token_id=view.eos_id)
    return project_text_tokens(view, pooled)


def encode_text(view: TextTowerView, tokens: torch.Tensor, context_at: Optional[LayerTokens] = None,
                start: int = 1) -> torch.Tensor:
    """Template token ids (B, L) -> text features (B, D) with deep context at ``start``.. (see the module
    docstring; ``start`` is the template's ``context_start``: 1 after CLIP's start token, 0 for SigLIP)."""
    tokens = trim_after_end_of_text(tokens.to(view.token_embedding.weight.device), view)
    x = embed_text(view, tokens, context_at(0) if context_at is not None else None, start)
    x = run_text_blocks(view, x, causal_mask(view, tokens.shape[1]), context_at, start)
    return pool_text(view, x, tokens)
