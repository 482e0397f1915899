"""The generated two-domain world: a captioned source domain and a shifted target domain of scenes.

Source: clean images of coloured, styled shapes with compositional captions (CLIP pretraining).
Target: cluttered, lit, noisy scenes with instance masks and a fine-grained base/novel vocabulary
(OpenDAS adaptation and evaluation). See ``source.py`` and ``target.py`` for the design.
"""

import os

from ..core.factory import register_pretrained_weights

from .attributes import COLOURS, SHAPES, STYLES, ObjectKind
from .source import make_source_domain
from .target import (
    BASE_CLASSES,
    NOVEL_CLASSES,
    TargetDomain,
    TargetRendering,
    TargetScene,
    make_target_domain,
    world_negatives,
    world_vocabulary,
)
from .zero_shot import source_zero_shot_accuracy, source_zero_shot_report, target_zero_shot_report

#: open_clip model config name of the generated world's CLIP (opendas_encoder/model_configs/).
WORLD_MODEL_NAME = "opendas-world-vit"
#: Pretrained tag: checkpoints/clip_generated_world/open_clip_model.safetensors.
WORLD_PRETRAINED = "generated-world"
#: Checkpoint folder inside the checkpoints folder (``<repo>/checkpoints`` or $OPENDAS_CHECKPOINTS).
WORLD_CHECKPOINT_DIR = "clip_generated_world"
WORLD_WEIGHTS_FILE = "open_clip_model.safetensors"

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def world_model_config_path() -> str:
    """Path of the ``opendas-world-vit`` open_clip config JSON shipped in the package."""
    return os.path.join(_PACKAGE_DIR, "model_configs", WORLD_MODEL_NAME + ".json")


def world_checkpoint_path() -> str:
    """Weights of the pretrained world CLIP: ``$OPENDAS_CHECKPOINTS`` (default ``<repo>/checkpoints``)
    / ``clip_generated_world/open_clip_model.safetensors``. Raises FileNotFoundError naming the path."""
    root = os.environ.get("OPENDAS_CHECKPOINTS") or os.path.join(os.path.dirname(_PACKAGE_DIR), "checkpoints")
    path = os.path.join(root, WORLD_CHECKPOINT_DIR, WORLD_WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: generated-world CLIP weights not found "
            "(run `python eval/pretrain_synthetic_clip.py --seed 0` or set OPENDAS_CHECKPOINTS)")
    return path


register_pretrained_weights(WORLD_MODEL_NAME, WORLD_PRETRAINED, world_checkpoint_path)

__all__ = [
    "WORLD_MODEL_NAME",
    "WORLD_PRETRAINED",
    "WORLD_CHECKPOINT_DIR",
    "WORLD_WEIGHTS_FILE",
    "world_model_config_path",
    "world_checkpoint_path",
    "COLOURS",
    "SHAPES",
    "STYLES",
    "ObjectKind",
    "BASE_CLASSES",
    "NOVEL_CLASSES",
    "TargetDomain",
    "TargetRendering",
    "TargetScene",
    "make_source_domain",
    "make_target_domain",
    "world_vocabulary",
    "world_negatives",
    "source_zero_shot_accuracy",
    "source_zero_shot_report",
    "target_zero_shot_report",
]
