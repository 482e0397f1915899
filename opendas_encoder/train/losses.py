"""Losses of OpenDAS: cross-entropy over the label space, the hard-negative triplet loss, and the
consistency terms toward the frozen CLIP (an option, off in the paper).

All embeddings are L2-normalised. Triplet distances are Euclidean by default (the paper's, as
``torch.nn.TripletMarginLoss``): for unit vectors ``d = sqrt(2 - 2 cos)`` in [0, 2], so the paper's
margin 1.5 keeps the hinge active for almost every triplet; ``distance="cosine"`` uses ``1 - cos``
(also in [0, 2]) through ``torch.nn.functional.triplet_margin_with_distance_loss``.

Consistency (PromptSRC, Khattak et al. 2023; KgCoOp, Yao et al. 2023): the adapted features and
logits are pulled toward those of the same frozen open_clip model without prompts (zero-shot CLIP):
:func:`feature_consistency` (L1, PromptSRC's, or cosine distance) and :func:`logit_consistency`
(KL divergence of the adapted from the zero-shot class distribution).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def hardest_negatives(anchors: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Index of the hardest negative query for each anchor (online mining, paper Sec. 4.4).

    anchors: (B, D) normalised image embeddings; text_features: (Q, D) normalised embeddings of the
    label space (base classes then negative queries); labels: (B,) index of each anchor's class.
    Returns (B,) indices: the query closest to the anchor (smallest Euclidean distance = largest
    cosine) among all queries except the anchor's own class.
    """
    sims = anchors @ text_features.T  # (B, Q)
    sims = sims.masked_fill(F.one_hot(labels, text_features.shape[0]).bool(), float("-inf"))
    return sims.argmax(dim=1)


def triplet_loss(anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, margin: float = 1.5,
                 eps: float = 1e-6) -> torch.Tensor:
    """Mean of ``max(0, ||a - p|| - ||a - n|| + margin)`` over the batch (all inputs (B, D))."""
    d_pos = (anchors - positives + eps).norm(dim=-1)
    d_neg = (anchors - negatives + eps).norm(dim=-1)
    return F.relu(d_pos - d_neg + margin).mean()


TRIPLET_DISTANCES = ("euclidean", "cosine")


def cosine_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``1 - cos(x, y)`` along the last dimension (0 for parallel, 1 for orthogonal, 2 for opposite)."""
    return 1.0 - F.cosine_similarity(x, y, dim=-1)


def triplet_term(anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, margin: float = 1.5,
                 distance: str = "euclidean") -> torch.Tensor:
    """The triplet loss with the configured distance: ``euclidean`` (:func:`triplet_loss`, the paper's)
    or ``cosine`` (``1 - cos``, torch's ``triplet_margin_with_distance_loss``)."""
    if distance == "euclidean":
        return triplet_loss(anchors, positives, negatives, margin)
    if distance == "cosine":
        return F.triplet_margin_with_distance_loss(anchors, positives, negatives, distance_function=cosine_distance,
                                                   margin=margin)
    raise ValueError(f"unknown triplet distance {distance!r}; known: {TRIPLET_DISTANCES}")


def opendas_text_loss(image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor,
                      logit_scale: torch.Tensor, triplet_lambda: float, margin: float = 1.5,
                      distance: str = "euclidean") -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stage-2 objective: CE(logits over label space) + lambda * triplet(anchor, positive, hardest negative).

    image_features: (B, D) normalised; text_features: (Q, D) normalised; labels: (B,) in [0, Q).
    Returns (total, ce, triplet).
    """
    logits = logit_scale * image_features @ text_features.T
    ce = F.cross_entropy(logits, labels)
    neg_idx = hardest_negatives(image_features.detach(), text_features.detach(), labels)
    trip = triplet_term(image_features, text_features[labels], text_features[neg_idx], margin, distance)
    return ce + triplet_lambda * trip, ce, trip


# ---------------------------------------------------------------- consistency toward the frozen CLIP
FEATURE_DISTANCES = ("l1", "cosine")


def feature_consistency(adapted: torch.Tensor, frozen: torch.Tensor, distance: str = "l1") -> torch.Tensor:
    """Distance of adapted from frozen features, both (N, D) normalised; a scalar.

    ``l1``: mean absolute difference over all N * D entries (PromptSRC's ``F.l1_loss``, reduction mean);
    ``cosine``: mean over the N rows of ``1 - cos(adapted, frozen)``.
    """
    if adapted.shape != frozen.shape:
        raise ValueError(f"feature_consistency: shapes differ, {tuple(adapted.shape)} vs {tuple(frozen.shape)}")
    if distance == "l1":
        return F.l1_loss(adapted, frozen)
    if distance == "cosine":
        return cosine_distance(adapted, frozen).mean()
    raise ValueError(f"unknown consistency distance {distance!r}; known: {FEATURE_DISTANCES}")


KL_REDUCTIONS = ("batchmean", "per-logit")


def logit_consistency(logits: torch.Tensor, frozen_logits: torch.Tensor, reduction: str = "batchmean") -> torch.Tensor:
    """KL(p_frozen || p_adapted) of the softmax class distributions; logits (B, C).

    The direction of PromptSRC's term (``F.kl_div(log p_adapted, log p_frozen, log_target=True)``).
    ``batchmean``: mean over the batch of the per-sample KL divergence; ``per-logit``: the sum divided by
    B x C, PromptSRC's (``reduction="sum"`` then ``/ logits.numel()``), i.e. ``batchmean / C``.
    """
    if reduction not in KL_REDUCTIONS:
        raise ValueError(f"unknown KL reduction {reduction!r}; known: {KL_REDUCTIONS}")
    kl = F.kl_div(F.log_softmax(logits, dim=-1), F.log_softmax(frozen_logits, dim=-1), reduction="batchmean",
                  log_target=True)
    return kl / logits.shape[-1] if reduction == "per-logit" else kl


def consistency_loss(weights: Tuple[float, float, float], distance: str, image_features: torch.Tensor,
                     text_features: torch.Tensor, logit_scale: torch.Tensor,
                     frozen_image: Optional[torch.Tensor], frozen_text: Optional[torch.Tensor],
                     kl_reduction: str = "batchmean") -> torch.Tensor:
    """``w_text * d(text, frozen text) + w_image * d(image, frozen image) + w_logits * KL(frozen || adapted)``.

    weights: (text, image, logits); a zero weight skips its term (its frozen input may then be None).
    image_features (B, D) and frozen_image (B, D): the batch; text_features and frozen_text (Q, D): the
    label space. Logits are ``logit_scale * image @ text.T`` on both sides; ``kl_reduction`` as
    :func:`logit_consistency`.
    """
    w_text, w_image, w_logits = weights
    zero = image_features.new_zeros(())
    total = zero
    if w_text:
        total = total + w_text * feature_consistency(text_features, frozen_text, distance)
    if w_image:
        total = total + w_image * feature_consistency(image_features, frozen_image, distance)
    if w_logits:
        total = total + w_logits * logit_consistency(logit_scale * image_features @ text_features.T,
                                                     logit_scale * frozen_image @ frozen_text.T, kl_reduction)
    return total
