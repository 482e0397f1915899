"""Generated 3D scenes with mask proposals written exactly as OpenMask3D's Mask3D step writes them.

Everything here is procedurally generated (labelled "generated" wherever it is reported). The scenes
(coloured boxes and cylinders in a room, posed RGB-D frames, ScanNet-encoded instance ground truth)
come from :mod:`opendas_encoder.generated.scene3d`; this module adds the proposal files in
Mask3D's format and folder conventions, so that OpenMask3D's own feature step and
``eval/run_3d.py --proposals files`` read what they would read after a real Mask3D run. Layout under
``root``::

    GENERATED                                          marker: not real data
    classes.json, scenes.txt                           classes ({class_ids, class_names, base}), scene names
    openmask3d/<scene>/{color,depth,pose,intrinsic}/   OpenMask3D's processed layout
    openmask3d/<scene>/<scene>.ply
    openmask3d/<scene>/<scene>_masks.pt                proposals, Mask3D's format (see below)
    openmask3d/gt/<scene>.txt, openmask3d/classes.json ScanNet ground truth
    scannetpp/data/<scene>/scans/mesh_aligned_0.05.ply ScanNet++'s layout (see scene3d)
    scannetpp_masks/<scene>/mesh_aligned_0.05_masks.pt Mask3D output, one ``mask_save_dir`` per scene

Proposals are the ground-truth instances (one mask per instance; a CPU machine cannot run Mask3D),
saved as ``torch.save(masks.astype(np.float16), path)`` with ``masks`` (num_points, num_masks), which
is what Mask3D's trainer does (openmask3d 3bc3fc5, ``trainer/trainer.py`` line 723).
"""

from __future__ import annotations

import os
from typing import Dict, List

import numpy as np

from .scene3d import generate_dataset, proposals_from_gt

from .ovseg import write_generated_marker

#: the PLY stem of every ScanNet++ scene, hence of every Mask3D file made from it
SCANNETPP_MESH_STEM = "mesh_aligned_0.05"


def write_mask3d_proposals(masks: np.ndarray, path: str) -> str:
    """Save proposals (num_points, num_masks) as Mask3D does: a pickled float16 NumPy array."""
    import torch

    masks = np.asarray(masks)
    if masks.ndim != 2:
        raise ValueError(f"proposals must be (num_points, num_masks), got shape {masks.shape}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(masks.astype(np.float16), path)
    return path


def generate_openmask3d_fixture(root: str, num_scenes: int = 1, seed: int = 0, **scene_kwargs) -> Dict[str, object]:
    """Write ``num_scenes`` generated scenes under ``root`` (layout in the module doc).

    Returns ``{"root", "scenes": [names], "openmask3d": dir, "scannetpp": dir, "scannetpp_masks": dir,
    "classes": path, "image_hw": (H, W)}``.
    """
    write_generated_marker(root, "3D scenes with Mask3D-format proposals")
    names: List[str] = generate_dataset(root, num_scenes=num_scenes, seed=seed, **scene_kwargs)
    om3d = os.path.join(root, "openmask3d")
    masks_dir = os.path.join(root, "scannetpp_masks")
    for name in names:
        gt = np.loadtxt(os.path.join(om3d, "gt", f"{name}.txt"), dtype=np.int64, ndmin=1)
        proposals = proposals_from_gt(gt)
        write_mask3d_proposals(proposals, os.path.join(om3d, name, f"{name}_masks.pt"))
        write_mask3d_proposals(proposals, os.path.join(masks_dir, name, f"{SCANNETPP_MESH_STEM}_masks.pt"))
    from PIL import Image

    with Image.open(os.path.join(om3d, names[0], "color", "0.jpg")) as im:
        hw = (im.height, im.width)
    return {"root": root, "scenes": names, "openmask3d": om3d, "scannetpp": os.path.join(root, "scannetpp"),
            "scannetpp_masks": masks_dir, "classes": os.path.join(root, "classes.json"), "image_hw": hw}
