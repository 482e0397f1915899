"""Generated OpenMask3D fixture: scenes, Mask3D-format proposals and an example checkpoint.

    python -m integrations.openmask3d.fixture DIR [--scenes N]

Writes under ``DIR`` (all generated; see ``opendas_encoder/generated/openmask3d.py`` for the data)::

    openmask3d/<scene>/...             scenes in OpenMask3D's processed layout, <scene>_masks.pt as Mask3D writes it
    scannetpp/data/<scene>/...         the same scenes in ScanNet++'s layout
    scannetpp_masks/<scene>/mesh_aligned_0.05_masks.pt   one Mask3D output folder per ScanNet++ scene
    classes.json                       class names, ids and the base classes
    encoder/base_model.safetensors     random weights of open_clip ``opendas-tiny-vit`` ("the original CLIP")
    encoder/opendas/                   an example OpenDAS checkpoint over it (random prompts)
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from opendas_encoder.generated.openmask3d import generate_openmask3d_fixture

from ..example_checkpoint import write_example_checkpoint

#: the base model of the example checkpoint (an open_clip config that ships with opendas_encoder)
EXAMPLE_MODEL = "opendas-tiny-vit"


def write_example_encoder(directory: str, seed: int = 0) -> dict:
    """Random base weights for :data:`EXAMPLE_MODEL` and an example OpenDAS checkpoint over them."""
    import torch
    from safetensors.torch import save_file

    import opendas_encoder as oe

    os.makedirs(directory, exist_ok=True)
    torch.manual_seed(seed)
    base = oe.create_model(EXAMPLE_MODEL, None, prompts=oe.PromptConfig(visual_tokens=0, text_tokens=0))
    weights = os.path.abspath(os.path.join(directory, "base_model.safetensors"))
    save_file({k: v.contiguous() for k, v in base.clip.state_dict().items()}, weights)
    ckpt = write_example_checkpoint(os.path.join(directory, "opendas"), EXAMPLE_MODEL, weights, seed=seed)
    return {"model_name": EXAMPLE_MODEL, "base_weights": weights, "opendas_checkpoint": ckpt}


def generate_fixture(root: str, num_scenes: int = 1, seed: int = 0, **scene_kwargs) -> dict:
    out = generate_openmask3d_fixture(root, num_scenes=num_scenes, seed=seed, **scene_kwargs)
    out.update(write_example_encoder(os.path.join(root, "encoder"), seed=seed))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Write the generated OpenMask3D fixture (scenes, Mask3D-format "
                                "proposals, an example OpenDAS checkpoint)")
    p.add_argument("root", help="output folder")
    p.add_argument("--scenes", type=int, default=1, help="number of generated scenes")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = generate_fixture(args.root, num_scenes=args.scenes, seed=args.seed)
    print(f"generated OpenMask3D fixture in {args.root}: scenes {', '.join(out['scenes'])} "
          f"(frames {out['image_hw'][0]}x{out['image_hw'][1]}), example checkpoint {out['opendas_checkpoint']} "
          f"(random prompts over {out['model_name']} weights {out['base_weights']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
