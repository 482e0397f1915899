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

from .core.checkpoint import load_encoder, read_checkpoint_config, save_checkpoint
from .core.factory import (
    create_base_model_and_transforms,
    create_encoder,
    register_model_configs,
    register_pretrained_weights,
    resolve_pretrained,
    wrap_clip,
)
from .core.registry import method_names, register_method
from .core.tokens import ZERO_SHOT_TEMPLATE
from .core.towers import UnsupportedModelError
from .methods.opendas import PromptConfig, PromptedCLIP, create_model, create_model_and_transforms
from .version import __version__
from .vocab import Vocabulary, load_negatives, select_negative_queries, validate_negatives

register_model_configs()

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
