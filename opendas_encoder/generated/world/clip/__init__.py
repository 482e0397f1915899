"""The generated world's CLIP: a small open_clip model pretrained on the CPU on the world's source domain.

Shipped as package data beside this module (so a wheel install has it):

* ``open_clip_model.safetensors``: the weights of ``opendas-world-vit`` (fp16, exactly open_clip's
  state-dict keys; the architecture is the package's open_clip config ``model_configs/opendas-world-vit.json``);
* ``open_clip_config.json``: model + preprocess config, for ``open_clip.create_model("local-dir:<this folder>")``;
* ``pretrain_info.json``: how ``eval/pretrain_synthetic_clip.py`` made it (seed, steps, history, accuracies).

Importing this module registers the pretrained tag ``"generated-world"`` with
:func:`opendas_encoder.core.factory.register_pretrained_weights`; the factory imports it through the
``opendas_encoder.pretrained`` entry point, so ``opendas_encoder.create_model("opendas-world-vit",
"generated-world")`` works without importing it first. ``$OPENDAS_CHECKPOINTS/clip_generated_world/``
overrides the shipped weights (e.g. a re-run of the pretraining script).
"""

from __future__ import annotations

import atexit
import functools
import os
from contextlib import ExitStack
from importlib.resources import as_file, files

from ....core.factory import MODEL_CONFIG_DIR, register_model_configs, register_pretrained_weights

#: open_clip model config name of the world's CLIP.
WORLD_MODEL_NAME = "opendas-world-vit"
#: Pretrained tag of its weights.
WORLD_PRETRAINED = "generated-world"
WORLD_WEIGHTS_FILE = "open_clip_model.safetensors"
#: Folder name under ``$OPENDAS_CHECKPOINTS`` that overrides the shipped weights.
WORLD_CHECKPOINT_DIR = "clip_generated_world"

_files = ExitStack()
atexit.register(_files.close)


@functools.lru_cache(maxsize=None)
def world_clip_dir() -> str:
    """The folder of the shipped files (a real folder even if the package is imported from an archive)."""
    return str(_files.enter_context(as_file(files(__name__))))


def world_model_config_path() -> str:
    """Path of the ``opendas-world-vit`` open_clip config JSON (one of the package's model configs)."""
    return str(MODEL_CONFIG_DIR / (WORLD_MODEL_NAME + ".json"))


def world_checkpoint_path() -> str:
    """Weights of the world CLIP: ``$OPENDAS_CHECKPOINTS/clip_generated_world/open_clip_model.safetensors``
    when that variable is set, else the shipped file. Raises FileNotFoundError naming the path."""
    root = os.environ.get("OPENDAS_CHECKPOINTS")
    folder = os.path.join(root, WORLD_CHECKPOINT_DIR) if root else world_clip_dir()
    path = os.path.join(folder, WORLD_WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: generated-world CLIP weights not found "
            "(run `python eval/pretrain_synthetic_clip.py --seed 0 --out <folder>` or unset OPENDAS_CHECKPOINTS)")
    return path


def register() -> None:
    """Make ``"generated-world"`` of ``opendas-world-vit`` known to the factory (idempotent)."""
    register_model_configs()
    register_pretrained_weights(WORLD_MODEL_NAME, WORLD_PRETRAINED, world_checkpoint_path)


register()

__all__ = ["WORLD_MODEL_NAME", "WORLD_PRETRAINED", "WORLD_WEIGHTS_FILE", "WORLD_CHECKPOINT_DIR", "world_clip_dir",
           "world_model_config_path", "world_checkpoint_path", "register"]
