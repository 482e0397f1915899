"""Tokenisation for prompt methods: the one place where class names become template token ids.

Token input contract (every method): ``encode_text`` takes class names or the ids that
``encoder.tokenizer(names)`` returns for the bare names, and both give the same features. A method
wraps the names into its template (learned context slots, fixed words, the closing period) with a
:class:`TemplateTokenizer`; nothing outside a method ever sees slotted ids.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch

from .towers import TextTowerView

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


class TemplateTokenizer:
    """Bare class names (or their tokenizer ids) -> ids of ``[SOT, slots, prefix, name, suffix, EOT]``.

    ``n_slots`` placeholder positions right after the start token are where a method's layer-0
    context goes (their ids are never embedded: the context replaces them). ``prefix`` and
    ``suffix`` are fixed words (e.g. CoCoOp learns over "a photo of a", whose first ``n_ctx`` ids
    are then the context positions; "." closes the prompt as in CoOp/MaPLe). Names too long for the
    context length are cut; the end-of-text token is always kept. Returns (B, L) like the tokenizer.
    """

    SLOT_ID = 0

    def __init__(self, tokenizer, prefix: str = "", suffix: str = "", n_slots: int = 0):
        self.tokenizer = tokenizer
        self.prefix = prefix
        self.suffix = suffix
        self.n_slots = int(n_slots)
        self.prefix_ids = self._inner_ids(prefix)
        self.suffix_ids = self._inner_ids(suffix)

    def _inner_ids(self, phrase: str) -> List[int]:
        ids = phrase_ids(self.tokenizer, phrase)
        return [] if ids is None else ids.tolist()

    @property
    def context_positions(self) -> int:
        """Positions 1..n after the start token that a layer-0 context may replace (slots + prefix)."""
        return self.n_slots + len(self.prefix_ids)

    def __call__(self, text: TextInput) -> torch.Tensor:
        tokens = as_token_ids(text, self.tokenizer)
        head = [self.SLOT_ID] * self.n_slots + self.prefix_ids
        if not head and not self.suffix_ids:
            return tokens
        batch, length = tokens.shape
        room = length - 2 - len(head) - len(self.suffix_ids)
        if room < 0:
            raise ValueError(f"template {self.prefix!r} ... {self.suffix!r} with {self.n_slots} context slots "
                             f"does not fit the context length {length}")
        eot_pos = tokens.argmax(dim=1)                                   # (B,)
        name_len = (eot_pos - 1).clamp(min=0, max=room)                  # (B,)
        device, dtype = tokens.device, tokens.dtype
        head_t = torch.tensor(head, dtype=dtype, device=device)
        tail = torch.tensor(self.suffix_ids, dtype=dtype, device=device)
        tail = torch.cat([tail.unsqueeze(0).expand(batch, -1), tokens.gather(1, eot_pos.unsqueeze(1))], dim=1)
        pos = torch.arange(length, device=device).unsqueeze(0).expand(batch, -1)   # (B, L)
        h = 1 + len(head)
        name_end = h + name_len.unsqueeze(1)
        out = torch.zeros_like(tokens)
        out[:, :1] = tokens[:, :1]
        if head:
            out[:, 1:h] = head_t
        in_name = (pos >= h) & (pos < name_end)
        out = torch.where(in_name, tokens.gather(1, (pos - h + 1).clamp(0, length - 1)), out)
        tail_idx = pos - name_end
        in_tail = (tail_idx >= 0) & (tail_idx < tail.shape[1])
        out = torch.where(in_tail, tail.gather(1, tail_idx.clamp(0, tail.shape[1] - 1)), out)
        return out


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
    if not view.causal:
        return tokens
    keep = int(end_of_text_positions(tokens, view).max()) + 1
    return tokens[:, :keep] if keep < tokens.shape[1] else tokens


def phrase_ids(tokenizer, phrase: str) -> Optional[torch.Tensor]:
    """Token ids of ``phrase`` without start / end tokens (None for an empty phrase)."""
    if not phrase.strip():
        return None
    tokens = tokenizer([phrase])[0]
    return tokens[1:int(tokens.argmax())]
