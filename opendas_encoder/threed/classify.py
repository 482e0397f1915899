"""Open-vocabulary classification of mask features with text queries."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

#: OpenMask3D's query sentence for plain CLIP ("a {} in a scene"); the OpenDAS encoder takes bare names.
OPENMASK3D_TEMPLATE = "a {} in a scene"


@torch.no_grad()
def encode_queries(encoder, class_names: Sequence[str], template: Optional[str] = None,
                   batch_size: int = 256) -> np.ndarray:
    """L2-normalised text embeddings float32 (C, D) of the class names.

    ``template`` (e.g. :data:`OPENMASK3D_TEMPLATE`) is applied for a plain CLIP encoder; pass None
    for an OpenDAS encoder, whose learned context replaces hand-written templates.
    """
    texts = [template.format(c) if template else c for c in class_names]
    if not texts:
        raise ValueError("no class names to encode")
    chunks = []
    for start in range(0, len(texts), batch_size):
        emb = encoder.encode_text(texts[start:start + batch_size]).float()
        chunks.append(torch.nn.functional.normalize(emb, dim=-1).cpu())
    return torch.cat(chunks).numpy()


def classify_masks(mask_features: np.ndarray, query_features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Class index (K,) and cosine similarity (K,) of the best query for each mask.

    mask_features: (K, D) (normalised here; zero rows give similarity 0 and class 0, as OpenMask3D
    does); query_features: (C, D) L2-normalised.
    """
    feats = np.asarray(mask_features, dtype=np.float64)
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    feats = np.divide(feats, norms, out=np.zeros_like(feats), where=norms > 0)
    sims = feats @ np.asarray(query_features, dtype=np.float64).T
    best = np.argmax(sims, axis=1) if sims.shape[0] else np.zeros(0, dtype=np.int64)
    return best.astype(np.int64), sims[np.arange(len(best)), best].astype(np.float32)
