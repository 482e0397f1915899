"""Checkpoints: a folder with the learned tensors (safetensors), ``opendas_config.json`` and a model card.

The JSON (sorted keys) records the open_clip model name and pretrained tag, the method and its
``method_config``, the base model's shape facts (widths, depths, patch size, grid, context length)
and a fingerprint of its weights (a sha256 digest of every tensor of its state dict: name, dtype,
shape and bytes), the tensor file name (a plain file name in the folder) and shapes, the package
version and free-form training metadata. Nothing is ever unpickled. Loading is strict: another base
model (shape, or any bit of any tensor), a base recorded with random weights and not handed over, a
missing file, a corrupt or non-finite tensor file, or mismatched tensors are refused with a message
naming the folder and both sides; unknown JSON keys only warn. Folders can live on the Hugging Face
Hub (``hf-hub:ORG/REPO``, see :mod:`.hub`).

Format 1 (before opendas_encoder 0.2) kept OpenDAS's config under ``prompts`` and used two older
conventions (layer-0 visual prompts after ``ln_pre``, no closing period); such checkpoints load with
``legacy_conventions=True`` and give the features they gave then. Formats 1 and 2 recorded a weaker
fingerprint (none, or six tensors: :func:`~.towers.weights_fingerprint_v1`): they load with that
check and a warning saying what was not checked.
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from typing import Dict, Iterator, Optional, Tuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from ..errors import InputError, read_json
from ..files import atomic_write_bytes  # noqa: F401  (re-exported: training state and scan files use it)
from ..version import __version__
from .encoder import tokenizer_for
from .hub import CARD_NAME, HUB_PREFIX, download_checkpoint, model_card, push_checkpoint
from .registry import get_method
from .towers import (FINGERPRINT_VERSION, UnsupportedModelError, VisionTowerView, base_signature,
                     fingerprint_differences, fingerprints_match_v1, weights_fingerprint, weights_fingerprint_v1)

CONFIG_NAME = "opendas_config.json"
LEGACY_TENSORS_FILE = "prompts.safetensors"
#: 3: the base fingerprint covers every tensor (versions 1 and 2 load, with the check they recorded)
FORMAT_VERSION = 3
_KNOWN_KEYS = {"base_fingerprint", "base_model", "format", "format_version", "method", "method_config", "metadata",
               "model_name", "opendas_encoder_version", "pretrained", "prompts", "tensors", "tensors_file"}


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
    command); ``generated_data=True`` makes the model card say the training data was generated (training
    records it from the dataset spec). Returns the directory.
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
    config = read_json(path, CONFIG_NAME)
    if not isinstance(config, dict):
        raise InputError(path, "expected a JSON object")
    unknown = sorted(set(config) - _KNOWN_KEYS)
    if unknown:
        warnings.warn(f"{path}: ignoring unknown keys {unknown}", stacklevel=2)
    for key in ("model_name", "base_model", "method"):
        if key not in config:
            raise InputError(path, f"missing required key {key!r}")
    _check_types(path, config)
    version = config.get("format_version", 1)
    if version > FORMAT_VERSION:
        raise InputError(path, f"format_version {version} is newer than this package supports "
                               f"({FORMAT_VERSION}); upgrade opendas_encoder")
    if version < 2:
        method_config = dict(config.pop("prompts", None) or config.get("method_config") or {})
        if config["method"] == "opendas":
            method_config["legacy_conventions"] = True
        config["method_config"] = method_config
        config.setdefault("tensors_file", LEGACY_TENSORS_FILE)
    name = config.get("tensors_file", LEGACY_TENSORS_FILE)
    if not isinstance(name, str) or name in ("", ".", "..") or os.path.basename(name) != name \
            or "/" in name or "\\" in name or os.path.isabs(name):
        raise ValueError(f"{path}: tensors_file must be a plain file name inside the checkpoint folder, "
                         f"got {name!r}")
    return config


#: Types of the checkpoint record's keys (None allowed where the key may be null).
_KEY_TYPES = {"model_name": (str,), "method": (str,), "base_model": (dict,), "pretrained": (str, type(None)),
              "method_config": (dict,), "prompts": (dict, type(None)), "metadata": (dict,), "tensors_file": (str,),
              "format_version": (int,), "base_fingerprint": (dict, str, type(None))}


def _check_types(path: str, config: dict) -> None:
    for key, types in _KEY_TYPES.items():
        if key in config and (not isinstance(config[key], types) or isinstance(config[key], bool)):
            names = " or ".join("null" if t is type(None) else {"dict": "object", "str": "string"}.get(
                t.__name__, t.__name__) for t in types)
            raise InputError(path, f"{key!r} must be {names}, got {type(config[key]).__name__}")


def read_checkpoint_tensors(directory: str, file_name: str = LEGACY_TENSORS_FILE) -> Dict[str, torch.Tensor]:
    """The tensors of ``directory/file_name`` (safetensors only, never pickle)."""
    path = os.path.join(directory, file_name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory}: missing {file_name}")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, TypeError, OverflowError, RuntimeError) as exc:
        raise InputError(path, f"corrupt safetensors file ({type(exc).__name__}: {exc})") from None


@contextmanager
def _named(directory: str) -> Iterator[None]:
    """Every load error names the checkpoint: a bad record or base model is :class:`InputError` about the
    checkpoint folder (the fuzz suite holds every reader to that); a missing file and an unsupported
    model keep their types, prefixed with the folder when they do not name it."""
    try:
        yield
    except TypeError as exc:  # a record's value of the wrong type reaching a constructor (fuzzing found these)
        raise InputError.of(directory, exc) from None
    except (FileNotFoundError, UnsupportedModelError) as exc:
        if directory in str(exc):
            raise
        raise type(exc)(f"{directory}: {exc}") from exc
    except InputError:
        raise
    except ValueError as exc:
        raise InputError.of(directory, exc) from exc


def _check_base_model(directory: str, config: dict, model) -> None:
    """Refuse a base model whose shape facts or weights differ from the checkpoint's, naming both."""
    expected, actual = config["base_model"], base_signature(model)
    diffs = [f"{k}: checkpoint {expected[k]} vs model {actual.get(k)}" for k in sorted(expected)
             if expected[k] != actual.get(k)]
    name = config["model_name"]
    if diffs:
        raise ValueError(f"{directory}: checkpoint was trained on base model {name!r} {expected}, "
                         f"but the given model is {actual} ({', '.join(diffs)})")
    recorded = config.get("base_fingerprint")
    if not recorded:
        warnings.warn(f"{directory}: the checkpoint records no fingerprint of its base model's weights (written "
                      "by an older opendas_encoder): only the shape facts were checked", UserWarning, stacklevel=4)
        return
    if not isinstance(recorded, dict):
        raise ValueError(f"{directory}: base_fingerprint must be a JSON object, got {type(recorded).__name__}")
    version = recorded.get("version", 1)
    covers = "each tensor's bytes, dtype and shape" if version == FINGERPRINT_VERSION else \
        f"mean, std and a projection of {len(recorded)} tensors, with a tolerance"
    if version == 1:
        if not all(isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)
                   for k, v in recorded.items() if k != "version"):
            raise ValueError(f"{directory}: base_fingerprint (version 1) must map tensor names to 3 numbers")
        differ = fingerprints_match_v1(recorded, weights_fingerprint_v1(dict(model.named_parameters())))
        if not differ:
            warnings.warn(f"{directory}: the checkpoint records the fingerprint of {len(recorded)} tensors of its base "
                          f"model only ({', '.join(sorted(recorded))}; written before format {FORMAT_VERSION}): "
                          "other weights were not checked. Save it again (load_encoder, save_checkpoint) to record "
                          "every tensor",
                          UserWarning, stacklevel=4)
    elif version == FINGERPRINT_VERSION:
        digests = recorded.get("sha256")
        if not (isinstance(digests, dict) and all(isinstance(v, str) for v in digests.values())):
            raise ValueError(f"{directory}: base_fingerprint.sha256 must map tensor names to hex digests")
        differ = fingerprint_differences(recorded, weights_fingerprint(model.state_dict()))
    else:
        raise ValueError(f"{directory}: base_fingerprint version {version!r} is not known to this package "
                         f"(it knows 1 and {FINGERPRINT_VERSION}); upgrade opendas_encoder")
    if differ:
        shown = ", ".join(differ[:5]) + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")
        raise ValueError(f"{directory}: the base model's weights differ from the ones the checkpoint was trained on "
                         f"({name!r}, pretrained={config.get('pretrained')!r}); differing tensors: {shown} (the "
                         f"check covers {covers}). Load it onto the same base weights "
                         "(pretrained tag or file, or model=) in the precision it was trained in")


def _recorded_random(model_name: str, tag: Optional[str]) -> bool:
    """True when (model_name, tag) builds random weights (no tag, and no hf-hub: / local-dir: weights)."""
    return not tag and not str(model_name).startswith(("hf-hub:", "local-dir:"))


def _base_model(directory: str, config: dict, device, pretrained: Optional[str], model) -> Tuple[object, object, str]:
    """(open_clip model, its preprocess or None, pretrained tag) of a checkpoint, checked against its record."""
    from .factory import create_base_model_and_transforms

    model_name = config["model_name"]
    tag = pretrained if pretrained is not None else config.get("pretrained")
    preprocess = None
    if model is None:
        if not model_name:
            raise ValueError(f"{directory}: no model_name recorded; pass model= (an open_clip model)")
        if _recorded_random(model_name, tag):
            raise ValueError(f"{directory}: the checkpoint was trained on {model_name!r} with random weights "
                             "(pretrained: null), which cannot be rebuilt; hand over that base model: model= (an "
                             "open_clip model) or pretrained= a file of its weights (opendas eval --pretrained FILE)")
        try:
            model, _, preprocess = create_base_model_and_transforms(model_name, tag, device)
        except RuntimeError as exc:  # open_clip: unknown tag, weights that do not fit the architecture
            raise ValueError(f"{directory}: cannot build its base model {model_name!r} (pretrained={tag!r}): "
                             f"{exc}") from exc
    VisionTowerView.of(model.visual)
    _check_base_model(directory, config, model)
    return model, preprocess, tag


def load_base_model(directory: str, device=None, pretrained: Optional[str] = None):
    """The open_clip model a checkpoint was trained on (recorded name and pretrained tag; ``pretrained``
    overrides the tag), checked against the checkpoint's shape facts and weight fingerprint, in eval mode.

    This is zero-shot CLIP of the checkpoint for every method (WiSE-FT's own ``clip`` holds its
    interpolated weights).
    """
    if directory.startswith(HUB_PREFIX):
        directory = download_checkpoint(directory)
    with _named(directory):
        config = read_checkpoint_config(directory)
        model, _, _ = _base_model(directory, config, device, pretrained, None)
    return model.eval()


def load_encoder(directory: str, device=None, pretrained: Optional[str] = None, model=None):
    """Rebuild an adapted encoder from a checkpoint folder or a Hub checkpoint ``"hf-hub:ORG/REPO[@rev]"``.

    The base model is built from the recorded open_clip name and pretrained tag (``pretrained``
    overrides the tag, e.g. a local copy of the same weights), or ``model`` is used: an open_clip
    model the caller already has. It must be the one the checkpoint was trained on (every tensor is
    compared with the recorded fingerprint); a base recorded with random weights (pretrained None)
    cannot be rebuilt and must be handed over (``model`` or ``pretrained`` = its weights file).
    Returns the encoder (``encode_image``, ``encode_text``, ``preprocess``, ``tokenizer``) in eval
    mode on ``device``, with ``checkpoint_metadata``. Every error names the checkpoint.
    """
    if directory.startswith(HUB_PREFIX):
        directory = download_checkpoint(directory)
    with _named(directory):
        config = read_checkpoint_config(directory)
        cls = get_method(config["method"])
        method_config = cls.config_class.from_dict(config["method_config"], source=f"{directory}: method_config")
        tensors_file = config.get("tensors_file", LEGACY_TENSORS_FILE)
        tensors = read_checkpoint_tensors(directory, tensors_file)
        model_name = config["model_name"]
        model, preprocess, tag = _base_model(directory, config, device, pretrained, model)
        encoder = cls(model, method_config, tokenizer=tokenizer_for(model_name, model), preprocess=preprocess,
                      model_name=model_name, pretrained=tag)
        encoder.load_learned_state_dict(tensors, source=os.path.join(directory, tensors_file))
    if device is not None:
        encoder.to(device)
    encoder.eval()
    encoder.checkpoint_metadata = config.get("metadata", {})
    return encoder
