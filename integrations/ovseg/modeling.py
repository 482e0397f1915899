"""Detectron2 wiring: OVSeg with a choice of CLIP backend for its CLIP branch.

Importing this module imports Detectron2 and OVSeg (``OVSEG_ROOT``, see ``env.py``) and registers
the meta-architecture ``OVSegOpenDAS`` with Detectron2. Config keys (added by
:func:`add_opendas_config`, all under ``MODEL.CLIP_ADAPTER``):

* ``CLIP_BACKEND``: ``"openai"`` (OVSeg's own CLIP) or ``"opendas"`` (an ``opendas_encoder``
  checkpoint classifies the mask proposals).
* ``OPENDAS_CHECKPOINT``: the OpenDAS checkpoint folder (``prompts.safetensors`` + config JSON).
* ``OPENDAS_PRETRAINED``: optional override of the checkpoint's base-model weights (tag or file).
* ``OPENDAS_MODEL_CONFIG``: optional open_clip model-config JSON file (or folder) to register first,
  for base models that open_clip does not know.
* ``OPENDAS_PAD_SQUARE``: pad each masked crop to a square before resizing (as OpenDAS training
  crops are); default False = OVSeg's stretch to the encoder's input size.

``OVSegOpenDAS`` is OVSeg's ``OVSeg`` meta-architecture with its CLIP adapter replaced by
:class:`OpenDASMaskFormerClipAdapter`. The MaskFormer branch and the ensemble are OVSeg's own code:
the adapter keeps OVSeg's CLIP for ``get_text_features`` (the MaskFormer class embeddings are
trained against it) and only the region classification (``forward``) switches backend. Both
backends handle images with zero or one valid mask proposal (OVSeg's own adapter fails on both).
The OpenDAS encoder is invisible to Detectron2 checkpoints: it is neither saved in nor loaded from
``MODEL.WEIGHTS``, so OVSeg's weights loader cannot overwrite it.
"""

from __future__ import annotations

import logging
from typing import List, Optional

import torch
from torch import nn

from .env import add_ovseg_to_path, restore_numpy_aliases

add_ovseg_to_path()
restore_numpy_aliases()

from detectron2.config import CfgNode  # noqa: E402
from detectron2.modeling import META_ARCH_REGISTRY  # noqa: E402
from open_vocab_seg.mask_former_model import MaskFormer  # noqa: E402
from open_vocab_seg.modeling.clip_adapter import MaskFormerClipAdapter, build_text_prompt  # noqa: E402
from open_vocab_seg.ovseg_model import OVSeg  # noqa: E402

from .adapter import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, RegionClassifier, RegionConfig, masks_to_regions  # noqa: E402

logger = logging.getLogger(__name__)

CLIP_BACKENDS = ("openai", "opendas")
META_ARCHITECTURE = "OVSegOpenDAS"
#: OVSeg resizes regions for its own CLIP to 224 x 224 (hard-coded in its adapter).
OVSEG_REGION_SIZE = (224, 224)


def add_opendas_config(cfg: CfgNode) -> None:
    """Add the backend keys to a config that already has OVSeg's ``MODEL.CLIP_ADAPTER``."""
    node = cfg.MODEL.CLIP_ADAPTER
    node.CLIP_BACKEND = "openai"
    node.OPENDAS_CHECKPOINT = ""
    node.OPENDAS_PRETRAINED = ""
    node.OPENDAS_MODEL_CONFIG = ""
    node.OPENDAS_PAD_SQUARE = False


def exclude_from_checkpoints(module: nn.Module) -> None:
    """Keep ``module``'s tensors out of its parents' ``state_dict`` and ignore them when loading.

    Loading drops incoming keys under the module's prefix and removes its keys from the reported
    missing keys, so ``load_state_dict(..., strict=False)`` (Detectron2's checkpointer) leaves the
    module's weights exactly as they were.
    """
    prefixes: List[str] = []

    def drop_saved(mod, state_dict, prefix, local_metadata):
        if not prefix:  # the module's own state_dict() keeps its tensors
            return
        for key in [k for k in state_dict if k.startswith(prefix)]:
            del state_dict[key]

    def drop_loaded(mod, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        if not prefix:  # loading into the module itself is allowed
            return
        prefixes.append(prefix)
        dropped = [k for k in state_dict if k.startswith(prefix)]
        for key in dropped:
            del state_dict[key]
        if dropped:
            logger.info("ignored %d checkpoint tensors under %s (the OpenDAS encoder comes from "
                        "MODEL.CLIP_ADAPTER.OPENDAS_CHECKPOINT)", len(dropped), prefix)

    def hide_missing(mod, incompatible_keys):
        keep = [k for k in incompatible_keys.missing_keys if not any(k.startswith(p) for p in prefixes)]
        incompatible_keys.missing_keys[:] = keep
        prefixes.clear()

    module.register_state_dict_post_hook(drop_saved)
    module.register_load_state_dict_pre_hook(drop_loaded)
    module.register_load_state_dict_post_hook(hide_missing)


class OpenDASMaskFormerClipAdapter(MaskFormerClipAdapter):
    """OVSeg's ``MaskFormerClipAdapter`` whose region classification runs on ``clip_backend``.

    Same contract as OVSeg's: ``forward(image (3, H, W) 0-255, class_names, masks (K, H, W) soft,
    normalize=True) -> (logits (N, C + 1) | None, regions (N, 3, S, S) | None, valid (K,) bool)``,
    ``get_text_features``, ``get_sim_logits``, ``normalize_feature``, ``mask_thr``.
    ``get_text_features`` always uses OVSeg's CLIP (the MaskFormer branch). Parameter names are
    OVSeg's (``clip_model.*``, ``non_object_embedding``), so OVSeg checkpoints load unchanged.
    """

    def __init__(self, clip_model_name: str, text_templates, *, clip_backend: str = "openai",
                 opendas: Optional[RegionClassifier] = None, mask_fill: str = "mean",
                 region_config: Optional[RegionConfig] = None, **kwargs):
        if clip_backend not in CLIP_BACKENDS:
            raise ValueError(f"MODEL.CLIP_ADAPTER.CLIP_BACKEND must be one of {CLIP_BACKENDS}, got {clip_backend!r}")
        if clip_backend == "opendas" and opendas is None:
            raise ValueError("the opendas backend needs an OpenDAS region classifier")
        if not kwargs.get("region_resized", True):
            raise ValueError("MODEL.CLIP_ADAPTER.REGION_RESIZED=False is not supported (OVSeg does not implement it either)")
        super().__init__(clip_model_name, text_templates, mask_fill=mask_fill, **kwargs)
        self.clip_backend = clip_backend
        self.region_config = region_config or RegionConfig(
            mask_thr=self.mask_thr, expand_ratio=self.mask_expand_ratio, mask_fill=mask_fill,
            mask_matting=self.mask_matting)
        self.opendas = opendas
        if opendas is not None:
            exclude_from_checkpoints(opendas)

    def forward(self, image: torch.Tensor, text: List[str], mask: torch.Tensor, normalize: bool = True,
                fwd_w_region_mask: bool = False):
        if self.clip_backend == "opendas":
            return self.opendas(image, text, mask, normalize=normalize)
        r = masks_to_regions(image, mask, self.region_config, OVSEG_REGION_SIZE, CLIP_PIXEL_MEAN,
                             CLIP_PIXEL_STD, normalize=normalize)
        if r.regions is None:
            return None, None, r.valid
        if self.mask_prompt_fwd:
            image_features = self._mask_prompted_features(r.regions, r.region_masks)
        else:
            image_features = self.get_image_features(r.regions)
        return self.get_sim_logits(self.get_text_features(text), image_features), r.unnorm_regions, r.valid

    def _mask_prompted_features(self, regions: torch.Tensor, region_masks: torch.Tensor) -> torch.Tensor:
        # OVSeg's CLIP squeezes the mask batch, which breaks for one region: run a batch of two.
        if regions.shape[0] == 1:
            return self.get_image_features(regions.repeat(2, 1, 1, 1), region_masks.repeat(2, 1, 1, 1))[:1]
        return self.get_image_features(regions, region_masks)


def build_region_classifier(cfg: CfgNode) -> RegionClassifier:
    """The OpenDAS region classifier named by ``cfg.MODEL.CLIP_ADAPTER`` (frozen, eval mode)."""
    import opendas_encoder as oe

    node = cfg.MODEL.CLIP_ADAPTER
    if not node.OPENDAS_CHECKPOINT:
        raise ValueError("MODEL.CLIP_ADAPTER.CLIP_BACKEND is 'opendas' but MODEL.CLIP_ADAPTER.OPENDAS_CHECKPOINT "
                         "is empty: pass --opendas-checkpoint DIR")
    if node.OPENDAS_MODEL_CONFIG:
        import open_clip

        open_clip.add_model_config(node.OPENDAS_MODEL_CONFIG)
    encoder = oe.load_encoder(node.OPENDAS_CHECKPOINT, pretrained=node.OPENDAS_PRETRAINED or None)
    config = RegionConfig(mask_thr=node.MASK_THR, expand_ratio=node.MASK_EXPAND_RATIO, mask_fill=node.MASK_FILL,
                          mask_matting=node.MASK_MATTING, pad_square=node.OPENDAS_PAD_SQUARE)
    return RegionClassifier(encoder, config)


def build_clip_adapter(cfg: CfgNode) -> OpenDASMaskFormerClipAdapter:
    """OVSeg's mask adapter from ``cfg.MODEL.CLIP_ADAPTER`` with the configured backend."""
    node = cfg.MODEL.CLIP_ADAPTER
    backend = node.CLIP_BACKEND
    opendas = build_region_classifier(cfg) if backend == "opendas" else None
    return OpenDASMaskFormerClipAdapter(
        node.CLIP_MODEL_NAME,
        build_text_prompt(node),
        clip_backend=backend,
        opendas=opendas,
        mask_fill=node.MASK_FILL,
        mask_expand_ratio=node.MASK_EXPAND_RATIO,
        mask_thr=node.MASK_THR,
        mask_matting=node.MASK_MATTING,
        region_resized=node.REGION_RESIZED,
        mask_prompt_depth=node.MASK_PROMPT_DEPTH,
        mask_prompt_fwd=node.MASK_PROMPT_FWD,
    )


@META_ARCH_REGISTRY.register()
class OVSegOpenDAS(OVSeg):
    """OVSeg (MaskFormer proposals + CLIP ensemble) whose CLIP branch uses ``CLIP_BACKEND``."""

    @classmethod
    def from_config(cls, cfg):
        kwargs = MaskFormer.from_config(cfg)
        kwargs["clip_adapter"] = build_clip_adapter(cfg)
        kwargs["clip_ensemble"] = cfg.MODEL.CLIP_ADAPTER.CLIP_ENSEMBLE
        kwargs["clip_ensemble_weight"] = cfg.MODEL.CLIP_ADAPTER.CLIP_ENSEMBLE_WEIGHT
        return kwargs


def ovseg_config(config_file: str, opts: Optional[List[str]] = None) -> CfgNode:
    """OVSeg's config (Detectron2 defaults + DeepLab + OVSeg + backend keys) from its YAML and opts."""
    from detectron2.config import get_cfg
    from detectron2.projects.deeplab import add_deeplab_config
    from open_vocab_seg import add_ovseg_config

    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_ovseg_config(cfg)
    add_opendas_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts or []))
    return cfg


def build_ovseg_model(cfg: CfgNode) -> nn.Module:
    """Detectron2 ``build_model`` for a config whose META_ARCHITECTURE is OVSeg or OVSegOpenDAS
    (OVSeg is switched to OVSegOpenDAS so that the backend keys apply)."""
    from detectron2.modeling import build_model

    cfg = cfg.clone()
    cfg.defrost()
    if cfg.MODEL.META_ARCHITECTURE == "OVSeg":
        cfg.MODEL.META_ARCHITECTURE = META_ARCHITECTURE
    if cfg.MODEL.META_ARCHITECTURE != META_ARCHITECTURE:
        raise ValueError(f"MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE!r} is not supported; use OVSeg")
    return build_model(cfg)
