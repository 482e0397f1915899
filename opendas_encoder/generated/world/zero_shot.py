"""Zero-shot accuracy of an open_clip model on the generated world (source images, target segments)."""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ...data.segments import SegmentDataset, crop_segment
from .attributes import all_kinds
from .source import render_source_sample

#: Prompt used for zero-shot classification (the text prompts of OpenDAS start from it too).
ZERO_SHOT_TEMPLATE = "a photo of a {}."


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_class_names(model, tokenizer, class_names: Sequence[str], template: str = ZERO_SHOT_TEMPLATE) -> torch.Tensor:
    """Normalised text embeddings (C, D) of ``template.format(name)`` for each class name."""
    tokens = tokenizer([template.format(c) for c in class_names]).to(_device(model))
    return model.encode_text(tokens, normalize=True)


@torch.no_grad()
def predict(model, preprocess, images: Sequence, text_features: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Index of the most similar class for each image (uint8 (H, W, 3) array or PIL image): (N,) int64."""
    out = []
    dev = _device(model)
    for i in range(0, len(images), batch_size):
        chunk = [im if isinstance(im, Image.Image) else Image.fromarray(im) for im in images[i:i + batch_size]]
        x = torch.stack([preprocess(im) for im in chunk]).to(dev)
        feats = model.encode_image(x, normalize=True)
        out.append((feats @ text_features.T).argmax(-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def source_eval_samples(n: int, seed: int, image_size: int = 32):
    """``n`` single-object source samples (count 1) for zero-shot evaluation, deterministic for ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xE7A1]))
    return [render_source_sample(rng, image_size, count=1) for _ in range(n)]


def source_zero_shot_report(model, preprocess, tokenizer, n: int = 1000, seed: int = 0) -> Dict[str, float]:
    """Zero-shot accuracy (percent) over all 256 object names on single-object source images.

    Keys: ``accuracy`` (exact style+colour+shape, chance 0.39 %) and ``style``, ``colour``,
    ``shape`` (the predicted name gets that attribute right; chance 25 / 12.5 / 12.5 %).
    """
    kinds = all_kinds()
    image_size = int(model.visual.image_size[0]) if hasattr(model.visual, "image_size") else 32
    samples = source_eval_samples(n, seed, image_size)
    text = encode_class_names(model, tokenizer, [k.name for k in kinds])
    pred = predict(model, preprocess, [s.image for s in samples], text)
    hits = {"accuracy": [], "style": [], "colour": [], "shape": []}
    for s, p in zip(samples, pred):
        k = kinds[p]
        hits["accuracy"].append(k == s.kind)
        hits["style"].append(k.style == s.kind.style)
        hits["colour"].append(k.colour == s.kind.colour)
        hits["shape"].append(k.shape == s.kind.shape)
    return {key: 100.0 * float(np.mean(v)) if v else 0.0 for key, v in hits.items()}


def source_zero_shot_accuracy(model, preprocess, tokenizer, n: int = 1000, seed: int = 0) -> float:
    """Exact-name zero-shot accuracy (percent) over the 256 object names; see :func:`source_zero_shot_report`."""
    return source_zero_shot_report(model, preprocess, tokenizer, n, seed)["accuracy"]


def segment_crops(dataset: SegmentDataset, expand_ratio: float = 0.0) -> List[Image.Image]:
    """Classifier inputs (mean-pixel filled, square-padded crops) of every segment of ``dataset``."""
    crops = []
    for i in range(len(dataset)):
        seg = dataset.load(i)
        crops.append(crop_segment(seg.image, seg.mask, expand_ratio=expand_ratio))
    return crops


def target_zero_shot_report(model, preprocess, tokenizer, dataset: SegmentDataset,
                            base: Sequence[str], novel: Sequence[str],
                            text_names: Optional[Mapping[str, str]] = None) -> Dict[str, float]:
    """Zero-shot accuracy (percent) on target segments, classifying among ``base + novel``.

    Keys: ``accuracy`` (all segments), ``base_accuracy``, ``novel_accuracy`` (segments whose label
    is a base / novel class), ``chance`` (100 / number of classes). ``text_names`` maps a class
    label to the text that zero-shot CLIP reads for it (default: the label itself), e.g. the
    source captions' name of a generated domain's class (``DomainSpec.canonical_names()``).
    """
    classes = list(base) + list(novel)
    text = encode_class_names(model, tokenizer, [text_names[c] if text_names else c for c in classes])
    pred = predict(model, preprocess, segment_crops(dataset), text)
    labels = np.array([classes.index(lbl) for lbl in dataset.labels()])
    correct = pred == labels
    is_base = labels < len(base)
    report = {"accuracy": 100.0 * float(correct.mean()) if len(correct) else 0.0,
              "chance": 100.0 / len(classes)}
    report["base_accuracy"] = 100.0 * float(correct[is_base].mean()) if is_base.any() else float("nan")
    report["novel_accuracy"] = 100.0 * float(correct[~is_base].mean()) if (~is_base).any() else float("nan")
    return report


__all__ = [
    "ZERO_SHOT_TEMPLATE", "encode_class_names", "predict", "source_eval_samples",
    "source_zero_shot_report", "source_zero_shot_accuracy", "segment_crops", "target_zero_shot_report",
]
