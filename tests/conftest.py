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


def make_tiny_clip(seed=0, **overrides):
    """A tiny random open_clip CLIP (3 + 3 layers, 32 px) in eval mode; ``overrides`` update its tower configs."""
    import open_clip

    torch.manual_seed(seed)
    cfg = dict(embed_dim=24, vision_cfg=dict(image_size=32, layers=3, width=48, head_width=16, patch_size=8),
               text_cfg=dict(context_length=77, vocab_size=49408, width=40, heads=4, layers=3))
    for k, v in overrides.items():
        cfg[k].update(v)
    return open_clip.CLIP(**cfg).eval()
