"""CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024): low-rank updates of the attention projections of both towers.

Placement, rank and schedule are the paper's (its code, ``MaxZanella/CLIP-LoRA``: ``run_utils.py``
defaults ``--position all --encoder both --params q k v --r 2 --alpha 1 --dropout_rate 0.25``;
``lora.py``: AdamW lr 2e-4, weight decay 1e-2, cosine to 1e-6, template ``"a photo of a {}."``):
every layer of both towers gets, on each of its query, key and value projections ``W`` (width x
width), its own pair ``A`` (rank, width), ``B`` (width, rank), and the projection becomes::

    W x + s * B A dropout(x),    s = alpha / sqrt(rank)

(``loralib/layers.py`` of that code: scaling ``lora_alpha / math.sqrt(r)``, one dropout per
projection applied to its input only, ``A`` initialised like ``nn.Linear`` (kaiming uniform,
a = sqrt(5): U(-1/sqrt(width), 1/sqrt(width))), ``B`` zero, so the untrained encoder is CLIP). The
output projection is not adapted. In eval mode there is no dropout, so the update equals the merged
weight ``W + s B A`` (tested against that merge through open_clip's own attention).

Tensors: ``visual_lora_A`` (vision layers, 3, rank, vision width), ``visual_lora_B`` (vision layers,
3, vision width, rank) and ``text_lora_A`` / ``text_lora_B`` likewise (index 1: q, k, v in
``targets`` order). ViT-B/16 at rank 2: 12 x 3 x 2 x (768 + 768) + 12 x 3 x 2 x (512 + 512) = 184,320.

Why not peft: open_clip's attention is ``nn.MultiheadAttention`` with one fused ``in_proj_weight``.
peft 0.21.2's LoRA for it (``peft.tuners.lora.layer.MultiheadAttention``) always adapts the output
projection too and puts one (A, B) pair on the fused in_proj, so q, k and v share ``A`` (rank, width)
(its docstring: "There is currently no way to specify only one of them"): a different placement
(at ViT-B/16 rank 2 it happens to count 184,320 as well: (width x 4r) in_proj + (width x 2r) out_proj
per layer, measured by ``get_peft_model`` in ``tests/test_baselines.py``). So the three low-rank pairs are
applied here on the fused projection's q, k, v slices; the open_clip model itself is not modified:
while this encoder runs, each attention module's ``forward`` is this module's (a context manager
restores it), so a zero-shot encoder over the same open_clip model stays zero-shot CLIP.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..core import engine
from ..core.encoder import AdaptedCLIP, MethodConfig, check_int
from ..core.registry import register_method
from ..core.tokens import ZERO_SHOT_TEMPLATE, TemplateTokenizer, TextInput, split_template

_PROJECTIONS = "qkv"
ENCODERS = ("both", "vision", "text")


@dataclass(frozen=True)
class CLIPLoRAConfig(MethodConfig):
    """rank: r of every low-rank pair; alpha: scaling numerator (s = alpha / sqrt(r)); dropout: on each
    adapted projection's input while training; targets: adapted projections, letters of "qkv";
    encoder: adapted towers ("both", "vision", "text"); template: the text prompt around class names."""

    rank: int = 2
    alpha: float = 1.0
    dropout: float = 0.25
    targets: str = "qkv"
    encoder: str = "both"
    template: str = ZERO_SHOT_TEMPLATE

    def __post_init__(self):
        check_int("CLIPLoRAConfig", "rank", self.rank, 1)
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha):
            raise ValueError(f"CLIPLoRAConfig.alpha must be a finite number, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"CLIPLoRAConfig.dropout must be a number in [0, 1), got {self.dropout!r}")
        if (not isinstance(self.targets, str) or not self.targets or len(set(self.targets)) != len(self.targets)
                or set(self.targets) - set(_PROJECTIONS)):
            raise ValueError(f"CLIPLoRAConfig.targets must be distinct letters of 'qkv', got {self.targets!r}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"CLIPLoRAConfig.encoder must be one of {ENCODERS}, got {self.encoder!r}")
        split_template(self.template, "CLIPLoRAConfig")

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.rank)


def _attention_modules(blocks, tower: str) -> List[nn.MultiheadAttention]:
    """The ``nn.MultiheadAttention`` of every block, refusing (by type) blocks that have none."""
    out = []
    for i, block in enumerate(blocks):
        attn = getattr(block, "attn", None)
        if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
            raise ValueError(f"cliplora: {tower} block {i} ({type(block).__name__}) has no nn.MultiheadAttention "
                             f"with a fused in_proj (got {type(attn).__name__}); CLIP-LoRA adapts open_clip's "
                             "ResidualAttentionBlock towers only")
        out.append(attn)
    return out


def lora_attention(attn: nn.MultiheadAttention, lora_a: torch.Tensor, lora_b: torch.Tensor, slots: List[int],
                   scaling: float, dropout: float, training: bool, query: torch.Tensor, key=None, value=None,
                   key_padding_mask=None, need_weights: bool = False, attn_mask=None, average_attn_weights=True,
                   is_causal: bool = False):
    """``attn``'s self-attention with low-rank updates on its q / k / v projections; ``attn.forward``'s call shape.

    lora_a (T, r, W), lora_b (T, W, r): pair t updates projection ``slots[t]`` (0 q, 1 k, 2 v) by
    ``scaling * B_t A_t dropout(x)``. query (B, L, W) batch-first, or (L, B, W); returns (output, None).
    """
    if key is not None and key is not query or value is not None and value is not query:
        raise ValueError("cliplora: only self-attention (query is key is value) is adapted")
    if key_padding_mask is not None or need_weights or is_causal:
        raise ValueError("cliplora: key_padding_mask, need_weights and is_causal are not supported")
    x = query if attn.batch_first else query.transpose(0, 1)  # (B, L, W)
    batch, length, width = x.shape
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    qkv = [q, k, v]
    for t, slot in enumerate(slots):
        xd = F.dropout(x, dropout, training) if dropout and training else x
        qkv[slot] = qkv[slot] + scaling * F.linear(F.linear(xd, lora_a[t].to(x.dtype)), lora_b[t].to(x.dtype))
    heads = attn.num_heads
    q, k, v = (t.reshape(batch, length, heads, width // heads).transpose(1, 2) for t in qkv)
    if attn_mask is not None and attn_mask.dtype == torch.bool:  # nn.MultiheadAttention: True = not allowed
        attn_mask = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(attn_mask, float("-inf"))
    elif attn_mask is not None:
        attn_mask = attn_mask.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                         dropout_p=attn.dropout if attn.training else 0.0)
    out = attn.out_proj(out.transpose(1, 2).reshape(batch, length, width))
    return (out if attn.batch_first else out.transpose(0, 1)), None


def low_rank_pairs(n_layers: int, n_targets: int, rank: int, width: int, device) -> Tuple[nn.Parameter, nn.Parameter]:
    """Fresh pairs of one tower: A (n_layers, n_targets, rank, width) ~ U(-1/sqrt(width), 1/sqrt(width))
    (``nn.Linear``'s kaiming-uniform init, a = sqrt(5)), B (n_layers, n_targets, width, rank) = 0."""
    bound = 1.0 / math.sqrt(width)
    a = torch.empty((n_layers, n_targets, rank, width), device=device, dtype=torch.float32).uniform_(-bound, bound)
    return nn.Parameter(a), nn.Parameter(torch.zeros((n_layers, n_targets, width, rank), device=device))


@contextmanager
def low_rank_attention(blocks, tower: str, lora_a: torch.Tensor, lora_b: torch.Tensor, slots: List[int],
                       scaling: float, dropout: float, training: bool) -> Iterator[None]:
    """While inside, the attention of ``blocks[i]`` runs :func:`lora_attention` with ``lora_a[i]``, ``lora_b[i]``
    (an instance ``forward`` on each ``nn.MultiheadAttention``, removed on exit: the open_clip model is not
    changed)."""
    modules = _attention_modules(blocks, tower)
    try:
        for i, attn in enumerate(modules):
            def forward(*args, _attn=attn, _i=i, **kwargs):
                return lora_attention(_attn, lora_a[_i], lora_b[_i], slots, scaling, dropout, training, *args, **kwargs)
            attn.forward = forward  # an instance attribute: nn.Module.__call__ runs it
        yield
    finally:
        for attn in modules:
            attn.__dict__.pop("forward", None)


@register_method
class CLIPLoRA(AdaptedCLIP):
    """open_clip (frozen) + low-rank q/k/v updates in every layer of the adapted towers; text is ``template``."""

    method = "cliplora"
    config_class = CLIPLoRAConfig
    tensors_file = "lora.safetensors"
    #: the paper's optimiser (``lora.py``: AdamW, lr 2e-4, weight decay 1e-2, betas torch's defaults, cosine,
    #: no warm-up), for a config that does not set these keys. The engine's cosine steps per epoch down to 0
    #: (the paper's per iteration down to 1e-6) over the epochs the config gives.
    training_defaults = {"schedule": {"optimizer": "adamw", "lr": 2e-4, "weight_decay": 1e-2, "warmup_epochs": 0}}
    learned_towers = {"visual_lora_A": "visual", "visual_lora_B": "visual", "text_lora_A": "text",
                      "text_lora_B": "text"}

    def __init__(self, clip_model: nn.Module, config: CLIPLoRAConfig = CLIPLoRAConfig(), **kwargs):
        super().__init__(clip_model, config, **kwargs)
        cfg = self.config
        self.template = TemplateTokenizer(self.tokenizer, *split_template(cfg.template, "CLIPLoRAConfig"))
        self._slots = [_PROJECTIONS.index(c) for c in cfg.targets]
        ref = self._ref()
        for tower in ("visual", "text"):
            adapted = cfg.encoder in ("both", "vision" if tower == "visual" else "text")
            if not adapted:
                self.register_parameter(f"{tower}_lora_A", None)
                self.register_parameter(f"{tower}_lora_B", None)
                continue
            blocks = self.vision_view.blocks if tower == "visual" else self.text_view.transformer.resblocks
            _attention_modules(blocks, tower)
            width = self.vision_width if tower == "visual" else self.text_width
            a, b = low_rank_pairs(len(blocks), len(self._slots), cfg.rank, width, ref.device)
            self.register_parameter(f"{tower}_lora_A", a)
            self.register_parameter(f"{tower}_lora_B", b)
        self.eval()  # dropout only while a trainer says train(): a new encoder encodes deterministically

    @contextmanager
    def _adapted(self, tower: str) -> Iterator[None]:
        """While inside, the tower's attention modules run :func:`lora_attention` with this encoder's pairs."""
        lora_a, lora_b = getattr(self, f"{tower}_lora_A"), getattr(self, f"{tower}_lora_B")
        if lora_a is None:
            yield
            return
        blocks = self.vision_view.blocks if tower == "visual" else self.text_view.transformer.resblocks
        cfg = self.config
        with low_rank_attention(blocks, tower, lora_a, lora_b, self._slots, cfg.scaling, cfg.dropout, self.training):
            yield

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """images (B, 3, H, W) -> (B, embed_dim) through the adapted image tower."""
        with self._adapted("visual"):
            features = engine.encode_image(self.clip.visual, images)
        return self._maybe_normalize(features, normalize)

    def encode_text(self, text: TextInput, normalize: bool = False) -> torch.Tensor:
        """Class names or token ids (C, L) -> (C, embed_dim): the template through the adapted text tower."""
        with self._adapted("text"):
            features = engine.encode_text(self.text_view, self.template(text))
        return self._maybe_normalize(features, normalize)
