"""Model creation with open_clip's signatures: ``create_model`` and ``create_model_and_transforms``.

open_clip builds the base model (any registered name, including the project's own configs in
``opendas_encoder/model_configs``), loads its pretrained weights (an open_clip tag such as
``"openai"``, a file path, or one of the project's local tags below), and the result is wrapped in
:class:`PromptedCLIP`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple, Union

import open_clip
import torch

from .config import PromptConfig
from .prompted_clip import PromptedCLIP

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"

#: Pretrained tags that live in this repository's ``checkpoints/`` folder (model name, tag) -> file.
LOCAL_PRETRAINED = {
    ("opendas-world-vit", "generated-world"): "clip_generated_world/open_clip_model.safetensors",
}

_registered = False


def register_model_configs() -> None:
    """Make the project's open_clip model configs known to open_clip (idempotent)."""
    global _registered
    if not _registered and MODEL_CONFIG_DIR.is_dir() and any(MODEL_CONFIG_DIR.glob("*.json")):
        open_clip.add_model_config(MODEL_CONFIG_DIR)
    _registered = True


def checkpoints_dir() -> Path:
    """The checkpoints folder: ``$OPENDAS_CHECKPOINTS`` or ``<repo>/checkpoints``."""
    env = os.environ.get("OPENDAS_CHECKPOINTS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "checkpoints"


def resolve_pretrained(model_name: str, pretrained: Optional[str]) -> Optional[str]:
    """Map a project-local pretrained tag to its weights file; other tags/paths pass through."""
    if pretrained is None:
        return None
    key = (model_name, pretrained)
    if key in LOCAL_PRETRAINED:
        path = checkpoints_dir() / LOCAL_PRETRAINED[key]
        if not path.is_file():
            raise FileNotFoundError(
                f"weights for {model_name!r} pretrained={pretrained!r} not found at {path} "
                "(set OPENDAS_CHECKPOINTS or run eval/pretrain_synthetic_clip.py)")
        return str(path)
    if os.path.sep in str(pretrained) or str(pretrained).endswith((".safetensors", ".bin", ".pt", ".pth")):
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(f"pretrained weights file not found: {pretrained}")
    return pretrained


def create_base_model_and_transforms(model_name: str, pretrained: Optional[str] = None,
                                     device: Union[str, torch.device, None] = None, **kwargs):
    """The frozen open_clip model and its (train, val) transforms, with local tags resolved."""
    register_model_configs()
    if model_name not in open_clip.list_models() and not model_name.startswith(("hf-hub:", "local-dir:")):
        raise ValueError(f"unknown open_clip model {model_name!r}; known: see open_clip.list_models() "
                         "or register a config with open_clip.add_model_config")
    weights = resolve_pretrained(model_name, pretrained)
    model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
        model_name, pretrained=weights, device=device or "cpu", **kwargs)
    return model, preprocess_train, preprocess_val


def create_model_and_transforms(model_name: str, pretrained: Optional[str] = None,
                                prompts: PromptConfig = PromptConfig(),
                                device: Union[str, torch.device, None] = None, **kwargs
                                ) -> Tuple[PromptedCLIP, object, object]:
    """(PromptedCLIP, preprocess_train, preprocess_val), like ``open_clip.create_model_and_transforms``.

    Extra keyword arguments go to open_clip (e.g. ``precision``, ``force_image_size``).
    """
    base, preprocess_train, preprocess_val = create_base_model_and_transforms(model_name, pretrained, device, **kwargs)
    tokenizer = open_clip.get_tokenizer(model_name)
    model = PromptedCLIP(base, prompts, tokenizer=tokenizer, preprocess=preprocess_val,
                         model_name=model_name, pretrained=pretrained)
    return model, preprocess_train, preprocess_val


def create_model(model_name: str, pretrained: Optional[str] = None, prompts: PromptConfig = PromptConfig(),
                 device: Union[str, torch.device, None] = None, **kwargs) -> PromptedCLIP:
    """A :class:`PromptedCLIP` over ``open_clip.create_model(model_name, pretrained)``."""
    model, _, _ = create_model_and_transforms(model_name, pretrained, prompts, device, **kwargs)
    return model
