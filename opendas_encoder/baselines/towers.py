"""Forward passes over open_clip's own tower submodules, with hooks where baselines insert tokens.

Nothing of open_clip is forked: the functions call its patch embedding (``VisionTransformer._embeds``),
its residual blocks, ``ln_post`` / ``proj``, its token embedding, ``ln_final``, ``text_projection`` and
``text_global_pool``. Every baseline drives its forward through these few functions, so the backbone
never branches on a method's name.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..towers import TextTowerView, UnsupportedModelError, _pool_text, _run_block, as_token_ids

#: layer index -> tokens (P, W) or (B, P, W) inserted at the input of that layer, or None
LayerTokens = Callable[[int], Optional[torch.Tensor]]


def _batched(tokens: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
    tokens = tokens.to(dtype)
    return tokens.unsqueeze(0).expand(batch, -1, -1) if tokens.ndim == 2 else tokens


# ---------------------------------------------------------------------------------------------- vision
def run_vision(visual: nn.Module, images: torch.Tensor, prompts_at: Optional[LayerTokens] = None,
               attn_mask: Optional[torch.Tensor] = None, first_through_ln_pre: bool = True
               ) -> Tuple[torch.Tensor, int]:
    """Run the vision transformer with appended prompt tokens.

    images (B, 3, H, W) -> (all output tokens (B, N + P, W), N), N = 1 + grid**2 original tokens.
    ``prompts_at(i)`` gives the P tokens placed after the original ones at the input of block ``i``
    (replacing the previous block's outputs there); None keeps them. Layer-0 prompts pass through
    ``ln_pre`` like the patch tokens when ``first_through_ln_pre`` (they are concatenated before the
    pre-norm in the original VPT / MaPLe / RPO code). ``attn_mask`` (N + P, N + P) is additive.
    """
    if not getattr(visual.transformer, "batch_first", True):
        raise UnsupportedModelError("sequence-first open_clip transformers are not supported")
    use_ckpt = bool(getattr(visual.transformer, "grad_checkpointing", False))
    x = visual._embeds(images)
    n_tokens = x.shape[1]
    for i, block in enumerate(visual.transformer.resblocks):
        prompts = prompts_at(i) if prompts_at is not None else None
        if prompts is not None:
            prompts = _batched(prompts, x.shape[0], x.dtype)
            if i == 0 and first_through_ln_pre:
                prompts = visual.ln_pre(prompts)
            x = torch.cat([x[:, :n_tokens], prompts], dim=1)
        x = _run_block(block, x, attn_mask, use_ckpt)
    return x, n_tokens


def pool_image(visual: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Original output tokens (B, N, W) -> projected image features (B, D), open_clip's pooling."""
    pooled, _ = visual._pool(tokens)
    return pooled @ visual.proj if visual.proj is not None else pooled


def project_visual_tokens(visual: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Any output tokens (..., W) -> ``ln_post`` and projection (..., D), as for the class token."""
    tokens = visual.ln_post(tokens)
    return tokens @ visual.proj if visual.proj is not None else tokens


# ---------------------------------------------------------------------------------------------- text
def embed_text(view: TextTowerView, tokens: torch.Tensor,
               context: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Token ids (B, L) -> input embeddings (B, L, W) with positional embeddings added.

    ``context`` (K, W) or (B, K, W) replaces the token embeddings at positions 1..K (right after the
    start token) before the positional embeddings are added, as in CoOp.
    """
    cast_dtype = view.transformer.get_cast_dtype()
    x = view.token_embedding(tokens).to(cast_dtype)
    if context is not None:
        x = replace_context(x, context)
    return x + view.positional_embedding[:tokens.shape[1]].to(cast_dtype)


def replace_context(x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Hidden states (B, L, W) with positions 1..K replaced by ``context`` (K, W) or (B, K, W)."""
    ctx = _batched(context, x.shape[0], x.dtype)
    return torch.cat([x[:, :1], ctx, x[:, 1 + ctx.shape[1]:]], dim=1)


def causal_mask(view: TextTowerView, length: int) -> Optional[torch.Tensor]:
    """The text tower's additive causal mask cut to ``length`` (None if it has none)."""
    return view.attn_mask[:length, :length] if view.attn_mask is not None else None


def run_text_blocks(view: TextTowerView, x: torch.Tensor, attn_mask: Optional[torch.Tensor],
                    context_at: Optional[LayerTokens] = None) -> torch.Tensor:
    """Run every text block on (B, L, W); ``context_at(i)`` for i >= 1 replaces positions 1..K first."""
    use_ckpt = bool(getattr(view.transformer, "grad_checkpointing", False))
    for i, block in enumerate(view.transformer.resblocks):
        context = context_at(i) if (context_at is not None and i > 0) else None
        if context is not None:
            x = replace_context(x, context)
        x = _run_block(block, x, attn_mask, use_ckpt)
    return x


def project_text_tokens(view: TextTowerView, tokens: torch.Tensor) -> torch.Tensor:
    """Hidden states (..., W) after ``ln_final`` -> text projection (..., D)."""
    proj = view.text_projection
    if proj is None:
        return tokens
    return proj(tokens) if isinstance(proj, nn.Module) else tokens @ proj


def run_text(view: TextTowerView, tokens: torch.Tensor, context_at: Optional[LayerTokens] = None) -> torch.Tensor:
    """Token ids (B, L) -> text features (B, D), pooled at the end-of-text token.

    ``context_at(i)`` gives the context (K, W) or (B, K, W) at positions 1..K of layer ``i``
    (layer 0: token embeddings; deeper: replaces the previous layer's outputs); None keeps them.
    """
    tokens = tokens.to(view.token_embedding.weight.device)
    x = embed_text(view, tokens, context_at(0) if context_at is not None else None)
    x = run_text_blocks(view, x, causal_mask(view, tokens.shape[1]), context_at)
    x = view.ln_final(x)
    return project_text_tokens(view, _pool_text(x, tokens, view.pool_type, view.eos_id))


# ---------------------------------------------------------------------------------------------- templates
class TemplateTokenizer:
    """Bare class names (or tokenizer ids) -> ids of ``"<prefix> <name><suffix>"``.

    The prefix holds the context slots (e.g. "a photo of a": CoCoOp learns all four, MaPLe the first
    two) and the suffix is the closing text ("." in CoOp-family code). Token-id input (B, L) from the
    tokenizer is rewrapped the same way, so ``["chair"]`` and ``tokenizer(["chair"])`` give equal ids.
    Names too long for the context length are cut; the end-of-text token is always kept.
    """

    def __init__(self, tokenizer, prefix: str = "", suffix: str = ""):
        self.tokenizer = tokenizer
        self.prefix = prefix
        self.suffix = suffix
        self.prefix_ids = self._inner_ids(prefix)
        self.suffix_ids = self._inner_ids(suffix)

    def _inner_ids(self, phrase: str) -> List[int]:
        if not phrase.strip():
            return []
        tokens = self.tokenizer([phrase])[0]
        return tokens[1:int(tokens.argmax())].tolist()

    def __call__(self, text: Union[str, Sequence[str], torch.Tensor]) -> torch.Tensor:
        tokens = as_token_ids(text, self.tokenizer)
        if not self.prefix_ids and not self.suffix_ids:
            return tokens
        length = tokens.shape[1]
        room = length - 2 - len(self.prefix_ids) - len(self.suffix_ids)
        if room < 0:
            raise ValueError(f"template {self.prefix!r} ... {self.suffix!r} does not fit the context length {length}")
        out = torch.zeros_like(tokens)
        eot = tokens.argmax(dim=1)
        for b in range(tokens.shape[0]):
            name = tokens[b, 1:int(eot[b])].tolist()[:room]
            row = [int(tokens[b, 0])] + self.prefix_ids + name + self.suffix_ids + [int(tokens[b, eot[b]])]
            out[b, :len(row)] = torch.tensor(row, dtype=tokens.dtype)
        return out
