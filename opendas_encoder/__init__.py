"""opendas_encoder: CLIP adapted to a target domain with deep visual and text prompts (OpenDAS).

Public API (open_clip-shaped):

    PromptConfig, PromptedCLIP        OpenDAS prompt sizes; frozen open_clip model + learnable prompts
    create_model, create_model_and_transforms   OpenDAS over an open_clip model name
    create_encoder, wrap_clip, method_names     any registered method (OpenDAS and the baselines)
    save_checkpoint, load_encoder     safetensors + JSON checkpoints
    ZERO_SHOT_TEMPLATE                the one hand-written prompt, "a photo of a {}."
    Vocabulary, load_negatives        base / novel queries and negative queries

Importing the package changes no process-wide setting (the CLI and the trainer scope their own).
"""

from typing import TYPE_CHECKING

from .core.registry import method_names, register_method
from .version import __version__
from .vocab import Vocabulary, load_negatives, select_negative_queries, validate_negatives

#: Public names that need torch / open_clip, imported on first use (PEP 562), so that ``import
#: opendas_encoder`` and ``opendas --version`` / ``--help`` stay fast (torch + open_clip: ~3.9 s of a 5.6 s
#: ``opendas --version`` before). The project's open_clip model configs are registered when
#: ``opendas_encoder.core.factory`` is imported (by any of these names, any encoder creation or loading).
_LAZY = {
    "load_encoder": "core.checkpoint", "read_checkpoint_config": "core.checkpoint",
    "save_checkpoint": "core.checkpoint",
    "create_base_model_and_transforms": "core.factory", "create_encoder": "core.factory",
    "register_model_configs": "core.factory", "register_pretrained_weights": "core.factory",
    "resolve_pretrained": "core.factory", "wrap_clip": "core.factory",
    "ZERO_SHOT_TEMPLATE": "core.tokens", "UnsupportedModelError": "core.towers",
    "PromptConfig": "methods.opendas", "PromptedCLIP": "methods.opendas", "create_model": "methods.opendas",
    "create_model_and_transforms": "methods.opendas",
}

if TYPE_CHECKING:  # what static tools and IDEs see
    from .core.checkpoint import load_encoder, read_checkpoint_config, save_checkpoint
    from .core.factory import (create_base_model_and_transforms, create_encoder, register_model_configs,
                               register_pretrained_weights, resolve_pretrained, wrap_clip)
    from .core.tokens import ZERO_SHOT_TEMPLATE
    from .core.towers import UnsupportedModelError
    from .methods.opendas import PromptConfig, PromptedCLIP, create_model, create_model_and_transforms


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "PromptConfig",
    "PromptedCLIP",
    "UnsupportedModelError",
    "Vocabulary",
    "ZERO_SHOT_TEMPLATE",
    "__version__",
    "create_base_model_and_transforms",
    "create_encoder",
    "create_model",
    "create_model_and_transforms",
    "load_encoder",
    "load_negatives",
    "method_names",
    "read_checkpoint_config",
    "register_method",
    "register_model_configs",
    "register_pretrained_weights",
    "resolve_pretrained",
    "save_checkpoint",
    "select_negative_queries",
    "validate_negatives",
    "wrap_clip",
]
