"""A stand-in for OpenAI's ``clip`` module that serves an opendas_encoder model.

OpenMask3D calls ``clip.load(name, device) -> (model, preprocess)``, then
``model.encode_image(tensor)`` and (in its evaluation script) ``clip.tokenize(texts)`` +
``model.encode_text(tokens)``. :func:`install` puts a module named ``clip`` with that API into
``sys.modules``; its ``load`` returns :class:`OpenAIClipCallShape` around our encoder.

Token contract (issue 13.1): ``clip.tokenize(texts)`` returns exactly ``encoder.tokenizer(texts)``, the
plain open_clip tokenizer output of the texts; ``encode_text`` of those ids equals ``encode_text`` of
the strings (every method inserts its learned context itself, once).
"""

from __future__ import annotations

import sys
import types
from typing import Callable, List, Union

import torch


class OpenAIClipCallShape:
    """OpenAI CLIP's call shape over an opendas_encoder encoder (``encode_image``, ``encode_text``,
    ``to``, ``eval``, ``visual.input_resolution``, ``embed_dim``)."""

    def __init__(self, encoder):
        self.encoder = encoder
        self.embed_dim = int(encoder.embed_dim)
        self.visual = types.SimpleNamespace(input_resolution=int(encoder.image_size[0]), output_dim=self.embed_dim)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) -> (B, D) unnormalised, like ``clip.model.CLIP.encode_image``."""
        return self.encoder.encode_image(images)

    @torch.no_grad()
    def encode_text(self, text: Union[torch.Tensor, List[str]]) -> torch.Tensor:
        """Token ids (B, L) from ``tokenize`` (``encoder.tokenizer`` output) or bare class names -> (B, D)."""
        return self.encoder.encode_text(text)

    def to(self, device):
        self.encoder.to(device)
        return self

    def eval(self):
        self.encoder.eval()
        return self

    def __getattr__(self, name):
        return getattr(self.encoder, name)


def make_clip_module(build_encoder: Callable[[str, str], object]) -> types.ModuleType:
    """A module ``clip`` whose ``load(name, device)`` calls ``build_encoder(name, device)``."""
    module = types.ModuleType("clip")
    module.__doc__ = "opendas_encoder stand-in for OpenAI CLIP (integrations/openmask3d/clip_shim.py)"
    state = {}

    def load(name, device="cpu", jit=False, download_root=None):
        encoder = build_encoder(name, str(device))
        encoder.to(device)
        encoder.eval()
        state["encoder"] = encoder
        return OpenAIClipCallShape(encoder), encoder.preprocess

    def tokenize(texts, context_length: int = 77, truncate: bool = False):
        if "encoder" not in state:
            raise RuntimeError("clip.tokenize called before clip.load (the opendas shim tokenizes with the loaded encoder)")
        # the plain tokenizer output, never ids with context slots: encode_text inserts the context itself
        return state["encoder"].tokenizer([texts] if isinstance(texts, str) else list(texts))

    def available_models():
        return ["opendas"]

    module.load, module.tokenize, module.available_models = load, tokenize, available_models
    return module


def install(build_encoder: Callable[[str, str], object]) -> types.ModuleType:
    """Replace ``sys.modules['clip']`` by the shim (for this process); returns the shim module."""
    module = make_clip_module(build_encoder)
    sys.modules["clip"] = module
    return module
