"""A small generated ADE20K-150 validation set (real on-disk layout) plus proposals and a tiny encoder.

Layout written under ``root``::

    ADEChallengeData2016/images/validation/ADE_val_XXXXXXXX.jpg
    ADEChallengeData2016/annotations/validation/ADE_val_XXXXXXXX.png            0 = ignore, 1..150 = classes
    ADEChallengeData2016/annotations_detectron2/validation/ADE_val_XXXXXXXX.png  label - 1, 255 = ignore
    proposals/validation/ADE_val_XXXXXXXX.npz      masks (N, H, W) bool
    vocab_split.json                               {"base": [...], "novel": [...]}
    encoder/model_configs/<name>.json              tiny open_clip architecture
    encoder/base_model.safetensors                 its random weights (the "original CLIP")
    encoder/opendas/                               an OpenDAS checkpoint over that base model

``annotations_detectron2`` is what Detectron2's ``ade20k_sem_seg_val`` reads (OVSeg's
``datasets/prepare_ade20k_sem_seg.py`` writes the same conversion).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
from PIL import Image

ADE_NUM_CLASSES = 150

#: A tiny open_clip architecture (ViT, 64 wide) for fixtures and tests.
TINY_MODEL_NAME = "opendas-tiny-ovseg"
TINY_MODEL_CONFIG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def ade20k_class_names() -> List[str]:
    """The 150 ADE20K-150 class names in label order (label k -> names[k - 1]), from
    ``opendas_encoder/resources/ade20k_150_classes.txt`` (Detectron2's / OVSeg's short names)."""
    from opendas_encoder.data.ade20k import ade20k_150_classes

    return ade20k_150_classes()


@dataclass
class FixtureSpec:
    num_images: int = 4
    height: int = 48
    width: int = 64
    classes_per_image: int = 3
    num_classes: int = 6  # the fixture uses labels 1..num_classes (of the 150)
    seed: int = 0


def _class_colour(label: int) -> np.ndarray:
    rng = np.random.default_rng(1000 + label)
    return rng.integers(30, 226, size=3)


def _label_map(rng: np.random.Generator, spec: FixtureSpec) -> np.ndarray:
    h, w = spec.height, spec.width
    labels = rng.choice(np.arange(1, spec.num_classes + 1), size=spec.classes_per_image, replace=False)
    lab = np.full((h, w), labels[0], dtype=np.uint8)
    for k, label in enumerate(labels[1:]):
        y0 = int(rng.integers(0, h // 2))
        x0 = int(rng.integers(0, w // 2))
        y1 = int(min(h, y0 + rng.integers(h // 4, h // 2 + 1)))
        x1 = int(min(w, x0 + rng.integers(w // 4, w // 2 + 1)))
        lab[y0:y1, x0:x1] = label
    lab[:, :2] = 0  # an unlabelled strip (ignore)
    return lab


def write_ade_image(root: str, stem: str, image: np.ndarray, label: np.ndarray) -> None:
    """Write one image / annotation pair in the ADE20K layout (both annotation folders)."""
    base = os.path.join(root, "ADEChallengeData2016")
    paths = {
        "images": os.path.join(base, "images", "validation", stem + ".jpg"),
        "annotations": os.path.join(base, "annotations", "validation", stem + ".png"),
        "annotations_detectron2": os.path.join(base, "annotations_detectron2", "validation", stem + ".png"),
    }
    for p in paths.values():
        os.makedirs(os.path.dirname(p), exist_ok=True)
    Image.fromarray(image, mode="RGB").save(paths["images"], quality=95)
    Image.fromarray(label.astype(np.uint8), mode="L").save(paths["annotations"])
    Image.fromarray((label.astype(np.int64) - 1).astype(np.uint8), mode="L").save(paths["annotations_detectron2"])


def write_tiny_encoder(directory: str, seed: int = 0) -> dict:
    """Tiny open_clip config + random base weights + an OpenDAS checkpoint with random prompts.

    Returns ``{"model_config": path, "base_weights": path, "opendas_checkpoint": dir}``.
    """
    import open_clip
    import torch
    from safetensors.torch import save_file

    import opendas_encoder as oe

    cfg_dir = os.path.join(directory, "model_configs")
    os.makedirs(cfg_dir, exist_ok=True)
    cfg_path = os.path.join(cfg_dir, TINY_MODEL_NAME + ".json")
    with open(cfg_path, "w") as f:
        json.dump(TINY_MODEL_CONFIG, f, indent=2, sort_keys=True)
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(seed)
    base = open_clip.create_model(TINY_MODEL_NAME)
    weights = os.path.join(directory, "base_model.safetensors")
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, weights)
    enc = oe.create_model(TINY_MODEL_NAME, pretrained=weights,
                          prompts=oe.PromptConfig(visual_tokens=2, text_tokens=4, text_init="a photo of a"))
    with torch.no_grad():  # prompts that visibly change the features
        for p in enc.prompt_parameters():
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed + 1))
    ckpt = os.path.join(directory, "opendas")
    oe.save_checkpoint(enc, ckpt)
    return {"model_config": cfg_path, "base_weights": weights, "opendas_checkpoint": ckpt}


#: A tiny CLIP in OVSeg's CLIP layout: OVSeg's ``clip.load`` infers the architecture from the
#: state dict (heads = width / 64; regions are resized to 224, so image_size must be 224).
OVSEG_TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32, "head_width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}


def write_ovseg_random_clip(path: str, seed: int = 0) -> int:
    """Write random CLIP weights that OVSeg's ``clip.load(path)`` accepts (for wiring tests; OVSeg
    otherwise downloads OpenAI weights). Returns the CLIP embedding size (OVSeg's
    ``MODEL.SEM_SEG_HEAD.EMBEDDING_DIM`` must equal it).

    open_clip ``*-quickgelu`` state dicts use OpenAI CLIP's keys, which OVSeg's loader expects. The
    file is in ``torch.save`` format because that loader reads nothing else.
    """
    import open_clip
    import torch
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    model = CLIP(embed_dim=OVSEG_TINY_CLIP_CONFIG["embed_dim"], vision_cfg=OVSEG_TINY_CLIP_CONFIG["vision_cfg"],
                 text_cfg=OVSEG_TINY_CLIP_CONFIG["text_cfg"], quick_gelu=True)
    assert isinstance(model, open_clip.CLIP)
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return OVSEG_TINY_CLIP_CONFIG["embed_dim"]


def generate_fixture(root: str, spec: FixtureSpec = FixtureSpec(), class_names: Sequence[str] = None,
                     with_encoder: bool = True) -> dict:
    """Write the fixture under ``root``; returns a dict of the paths written (see module doc)."""
    rng = np.random.default_rng(spec.seed)
    stems = []
    for i in range(spec.num_images):
        stem = f"ADE_val_{i + 1:08d}"
        lab = _label_map(rng, spec)
        image = np.zeros(lab.shape + (3,), dtype=np.int64)
        for label in np.unique(lab):
            image[lab == label] = _class_colour(int(label))
        image = np.clip(image + rng.integers(-12, 13, size=image.shape), 0, 255).astype(np.uint8)
        write_ade_image(root, stem, image, lab)
        masks = np.stack([lab == c for c in np.unique(lab) if c != 0])
        prop = os.path.join(root, "proposals", "validation", stem + ".npz")
        os.makedirs(os.path.dirname(prop), exist_ok=True)
        np.savez_compressed(prop, masks=masks)
        stems.append(stem)
    names = list(class_names) if class_names is not None else None
    out = {"root": root, "stems": stems, "proposals": os.path.join(root, "proposals", "validation")}
    if names is not None:
        used = names[: spec.num_classes]
        split = {"base": used[: spec.num_classes // 2], "novel": used[spec.num_classes // 2:]}
        out["vocab_split"] = os.path.join(root, "vocab_split.json")
        with open(out["vocab_split"], "w") as f:
            json.dump(split, f, indent=2, sort_keys=True)
    if with_encoder:
        out.update(write_tiny_encoder(os.path.join(root, "encoder"), seed=spec.seed))
    return out
