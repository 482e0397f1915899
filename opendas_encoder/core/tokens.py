"""Tokenisation for prompt methods: the one place where class names become template token ids.

Token input contract (every method): ``encode_text`` takes class names or the ids that
``encoder.tokenizer(names)`` returns for the bare names, and both give the same features. A method
wraps the names into its template (learned context slots, fixed words, the closing period) with a
:class:`TemplateTokenizer`; nothing outside a method ever sees slotted ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch

from .towers import TextTowerView, UnsupportedModelError

#: The hand-written prompt of zero-shot CLIP, used by every method that keeps fixed text and by the
#: zero-shot baseline; OpenDAS and the CoOp family close their prompts with the same period.
ZERO_SHOT_TEMPLATE = "a photo of a {}."

TextInput = Union[str, Sequence[str], torch.Tensor]


def as_token_ids(text: TextInput, tokenizer) -> torch.Tensor:
    """Class names (str or list of str) or token ids (B, L) -> token ids (B, L), validated."""
    if isinstance(text, str):
        text = [text]
    if isinstance(text, torch.Tensor):
        tokens = text.long()
        if tokens.ndim != 2:
            raise ValueError(f"token input must be (B, L), got shape {tuple(tokens.shape)}")
        return tokens
    text = list(text)
    if not all(isinstance(t, str) for t in text):
        raise TypeError("text input must be class names (str) or token ids (LongTensor (B, L))")
    return tokenizer(text)


def split_template(template: str, owner: str) -> Tuple[str, str]:
    """``"a photo of a {}."`` -> ``("a photo of a", ".")``; refuses templates without exactly one ``{}``."""
    if not isinstance(template, str) or template.count("{}") != 1:
        raise ValueError(f"{owner}.template must contain exactly one '{{}}' for the class name, got {template!r}")
    before, after = template.split("{}")
    return before.strip(), after.rstrip()


@dataclass(frozen=True)
class TokenLayout:
    """Where a tokenizer puts things: ``start`` leading special tokens (CLIP's start-of-text, BERT's
    [CLS]; none for SigLIP's SentencePiece), the text, one end token from ``end_ids`` (CLIP's
    end-of-text, EOS, [SEP]; absent when stripped), then ``pad_id`` up to the context length.
    Learned context goes right after the ``start`` tokens."""

    start: int
    end_ids: Tuple[int, ...]
    pad_id: int

    @staticmethod
    def of(tokenizer) -> "TokenLayout":
        """Read the layout from the tokenizer's declared special ids, checked on a probe; refuse by name."""
        name = type(tokenizer).__name__
        sot, eot = getattr(tokenizer, "sot_token_id", None), getattr(tokenizer, "eot_token_id", None)
        hf = getattr(tokenizer, "tokenizer", None)
        if sot is not None and eot is not None:  # open_clip's SimpleTokenizer (CLIP)
            layout = TokenLayout(1, (int(eot),), 0)
            starts = {int(sot)}
        elif hf is not None and hasattr(hf, "pad_token_id"):  # open_clip's HFTokenizer (SigLIP, CLIPA, ...)
            starts = {int(i) for i in (getattr(hf, "bos_token_id", None), getattr(hf, "cls_token_id", None))
                      if i is not None}
            ends = tuple(int(i) for i in (getattr(hf, "eos_token_id", None), getattr(hf, "sep_token_id", None))
                         if i is not None)
            pad = int(hf.pad_token_id if hf.pad_token_id is not None else 0)
            try:
                first = int(tokenizer(["a"])[0, 0])
            except Exception as exc:  # the tokenizer itself failed: say which one
                raise UnsupportedModelError(f"tokenizer {name} failed on ['a']: {exc}") from exc
            layout = TokenLayout(1 if first in starts else 0, ends, pad)
        else:
            raise UnsupportedModelError(
                f"tokenizer {name} declares neither CLIP's start/end-of-text ids (sot_token_id, eot_token_id) nor a "
                "Hugging Face tokenizer's special ids; prompt methods need to know where the text starts and ends")
        try:
            probe = tokenizer(["a b c"])
        except Exception as exc:
            raise UnsupportedModelError(f"tokenizer {name} failed on ['a b c']: {exc}") from exc
        row = probe[0]
        if not isinstance(probe, torch.Tensor) or probe.ndim != 2 or \
                (layout.start and int(row[0]) not in starts) or int(layout.end_of_text(probe)[0]) <= layout.start:
            raise UnsupportedModelError(f"tokenizer {name} does not lay out ids as its special tokens say "
                                        f"(probe 'a b c' -> {row[:8].tolist()}...)")
        return layout

    def end_of_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B,) position of the first end or pad id after the start tokens (the text ends there)."""
        body = tokens[:, self.start:]
        stop = body == self.pad_id
        for i in self.end_ids:
            stop |= body == i
        stop = torch.cat([stop, torch.ones_like(stop[:, :1])], dim=1)  # a full row ends at the length
        return self.start + stop.int().argmax(dim=1)


class TemplateTokenizer:
    """Bare class names (or their tokenizer ids) -> ids of ``[start, slots, prefix, name, suffix, end, pad...]``.

    ``n_slots`` placeholder positions right after the start tokens are where a method's layer-0
    context goes (their ids are never embedded: the context replaces them). ``prefix`` and
    ``suffix`` are fixed words (e.g. CoCoOp learns over "a photo of a", whose first ``n_ctx`` ids
    are then the context positions; "." closes the prompt as in CoOp/MaPLe). Names too long for the
    context length are cut; the end token is always kept. Returns (B, L) like the tokenizer, with the
    tokenizer's own start, end and pad ids (:class:`TokenLayout`).
    """

    SLOT_ID = 0

    def __init__(self, tokenizer, prefix: str = "", suffix: str = "", n_slots: int = 0):
        self.tokenizer = tokenizer
        self.layout = TokenLayout.of(tokenizer)
        self.prefix = prefix
        self.suffix = suffix
        self.n_slots = int(n_slots)
        self.prefix_ids = self._inner_ids(prefix)
        self.suffix_ids = self._inner_ids(suffix)

    def _inner_ids(self, phrase: str) -> List[int]:
        ids = phrase_ids(self.tokenizer, phrase, self.layout)
        return [] if ids is None else ids.tolist()

    @property
    def context_start(self) -> int:
        """Index of the first context position (right after the start tokens)."""
        return self.layout.start

    @property
    def context_positions(self) -> int:
        """Positions after the start tokens that a layer-0 context may replace (slots + prefix)."""
        return self.n_slots + len(self.prefix_ids)

    def __call__(self, text: TextInput) -> torch.Tensor:
        tokens = as_token_ids(text, self.tokenizer)
        head = [self.SLOT_ID] * self.n_slots + self.prefix_ids
        if not head and not self.suffix_ids:
            return tokens
        batch, length = tokens.shape
        start = self.layout.start
        room = length - start - 1 - len(head) - len(self.suffix_ids)
        if room < 0:
            raise ValueError(f"template {self.prefix!r} ... {self.suffix!r} with {self.n_slots} context slots "
                             f"does not fit the context length {length}")
        end_pos = self.layout.end_of_text(tokens)                          # (B,)
        name_len = (end_pos - start).clamp(min=0, max=room)               # (B,)
        device, dtype = tokens.device, tokens.dtype
        end_tok = tokens.gather(1, end_pos.clamp(max=length - 1).unsqueeze(1))
        end_tok = torch.where(end_pos.unsqueeze(1) < length, end_tok, torch.full_like(end_tok, self.layout.pad_id))
        tail = torch.cat([torch.tensor(self.suffix_ids, dtype=dtype, device=device).unsqueeze(0).expand(batch, -1),
                          end_tok], dim=1)
        pos = torch.arange(length, device=device).unsqueeze(0).expand(batch, -1)   # (B, L)
        h = start + len(head)
        name_end = h + name_len.unsqueeze(1)
        out = torch.full_like(tokens, self.layout.pad_id)
        out[:, :start] = tokens[:, :start]
        if head:
            out[:, start:h] = torch.tensor(head, dtype=dtype, device=device)
        in_name = (pos >= h) & (pos < name_end)
        out = torch.where(in_name, tokens.gather(1, (pos - h + start).clamp(0, length - 1)), out)
        tail_idx = pos - name_end
        in_tail = (tail_idx >= 0) & (tail_idx < tail.shape[1])
        return torch.where(in_tail, tail.gather(1, tail_idx.clamp(0, tail.shape[1] - 1)), out)


def end_of_text_positions(tokens: torch.Tensor, view: TextTowerView) -> torch.Tensor:
    """(B,) index of the end-of-text token of each row, as the tower's pooling finds it."""
    if view.pool_type == "eos" and view.eos_id is not None:
        return (tokens == view.eos_id).int().argmax(dim=1)
    return tokens.argmax(dim=1)


def trim_after_end_of_text(tokens: torch.Tensor, view: TextTowerView) -> torch.Tensor:
    """Drop padding after the last end-of-text token (exact for causal towers pooled at that token).

    With a causal mask no position attends to later ones, so the pooled end-of-text output does not
    depend on the padding; 77 positions shrink to the longest prompt (e.g. 9 for short class names).
    Tokens come back unchanged for non-causal towers.
    """
    if not view.causal or view.pool_type == "last":
        return tokens
    keep = int(end_of_text_positions(tokens, view).max()) + 1
    return tokens[:, :keep] if keep < tokens.shape[1] else tokens


def phrase_ids(tokenizer, phrase: str, layout: Optional[TokenLayout] = None) -> Optional[torch.Tensor]:
    """Token ids of ``phrase`` without start / end / pad tokens (None for an empty phrase)."""
    if not phrase.strip():
        return None
    layout = layout or TokenLayout.of(tokenizer)
    tokens = tokenizer([phrase])
    return tokens[0, layout.start:int(layout.end_of_text(tokens)[0])]
