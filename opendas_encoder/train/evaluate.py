"""Segment classification over a test vocabulary, and its metrics (Acc, W-F1, B-F1, N-F1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List

import torch
from tqdm.auto import tqdm

from ..metrics import classification_metrics
from ..core.tokens import ZERO_SHOT_TEMPLATE
from ..methods.zeroshot import ZeroShotCLIP, ZeroShotConfig
from ..vocab import Vocabulary
from .data import PreparedSegments

__all__ = ["ZERO_SHOT_TEMPLATE", "EvalResult", "class_scores", "evaluate", "template_ensemble_features",
           "zero_shot_encoder"]


def zero_shot_encoder(model) -> ZeroShotCLIP:
    """Zero-shot CLIP ("a photo of a {}.") over the same open_clip model, tokenizer and preprocess."""
    return ZeroShotCLIP(model.clip, tokenizer=model.tokenizer, preprocess=model.preprocess,
                        model_name=model.model_name, pretrained=model.pretrained, freeze_base=False)


@torch.no_grad()
def template_ensemble_features(encoder, names: List[str], templates=None) -> torch.Tensor:
    """Zero-shot text features (C, D), normalised, of the mean over ``templates`` of each name's unnormalised
    features (PromptSRC's textual diversity; CLIP's prompt ensembling). ``templates``: strings with one
    "{}" (default: OpenAI's 80 ImageNet templates, ``open_clip.zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES``).

    ``encoder``: a zero-shot encoder (its open_clip model, tokenizer and preprocess are reused).
    """
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    if templates is None:
        templates = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    total = None
    for template in templates:
        view = ZeroShotCLIP(encoder.clip, ZeroShotConfig(template=template), tokenizer=encoder.tokenizer,
                            preprocess=encoder.preprocess, freeze_base=False)
        features = view.encode_text(list(names)).float()
        total = features if total is None else total + features
    return torch.nn.functional.normalize(total / len(templates), dim=-1)


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
    tokens = model.tokenizer(class_texts)
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
def evaluate(model, test: PreparedSegments, vocab: Vocabulary, device="cpu", batch_size: int = 64,
             progress: bool = False) -> EvalResult:
    """Classify every test segment among ``vocab.test``; metrics with base / novel splits.

    Every encoder takes bare class names and wraps them in its own prompt (zero-shot CLIP: the
    template ``ZERO_SHOT_TEMPLATE``; adapted encoders: their learned context).
    """
    names = list(vocab.test)
    logits = class_scores(model, test.images, names, device, batch_size, progress)
    y_pred = [names[i] for i in logits.argmax(dim=1).tolist()]
    y_true = test.label_strings()
    metrics = classification_metrics(y_true, y_pred, vocab.test_base, vocab.novel, labels=names)
    text_features = model.encode_text(names, normalize=True).float().cpu() \
        if not getattr(model, "image_conditioned_text", False) else torch.empty(0)
    return EvalResult(metrics, y_true, y_pred, names, text_features)
