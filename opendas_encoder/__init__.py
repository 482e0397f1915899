"""opendas_encoder: CLIP adapted to a target domain with deep visual and text prompts (OpenDAS).

Public API (open_clip-shaped):

    PromptConfig                      prompt sizes and depths
    PromptedCLIP                      frozen open_clip model + learnable prompts
    create_model, create_model_and_transforms
    save_checkpoint, load_encoder     safetensors + JSON checkpoints
    Vocabulary, load_negatives        base / novel queries and negative queries
"""

import torch as _torch

from .checkpoint import load_encoder, read_checkpoint_config, register_method, save_checkpoint
from .config import PromptConfig
from .factory import (
    checkpoints_dir,
    create_model,
    create_model_and_transforms,
    register_model_configs,
    resolve_pretrained,
)
from .prompted_clip import PromptedCLIP, UnsupportedModelError
from .version import __version__
from .vocab import Vocabulary, load_negatives, select_negative_queries, validate_negatives

# CPU training of small models slows several-fold on denormal floats (measured); flushing them is harmless.
_torch.set_flush_denormal(True)

register_model_configs()

__all__ = [
    "PromptConfig",
    "PromptedCLIP",
    "UnsupportedModelError",
    "Vocabulary",
    "__version__",
    "checkpoints_dir",
    "create_model",
    "create_model_and_transforms",
    "load_encoder",
    "load_negatives",
    "read_checkpoint_config",
    "register_method",
    "register_model_configs",
    "resolve_pretrained",
    "save_checkpoint",
    "select_negative_queries",
    "validate_negatives",
]
