"""ScanNet++ scenes as :class:`Scene3D` with 3D instance ground truth (via ``data.scannetpp``).

The ScanNet++ layout itself (COLMAP poses and intrinsics, iPhone RGB/depth frames,
``mesh_aligned_0.05.ply``, ``segments.json`` / ``segments_anno.json``) is read by
:mod:`opendas_encoder.data.scannetpp`; this module turns one scene into the inputs of the mask
classifier: mesh vertices as points, posed RGB-D frames (depth in millimetres, at its own
resolution; the RGB intrinsics are rescaled) and ScanNet-encoded instance ids.
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np

from .scene import PosedFrame, Scene3D

#: ScanNet++ iPhone depth PNGs store millimetres.
SCANNETPP_DEPTH_SCALE = 1000.0


def read_scannetpp_scene(root: str, scene_id: str, frame_step: int = 1, allow_unaligned_poses: bool = False) -> Scene3D:
    """Mesh vertices and every ``frame_step``-th iPhone frame of a ScanNet++ scene
    (``allow_unaligned_poses``: see :meth:`ScanNetPPScene.frames`)."""
    from ..data.scannetpp import ScanNetPPScene

    scene = ScanNetPPScene(root, scene_id)
    frames = [PosedFrame(color_path=f.rgb_path, depth_path=f.depth_path, cam_to_world=f.cam_to_world,
                         intrinsic=f.intrinsics, depth_scale=SCANNETPP_DEPTH_SCALE,
                         intrinsic_hw=(int(f.height), int(f.width)), name=f.name)
              for f in scene.frames(stride=frame_step, allow_unaligned_poses=allow_unaligned_poses)]
    return Scene3D(name=scene_id, points=np.asarray(scene.mesh_vertices(), dtype=np.float64), frames=frames)


def scannetpp_instance_gt(root: str, scene_id: str, class_ids: Dict[str, int]) -> Tuple[np.ndarray, Dict[str, int]]:
    """ScanNet-encoded ground truth (num_vertices,) ``label_id * 1000 + k + 1`` (k = instance
    number within the scene, 0-based) for objects whose class is in ``class_ids``; other vertices 0.
    Returns (ids, {class name: number of instances})."""
    from ..data.scannetpp import ScanNetPPScene

    objects, labels = ScanNetPPScene(root, scene_id).vertex_instances()
    ids = np.zeros(len(objects), dtype=np.int64)
    counts: Dict[str, int] = {}
    kept = [oid for oid in sorted(labels) if labels[oid] in class_ids]
    if len(kept) >= 1000:
        raise ValueError(f"ScanNet++ scene {scene_id}: {len(kept)} instances do not fit the ScanNet encoding (< 1000)")
    for k, oid in enumerate(kept):
        ids[objects == oid] = class_ids[labels[oid]] * 1000 + k + 1
        counts[labels[oid]] = counts.get(labels[oid], 0) + 1
    return ids, counts


def scannetpp_scene_labels(root: str, scene_ids: Sequence[str]) -> list:
    """Sorted class names annotated in the given scenes."""
    from ..data.scannetpp import annotation_labels

    return annotation_labels(root, scene_ids)
