"""OVSeg's CLIP as an open_clip model: register its architecture and weights, build an encoder in one call.

OVSeg classifies regions with its own (fine-tuned) CLIP, stored in OpenAI's layout: an OpenAI CLIP
file (TorchScript archive or state dict) for ``MODEL.CLIP_ADAPTER.CLIP_MODEL_NAME``, or inside an
OVSeg Detectron2 checkpoint under ``clip_adapter.clip_model.``. To adapt *that* CLIP with OpenDAS, or
to compare an OpenDAS encoder with OVSeg on the same base weights, open_clip must know its
architecture. This module reads the weights, infers the architecture the way OVSeg's
``clip.model.build_model`` does (ViT CLIP: heads = width / 64, QuickGELU), writes an open_clip model
config and the weights (safetensors) and registers the config::

    from integrations.ovseg.clip_weights import ovseg_clip_encoder, register_ovseg_clip
    encoder = ovseg_clip_encoder("ovseg_swinbase_vitL14_ft_mpt.pth", "runs/ovseg_clip")  # zero prompts
    reg = register_ovseg_clip("ovseg_swinbase_vitL14_ft_mpt.pth", "runs/ovseg_clip")
    model = oe.create_model(reg["model_name"], reg["weights"], prompts=oe.PromptConfig())  # to train

With zero prompts the encoder equals OVSeg's CLIP without mask prompts (``MASK_PROMPT_FWD False``)
and, queried with bare class names, OVSeg's CLIP with the template ``"{}."`` (OpenDAS encodes
``"<learned context> <name>."``; here the context is empty). OVSeg's mask-prompt embeddings
(``visual.mask_embedding``) are not part of open_clip's CLIP and are dropped.

A CLIP *file* is read the way OVSeg's ``clip.load`` reads it: ``build_model`` calls OpenAI's
``convert_weights``, which rounds every Conv/Linear weight and bias, the attention input projection
and ``text_projection`` / ``visual.proj`` to float16 (on the CPU ``clip.load`` then casts back to
float32). The same rounding is applied here (:func:`round_like_clip_load`), so the encoder's weights
equal those OVSeg runs with, bit for bit. Weights from an OVSeg Detectron2 checkpoint or from OVSeg's
CLIP module are taken as they are (OVSeg copies them into its model unchanged).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, Optional, Union

import torch
from torch import nn

#: prefix of OVSeg's CLIP inside its Detectron2 checkpoints
OVSEG_CHECKPOINT_PREFIX = "clip_adapter.clip_model."
#: tensors of OVSeg's / OpenAI's CLIP files that open_clip's CLIP does not have
DROPPED_KEYS = ("visual.mask_embedding", "input_resolution", "context_length", "vocab_size")


#: state-dict key endings of the tensors OpenAI's ``convert_weights`` turns into float16
_FP16_SUFFIXES = ("conv1.weight", ".in_proj_weight", ".in_proj_bias", ".out_proj.weight", ".out_proj.bias",
                  ".c_fc.weight", ".c_fc.bias", ".c_proj.weight", ".c_proj.bias")
_FP16_KEYS = ("text_projection", "visual.proj")


def round_like_clip_load(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The float16 rounding of OpenAI's ``convert_weights`` (OVSeg's ``clip.load``), in float32."""
    return {k: (v.half().float() if k in _FP16_KEYS or k.endswith(_FP16_SUFFIXES) else v.float())
            for k, v in sd.items()}


def _read_file(path: str) -> Dict[str, torch.Tensor]:
    """Tensors of a CLIP file (rounded as clip.load does) or of an OVSeg Detectron2 checkpoint."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"OVSeg CLIP weights not found: {path}")
    try:  # OpenAI's released CLIP files are TorchScript archives (OVSeg's clip.load reads them so)
        return round_like_clip_load(dict(torch.jit.load(path, map_location="cpu").state_dict()))
    except RuntimeError:
        pass
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure: say what the file is not
        raise ValueError(f"{path}: neither a TorchScript CLIP archive nor a weights-only torch file "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):  # Detectron2 checkpoint: as stored
        return obj["model"]
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    if any(k.startswith(OVSEG_CHECKPOINT_PREFIX) for k in obj):
        return obj
    return round_like_clip_load({k: v for k, v in obj.items() if isinstance(v, torch.Tensor)})


def ovseg_clip_state_dict(source: Union[str, nn.Module, Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """OpenAI-layout CLIP tensors from a file, OVSeg's CLIP module or a state dict (OVSeg checkpoint
    prefix stripped, OVSeg-only keys dropped)."""
    if isinstance(source, nn.Module):
        sd = source.state_dict()
    elif isinstance(source, dict):
        sd = source
    else:
        sd = _read_file(str(source))
    if any(k.startswith(OVSEG_CHECKPOINT_PREFIX) for k in sd):
        sd = {k[len(OVSEG_CHECKPOINT_PREFIX):]: v for k, v in sd.items() if k.startswith(OVSEG_CHECKPOINT_PREFIX)}
    sd = {k: v for k, v in sd.items() if k not in DROPPED_KEYS and isinstance(v, torch.Tensor)}
    where = source if isinstance(source, str) else type(source).__name__
    if "visual.proj" not in sd:
        if "visual.attnpool.positional_embedding" in sd:
            raise ValueError(f"{where}: a ResNet CLIP; OpenDAS prompts need a ViT CLIP")
        raise ValueError(f"{where}: no CLIP tensors (expected OpenAI CLIP keys such as visual.proj, "
                         f"or an OVSeg checkpoint with {OVSEG_CHECKPOINT_PREFIX}*)")
    return sd


def ovseg_clip_config(sd: Dict[str, torch.Tensor]) -> dict:
    """open_clip model config of an OpenAI-layout ViT CLIP state dict (OVSeg's ``build_model`` rules)."""
    vision_width = sd["visual.conv1.weight"].shape[0]
    patch = sd["visual.conv1.weight"].shape[-1]
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    vision_layers = len([k for k in sd if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
    text_width = sd["ln_final.weight"].shape[0]
    text_layers = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks")})
    return {
        "embed_dim": int(sd["text_projection"].shape[1]),
        "quick_gelu": True,
        "vision_cfg": {"image_size": int(patch * grid), "layers": vision_layers, "width": int(vision_width),
                       "patch_size": int(patch), "head_width": 64},
        "text_cfg": {"context_length": int(sd["positional_embedding"].shape[0]),
                     "vocab_size": int(sd["token_embedding.weight"].shape[0]), "width": int(text_width),
                     "heads": int(text_width // 64), "layers": text_layers},
    }


def register_ovseg_clip(source: Union[str, nn.Module, Dict[str, torch.Tensor]], out_dir: str,
                        name: Optional[str] = None) -> Dict[str, str]:
    """Write ``<out_dir>/<name>.json`` (open_clip config) and ``<name>.safetensors`` (the weights),
    register the config with open_clip. ``name`` defaults to ``ovseg-clip-<first 10 hex of the
    weights' SHA-256>``. Returns ``{"model_name", "model_config", "weights"}``; pass
    ``model_config`` to ``--opendas-model-config`` / ``--model-config`` of the launchers."""
    import open_clip
    from safetensors.torch import save_file

    sd = ovseg_clip_state_dict(source)
    config = ovseg_clip_config(sd)
    tensors = {k: v.detach().to(torch.float32).contiguous().cpu() for k, v in sd.items()}
    if name is None:
        h = hashlib.sha256()
        for k in sorted(tensors):
            h.update(k.encode())
            h.update(tensors[k].numpy().tobytes())
        name = f"ovseg-clip-{h.hexdigest()[:10]}"
    os.makedirs(out_dir, exist_ok=True)
    cfg_path = os.path.abspath(os.path.join(out_dir, name + ".json"))
    weights = os.path.abspath(os.path.join(out_dir, name + ".safetensors"))
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    save_file(tensors, weights)
    open_clip.add_model_config(cfg_path)
    return {"model_name": name, "model_config": cfg_path, "weights": weights}


def ovseg_clip_encoder(source: Union[str, nn.Module, Dict[str, torch.Tensor]], out_dir: str, prompts=None,
                       device=None, name: Optional[str] = None):
    """An ``opendas_encoder`` encoder over OVSeg's CLIP in one call (``prompts`` default: none, i.e.
    OVSeg's CLIP itself behind the encoder API)."""
    import opendas_encoder as oe

    reg = register_ovseg_clip(source, out_dir, name)
    prompts = prompts if prompts is not None else oe.PromptConfig(visual_tokens=0, text_tokens=0)
    return oe.create_model(reg["model_name"], reg["weights"], prompts=prompts, device=device).eval()
