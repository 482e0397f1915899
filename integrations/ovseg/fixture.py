"""Generated OVSeg fixture: ADE20K-layout data, OVSeg-format CLIP weights and an example checkpoint.

    python -m integrations.ovseg.fixture DIR [--images N]     # everything below, prints the commands
    python -m integrations.ovseg.fixture --ovseg-clip-only FILE  # only OVSeg's offline CLIP file

Writes under ``DIR`` (all generated, see ``opendas_encoder/generated/ovseg.py``)::

    ADEChallengeData2016/..., proposals/validation/*.npz, vocab_split.json   the data
    ovseg_clip.pt                        random CLIP weights for OVSeg's own clip.load (no download)
    encoder/model_configs/<name>.json    the tiny open_clip architecture of the OpenDAS encoder
    encoder/base_model.safetensors       its random weights ("the original CLIP")
    encoder/opendas/                     an example OpenDAS checkpoint over it (random prompts)
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from opendas_encoder.generated.ovseg import (ADE_NUM_CLASSES, OVSEG_TINY_CLIP_CONFIG, TINY_MODEL_CONFIG,  # noqa: F401
                                             TINY_MODEL_NAME, FixtureSpec, ade20k_class_names, generate_ade_fixture,
                                             write_ade_image, write_ovseg_random_clip, write_tiny_base_model)

from ..example_checkpoint import write_example_checkpoint

OVSEG_CLIP_FILE = "ovseg_clip.pt"


def write_tiny_encoder(directory: str, seed: int = 0) -> dict:
    """Tiny open_clip config + random base weights + an example OpenDAS checkpoint over them.

    Returns ``{"model_name", "model_config", "base_weights", "opendas_checkpoint"}``.
    """
    out = write_tiny_base_model(directory, seed=seed)
    out["opendas_checkpoint"] = write_example_checkpoint(os.path.join(directory, "opendas"), out["model_name"],
                                                         out["base_weights"], seed=seed)
    return out


def generate_fixture(root: str, spec: FixtureSpec = FixtureSpec(), class_names: Optional[Sequence[str]] = None,
                     with_encoder: bool = True) -> dict:
    """Write the fixture under ``root``; returns the paths written (see the module doc)."""
    out = generate_ade_fixture(root, spec, class_names)
    if with_encoder:
        out.update(write_tiny_encoder(os.path.join(root, "encoder"), seed=spec.seed))
        out["ovseg_clip"] = os.path.join(root, OVSEG_CLIP_FILE)
        out["ovseg_clip_dim"] = write_ovseg_random_clip(out["ovseg_clip"], seed=spec.seed)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Write the generated OVSeg fixture (ADE20K layout, OVSeg-format "
                                "CLIP weights, an example OpenDAS checkpoint)")
    p.add_argument("root", nargs="?", help="output folder")
    p.add_argument("--images", type=int, default=4, help="number of generated validation images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ovseg-clip-only", metavar="FILE",
                   help="write only random CLIP weights for OVSeg's clip.load to FILE and print their width")
    args = p.parse_args(argv)
    if args.ovseg_clip_only:
        dim = write_ovseg_random_clip(args.ovseg_clip_only, seed=args.seed)
        print(f"OVSeg CLIP weights (random, generated): {args.ovseg_clip_only}; "
              f"MODEL.CLIP_ADAPTER.CLIP_MODEL_NAME {args.ovseg_clip_only} MODEL.SEM_SEG_HEAD.EMBEDDING_DIM {dim}")
        return 0
    if not args.root:
        p.error("give the output folder (or --ovseg-clip-only FILE)")
    out = generate_fixture(args.root, FixtureSpec(num_images=args.images, seed=args.seed), ade20k_class_names())
    print(f"generated OVSeg fixture in {args.root}: {len(out['stems'])} ADE20K-layout images, "
          f"OVSeg CLIP weights {out['ovseg_clip']} (width {out['ovseg_clip_dim']}), "
          f"example checkpoint {out['opendas_checkpoint']} (random prompts, model config {out['model_config']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
