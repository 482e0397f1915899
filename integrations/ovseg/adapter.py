"""Mask-proposal classification with an OpenDAS encoder, in OVSeg's call contract (pure torch).

OVSeg (facebookresearch/ov-seg) classifies each class-agnostic mask proposal twice: with its
MaskFormer head and with CLIP on the masked image region, and ensembles the two. This module is the
CLIP branch written over the public ``opendas_encoder`` API, so that it runs with or without
Detectron2:

* :func:`masks_to_regions`: OVSeg's region preprocessing. Threshold the soft masks, keep the
  non-empty ones (the valid-region flag), crop each mask's box scaled by ``expand_ratio`` around its
  centre, fill the pixels outside the mask with CLIP's mean pixel, normalise, resize (bicubic) to the
  encoder's input size.
* :class:`RegionClassifier`: text features per class name plus a void row, L2 normalisation,
  similarity logits ``temperature * image @ text.T`` with OVSeg's fixed temperature 100, and
  ``forward(image, class_names, masks) -> (logits | None, regions | None, valid)``.
* :func:`ensemble_class_probs` and :func:`semantic_scores`: OVSeg's geometric ensemble of MaskFormer
  and CLIP class probabilities and the "paint the semantic map" einsum, used by the pure-torch path
  of ``eval/run_2d.py`` (inside Detectron2, OVSeg's own code does both).

Nothing here imports Detectron2 or OVSeg; ``integrations/ovseg/modeling.py`` wires it into OVSeg.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from opendas_encoder.data.segments import CLIP_MEAN_PIXEL

#: OpenAI CLIP's normalisation (0-1 scale); used when the encoder's preprocess does not say.
CLIP_PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)

#: OVSeg multiplies the cosine similarities by this fixed temperature (``ClipAdapter.get_sim_logits``).
OVSEG_TEMPERATURE = 100.0


@dataclass
class RegionConfig:
    """How mask proposals become classifier inputs (defaults: OVSeg's ``MODEL.CLIP_ADAPTER``)."""

    mask_thr: float = 0.5  # MASK_THR: soft-mask threshold for the region and the valid flag
    expand_ratio: float = 1.0  # MASK_EXPAND_RATIO: box side multiplier around its centre (1 = tight)
    mask_fill: str = "mean"  # MASK_FILL: "mean" (CLIP's mean pixel) or "zero"
    mask_matting: bool = False  # MASK_MATTING: blend with the soft mask instead of the binary one
    temperature: float = OVSEG_TEMPERATURE  # logit scale applied to cosine similarities
    pad_square: bool = False  # pad the crop to a square before resizing (as crop_segment does)

    def __post_init__(self):
        if self.mask_fill not in ("mean", "zero"):
            raise ValueError(f"mask_fill must be 'mean' or 'zero', got {self.mask_fill!r}")
        if not self.expand_ratio > 0:
            raise ValueError(f"expand_ratio must be > 0, got {self.expand_ratio}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    @property
    def fill(self) -> Tuple[float, float, float]:
        """Fill colour on the 0-255 scale."""
        return tuple(CLIP_MEAN_PIXEL) if self.mask_fill == "mean" else (0.0, 0.0, 0.0)


class Regions(NamedTuple):
    """Output of :func:`masks_to_regions` (N = number of valid masks, S = encoder input size)."""

    regions: Optional[torch.Tensor]  # (N, 3, S, S) normalised classifier input, None if N == 0
    unnorm_regions: Optional[torch.Tensor]  # (N, 3, S, S) the same on the 0-255 scale
    region_masks: Optional[torch.Tensor]  # (N, 1, S, S) the masks, resized (nearest)
    valid: torch.Tensor  # (K,) bool: which input masks are non-empty after thresholding


def scaled_box(box: Sequence[float], ratio: float, height: int, width: int) -> Tuple[int, int, int, int]:
    """OVSeg's box expansion: scale (x0, y0, x1, y1) by ``ratio`` around its centre, truncate to
    int, clip to the image. Returns (left, top, right, bottom), exclusive ends."""
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    w, h = (x1 - x0) * ratio, (y1 - y0) * ratio
    left, top, right, bottom = (int(v) for v in (cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h))
    return max(left, 0), max(top, 0), min(right, width), min(bottom, height)


def mask_boxes(bin_masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes (N, 4) float (x0, y0, x1 + 1, y1 + 1) of non-empty bool masks (N, H, W)."""
    boxes = torch.zeros(bin_masks.shape[0], 4)
    cols = bin_masks.any(dim=1)
    rows = bin_masks.any(dim=2)
    for i in range(bin_masks.shape[0]):
        xs = torch.nonzero(cols[i]).flatten()
        ys = torch.nonzero(rows[i]).flatten()
        boxes[i] = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
    return boxes


def _pad_to_square(region: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor):
    _, h, w = region.shape
    side = max(h, w)
    canvas = fill.view(3, 1, 1).expand(3, side, side).clone()
    mcanvas = mask.new_zeros(1, side, side)
    oy, ox = (side - h) // 2, (side - w) // 2
    canvas[:, oy:oy + h, ox:ox + w] = region
    mcanvas[:, oy:oy + h, ox:ox + w] = mask
    return canvas, mcanvas


def masks_to_regions(
    image: torch.Tensor,
    masks: torch.Tensor,
    config: RegionConfig,
    size: Tuple[int, int] = (224, 224),
    pixel_mean: Sequence[float] = CLIP_PIXEL_MEAN,
    pixel_std: Sequence[float] = CLIP_PIXEL_STD,
    normalize: bool = True,
) -> Regions:
    """Classifier inputs for mask proposals, following OVSeg's ``MaskFormerClipAdapter``.

    image: (3, H, W), RGB on the 0-255 scale (any dtype); masks: (K, H, W), soft (probabilities) or
    bool. ``pixel_mean`` / ``pixel_std`` on the 0-1 scale. A mask is valid when some pixel exceeds
    ``config.mask_thr``; only valid masks produce regions, in input order.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W), got {tuple(image.shape)}")
    if masks.ndim != 3 or masks.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"masks must be (K, H, W) with H, W = {tuple(image.shape[-2:])}, got {tuple(masks.shape)}")
    dtype = masks.dtype if masks.dtype.is_floating_point else torch.float32
    masks = masks.to(dtype)
    bin_masks = masks > config.mask_thr
    valid = bin_masks.flatten(1).any(dim=1)
    if not bool(valid.any()):
        return Regions(None, None, None, valid)
    bin_masks = bin_masks[valid]
    blend = masks[valid] if config.mask_matting else bin_masks.to(dtype)
    img = image.to(device=masks.device, dtype=dtype)
    height, width = img.shape[-2:]
    fill = torch.tensor(config.fill, dtype=dtype, device=img.device)
    regions, region_masks = [], []
    for box, m in zip(mask_boxes(bin_masks.cpu()), blend):
        left, top, right, bottom = scaled_box(box.tolist(), config.expand_ratio, height, width)
        m = m[None, top:bottom, left:right]
        crop = img[:, top:bottom, left:right] * m + (1 - m) * fill.view(3, 1, 1)
        if config.pad_square:
            crop, m = _pad_to_square(crop, m, fill)
        regions.append(crop.unsqueeze(0))
        region_masks.append(m.unsqueeze(0))
    mean = torch.tensor(pixel_mean, dtype=dtype, device=img.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(pixel_std, dtype=dtype, device=img.device).view(1, 3, 1, 1) * 255.0
    normed = [(r - mean) / std for r in regions] if normalize else regions
    size = tuple(int(s) for s in size)
    resized = torch.cat([F.interpolate(r, size=size, mode="bicubic") for r in normed])
    unnorm = torch.cat([F.interpolate(r, size=size, mode="bicubic") for r in regions])
    rmasks = torch.cat([F.interpolate(m, size=size, mode="nearest") for m in region_masks])
    return Regions(resized, unnorm, rmasks, valid)


def encoder_normalization(encoder) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """(mean, std) on the 0-1 scale from the encoder's ``preprocess`` (its Normalize step), else
    OpenAI CLIP's."""
    steps = getattr(getattr(encoder, "preprocess", None), "transforms", None) or []
    for step in steps:
        if hasattr(step, "mean") and hasattr(step, "std"):
            return tuple(float(v) for v in step.mean), tuple(float(v) for v in step.std)
    return CLIP_PIXEL_MEAN, CLIP_PIXEL_STD


def encoder_image_size(encoder) -> Tuple[int, int]:
    size = getattr(encoder, "image_size", 224)
    if isinstance(size, int):
        return (size, size)
    return tuple(int(s) for s in size)


class RegionClassifier(nn.Module):
    """Classify mask proposals with a CLIP-like encoder, in OVSeg's adapter contract.

    encoder: anything with ``encode_image(images (B, 3, S, S)) -> (B, D)`` and
    ``encode_text(class_names: list[str]) -> (C, D)`` (an ``opendas_encoder`` encoder, which adds
    its learned context to bare class names, or :class:`TemplateTextEncoder` for plain CLIP).
    The encoder is frozen; the classifier adds a fixed void embedding (D,) used as the last text
    row, like OVSeg's learned ``non_object_embedding``. OVSeg drops the CLIP branch's void column
    before its softmax, so the void row's value never changes a prediction.
    """

    def __init__(self, encoder: nn.Module, config: RegionConfig = RegionConfig(), void_seed: int = 0):
        super().__init__()
        self.encoder = encoder
        self.config = config
        self.encoder.requires_grad_(False)
        self.encoder.eval()
        dim = int(getattr(encoder, "embed_dim"))
        gen = torch.Generator().manual_seed(void_seed)
        self.register_buffer("void_embedding", F.normalize(torch.randn(1, dim, generator=gen), dim=-1))
        self.pixel_mean, self.pixel_std = encoder_normalization(encoder)
        self.image_size = encoder_image_size(encoder)
        self._text_cache: Dict[str, torch.Tensor] = {}

    def train(self, mode: bool = True) -> "RegionClassifier":
        super().train(mode)
        self.encoder.eval()  # frozen: never in train mode (dropout / batch statistics)
        return self

    def clear_cache(self) -> None:
        self._text_cache.clear()

    @staticmethod
    def normalize_feature(feat: torch.Tensor) -> torch.Tensor:
        return feat / feat.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def class_text_features(self, class_names: Sequence[str]) -> torch.Tensor:
        """Normalised text features (C, D) for bare class names (cached per name)."""
        missing = [n for n in dict.fromkeys(class_names) if n not in self._text_cache]
        if missing:
            feats = self.normalize_feature(self.encoder.encode_text(list(missing)).float())
            self._text_cache.update({n: f for n, f in zip(missing, feats)})
        return torch.stack([self._text_cache[n] for n in class_names]).to(self.void_embedding.device)

    def get_text_features(self, class_names: Sequence[str]) -> torch.Tensor:
        """(C + 1, D): one normalised row per class name, then the void row."""
        return torch.cat([self.class_text_features(class_names), self.void_embedding], dim=0)

    @torch.no_grad()
    def get_image_features(self, regions: torch.Tensor) -> torch.Tensor:
        """Normalised image features (N, D) of preprocessed regions (N, 3, S, S)."""
        dev = self.void_embedding.device
        return self.normalize_feature(self.encoder.encode_image(regions.to(dev)).float())

    def get_sim_logits(self, text_features: torch.Tensor, image_features: torch.Tensor,
                       temperature: Optional[float] = None) -> torch.Tensor:
        """(N, C + 1) = temperature * image_features (N, D) @ text_features (C + 1, D).T."""
        t = self.config.temperature if temperature is None else temperature
        return t * image_features @ text_features.T

    def preprocess(self, image: torch.Tensor, masks: torch.Tensor, normalize: bool = True) -> Regions:
        return masks_to_regions(image, masks, self.config, self.image_size, self.pixel_mean,
                                self.pixel_std, normalize=normalize)

    def forward(self, image: torch.Tensor, class_names: Sequence[str], masks: torch.Tensor,
                normalize: bool = True):
        """OVSeg's mask adapter call: image (3, H, W) 0-255, masks (K, H, W) soft or bool.

        Returns ``(logits (N, C + 1) | None, unnorm_regions (N, 3, S, S) | None, valid (K,) bool)``
        where N = valid.sum(); logits and regions are None when no mask is valid (OVSeg then uses
        an empty CLIP score table).
        """
        r = self.preprocess(image, masks, normalize=normalize)
        if r.regions is None:
            return None, None, r.valid
        logits = self.get_sim_logits(self.get_text_features(class_names), self.get_image_features(r.regions))
        return logits, r.unnorm_regions, r.valid


class TemplateTextEncoder(nn.Module):
    """A plain open_clip model behind the encoder contract: class names are wrapped in prompt
    templates and the normalised template features are averaged (the "without OpenDAS" baseline).

    clip_model: open_clip CLIP; tokenizer: its tokenizer; preprocess: its val transform.
    """

    def __init__(self, clip_model: nn.Module, tokenizer, preprocess=None,
                 templates: Sequence[str] = ("a photo of a {}.",)):
        super().__init__()
        if not templates or any("{}" not in t for t in templates):
            raise ValueError(f"every template needs a '{{}}' placeholder, got {list(templates)}")
        self.clip = clip_model
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.templates = list(templates)
        self.clip.requires_grad_(False)

    @property
    def embed_dim(self) -> int:
        return int(self.clip.visual.output_dim)

    @property
    def image_size(self) -> Tuple[int, int]:
        size = self.clip.visual.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.clip.encode_image(images, normalize=normalize)

    def encode_text(self, class_names: List[str], normalize: bool = False) -> torch.Tensor:
        device = next(self.clip.parameters()).device
        feats = []
        for template in self.templates:
            tokens = self.tokenizer([template.format(n) for n in class_names]).to(device)
            feats.append(F.normalize(self.clip.encode_text(tokens), dim=-1))
        mean = torch.stack(feats).mean(dim=0)
        return F.normalize(mean, dim=-1) if normalize else mean


def ensemble_class_probs(
    mask_cls_logits: torch.Tensor,
    clip_logits: Optional[torch.Tensor],
    valid: torch.Tensor,
    weight: float,
) -> torch.Tensor:
    """OVSeg's ensemble of the MaskFormer and CLIP branches (``OVSeg.semantic_inference``).

    mask_cls_logits: (Q, C + 1) MaskFormer logits (last = no-object); clip_logits: (N, C + 1) with
    N = valid.sum(), or None when no mask is valid; valid: (Q,) bool. Returns (Q, C) class scores
    ``p_mf ** (1 - weight) * p_clip ** weight`` where ``p_mf = softmax(mask_cls_logits)[:, :-1]``,
    ``p_clip = softmax(clip_logits[:, :-1])`` and invalid masks take ``p_clip = 1``. With
    ``weight <= 0`` OVSeg keeps ``p_mf`` alone here (it then classifies valid masks with CLIP only;
    see :func:`clip_only_class_probs`).
    """
    p_mf = F.softmax(mask_cls_logits, dim=-1)[..., :-1]
    if weight <= 0:
        return p_mf
    n_classes = p_mf.shape[-1]
    if clip_logits is None:
        clip_logits = p_mf.new_empty(0, n_classes + 1)
    if clip_logits.shape != (int(valid.sum()), n_classes + 1):
        raise ValueError(f"clip_logits must be ({int(valid.sum())}, {n_classes + 1}), got {tuple(clip_logits.shape)}")
    p_clip = p_mf.new_ones(p_mf.shape)
    p_clip[valid] = F.softmax(clip_logits[:, :-1], dim=-1).to(p_mf.dtype)
    return torch.pow(p_mf, 1 - weight) * torch.pow(p_clip, weight)


def clip_only_class_probs(clip_logits: Optional[torch.Tensor], num_classes: int) -> torch.Tensor:
    """(N, C) softmax over the classes of the CLIP logits (N, C + 1), void column dropped."""
    if clip_logits is None:
        return torch.empty(0, num_classes)
    return F.softmax(clip_logits[:, :-1], dim=-1)


def semantic_scores(class_probs: torch.Tensor, mask_probs: torch.Tensor) -> torch.Tensor:
    """OVSeg's semantic map: (C, H, W) = einsum('qc,qhw->chw', class_probs (Q, C), mask_probs (Q, H, W)).

    Zero masks give an all-zero map (C, H, W); its argmax is class 0, as in OVSeg.
    """
    if class_probs.shape[0] != mask_probs.shape[0]:
        raise ValueError(f"{class_probs.shape[0]} class rows but {mask_probs.shape[0]} masks")
    return torch.einsum("qc,qhw->chw", class_probs, mask_probs.to(class_probs.dtype))
