"""WiSE-FT (Wortsman et al., CVPR 2022): fine-tune one CLIP tower, then interpolate with zero-shot weights.

``wiseft-text`` trains the text tower, ``wiseft-visual`` the image tower (the other stays frozen),
``wiseft-both`` both towers together (one stage, each tower with its own merge coefficient and, with
``visual_lr_scale``, its own learning rate: issue 24's weight-space candidate, not a baseline of the
paper); text is encoded with ``template`` ("a photo of a {}."). After training, :meth:`WiSEFT.finalize`
sets every tower weight to ``theta = (1 - alpha) * theta_zero_shot + alpha * theta_fine_tuned``
(alpha = 0: zero-shot CLIP exactly; alpha = 1: the fine-tuned weights exactly).

The zero-shot weights are kept as non-persistent buffers; checkpoints store the fine-tuned tower
weights (names relative to the open_clip model) and the method config records ``alpha`` and whether
the weights were interpolated, so loading onto the zero-shot base model rebuilds the same encoder.

Trained tensors on ViT-L-14 (paper Tab. 6: 123M / 304M): the visual tower with its projection,
303,966,208; the text tower without its output projection (token and positional embeddings, the 12
blocks, ``ln_final``), 123,060,480 (with the projection it would be 123,650,304, i.e. 124M); both,
427,026,688 (every ViT-L-14 weight but ``logit_scale`` and ``text_projection``). ``train_projection``
overrides the projection choice.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List, Optional

import torch
from torch import nn

from ..core import engine
from ..core.encoder import AdaptedCLIP, MethodConfig, check_fraction
from ..core.registry import register_method
from ..core.tokens import ZERO_SHOT_TEMPLATE, TemplateTokenizer, split_template
from ..core.towers import weights_fingerprint


@dataclass(frozen=True)
class WiSEFTConfig(MethodConfig):
    """alpha: interpolation weight of the fine-tuned weights; train_projection: fine-tune the tower's
    output projection too (None: visual yes, text no, matching the paper's counts); template: the
    text prompt; interpolated: whether the live weights are the interpolation (set by ``finalize``)."""

    alpha: float = 0.5
    train_projection: Optional[bool] = None
    template: str = ZERO_SHOT_TEMPLATE
    interpolated: bool = False

    def __post_init__(self):
        check_fraction("WiSEFTConfig", "alpha", self.alpha)
        if self.train_projection not in (None, True, False):
            raise ValueError(f"WiSEFTConfig.train_projection must be None or a bool, got {self.train_projection!r}")
        if not isinstance(self.interpolated, bool):
            raise ValueError(f"WiSEFTConfig.interpolated must be a bool, got {self.interpolated!r}")
        split_template(self.template, "WiSEFTConfig")


@dataclass(frozen=True)
class WiSEFTBothConfig(WiSEFTConfig):
    """WiSE-FT of both towers. alpha_visual / alpha_text: each tower's interpolation weight (None: ``alpha``);
    visual_lr_scale: the image tower's learning rate as a multiple of the schedule's (the text tower trains at
    the schedule's lr)."""

    alpha_visual: Optional[float] = None
    alpha_text: Optional[float] = None
    visual_lr_scale: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        for name in ("alpha_visual", "alpha_text"):
            check_fraction("WiSEFTBothConfig", name, getattr(self, name), allow_none=True)
        scale = self.visual_lr_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.0 < scale < float("inf"):
            raise ValueError(f"WiSEFTBothConfig.visual_lr_scale must be a positive number, got {scale!r}")

    def tower_alpha(self, tower: str) -> float:
        """The interpolation weight of ``tower`` ("visual" or "text")."""
        own = self.alpha_visual if tower == "visual" else self.alpha_text
        return self.alpha if own is None else own


_PROJECTIONS = ("visual.proj", "text_projection", "text.text_projection")


def tower_parameter_names(clip_model: nn.Module, tower: str, train_projection: bool) -> List[str]:
    """Names (in ``clip_model``) of the parameters of its ``"text"`` or ``"visual"`` tower."""
    names = []
    for name, _ in clip_model.named_parameters():
        if name.startswith("logit_"):
            continue
        is_visual = name.startswith("visual.")
        if is_visual != (tower == "visual"):
            continue
        is_projection = name in _PROJECTIONS or name.startswith("text.text_projection.")
        if is_projection and not train_projection:
            continue
        names.append(name)
    return names


class _Store(nn.Module):
    """Tensors kept beside the model as non-persistent buffers (moved by ``.to``, not in state dicts)."""

    def __init__(self, tensors: List[torch.Tensor]):
        super().__init__()
        for i, t in enumerate(tensors):
            self.register_buffer(f"t{i}", t.detach().clone(), persistent=False)

    def tensors(self) -> List[torch.Tensor]:
        return [getattr(self, f"t{i}") for i in range(len(self._buffers))]


class WiSEFT(AdaptedCLIP):
    """open_clip with trainable towers and weight-space ensembling. Use :class:`WiSEFTText`, :class:`WiSEFTVisual`
    or :class:`WiSEFTBoth`."""

    method = ""
    tower = ""
    config_class = WiSEFTConfig
    tensors_file = "towers.safetensors"  # whole fine-tuned tower weights, not prompts

    def __init__(self, clip_model: nn.Module, config: WiSEFTConfig = WiSEFTConfig(), **kwargs):
        if self.tower not in ("text", "visual", "both"):
            raise TypeError("use WiSEFTText, WiSEFTVisual or WiSEFTBoth")
        super().__init__(clip_model, config, **kwargs)
        cfg = self.config
        towers = ("visual", "text") if self.tower == "both" else (self.tower,)
        self._names = [name for tower in towers for name in tower_parameter_names(
            self.clip, tower, (tower == "visual") if cfg.train_projection is None else cfg.train_projection)]
        params = dict(self.clip.named_parameters())
        self.set_trainable(True, True)
        self.zero_shot = _Store([params[n] for n in self._names])
        self.fine_tuned: Optional[_Store] = None
        self.template = TemplateTokenizer(self.tokenizer, *split_template(cfg.template, "WiSEFTConfig"))
        if cfg.interpolated:  # a config from a finalized checkpoint: weights arrive via load_learned_state_dict
            self.config = replace(cfg, interpolated=False)
            self._pending_alpha = cfg.alpha
        else:
            self._pending_alpha = None

    def set_trainable(self, visual: bool = True, text: bool = True) -> None:
        """Train the fine-tuned tower when its modality's flag is set (the engine calls this per stage).

        Also restores ``requires_grad`` after something froze the shared open_clip model (e.g. a
        zero-shot wrapper built over ``self.clip``).
        """
        for name, p in self.named_learned_parameters().items():
            p.requires_grad_(visual if name.startswith("visual.") else text)

    def base_fingerprint(self) -> dict:
        """Fingerprint of the zero-shot weights this encoder started from (the live ones are fine-tuned)."""
        state = self.clip.state_dict()
        state.update(zip(self._names, self.zero_shot.tensors()))
        return weights_fingerprint(state)

    def named_learned_parameters(self) -> Dict[str, nn.Parameter]:
        params = dict(self.clip.named_parameters())
        return {n: params[n] for n in self._names}

    def learned_state_dict(self) -> Dict[str, torch.Tensor]:
        """The fine-tuned tower weights (also after :meth:`finalize`), fp32 CPU copies."""
        if self.fine_tuned is None:
            return super().learned_state_dict()
        return {n: t.detach().float().cpu().contiguous().clone()
                for n, t in zip(self._names, self.fine_tuned.tensors())}

    def load_learned_state_dict(self, tensors: Dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Load fine-tuned tower weights; re-apply the interpolation when the checkpoint was finalized."""
        alpha = self.config.alpha if self.fine_tuned is not None else self._pending_alpha
        super().load_learned_state_dict(tensors, source)
        self.fine_tuned = None
        self.config = replace(self.config, interpolated=False)
        self._pending_alpha = None
        if alpha is not None:  # the recorded weight(s): finalize() without an argument keeps per-tower ones
            self.config = replace(self.config, alpha=alpha)
            self.finalize()

    def _tower_alpha(self, name: str) -> float:
        return self.config.alpha

    def finalize(self, alpha: Optional[float] = None) -> "WiSEFT":
        """Interpolate: theta = (1 - alpha) * zero_shot + alpha * fine_tuned (alpha None: the config's)."""
        alpha = self.config.alpha if alpha is None else alpha
        self.config = replace(self.config, alpha=alpha, interpolated=True)  # validates alpha
        params = self.named_learned_parameters()
        with torch.no_grad():
            if self.fine_tuned is None:
                self.fine_tuned = _Store([params[n] for n in self._names])
            for name, zero, tuned in zip(self._names, self.zero_shot.tensors(), self.fine_tuned.tensors()):
                a = self._tower_alpha(name)
                params[name].copy_((1.0 - a) * zero + a * tuned)
        return self

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """images (B, 3, H, W) -> (B, embed_dim) through the (possibly fine-tuned) image tower."""
        return self._maybe_normalize(engine.encode_image(self.clip.visual, images), normalize)

    def encode_text(self, text, normalize: bool = False) -> torch.Tensor:
        """Class names or token ids (C, L) -> (C, embed_dim): the template through the text tower."""
        return self._maybe_normalize(engine.encode_text(self.text_view, self.template(text)), normalize)


@register_method
class WiSEFTText(WiSEFT):
    """WiSE-FT of the text tower."""

    method = "wiseft-text"
    tower = "text"


@register_method
class WiSEFTVisual(WiSEFT):
    """WiSE-FT of the image tower."""

    method = "wiseft-visual"
    tower = "visual"


@register_method
class WiSEFTBoth(WiSEFT):
    """WiSE-FT of both towers, trained together; each tower merged with its own weight (``alpha_visual``,
    ``alpha_text``; :meth:`finalize` with an explicit ``alpha`` sets both) and trained at its own rate
    (:meth:`learning_rate_scales`)."""

    method = "wiseft-both"
    tower = "both"
    config_class = WiSEFTBothConfig

    def _tower_alpha(self, name: str) -> float:
        return self.config.tower_alpha("visual" if name.startswith("visual.") else "text")

    def finalize(self, alpha: Optional[float] = None) -> "WiSEFTBoth":
        if alpha is not None:  # one explicit weight for both towers
            self.config = replace(self.config, alpha_visual=None, alpha_text=None)
        return super().finalize(alpha)

    def learning_rate_scales(self) -> Dict[str, float]:
        """{learned parameter name: multiple of the schedule's lr} for the trainer's parameter groups."""
        return {n: self.config.visual_lr_scale if n.startswith("visual.") else 1.0 for n in self._names}
