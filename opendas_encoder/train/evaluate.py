"""Segment classification over a test vocabulary, and its metrics (Acc, W-F1, B-F1, N-F1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
from tqdm.auto import tqdm

from ..config import PromptConfig
from ..metrics import classification_metrics
from ..prompted_clip import PromptedCLIP
from ..vocab import Vocabulary
from .data import PreparedSegments

#: The hand-crafted prompt of zero-shot CLIP (the same words the learned context starts from).
ZERO_SHOT_TEMPLATE = "a photo of a {}"


def zero_shot_encoder(model) -> PromptedCLIP:
    """Vanilla CLIP (no prompts) over the same frozen open_clip model, with the same tokenizer/preprocess."""
    return PromptedCLIP(model.clip, PromptConfig(visual_tokens=0, text_tokens=0, text_init=""),
                        tokenizer=model.tokenizer, preprocess=model.preprocess,
                        model_name=model.model_name, pretrained=model.pretrained, freeze_base=False)


@dataclass
class EvalResult:
    metrics: dict
    y_true: List[str]
    y_pred: List[str]
    class_names: List[str]
    text_features: torch.Tensor  # (C, D) normalised, CPU


@torch.no_grad()
def class_scores(model, images: torch.Tensor, class_texts: List[str], device, batch_size: int = 64,
                 progress: bool = False) -> torch.Tensor:
    """Logits (N, C) of preprocessed images (N, 3, S, S) against class texts."""
    model.eval()
    model.to(device)
    tokens = model.tokenizer(class_texts) if getattr(model, "tokenizer", None) is not None else class_texts
    conditioned = bool(getattr(model, "image_conditioned_text", False))
    text = None if conditioned else model.encode_text(tokens, normalize=True).float()
    scale = model.logit_scale.exp().float()
    out = []
    for start in tqdm(range(0, images.shape[0], batch_size), desc="classify", disable=not progress, leave=False):
        batch = images[start:start + batch_size].to(device)
        if conditioned:
            out.append(model.compute_logits(batch, tokens).float().cpu())
        else:
            out.append((scale * model.encode_image(batch, normalize=True).float() @ text.T).cpu())
    return torch.cat(out)


@torch.no_grad()
def evaluate(model, test: PreparedSegments, vocab: Vocabulary, device="cpu", template: Optional[str] = None,
             batch_size: int = 64, progress: bool = False) -> EvalResult:
    """Classify every test segment among ``vocab.test``; metrics with base / novel splits.

    ``template`` formats each class name (zero-shot CLIP uses ``ZERO_SHOT_TEMPLATE``); adapted
    encoders take bare class names (their learned context replaces the template).
    """
    names = list(vocab.test)
    texts = [template.format(c) for c in names] if template else names
    logits = class_scores(model, test.images, texts, device, batch_size, progress)
    y_pred = [names[i] for i in logits.argmax(dim=1).tolist()]
    y_true = test.label_strings()
    metrics = classification_metrics(y_true, y_pred, vocab.test_base, vocab.novel, labels=names)
    tokens = model.tokenizer(texts) if getattr(model, "tokenizer", None) is not None else texts
    text_features = model.encode_text(tokens, normalize=True).float().cpu() \
        if not getattr(model, "image_conditioned_text", False) else torch.empty(0)
    return EvalResult(metrics, y_true, y_pred, names, text_features)
