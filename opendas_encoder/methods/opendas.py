"""OpenDAS (paper Sec. 4.2): a frozen open_clip model steered by deep visual and deep text prompts.

Visual: ``visual_prompts[i]`` (K_v tokens) are appended after the patch tokens at the input of
vision layer ``i < visual_depth`` (layer 0 through ``ln_pre``, as in the IVLP/MaPLe code OpenDAS
builds on), replacing the previous layer's outputs there; they never enter the pooling.
Text: ``[SOT, ctx_1..ctx_K, class name, ".", EOT]`` (MaPLe's prompt with its closing period);
``text_prompts[0]`` is the context at the token embeddings, ``text_prompts[i]`` replaces the
context outputs at the input of text layer ``i < text_depth``. The forward is the shared engine
(:mod:`opendas_encoder.core.engine`); this module only says what the prompts are.

On ViT-L-14 the defaults give 8 x 24 x 1024 + 4 x 12 x 768 = 233,472 parameters (the paper's).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator, List, Optional, Tuple, Union

import open_clip
import torch
from torch import nn

from ..core import engine
from ..core.encoder import AdaptedCLIP, MethodConfig, check_fraction, check_int
from ..core.factory import create_base_model_and_transforms
from ..core.registry import register_method
from ..core.tokens import TemplateTokenizer, TextInput, phrase_ids
from ..core.towers import TextTowerView
from .cliplora import low_rank_attention, low_rank_pairs

#: the low-rank option's scaling numerator and dropout (CLIP-LoRA's: :mod:`.cliplora`)
LOWRANK_ALPHA = 1.0
LOWRANK_DROPOUT = 0.25


@dataclass(frozen=True)
class PromptConfig(MethodConfig):
    """Deep prompts of OpenDAS.

    visual_tokens: K_v, learnable tokens appended after the patch tokens of every prompted layer.
    visual_depth: number of vision layers that get fresh prompts (None = every layer of the tower).
    text_tokens: K_t, learnable context tokens placed right after the start-of-text token.
    text_depth: number of text layers that get fresh prompts (None = every layer of the tower).
    text_init: phrase whose token embeddings initialise the layer-0 text prompts ("" = random);
        it must tokenize to at most ``text_tokens`` tokens (it fills the last ones, right before the
        class name; the others start random).
    init_std: standard deviation of the random initialisation (normal) of all other prompts.
    text_deep_init: how the text prompts of layers 1..text_depth-1 start. "random" (the paper's,
        following MaPLe: normal with ``init_std``) or "carry": the frozen model's own hidden states
        at the context positions for the layer-0 context. With a causal text tower those states do
        not depend on the class name, so the untrained *text* encoder equals zero-shot CLIP with
        "a photo of a {}." exactly (the image side still carries the random visual prompts).
    visual_start: first vision layer with prompts (0 = from the input, the paper's). Layers below it run
        the frozen tower untouched (no prompt tokens); fresh prompts enter at layers
        ``visual_start .. visual_depth - 1``, so ``visual_prompts`` has ``visual_depth - visual_start``
        rows (MMA-style: adapt only the higher layers).
    text_start: first text layer with learned prompts (0 = the paper's). Below it the context
        positions hold the frozen words of ``text_init`` (which must then fill all ``text_tokens``
        slots) and carry the frozen tower's own states, so layers ``< text_start`` compute exactly
        zero-shot CLIP's; ``text_prompts`` has ``text_depth - text_start`` rows (layers
        ``text_start .. text_depth - 1``), initialised as ``text_deep_init`` says for deep prompts.
    lowrank_rank: rank of low-rank updates of the q, k, v projections of every layer of both towers
        (CLIP-LoRA's placement, alpha 1, dropout 0.25: :mod:`.cliplora`), trained with the prompts of the
        same tower; 0 = none (the paper's, and this class's default). Issue 24's option: rank 2 in the
        training preset ``default`` (the selection rule's pick, docs/selection.md), 0 in ``paper``.
    lowrank_merge_visual, lowrank_merge_text: coefficient c of each tower's low-rank update, W + c s B A
        (WiSE-FT for the delta: 0 = the zero-shot weights, 1 = the trained ones); training chooses them on
        held-out base classes (:mod:`opendas_encoder.train.lowrank`).
    legacy_conventions: True only for checkpoints written before format 2 (opendas_encoder 0.1):
        layer-0 visual prompts skipped ``ln_pre`` and no period closed the text.

    :meth:`paper` is the paper's configuration (every field at the value of the paper, Sec. 4.2 and 5).
    """

    visual_tokens: int = 8
    visual_depth: Optional[int] = None
    text_tokens: int = 4
    text_depth: Optional[int] = None
    text_init: str = "a photo of a"
    init_std: float = 0.02
    text_deep_init: str = "random"
    visual_start: int = 0
    text_start: int = 0
    lowrank_rank: int = 0
    lowrank_merge_visual: float = 1.0
    lowrank_merge_text: float = 1.0
    legacy_conventions: bool = False

    @classmethod
    def paper(cls, **changes) -> "PromptConfig":
        """The paper's prompts: K_v = 8 in every vision layer, K_t = 4 in every text layer from "a photo of
        a", deep text prompts random N(0, 0.02) (MaPLe's), prompts from the first layer on; ``changes``
        override single fields (e.g. the token counts of the paper's Tab. 7)."""
        paper = dict(visual_tokens=8, visual_depth=None, text_tokens=4, text_depth=None, text_init="a photo of a",
                     init_std=0.02, text_deep_init="random", visual_start=0, text_start=0, lowrank_rank=0,
                     lowrank_merge_visual=1.0, lowrank_merge_text=1.0, legacy_conventions=False)
        return cls(**{**paper, **changes})

    def __post_init__(self):
        for name in ("visual_tokens", "text_tokens", "visual_start", "text_start", "lowrank_rank"):
            check_int("PromptConfig", name, getattr(self, name), 0)
        for name in ("lowrank_merge_visual", "lowrank_merge_text"):
            check_fraction("PromptConfig", name, getattr(self, name))
        for name in ("visual_depth", "text_depth"):
            check_int("PromptConfig", name, getattr(self, name), 1, allow_none=True)
        if not isinstance(self.text_init, str):
            raise ValueError(f"PromptConfig.text_init must be a string, got {self.text_init!r}")
        if self.text_deep_init not in ("random", "carry"):
            raise ValueError(f"PromptConfig.text_deep_init must be 'random' or 'carry', got {self.text_deep_init!r}")
        if isinstance(self.init_std, bool) or not (isinstance(self.init_std, (int, float)) and self.init_std >= 0):
            raise ValueError(f"PromptConfig.init_std must be a number >= 0, got {self.init_std!r}")
        if not isinstance(self.legacy_conventions, bool):
            raise ValueError(f"PromptConfig.legacy_conventions must be true or false, got {self.legacy_conventions!r}")

    def resolved(self, vision_layers: int, text_layers: int) -> "PromptConfig":
        """Copy with depths filled in for towers of the given sizes; raise if a depth is too large."""
        vd = vision_layers if self.visual_depth is None else self.visual_depth
        td = text_layers if self.text_depth is None else self.text_depth
        if vd > vision_layers:
            raise ValueError(f"visual_depth={vd} exceeds the vision tower's {vision_layers} layers")
        if td > text_layers:
            raise ValueError(f"text_depth={td} exceeds the text tower's {text_layers} layers")
        if self.visual_tokens and self.visual_start >= vd:
            raise ValueError(f"visual_start={self.visual_start} leaves no prompted vision layer (visual_depth={vd})")
        if self.text_tokens and self.text_start >= td:
            raise ValueError(f"text_start={self.text_start} leaves no prompted text layer (text_depth={td})")
        return replace(self, visual_depth=vd, text_depth=td)


@register_method
class PromptedCLIP(AdaptedCLIP):
    """A frozen open_clip model with learnable deep visual and text prompts (OpenDAS).

    Args:
        clip_model: an open_clip ``CLIP`` / ``CustomTextCLIP`` with a ViT vision tower; frozen here.
        prompts: the :class:`PromptConfig` (depths default to every layer); ``.config`` is it resolved.
        tokenizer: open_clip tokenizer; default ``SimpleTokenizer`` with the model's context length.
        preprocess: PIL -> tensor transform; default open_clip's validation transform for the model.
        model_name, pretrained: recorded in checkpoints so that the base model can be rebuilt.
        freeze_base: freeze the open_clip model (default). ``False`` leaves its ``requires_grad`` flags
            untouched, for a view that shares a model someone else trains (e.g. a zero-shot evaluator).

    Parameters: ``visual_prompts`` (visual_depth - visual_start, K_v, vision width) and ``text_prompts``
    (text_depth - text_start, K_t, text width); a tower with zero tokens has no parameter (``None``).
    """

    method = "opendas"
    config_class = PromptConfig
    learned_towers = {"visual_prompts": "visual", "text_prompts": "text", "visual_lowrank_A": "visual",
                      "visual_lowrank_B": "visual", "text_lowrank_A": "text", "text_lowrank_B": "text"}

    def __init__(self, clip_model: nn.Module, prompts: PromptConfig = PromptConfig(), tokenizer=None,
                 preprocess=None, model_name: Optional[str] = None, pretrained: Optional[str] = None,
                 freeze_base: bool = True):
        if not isinstance(prompts, PromptConfig):
            raise TypeError(f"prompts must be a PromptConfig, got {type(prompts).__name__}")
        super().__init__(clip_model, prompts, tokenizer, preprocess, model_name, pretrained, freeze_base)
        cfg = self.config = prompts.resolved(self.vision_layers, self.text_layers)
        self.template = TemplateTokenizer(self.tokenizer, suffix="" if cfg.legacy_conventions else ".",
                                          n_slots=cfg.text_tokens)
        ref = self._ref()
        if cfg.visual_tokens:
            shape = (cfg.visual_depth - cfg.visual_start, cfg.visual_tokens, self.vision_width)
            self.visual_prompts = nn.Parameter(torch.empty(shape, device=ref.device).normal_(std=cfg.init_std))
        else:
            self.register_parameter("visual_prompts", None)
        # text_start > 0: the frozen words of text_init at the layer-0 context (recomputed from the base
        # model, never saved: not a learned tensor)
        self.register_buffer("text_context_words", None, persistent=False)
        if cfg.text_tokens:
            shape = (cfg.text_depth - cfg.text_start, cfg.text_tokens, self.text_width)
            self.text_prompts = nn.Parameter(torch.empty(shape, device=ref.device).normal_(std=cfg.init_std))
            self._init_text_context(self.text_view)
        else:
            self.register_parameter("text_prompts", None)
        for tower in ("visual", "text"):  # low-rank q/k/v updates (option; none by default)
            if cfg.lowrank_rank:
                blocks = self._blocks(tower)
                width = self.vision_width if tower == "visual" else self.text_width
                a, b = low_rank_pairs(len(blocks), 3, cfg.lowrank_rank, width, ref.device)
            else:
                a = b = None
            self.register_parameter(f"{tower}_lowrank_A", a)
            self.register_parameter(f"{tower}_lowrank_B", b)
        if cfg.lowrank_rank:
            self.eval()  # the updates' dropout acts only while a trainer says train()

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def _init_text_context(self, view: TextTowerView) -> None:
        ids = phrase_ids(self.tokenizer, self.config.text_init, self.template.layout)
        if ids is None:
            return
        k = self.config.text_tokens
        if len(ids) > k:
            raise ValueError(f"text_init {self.config.text_init!r} has {len(ids)} tokens but text_tokens={k}; "
                             "use more text tokens or a shorter phrase")
        weight = view.token_embedding.weight
        words = weight[ids.to(weight.device)].float()
        if self.config.text_start == 0:
            self.text_prompts[0, k - len(ids):] = words
        elif len(ids) != k:
            raise ValueError(f"text_start={self.config.text_start} keeps the layer-0 context at the words of text_init "
                             f"{self.config.text_init!r}, which are {len(ids)} tokens: set text_tokens: {len(ids)} "
                             f"(got {k})")
        else:
            self.text_context_words = words
        if self.config.text_deep_init == "carry":
            self._carry_deep_text_prompts(view)

    @torch.no_grad()
    def _carry_deep_text_prompts(self, view: TextTowerView) -> None:
        """Deep text prompts := the frozen tower's hidden states at the context positions.

        Runs the template with an empty class name ("<layer-0 context> .") through the frozen blocks
        and stores, for each layer 0 < i < text_depth, its input at the context positions. In a causal
        tower (CLIP) the context positions never see the class name, so these are the states every
        prompt carries anyway: the untrained text encoder equals zero-shot CLIP exactly. In a
        bidirectional tower (SigLIP) they attend to the name: exact for the empty name only, an
        approximation (the name-free context) for real names.
        """
        tokens = self.template([""]).to(view.token_embedding.weight.device)
        start, k = self.template.context_start, self.config.text_tokens
        first = self.config.text_start
        x = engine.embed_text(view, tokens, self._text_context_at(0), start)
        mask = engine.causal_mask(view, tokens.shape[1])
        for i, block in enumerate(view.transformer.resblocks):
            if max(first, 1) <= i < self.config.text_depth:
                self.text_prompts[i - first] = x[0, start:start + k].float()
            x = engine.run_block(block, x, mask, use_ckpt=False)

    # ------------------------------------------------------------------ what trains
    def prompt_parameters(self) -> List[nn.Parameter]:
        """The learnable prompts (what an optimizer should get)."""
        return self.learned_parameters()

    # ------------------------------------------------------------------ low-rank updates (option)
    def _blocks(self, tower: str):
        return self.vision_view.blocks if tower == "visual" else self.text_view.transformer.resblocks

    @contextmanager
    def _lowrank(self, tower: str) -> Iterator[None]:
        """The tower's low-rank q/k/v updates, scaled by its merge coefficient, while inside (none: nothing)."""
        lora_a, lora_b = getattr(self, f"{tower}_lowrank_A"), getattr(self, f"{tower}_lowrank_B")
        merge = getattr(self.config, f"lowrank_merge_{tower}")
        if lora_a is None or merge == 0:
            yield
            return
        rank = self.config.lowrank_rank
        with low_rank_attention(self._blocks(tower), tower, lora_a, lora_b, [0, 1, 2],
                                merge * LOWRANK_ALPHA / math.sqrt(rank), LOWRANK_DROPOUT, self.training):
            yield

    # ------------------------------------------------------------------ encoders
    def _visual_prompts_at(self, layer: int) -> Optional[torch.Tensor]:
        first = self.config.visual_start
        if self.visual_prompts is None or not first <= layer < self.config.visual_depth:
            return None
        return self.visual_prompts[layer - first]

    def _text_context_at(self, layer: int) -> Optional[torch.Tensor]:
        if self.text_prompts is None or layer >= self.config.text_depth:
            return None
        first = self.config.text_start
        if layer < first:  # below the first prompted layer: the frozen words at layer 0, then their own states
            return self.text_context_words if layer == 0 else None
        return self.text_prompts[layer - first]

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """images (B, 3, H, W), preprocessed -> features (B, embed_dim)."""
        with self._lowrank("visual"):
            features = engine.encode_image(self.clip.visual, images, self._visual_prompts_at,
                                           layer0_ln_pre=not self.config.legacy_conventions)
        return self._maybe_normalize(features, normalize)

    def encode_text(self, text: TextInput, normalize: bool = False) -> torch.Tensor:
        """Class names (list of str) or ``tokenizer(names)`` ids (B, L) -> features (B, embed_dim).

        Each class name is encoded as "<learned context> <class name>."; both inputs give the same features.
        """
        with self._lowrank("text"):
            features = engine.encode_text(self.text_view, self.template(text), self._text_context_at,
                                          self.template.context_start)
        return self._maybe_normalize(features, normalize)

    def extra_repr(self) -> str:
        c = self.config
        layers = lambda start, depth: f"{depth}" if not start else f"[{start}:{depth}]"  # noqa: E731
        return (f"model={self.model_name!r}, visual={c.visual_tokens}x{layers(c.visual_start, c.visual_depth)}, "
                f"text={c.text_tokens}x{layers(c.text_start, c.text_depth)}, "
                f"trainable={sum(p.numel() for p in self.prompt_parameters())}")


# ---------------------------------------------------------------------------------------------- factory
def create_model_and_transforms(model_name: str, pretrained: Optional[str] = None,
                                prompts: PromptConfig = PromptConfig(),
                                device: Union[str, torch.device, None] = None, **kwargs
                                ) -> Tuple[PromptedCLIP, object, object]:
    """(PromptedCLIP, preprocess_train, preprocess_val), like ``open_clip.create_model_and_transforms``.

    Extra keyword arguments go to open_clip (e.g. ``precision``, ``force_image_size``).
    """
    base, preprocess_train, preprocess_val = create_base_model_and_transforms(model_name, pretrained, device, **kwargs)
    model = PromptedCLIP(base, prompts, tokenizer=open_clip.get_tokenizer(model_name), preprocess=preprocess_val,
                         model_name=model_name, pretrained=pretrained)
    return model, preprocess_train, preprocess_val


def create_model(model_name: str, pretrained: Optional[str] = None, prompts: PromptConfig = PromptConfig(),
                 device: Union[str, torch.device, None] = None, **kwargs) -> PromptedCLIP:
    """A :class:`PromptedCLIP` over ``open_clip.create_model(model_name, pretrained)``."""
    model, _, _ = create_model_and_transforms(model_name, pretrained, prompts, device, **kwargs)
    return model
