"""An example OpenDAS checkpoint for the integration fixtures (generated; random prompts).

The integration READMEs name a checkpoint folder in their commands; on a machine without a trained
encoder this writes one: an OpenDAS encoder over a small base model whose weights are a file (so the
checkpoint reloads bit for bit), with prompts drawn N(0, 0.5) so that it visibly differs from the
base model. It checks the wiring of a pipeline, not accuracy: train a real one with ``opendas train``.
"""

from __future__ import annotations

import os
from typing import Optional

EXAMPLE_NOTE = "generated example checkpoint (random prompts, not trained): checks the wiring only"


def write_example_checkpoint(directory: str, model_name: str, pretrained: Optional[str], seed: int = 0,
                             visual_tokens: int = 2, text_tokens: int = 4) -> str:
    """Write the example checkpoint to ``directory``; ``pretrained`` is recorded as an absolute path
    when it is a file. Returns ``directory``."""
    import torch

    import opendas_encoder as oe

    if pretrained and os.path.isfile(pretrained):
        pretrained = os.path.abspath(pretrained)
    enc = oe.create_model(model_name, pretrained=pretrained,
                          prompts=oe.PromptConfig(visual_tokens=visual_tokens, text_tokens=text_tokens,
                                                  text_init="a photo of a"))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # prompts that visibly change the features
        for p in enc.prompt_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return oe.save_checkpoint(enc, directory, dataset="generated", note=EXAMPLE_NOTE)
