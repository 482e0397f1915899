"""Checkpoints: a folder with ``prompts.safetensors`` (learned tensors only) and ``opendas_config.json``.

The JSON (sorted keys) records the open_clip model name and pretrained tag, the method and its
configuration (the :class:`PromptConfig` for OpenDAS), the shape facts of the base model, the
package version and free-form training metadata. Nothing is ever unpickled. Loading is strict:
a different base model, a missing file, a corrupt tensor file or mismatched tensors are refused
with a message naming the folder and the problem; unknown JSON keys only warn.

Other methods (the baselines) register a builder with :func:`register_method` so that their
checkpoints load through the same :func:`load_encoder`.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from typing import Callable, Dict, Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .config import PromptConfig
from .version import __version__

CONFIG_NAME = "opendas_config.json"
WEIGHTS_NAME = "prompts.safetensors"
FORMAT_VERSION = 1
_KNOWN_KEYS = {"base_model", "format", "format_version", "method", "method_config", "metadata", "model_name",
               "opendas_encoder_version", "pretrained", "prompts", "tensors"}

#: method name -> builder(clip_model, method_config: dict, tokenizer, preprocess, model_name, pretrained) -> module
_METHOD_BUILDERS: Dict[str, Callable] = {}


def register_method(name: str, builder: Callable) -> None:
    """Let :func:`load_encoder` rebuild checkpoints whose ``method`` is ``name``."""
    _METHOD_BUILDERS[name] = builder


def _build_opendas(clip_model, method_config, tokenizer, preprocess, model_name, pretrained):
    from .prompted_clip import PromptedCLIP

    return PromptedCLIP(clip_model, PromptConfig.from_dict(method_config, source="prompts"), tokenizer=tokenizer,
                        preprocess=preprocess, model_name=model_name, pretrained=pretrained)


register_method("opendas", _build_opendas)


def _atomic_write_bytes(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(model, directory: str, **metadata) -> str:
    """Write ``model``'s learned tensors and configuration to ``directory`` (created; files replaced atomically).

    ``metadata`` is free-form JSON-serialisable training information (dataset, epochs, seed, metrics).
    Returns the directory.
    """
    os.makedirs(directory, exist_ok=True)
    tensors = model.prompt_state_dict()
    from safetensors.torch import save as save_bytes

    _atomic_write_bytes(os.path.join(directory, WEIGHTS_NAME), save_bytes(tensors, metadata={"format": "pt"}))
    method = getattr(model, "method", "opendas")
    config = {
        "format": "opendas_encoder.checkpoint",
        "format_version": FORMAT_VERSION,
        "method": method,
        "model_name": model.model_name,
        "pretrained": model.pretrained,
        "base_model": model.base_signature(),
        "tensors": {k: list(v.shape) for k, v in sorted(tensors.items())},
        "opendas_encoder_version": __version__,
        "metadata": metadata,
    }
    if method == "opendas":
        config["prompts"] = model.config_dict()
    else:
        config["method_config"] = model.config_dict()
    text = json.dumps(config, sort_keys=True, indent=2, default=_json_default) + "\n"
    _atomic_write_bytes(os.path.join(directory, CONFIG_NAME), text.encode("utf-8"))
    return directory


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def read_checkpoint_config(directory: str) -> dict:
    """The parsed ``opendas_config.json`` of a checkpoint folder (clear errors, unknown keys warned)."""
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
    if config.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {config['format_version']} is newer than this package supports "
                         f"({FORMAT_VERSION}); upgrade opendas_encoder")
    return config


def read_checkpoint_tensors(directory: str) -> Dict[str, torch.Tensor]:
    """The tensors of ``prompts.safetensors`` (safetensors only, never pickle)."""
    path = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory}: missing {WEIGHTS_NAME}")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: corrupt safetensors file ({exc})") from None


def load_encoder(directory: str, device=None, pretrained: Optional[str] = None, model=None):
    """Rebuild an adapted encoder from a checkpoint folder.

    The base model is built from the recorded open_clip name and pretrained tag (``pretrained``
    overrides the tag, e.g. a local weights file), or ``model`` is used: an open_clip model the
    caller already has. Returns the encoder (``encode_image``, ``encode_text``, ``preprocess``,
    ``tokenizer``) in eval mode on ``device``.
    """
    import open_clip

    from .factory import create_base_model_and_transforms

    config = read_checkpoint_config(directory)
    tensors = read_checkpoint_tensors(directory)
    method = config["method"]
    if method == "opendas":
        method_config = config.get("prompts", {})
    else:
        from . import baselines  # noqa: F401  (registers the baseline builders)

        method_config = config.get("method_config", {})
    if method not in _METHOD_BUILDERS:
        raise ValueError(f"{directory}: unknown method {method!r} (known: {sorted(_METHOD_BUILDERS)})")
    model_name = config["model_name"]
    tag = pretrained if pretrained is not None else config.get("pretrained")
    tokenizer = preprocess = None
    if model is None:
        if not model_name:
            raise ValueError(f"{directory}: no model_name recorded; pass model= (an open_clip model)")
        if tag is None:
            warnings.warn(f"{directory}: the base model was recorded without pretrained weights; rebuilding it "
                          "gives new random weights (pass model= to reuse the original)", stacklevel=2)
        model, _, preprocess = create_base_model_and_transforms(model_name, tag, device)
        tokenizer = open_clip.get_tokenizer(model_name)
    elif model_name:
        try:
            tokenizer = open_clip.get_tokenizer(model_name)
        except Exception:
            tokenizer = None
    from .prompted_clip import _check_vision_tower, base_signature

    _check_vision_tower(model.visual)
    expected = config["base_model"]
    actual = base_signature(model)
    if expected != actual:
        diffs = ", ".join(f"{k}: checkpoint {expected.get(k)} vs model {actual.get(k)}"
                          for k in sorted(set(expected) | set(actual)) if expected.get(k) != actual.get(k))
        raise ValueError(f"{directory}: checkpoint was trained on base model {model_name!r} {expected}, "
                         f"but the given model is {actual} ({diffs})")
    encoder = _METHOD_BUILDERS[method](model, method_config, tokenizer, preprocess, model_name, tag)
    encoder.load_prompt_state_dict(tensors, source=os.path.join(directory, WEIGHTS_NAME))
    if device is not None:
        encoder.to(device)
    encoder.eval()
    encoder.checkpoint_metadata = config.get("metadata", {})
    return encoder
