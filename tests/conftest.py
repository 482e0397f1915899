"""Shared test settings: one CPU thread, flushed denormals, tiny open_clip configs."""

import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

torch.set_num_threads(1)
torch.set_flush_denormal(True)


@pytest.fixture(scope="session")
def repo_root():
    return ROOT


def save_weights(module, path) -> str:
    """``module``'s state dict as a safetensors file at ``path`` (str), the form ``pretrained=FILE`` reads."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    return str(path)


def make_tiny_clip(seed=0, **overrides):
    """A tiny random open_clip CLIP (3 + 3 layers, 32 px) in eval mode; ``overrides`` update its tower configs."""
    import open_clip

    torch.manual_seed(seed)
    cfg = dict(embed_dim=24, vision_cfg=dict(image_size=32, layers=3, width=48, head_width=16, patch_size=8),
               text_cfg=dict(context_length=77, vocab_size=49408, width=40, heads=4, layers=3))
    for k, v in overrides.items():
        cfg[k].update(v)
    return open_clip.CLIP(**cfg).eval()


SQUARE_COLOURS = {"red square": (220, 30, 30), "green square": (30, 200, 40), "blue square": (30, 40, 220),
                  "yellow square": (230, 220, 30)}


def make_square_segments(n_per_class=6, classes=("red square", "green square", "blue square"), seed=0, size=24,
                         name="unit"):
    """Generated segments: a coloured square (its class) on random noise, ``n_per_class`` per class, class-grouped."""
    import numpy as np

    from opendas_encoder.data import ListSegmentDataset, Segment

    rng = np.random.default_rng(seed)
    segs = []
    for c in classes:
        for k in range(n_per_class):
            img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            mask = np.zeros((size, size), bool)
            y, x = rng.integers(0, size // 2, 2)
            mask[y:y + size // 2, x:x + size // 2] = True
            img[mask] = SQUARE_COLOURS[c]
            segs.append(Segment(img, mask, c, f"gen/{c}/{k}"))
    return ListSegmentDataset(segs, name=name)
