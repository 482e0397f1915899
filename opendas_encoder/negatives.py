"""Negative-query tooling: the paper's instruction for language models, and offline mining by CLIP text similarity."""

from __future__ import annotations

from typing import Dict, Iterable, List, Sequence

import torch

from .vocab import normalize_name

#: The instruction of the paper's Appendix C, verbatim, for users who generate negatives with an LLM.
APPENDIX_C_INSTRUCTION = (
    "Your task is to produce five distinct examples for each class provided in the list, ensuring that the "
    "examples are not subcategories of each other but rather represent clear and separate entities within the "
    "same class. This means that each example should not be a subset or type of another example within the same "
    "category. The objective is to create similar examples that might be confused by a machine learning model but "
    "remain discernible to a human observer to be used as clear negative examples for triplet loss training. The "
    "output format should be a Python dictionary for easy integration."
)


def llm_prompt(classes: Sequence[str]) -> str:
    """The full prompt to paste into a language model for ``classes``."""
    return APPENDIX_C_INSTRUCTION + "\n\nClasses: " + ", ".join(f'"{c}"' for c in classes)


@torch.no_grad()
def mine_negatives(encoder, classes: Sequence[str], candidates: Iterable[str], per_class: int = 5,
                   exclude: Iterable[str] = ()) -> Dict[str, List[str]]:
    """For each class, the ``per_class`` candidates whose CLIP text embeddings are most similar.

    encoder: any encoder of the package (``encode_text(names, normalize=True)`` wraps names in its own
    prompt); zero-shot CLIP (``create_encoder("zeroshot", ...)``) is the natural choice. Candidates equal to a class (case-insensitive), duplicates and
    ``exclude`` (e.g. the novel test classes) are never proposed.
    """
    banned = {normalize_name(c) for c in classes} | {normalize_name(e) for e in exclude}
    pool, seen = [], set()
    for c in candidates:
        key = normalize_name(c)
        if c.strip() and key not in banned and key not in seen:
            seen.add(key)
            pool.append(c.strip())
    if len(pool) < per_class:
        raise ValueError(f"only {len(pool)} usable candidates for {per_class} negatives per class")
    enc = lambda names: encoder.encode_text(list(names), normalize=True).float()  # noqa: E731
    cls_emb = enc(list(classes))
    cand_emb = torch.cat([enc(pool[i:i + 256]) for i in range(0, len(pool), 256)])
    top = (cls_emb @ cand_emb.T).topk(per_class, dim=1).indices
    return {c: [pool[j] for j in row] for c, row in zip(classes, top.tolist())}
