"""Learnable text context initialised from a phrase (CoOp-family): shared by CoCoOp and MaPLe."""

from __future__ import annotations

import torch

from ..core.tokens import TemplateTokenizer
from ..core.towers import TextTowerView


def context_template(tokenizer, n_ctx: int, ctx_init: str, suffix: str, owner: str) -> TemplateTokenizer:
    """The template ``"<ctx_init> <name><suffix>"`` whose first ``n_ctx`` prefix tokens are learned.

    ``ctx_init`` "" gives ``n_ctx`` placeholder words ("X X ..."), replaced by random context.
    Prefix tokens after the first ``n_ctx`` stay fixed text (MaPLe learns "a photo" of "a photo of a").
    """
    prefix = ctx_init.strip() or " ".join(["X"] * n_ctx)
    template = TemplateTokenizer(tokenizer, prefix=prefix, suffix=suffix)
    if len(template.prefix_ids) < n_ctx:
        raise ValueError(f"{owner}: ctx_init {ctx_init!r} has {len(template.prefix_ids)} tokens but n_ctx={n_ctx}; "
                         "use a longer phrase, fewer context tokens, or ctx_init='' (random)")
    return template


def initial_context(view: TextTowerView, template: TemplateTokenizer, n_ctx: int, ctx_init: str,
                    init_std: float) -> torch.Tensor:
    """(n_ctx, text width) fp32: embeddings of the first ``n_ctx`` prefix tokens, or N(0, init_std^2)."""
    weight = view.token_embedding.weight
    if not ctx_init.strip():
        return torch.empty(n_ctx, weight.shape[1], device=weight.device).normal_(std=init_std)
    ids = torch.tensor(template.prefix_ids[:n_ctx], device=weight.device)
    return weight.detach()[ids].float().clone()
