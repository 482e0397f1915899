"""The OpenDAS override of OpenMask3D's Hydra config (``external.*`` keys it does not have).

Keys (command-line ``key=value``, like any Hydra override)::

    external.clip_backend=clip|opendas     clip: OpenMask3D unchanged; opendas: our encoder via the shim
    external.opendas_checkpoint=DIR        an opendas_encoder checkpoint folder (adapted encoder)
    external.opendas_model=NAME            open_clip model for the zero-shot base encoder (no checkpoint);
                                           default: mapped from external.clip_model (ViT-L/14@336px -> ViT-L-14-336)
    external.opendas_pretrained=TAG|FILE   pretrained tag / weights file of the base model (default: openai,
                                           or the checkpoint's recorded tag); "none" = random weights
    external.sam_backend=sam|none          none: boxes from the projected points, no SAM model needed

:func:`split_overrides` separates these from OpenMask3D's own overrides and hands them to Hydra
with a ``+`` prefix (so they are recorded in the run's config without being in OpenMask3D's YAML).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import List, Optional, Sequence, Tuple

#: OpenAI CLIP model names (OpenMask3D's ``external.clip_model``) -> open_clip (model, pretrained).
OPENAI_TO_OPEN_CLIP = {
    "ViT-L/14@336px": ("ViT-L-14-336", "openai"),
    "ViT-L/14": ("ViT-L-14", "openai"),
    "ViT-B/16": ("ViT-B-16", "openai"),
    "ViT-B/32": ("ViT-B-32", "openai"),
}


@dataclass
class OpenDASOverride:
    """Parsed ``external.*`` override values."""

    clip_backend: str = "clip"
    opendas_checkpoint: Optional[str] = None
    opendas_model: Optional[str] = None
    opendas_pretrained: Optional[str] = None
    sam_backend: str = "sam"

    def __post_init__(self):
        if self.clip_backend not in ("clip", "opendas"):
            raise ValueError(f"external.clip_backend must be 'clip' or 'opendas', got {self.clip_backend!r}")
        if self.sam_backend not in ("sam", "none"):
            raise ValueError(f"external.sam_backend must be 'sam' or 'none', got {self.sam_backend!r}")

    def base_model(self, clip_model_name: str) -> Tuple[str, Optional[str]]:
        """(open_clip model, pretrained) of the zero-shot route for OpenMask3D's ``clip_model``."""
        name, tag = OPENAI_TO_OPEN_CLIP.get(clip_model_name, (clip_model_name, None))
        name = self.opendas_model or name
        tag = self.opendas_pretrained if self.opendas_pretrained is not None else tag
        return name, (None if tag in (None, "none", "None", "null") else tag)


_KEYS = {f"external.{f.name}": f.name for f in fields(OpenDASOverride)}


def split_overrides(args: Sequence[str]) -> Tuple[OpenDASOverride, List[str]]:
    """(our override, Hydra overrides): our keys parsed and re-emitted as ``+external.key=value``."""
    ours, hydra_args = {}, []
    for arg in args:
        key, sep, value = arg.lstrip("+").partition("=")
        if sep and key in _KEYS:
            ours[_KEYS[key]] = value
            hydra_args.append(f"+{key}={value}")
        else:
            hydra_args.append(arg)
    return OpenDASOverride(**ours), hydra_args
