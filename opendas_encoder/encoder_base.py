"""The encoder contract shared by :class:`~opendas_encoder.PromptedCLIP` and the baselines.

A frozen open_clip model (``clip``, always in eval mode) plus a method's own learned tensors, with
open_clip's API shape: ``encode_image``, ``encode_text``, ``forward``, ``tokenizer``, ``preprocess``,
strict checkpoint tensors and the shape facts that checkpoints are checked against.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .towers import TextTowerView, _check_vision_tower, base_signature


def default_tokenizer(clip_model: nn.Module):
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=int(TextTowerView.of(clip_model).positional_embedding.shape[0]))


def default_preprocess(clip_model: nn.Module):
    from open_clip.model import get_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**get_model_preprocess_cfg(clip_model)), is_train=False)



class FrozenCLIPEncoder(nn.Module):
    """Frozen open_clip model + a method's learned tensors, served through the encoder contract.

    The base of :class:`~opendas_encoder.PromptedCLIP` and of every baseline. Subclasses set
    ``method`` and implement ``encode_image`` / ``encode_text``; their learned tensors are their own
    parameters outside ``clip`` (override :meth:`named_learned_parameters` otherwise).
    """

    method: str = ""
    #: True when text features depend on the image (CoCoOp): trainers call ``compute_logits``.
    image_conditioned_text: bool = False

    def __init__(self, clip_model: nn.Module, config, tokenizer=None, preprocess=None,
                 model_name: Optional[str] = None, pretrained: Optional[str] = None, freeze_base: bool = True):
        super().__init__()
        _check_vision_tower(clip_model.visual)
        TextTowerView.of(clip_model)
        self.clip = clip_model
        if freeze_base:
            self.clip.requires_grad_(False)
        self.clip.eval()
        self.config = config
        self.model_name = model_name
        self.pretrained = pretrained
        self.tokenizer = tokenizer if tokenizer is not None else default_tokenizer(clip_model)
        self.preprocess = preprocess if preprocess is not None else default_preprocess(clip_model)

    # ------------------------------------------------------------------ shape facts
    @property
    def text_view(self) -> TextTowerView:
        return TextTowerView.of(self.clip)

    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale

    @property
    def embed_dim(self) -> int:
        return int(self.clip.visual.output_dim)

    @property
    def image_size(self) -> Tuple[int, int]:
        return tuple(self.clip.visual.image_size)

    @property
    def context_length(self) -> int:
        return int(self.text_view.positional_embedding.shape[0])

    @property
    def vision_width(self) -> int:
        return int(self.clip.visual.transformer.width)

    @property
    def text_width(self) -> int:
        return int(self.text_view.transformer.width)

    @property
    def vision_layers(self) -> int:
        return len(self.clip.visual.transformer.resblocks)

    @property
    def text_layers(self) -> int:
        return len(self.text_view.transformer.resblocks)

    def _ref(self) -> torch.Tensor:
        return next(self.clip.parameters())

    # ------------------------------------------------------------------ training contract
    def train(self, mode: bool = True) -> "FrozenCLIPEncoder":
        """Set train mode on the method's modules; the open_clip model always stays in eval mode."""
        super().train(mode)
        self.clip.eval()
        return self

    def named_learned_parameters(self) -> Dict[str, nn.Parameter]:
        """Learned tensors by checkpoint name: the module's own parameters outside ``clip``."""
        return {n: p for n, p in self.named_parameters() if not n.startswith("clip.")}

    def prompt_parameters(self) -> List[nn.Parameter]:
        """The trainable tensors (what an optimizer should get)."""
        return list(self.named_learned_parameters().values())

    def prompt_state_dict(self) -> Dict[str, torch.Tensor]:
        """Learned tensors by name (what a checkpoint stores), detached fp32 CPU copies."""
        return {n: p.detach().float().cpu().contiguous().clone() for n, p in self.named_learned_parameters().items()}

    def load_prompt_state_dict(self, tensors: Dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Strictly load learned tensors; every missing, unexpected or mis-shaped tensor is named."""
        expected = self.named_learned_parameters()
        problems = [f"missing tensor {n!r} {tuple(p.shape)}" for n, p in expected.items() if n not in tensors]
        problems += [f"unexpected tensor {n!r}" for n in tensors if n not in expected]
        problems += [f"tensor {n!r} has shape {tuple(tensors[n].shape)}, model expects {tuple(p.shape)}"
                     for n, p in expected.items() if n in tensors and tuple(tensors[n].shape) != tuple(p.shape)]
        if problems:
            raise ValueError(f"{source}: {self.method} tensors do not match the model: " + "; ".join(problems))
        with torch.no_grad():
            for n, p in expected.items():
                p.copy_(tensors[n].to(device=p.device, dtype=p.dtype))

    def config_dict(self) -> dict:
        """Method configuration stored in checkpoints (JSON-able)."""
        return self.config.to_dict()

    def base_signature(self) -> dict:
        """Shape facts of the frozen base model; checkpoints are refused on a mismatch."""
        return base_signature(self.clip)

    # ------------------------------------------------------------------ encoders
    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def encode_text(self, text, normalize: bool = False) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, images: Optional[torch.Tensor] = None, text=None):
        """Like open_clip: (normalised image features, normalised text features, logit_scale.exp())."""
        image_features = self.encode_image(images, normalize=True) if images is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        return image_features, text_features, self.clip.logit_scale.exp()

    @staticmethod
    def _maybe_normalize(x: torch.Tensor, normalize: bool) -> torch.Tensor:
        return F.normalize(x, dim=-1) if normalize else x

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.prompt_parameters())
        return f"method={self.method!r}, model={self.model_name!r}, trainable={n}"
