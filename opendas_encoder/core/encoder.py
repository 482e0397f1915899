"""The encoder contract every method serves: an open_clip model plus what the method learns.

:class:`AdaptedCLIP` holds the open_clip model (``clip``, always in eval mode; frozen unless the
method trains its weights, as WiSE-FT does) and the method's own learned tensors, with open_clip's
API shape: ``encode_image``, ``encode_text``, ``forward``, ``tokenizer``, ``preprocess``,
``logit_scale``; strict learned-tensor state dicts; the base model's shape facts and fingerprint that
checkpoints are checked against. :class:`MethodConfig` is the JSON round trip of a method's config.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, fields
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .tokens import TextInput, TokenLayout
from .towers import TextTowerView, VisionTowerView, base_signature, weights_fingerprint


def default_tokenizer(clip_model: nn.Module):
    """open_clip's ``SimpleTokenizer`` with the model's context length."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=TextTowerView.of(clip_model).context_length)


def tokenizer_for(model_name: Optional[str], clip_model: nn.Module):
    """open_clip's tokenizer for a registered model name, else CLIP's SimpleTokenizer for the model."""
    import open_clip

    if model_name and model_name in open_clip.list_models():
        return open_clip.get_tokenizer(model_name)
    return default_tokenizer(clip_model)


def default_preprocess(clip_model: nn.Module):
    """open_clip's validation transform for the model (PIL image -> (3, S, S))."""
    from open_clip.model import get_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**get_model_preprocess_cfg(clip_model)), is_train=False)


class MethodConfig:
    """Mixin for a method's frozen config dataclass: JSON dict round trip (unknown keys warn and are dropped,
    so checkpoints written by newer versions keep loading, as peft does)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "method config"):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            warnings.warn(f"{source}: ignoring unknown {cls.__name__} keys {unknown}", stacklevel=2)
        return cls(**{k: v for k, v in d.items() if k in known})


def check_int(owner: str, name: str, value, minimum: int, allow_none: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is an int >= minimum (or None when allowed)."""
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        hint = "None or " if allow_none else ""
        raise ValueError(f"{owner}.{name} must be {hint}an integer >= {minimum}, got {value!r}")


def check_fraction(owner: str, name: str, value, allow_none: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a number in [0, 1] (or None when allowed); a bool is no number."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        hint = "None or " if allow_none else ""
        raise ValueError(f"{owner}.{name} must be {hint}a number in [0, 1], got {value!r}")


def normal_(shape, std: float, like: torch.Tensor) -> torch.Tensor:
    """A float32 tensor of ``shape`` on ``like``'s device drawn from N(0, std^2)."""
    return torch.empty(shape, device=like.device, dtype=torch.float32).normal_(std=std)


class AdaptedCLIP(nn.Module):
    """open_clip model + a method's learned tensors, served through the encoder contract.

    Subclasses set ``method`` (the registry name) and implement ``encode_image`` / ``encode_text``;
    their learned tensors are their own parameters outside ``clip`` (override
    :meth:`named_learned_parameters` otherwise, as WiSE-FT does). ``tensors_file`` names the
    checkpoint file that holds them ("prompts.safetensors" for prompt methods).
    """

    method: str = ""
    tensors_file: str = "prompts.safetensors"
    #: True when text features depend on the image (CoCoOp): trainers call ``compute_logits``.
    image_conditioned_text: bool = False
    #: learned tensor name -> the tower it steers ("visual" or "text"); unlisted tensors steer both
    #: (they train in any stage, e.g. MaPLe's coupled context).
    learned_towers: Dict[str, str] = {}

    def __init__(self, clip_model: nn.Module, config, tokenizer=None, preprocess=None,
                 model_name: Optional[str] = None, pretrained: Optional[str] = None, freeze_base: bool = True):
        super().__init__()
        VisionTowerView.of(clip_model.visual)
        TextTowerView.of(clip_model)
        self.clip = clip_model
        if freeze_base:
            self.clip.requires_grad_(False)
        self.clip.eval()
        self.config = config
        self.model_name = model_name
        self.pretrained = pretrained
        self.tokenizer = tokenizer if tokenizer is not None else default_tokenizer(clip_model)
        TokenLayout.of(self.tokenizer)  # refuses, by name, tokenizers whose layout the engine cannot follow
        self.preprocess = preprocess if preprocess is not None else default_preprocess(clip_model)

    # ------------------------------------------------------------------ shape facts
    @property
    def text_view(self) -> TextTowerView:
        return TextTowerView.of(self.clip)

    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    @property
    def vision_view(self) -> VisionTowerView:
        return VisionTowerView.of(self.clip.visual)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale

    @property
    def embed_dim(self) -> int:
        return self.vision_view.output_dim

    @property
    def image_size(self) -> Tuple[int, int]:
        return self.vision_view.image_size

    @property
    def context_length(self) -> int:
        return self.text_view.context_length

    @property
    def vision_width(self) -> int:
        return self.vision_view.width

    @property
    def text_width(self) -> int:
        return int(self.text_view.transformer.width)

    @property
    def vision_layers(self) -> int:
        return self.vision_view.layers

    @property
    def text_layers(self) -> int:
        return len(self.text_view.transformer.resblocks)

    def _ref(self) -> torch.Tensor:
        return next(self.clip.parameters())

    # ------------------------------------------------------------------ what the method learns
    def train(self, mode: bool = True) -> "AdaptedCLIP":
        """Set train mode on the method's modules; the open_clip model always stays in eval mode."""
        super().train(mode)
        self.clip.eval()
        return self

    def set_trainable(self, visual: bool = True, text: bool = True) -> None:
        """Choose which learned tensors receive gradients by the tower they steer (``learned_towers``):
        stage 1 of OpenDAS trains the visual ones, stage 2 the text ones."""
        flags = {"visual": visual, "text": text}
        for name, p in self.named_learned_parameters().items():
            tower = self.learned_towers.get(name.split(".")[0])
            p.requires_grad_(flags[tower] if tower else (visual or text))

    def named_learned_parameters(self) -> Dict[str, nn.Parameter]:
        """Learned tensors by checkpoint name: the module's own parameters outside ``clip``."""
        return {n: p for n, p in self.named_parameters() if not n.startswith("clip.")}

    def learned_parameters(self) -> List[nn.Parameter]:
        """Every tensor the method learns (trainable ones are those with ``requires_grad``)."""
        return list(self.named_learned_parameters().values())

    def learned_state_dict(self) -> Dict[str, torch.Tensor]:
        """Learned tensors by name (what a checkpoint stores), detached fp32 CPU copies."""
        return {n: p.detach().float().cpu().contiguous().clone() for n, p in self.named_learned_parameters().items()}

    def load_learned_state_dict(self, tensors: Dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Strictly load learned tensors; every missing, unexpected, mis-shaped or non-finite tensor is named."""
        expected = self.named_learned_parameters()
        problems = [f"missing tensor {n!r} {tuple(p.shape)}" for n, p in expected.items() if n not in tensors]
        problems += [f"unexpected tensor {n!r}" for n in tensors if n not in expected]
        problems += [f"tensor {n!r} has shape {tuple(tensors[n].shape)}, model expects {tuple(p.shape)}"
                     for n, p in expected.items() if n in tensors and tuple(tensors[n].shape) != tuple(p.shape)]
        problems += [f"tensor {n!r} holds non-finite values (NaN or inf)"
                     for n, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if problems:
            raise ValueError(f"{source}: {self.method} tensors do not match the model: " + "; ".join(problems))
        with torch.no_grad():
            for n, p in expected.items():
                p.copy_(tensors[n].to(device=p.device, dtype=p.dtype))

    def config_dict(self) -> dict:
        """Method configuration stored in checkpoints (JSON-able)."""
        return self.config.to_dict()

    def base_signature(self) -> dict:
        """Shape facts of the base model; checkpoints are refused on a mismatch."""
        return base_signature(self.clip)

    def base_fingerprint(self) -> dict:
        """Digests of every tensor of the base model's state dict (see :func:`weights_fingerprint`).

        Computed on the weights the method started from: WiSE-FT overrides it with its zero-shot copy.
        """
        return weights_fingerprint(self.clip.state_dict())

    # ------------------------------------------------------------------ encoders
    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def encode_text(self, text: TextInput, normalize: bool = False) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, images: Optional[torch.Tensor] = None, text: Optional[TextInput] = None):
        """Like open_clip: (normalised image features, normalised text features, logit_scale.exp())."""
        image_features = self.encode_image(images, normalize=True) if images is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        return image_features, text_features, self.clip.logit_scale.exp()

    @staticmethod
    def _maybe_normalize(x: torch.Tensor, normalize: bool) -> torch.Tensor:
        return F.normalize(x, dim=-1) if normalize else x

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.learned_parameters())
        return f"method={self.method!r}, model={self.model_name!r}, learned={n}"
