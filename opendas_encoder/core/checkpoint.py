"""Checkpoints: a folder with the learned tensors (safetensors), ``opendas_config.json`` and a model card.

The JSON (sorted keys) records the open_clip model name and pretrained tag, the method and its
``method_config``, the base model's shape facts (widths, depths, patch size, grid, context length)
and a fingerprint of its frozen weights, the tensor file name and shapes, the package version and
free-form training metadata. Nothing is ever unpickled. Loading is strict: another base model
(shape or weights), a missing file, a corrupt or non-finite tensor file, or mismatched tensors are
refused with a message naming the folder and both sides; unknown JSON keys only warn. Folders can
live on the Hugging Face Hub (``hf-hub:ORG/REPO``, see :mod:`.hub`).

Format 1 (before opendas_encoder 0.2) kept OpenDAS's config under ``prompts`` and used two older
conventions (layer-0 visual prompts after ``ln_pre``, no closing period); such checkpoints load with
``legacy_conventions=True`` and give the features they gave then.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from typing import Dict, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from ..version import __version__
from .encoder import tokenizer_for
from .hub import CARD_NAME, HUB_PREFIX, download_checkpoint, model_card, push_checkpoint
from .registry import get_method
from .towers import VisionTowerView, base_signature, fingerprints_match, weights_fingerprint

CONFIG_NAME = "opendas_config.json"
LEGACY_TENSORS_FILE = "prompts.safetensors"
FORMAT_VERSION = 2
_KNOWN_KEYS = {"base_fingerprint", "base_model", "format", "format_version", "method", "method_config", "metadata",
               "model_name", "opendas_encoder_version", "pretrained", "prompts", "tensors", "tensors_file"}


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (never a half-written file).

    The file gets the mode ``open()`` would give it (0666 less the umask: 0644 by default), not
    ``mkstemp``'s private 0600."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    """The process's umask (read by setting and restoring it: the os module has no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def save_checkpoint(model, directory: str, push_to_hub: Optional[str] = None, **metadata) -> str:
    """Write ``model``'s learned tensors, configuration and model card to ``directory`` (created; files
    replaced atomically); with ``push_to_hub="ORG/REPO"`` upload the folder to the Hugging Face Hub.

    ``metadata`` is free-form JSON-serialisable training information (dataset, epochs, seed, results,
    command). Returns the directory.
    """
    os.makedirs(directory, exist_ok=True)
    tensors = model.learned_state_dict()
    atomic_write_bytes(os.path.join(directory, model.tensors_file), safetensors_bytes(tensors, metadata={"format": "pt"}))
    config = {
        "format": "opendas_encoder.checkpoint",
        "format_version": FORMAT_VERSION,
        "method": model.method,
        "method_config": model.config_dict(),
        "model_name": model.model_name,
        "pretrained": model.pretrained,
        "base_model": model.base_signature(),
        "base_fingerprint": model.base_fingerprint(),
        "tensors_file": model.tensors_file,
        "tensors": {k: list(v.shape) for k, v in sorted(tensors.items())},
        "opendas_encoder_version": __version__,
        "metadata": metadata,
    }
    _write_config_and_card(directory, config)
    if push_to_hub:
        push_checkpoint(directory, push_to_hub)
    return directory


def _write_config_and_card(directory: str, config: dict) -> None:
    text = json.dumps(config, sort_keys=True, indent=2, default=_json_default) + "\n"
    atomic_write_bytes(os.path.join(directory, CONFIG_NAME), text.encode("utf-8"))
    atomic_write_bytes(os.path.join(directory, CARD_NAME), model_card(json.loads(text)).encode("utf-8"))


def update_checkpoint_metadata(directory: str, **metadata) -> dict:
    """Merge ``metadata`` (e.g. the run's results table, the command) into a saved checkpoint's record
    and rewrite its model card; the tensors are untouched. Returns the updated config."""
    path = os.path.join(directory, CONFIG_NAME)
    config = read_checkpoint_config(directory)
    with open(path, encoding="utf-8") as f:
        stored = json.load(f)  # keep the stored format (read_checkpoint_config converts format 1)
    stored.setdefault("metadata", {}).update(metadata)
    _write_config_and_card(directory, stored)
    config["metadata"] = stored["metadata"]
    return config


def read_checkpoint_config(directory: str) -> dict:
    """The parsed ``opendas_config.json`` of a checkpoint folder, in the current format (clear errors,
    unknown keys warned, format 1 converted: ``prompts`` -> ``method_config``)."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint folder not found: {directory}")
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory}: missing {CONFIG_NAME} (not an opendas_encoder checkpoint?)")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: corrupt JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object")
    unknown = sorted(set(config) - _KNOWN_KEYS)
    if unknown:
        warnings.warn(f"{path}: ignoring unknown keys {unknown}", stacklevel=2)
    for key in ("model_name", "base_model", "method"):
        if key not in config:
            raise ValueError(f"{path}: missing required key {key!r}")
    version = config.get("format_version", 1)
    if version > FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version} is newer than this package supports "
                         f"({FORMAT_VERSION}); upgrade opendas_encoder")
    if version < 2:
        method_config = dict(config.pop("prompts", None) or config.get("method_config") or {})
        if config["method"] == "opendas":
            method_config["legacy_conventions"] = True
        config["method_config"] = method_config
        config.setdefault("tensors_file", LEGACY_TENSORS_FILE)
    return config


def read_checkpoint_tensors(directory: str, file_name: str = LEGACY_TENSORS_FILE) -> Dict[str, torch.Tensor]:
    """The tensors of ``directory/file_name`` (safetensors only, never pickle)."""
    path = os.path.join(directory, file_name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory}: missing {file_name}")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: corrupt safetensors file ({exc})") from None


def _check_base_model(directory: str, config: dict, model, rebuilt_random: bool) -> None:
    """Refuse a base model whose shape facts or weights differ from the checkpoint's, naming both."""
    expected, actual = config["base_model"], base_signature(model)
    diffs = [f"{k}: checkpoint {expected[k]} vs model {actual.get(k)}" for k in sorted(expected)
             if expected[k] != actual.get(k)]
    name = config["model_name"]
    if diffs:
        raise ValueError(f"{directory}: checkpoint was trained on base model {name!r} {expected}, "
                         f"but the given model is {actual} ({', '.join(diffs)})")
    recorded = config.get("base_fingerprint")
    if not recorded or rebuilt_random:
        return
    differ = fingerprints_match(recorded, weights_fingerprint(dict(model.named_parameters())))
    if differ:
        raise ValueError(f"{directory}: the base model's weights differ from the ones the checkpoint was trained on "
                         f"({name!r}, pretrained={config.get('pretrained')!r}); differing tensors: {differ}. "
                         "Load it onto the same base weights (pretrained tag or file, or model=)")


def load_encoder(directory: str, device=None, pretrained: Optional[str] = None, model=None):
    """Rebuild an adapted encoder from a checkpoint folder or a Hub checkpoint ``"hf-hub:ORG/REPO[@rev]"``.

    The base model is built from the recorded open_clip name and pretrained tag (``pretrained``
    overrides the tag, e.g. a local copy of the same weights), or ``model`` is used: an open_clip
    model the caller already has. Returns the encoder (``encode_image``, ``encode_text``,
    ``preprocess``, ``tokenizer``) in eval mode on ``device``, with ``checkpoint_metadata``.
    """
    from .factory import create_base_model_and_transforms

    if directory.startswith(HUB_PREFIX):
        directory = download_checkpoint(directory)
    config = read_checkpoint_config(directory)
    cls = get_method(config["method"])
    method_config = cls.config_class.from_dict(config["method_config"], source=f"{directory}: method_config")
    tensors_file = config.get("tensors_file", LEGACY_TENSORS_FILE)
    tensors = read_checkpoint_tensors(directory, tensors_file)
    model_name = config["model_name"]
    tag = pretrained if pretrained is not None else config.get("pretrained")
    preprocess = None
    rebuilt_random = False
    if model is None:
        if not model_name:
            raise ValueError(f"{directory}: no model_name recorded; pass model= (an open_clip model)")
        if tag is None:
            warnings.warn(f"{directory}: the base model was recorded without pretrained weights; rebuilding it "
                          "gives new random weights (pass model= to reuse the original)", stacklevel=2)
            rebuilt_random = True
        model, _, preprocess = create_base_model_and_transforms(model_name, tag, device)
    VisionTowerView.of(model.visual)
    _check_base_model(directory, config, model, rebuilt_random)
    encoder = cls(model, method_config, tokenizer=tokenizer_for(model_name, model), preprocess=preprocess,
                  model_name=model_name, pretrained=tag)
    encoder.load_learned_state_dict(tensors, source=os.path.join(directory, tensors_file))
    if device is not None:
        encoder.to(device)
    encoder.eval()
    encoder.checkpoint_metadata = config.get("metadata", {})
    return encoder
