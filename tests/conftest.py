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
