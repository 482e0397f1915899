"""Building encoders with open_clip's signatures: the base model, its weights, and a method over it.

open_clip builds the base model (any registered name, including the project's configs in
``opendas_encoder/model_configs``) and loads its weights: an open_clip tag such as ``"openai"``,
a file path, or a tag registered here by the package that ships the file
(:func:`register_pretrained_weights`, found through the ``opendas_encoder.pretrained`` entry points).
A method from the registry is then put over it (:func:`wrap_clip`, :func:`create_encoder`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, Optional, Union

import open_clip
import torch
from torch import nn

from .encoder import tokenizer_for
from .registry import Registry, get_method

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "model_configs"

#: pretrained tag -> {open_clip model name -> callable returning the weights file path}
PRETRAINED_WEIGHTS: Registry = Registry("pretrained tag", "opendas_encoder.pretrained")

_registered = False


def register_model_configs() -> None:
    """Make the project's open_clip model configs known to open_clip (idempotent)."""
    global _registered
    if not _registered and MODEL_CONFIG_DIR.is_dir() and any(MODEL_CONFIG_DIR.glob("*.json")):
        open_clip.add_model_config(MODEL_CONFIG_DIR)
    _registered = True


register_model_configs()  # importing this module (any encoder creation, the package's API) makes them known


def register_pretrained_weights(model_name: str, tag: str, path: Callable[[], str]) -> None:
    """Let ``pretrained=tag`` for ``model_name`` resolve to the file ``path()`` returns (raising
    FileNotFoundError with a hint when it is absent)."""
    try:
        table: Dict[str, Callable[[], str]] = PRETRAINED_WEIGHTS.get(tag)
    except ValueError:
        table = PRETRAINED_WEIGHTS.register(tag, {})
    table[model_name] = path


def _is_open_clip_tag(model_name: str, pretrained: str) -> bool:
    return pretrained in open_clip.list_pretrained_tags_by_model(model_name)


def resolve_pretrained(model_name: str, pretrained: Optional[str]) -> Optional[str]:
    """Map a registered local tag to its weights file; open_clip tags and file paths pass through."""
    if pretrained is None:
        return None
    if os.path.sep in str(pretrained) or str(pretrained).endswith((".safetensors", ".bin", ".pt", ".pth")):
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(f"pretrained weights file not found: {pretrained}")
        return pretrained
    if pretrained.startswith(("hf-hub:", "local-dir:")) or _is_open_clip_tag(model_name, pretrained):
        return pretrained
    try:
        table = PRETRAINED_WEIGHTS.get(pretrained)
    except ValueError:
        return pretrained  # open_clip reports unknown tags itself, listing the ones it has
    if model_name not in table:
        raise ValueError(f"pretrained tag {pretrained!r} is registered for {sorted(table)}, not {model_name!r}")
    return table[model_name]()


def create_base_model_and_transforms(model_name: str, pretrained: Optional[str] = None,
                                     device: Union[str, torch.device, None] = None, **kwargs):
    """(open_clip model, train transform, val transform) with local tags resolved."""
    register_model_configs()
    if model_name not in open_clip.list_models() and not model_name.startswith(("hf-hub:", "local-dir:")):
        raise ValueError(f"unknown open_clip model {model_name!r}; known: see open_clip.list_models() "
                         "or register a config with open_clip.add_model_config")
    weights = resolve_pretrained(model_name, pretrained)
    return open_clip.create_model_and_transforms(model_name, pretrained=weights, device=device or "cpu", **kwargs)


def wrap_clip(method: str, clip_model: nn.Module, tokenizer=None, preprocess=None, model_name: Optional[str] = None,
              pretrained: Optional[str] = None, config=None, **method_config) -> nn.Module:
    """Put ``method`` over an open_clip model you already have (frozen here; WiSE-FT trains its tower).

    Give the method's config object as ``config`` or its fields as keyword arguments.
    """
    cls = get_method(method)
    if config is None:
        config = cls.config_class(**method_config)
    elif method_config:
        raise TypeError("give either config= or config fields as keyword arguments, not both")
    if tokenizer is None:
        tokenizer = tokenizer_for(model_name, clip_model)
    return cls(clip_model, config, tokenizer=tokenizer, preprocess=preprocess, model_name=model_name,
               pretrained=pretrained)


def create_encoder(method: str, model_name: str, pretrained: Optional[str] = None,
                   device: Union[str, torch.device, None] = None, config=None, **method_config) -> nn.Module:
    """``method`` over ``open_clip.create_model(model_name, pretrained)``.

    ``method_config`` are the method's config fields (e.g. ``n_tokens=32`` for VPT, ``alpha=0.5``
    for WiSE-FT, the :class:`~opendas_encoder.PromptConfig` fields for ``opendas``). The returned
    module's parameters with ``requires_grad`` are exactly the method's trainable parameters.
    """
    get_method(method)  # unknown names fail before the base model is built
    clip_model, _, preprocess = create_base_model_and_transforms(model_name, pretrained, device)
    return wrap_clip(method, clip_model, preprocess=preprocess, model_name=model_name, pretrained=pretrained,
                     config=config, **method_config)
