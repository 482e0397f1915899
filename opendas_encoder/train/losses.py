"""Losses of OpenDAS: cross-entropy over the label space and the hard-negative triplet loss.

All embeddings are L2-normalised; distances are Euclidean (as ``torch.nn.TripletMarginLoss``), so
for unit vectors ``d = sqrt(2 - 2 cos)`` and the paper's margin 1.5 lies inside the range [0, 2].
"""

from __future__ import annotations

from typing import Tuple

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


def opendas_text_loss(image_features: torch.Tensor, text_features: torch.Tensor, labels: torch.Tensor,
                      logit_scale: torch.Tensor, triplet_lambda: float, margin: float = 1.5
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stage-2 objective: CE(logits over label space) + lambda * triplet(anchor, positive, hardest negative).

    image_features: (B, D) normalised; text_features: (Q, D) normalised; labels: (B,) in [0, Q).
    Returns (total, ce, triplet).
    """
    logits = logit_scale * image_features @ text_features.T
    ce = F.cross_entropy(logits, labels)
    neg_idx = hardest_negatives(image_features.detach(), text_features.detach(), labels)
    trip = triplet_loss(image_features, text_features[labels], text_features[neg_idx], margin)
    return ce + triplet_lambda * trip, ce, trip
