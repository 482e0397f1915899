"""OVSeg integration: OVSeg's CLIP branch on an OpenDAS encoder (see README.md in this folder).

``adapter`` and ``semantic`` are pure torch; ``modeling`` and ``train_net`` import Detectron2 and an
OVSeg checkout (``OVSEG_ROOT``) and are imported only when used.
"""

from .adapter import RegionClassifier, RegionConfig, TemplateTextEncoder, masks_to_regions

__all__ = ["RegionClassifier", "RegionConfig", "TemplateTextEncoder", "masks_to_regions"]
