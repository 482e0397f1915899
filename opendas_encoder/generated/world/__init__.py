"""The generated two-domain world: a captioned source domain and a shifted target domain of scenes.

Source: clean images of coloured, styled shapes with compositional captions (CLIP pretraining).
Target: cluttered, lit, noisy scenes with instance masks and a fine-grained base/novel vocabulary
(OpenDAS adaptation and evaluation). See ``source.py`` and ``target.py`` for the design; the
world's small CLIP is :mod:`.clip`. The target domain is the dataset ``"generated-world"``; its
option ``domain`` picks one of the generated target domains of :mod:`.domains` (default ``"cast"``).
"""

from .attributes import COLOURS, SHAPES, STYLES, ObjectKind
from .clip import (WORLD_CHECKPOINT_DIR, WORLD_MODEL_NAME, WORLD_PRETRAINED, WORLD_WEIGHTS_FILE, world_checkpoint_path,
                   world_model_config_path)
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
from .domains import DomainSpec, build_domain, domain_names, get_domain

#: How results on the world are labelled wherever they are reported.
WORLD_LABEL = "generated world"
#: The label with what it means, for table titles.
WORLD_LABEL_LONG = f"{WORLD_LABEL} (procedurally generated, not a real dataset)"

__all__ = [
    "WORLD_LABEL",
    "WORLD_LABEL_LONG",
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
    "DomainSpec",
    "build_domain",
    "domain_names",
    "get_domain",
]
