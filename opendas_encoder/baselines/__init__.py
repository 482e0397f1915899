"""Baselines of the paper over the same frozen open_clip model: CoCoOp, VPT, RPO, MaPLe, WiSE-FT.

Each method is its own module and serves the encoder contract of :class:`~opendas_encoder.PromptedCLIP`
(``encode_image``, ``encode_text``, ``prompt_state_dict``, ...), so it trains with the same engine,
checkpoints through :func:`~opendas_encoder.save_checkpoint` and loads with
:func:`~opendas_encoder.load_encoder` (its builder is registered here under its method name).

    build(method, model_name, pretrained=None, device=None, **method_config)

Trainable parameters on ViT-L-14 (paper Tab. 1 / 6): opendas 233,472; cocoop 77,616; vpt 786,432;
rpo 43,008; maple 18,935,808; wiseft-text 123,060,480; wiseft-visual 303,966,208.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Union

import torch
from torch import nn

from ..checkpoint import register_method
from .base import BaselineEncoder, MethodConfig
from .cocoop import CoCoOp, CoCoOpConfig
from .maple import MaPLe, MaPLeConfig
from .rpo import RPO, RPOConfig
from .vpt import VPT, VPTConfig
from .wiseft import WiSEFT, WiSEFTConfig, WiSEFTText, WiSEFTVisual

#: method name -> (encoder class, config class)
METHODS: Dict[str, tuple] = {
    "cocoop": (CoCoOp, CoCoOpConfig),
    "vpt": (VPT, VPTConfig),
    "rpo": (RPO, RPOConfig),
    "maple": (MaPLe, MaPLeConfig),
    "wiseft-text": (WiSEFTText, WiSEFTConfig),
    "wiseft-visual": (WiSEFTVisual, WiSEFTConfig),
}

#: every name :func:`build` accepts, OpenDAS first
METHOD_NAMES = ("opendas",) + tuple(METHODS)


def _builder(method: str) -> Callable:
    cls, config_cls = METHODS[method]

    def build_from_checkpoint(clip_model, method_config, tokenizer, preprocess, model_name, pretrained):
        config = config_cls.from_dict(dict(method_config or {}), source=f"{method} method_config")
        return cls(clip_model, config, tokenizer=tokenizer, preprocess=preprocess, model_name=model_name,
                   pretrained=pretrained)

    return build_from_checkpoint


for _name in METHODS:
    register_method(_name, _builder(_name))


def wrap(method: str, clip_model: nn.Module, tokenizer=None, preprocess=None, model_name: Optional[str] = None,
         pretrained: Optional[str] = None, **method_config) -> nn.Module:
    """Put ``method`` on an existing open_clip model (frozen here; WiSE-FT unfreezes its tower)."""
    if method == "opendas":
        from ..config import PromptConfig
        from ..prompted_clip import PromptedCLIP

        return PromptedCLIP(clip_model, PromptConfig(**method_config), tokenizer=tokenizer, preprocess=preprocess,
                            model_name=model_name, pretrained=pretrained)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHOD_NAMES)}")
    cls, config_cls = METHODS[method]
    return cls(clip_model, config_cls(**method_config), tokenizer=tokenizer, preprocess=preprocess,
               model_name=model_name, pretrained=pretrained)


def build(method: str, model_name: str, pretrained: Optional[str] = None,
          device: Union[str, torch.device, None] = None, **method_config) -> nn.Module:
    """``method`` over ``open_clip.create_model(model_name, pretrained)``.

    ``method_config`` are the method's config fields (e.g. ``n_tokens=32`` for VPT, ``alpha=0.5``
    for WiSE-FT; for ``opendas`` the :class:`~opendas_encoder.PromptConfig` fields). The returned
    module's parameters with ``requires_grad`` are exactly the method's trainable parameters.
    """
    if method not in METHOD_NAMES:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHOD_NAMES)}")
    if method == "opendas":
        from ..config import PromptConfig
        from ..factory import create_model

        return create_model(model_name, pretrained, prompts=PromptConfig(**method_config), device=device)
    import open_clip

    from ..factory import create_base_model_and_transforms

    clip_model, _, preprocess = create_base_model_and_transforms(model_name, pretrained, device)
    return wrap(method, clip_model, tokenizer=open_clip.get_tokenizer(model_name), preprocess=preprocess,
                model_name=model_name, pretrained=pretrained, **method_config)


__all__ = ["BaselineEncoder", "CoCoOp", "CoCoOpConfig", "MaPLe", "MaPLeConfig", "METHOD_NAMES", "METHODS",
           "MethodConfig", "RPO", "RPOConfig", "VPT", "VPTConfig", "WiSEFT", "WiSEFTConfig", "WiSEFTText",
           "WiSEFTVisual", "build", "wrap"]
