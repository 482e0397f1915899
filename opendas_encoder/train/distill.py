"""Distillation on unlabelled target images (``distill`` config section; issue 24 part 2b).

A frozen teacher (the model as the earlier stages left it) gives soft labels over a class vocabulary on
crops of unlabelled target segments; the student adds ``weight * T^2 KL(teacher || student)``
(:func:`.losses.distillation_loss`) in the last stage. The unlabelled images are read through
:func:`unlabelled_crops`, which touches each segment's image and mask only, never its label.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import List, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.segments import crop_segment
from .losses import distillation_loss


def unlabelled_crops(dataset, preprocess, expand_ratio: float = 0.0, min_pixels: int = 16,
                     progress: bool = False) -> torch.Tensor:
    """Preprocessed crops (N, 3, S, S) of every segment of ``dataset`` with at least ``min_pixels`` mask pixels.

    Reads ``dataset.load(i).image`` and ``.mask`` only: never ``label``/``labels()`` (the target's labels stay
    unseen). Kept in memory: unlabelled sets are the size of a test split (the generated world's 100 scenes:
    ~550 crops, 6.8 MB at 32 px). ``prepare_segments`` is not reused because it indexes segments by label.
    """
    out: List[torch.Tensor] = []
    for i in tqdm(range(len(dataset)), desc="unlabelled target crops", disable=not progress, leave=False):
        seg = dataset.load(i)
        image, mask = seg.image, seg.mask
        if int(mask.sum()) < min_pixels:
            continue
        out.append(preprocess(crop_segment(image, mask, expand_ratio=expand_ratio)))
    if not out:
        raise ValueError(f"{getattr(dataset, 'name', 'unlabelled dataset')}: no segment with >= {min_pixels} pixels")
    return torch.stack(out)


@dataclass
class Distiller:
    """Teacher, unlabelled crops and the class text of the distillation term.

    ``images`` (N, 3, S, S); ``text_input``: the model's text input for the soft labels' classes (tokens);
    ``teacher``: a frozen copy of the model (:meth:`freeze_teacher`). ``loss(model, step)`` takes batch
    ``step`` of the crops (cycling in a fixed order), teacher and student logits ``logit_scale * img @ txt.T``.
    """

    images: torch.Tensor
    text_input: object
    classes: Sequence[str]
    weight: float
    temperature: float
    batch_size: int
    logit_scale: torch.Tensor
    teacher: object = None

    def freeze_teacher(self, model) -> None:
        self.teacher = copy.deepcopy(model).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def batch(self, step: int, device) -> torch.Tensor:
        n = self.images.shape[0]
        start = (step * self.batch_size) % n
        idx = torch.arange(start, start + min(self.batch_size, n)) % n
        return self.images[idx].to(device)

    def logits(self, model, images: torch.Tensor) -> torch.Tensor:
        img = model.encode_image(images, normalize=True).float()
        txt = model.encode_text(self.text_input, normalize=True).float()
        return self.logit_scale * img @ txt.T

    def loss(self, model, step: int, device) -> torch.Tensor:
        if self.teacher is None:
            raise RuntimeError("Distiller.loss before freeze_teacher")
        images = self.batch(step, device)
        with torch.no_grad():
            teacher = self.logits(self.teacher, images)
        return self.weight * distillation_loss(self.logits(model, images), teacher, self.temperature)


def soft_labels(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The teacher's soft labels ``softmax(logits / T)`` (B, C)."""
    return F.softmax(logits / float(temperature), dim=-1)


__all__ = ["unlabelled_crops", "Distiller", "soft_labels"]
