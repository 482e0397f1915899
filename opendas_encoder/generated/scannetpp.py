"""Write a scene in the ScanNet++ on-disk layout (generated ScanNet++ data for tests and 3D scenes).

:func:`write_scannetpp_scene` writes exactly the files :class:`opendas_encoder.data.scannetpp.ScanNetPPScene`
reads (the layout of a real release): a binary PLY mesh, ``segments.json`` + ``segments_anno.json``,
iPhone RGB/depth frames, a COLMAP text model and ``pose_intrinsic_imu.json``. When RGB or depth
images are not given and open3d is installed they are rendered from the mesh (vertex colours,
z-depth), otherwise RGB is mid-grey and depth is not written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence

import numpy as np
from PIL import Image

from ..data.ply import write_ply
from ..data.scannetpp.io import rotmat_to_qvec
from ..data.scannetpp.scene import MESH_FILE


@dataclass
class FixtureFrame:
    """A posed frame to write. cam_to_world (4, 4) OpenCV camera -> world; intrinsics (3, 3) for an
    RGB image of (width, height); rgb: optional uint8 (height, width, 3); depth: optional float
    metres (h, w) at any resolution (0 = invalid); depth_size: (w, h) of a rendered depth map."""

    cam_to_world: np.ndarray
    intrinsics: np.ndarray
    width: int
    height: int
    rgb: Optional[np.ndarray] = None
    depth: Optional[np.ndarray] = None
    depth_size: Optional[Sequence[int]] = None


def _segment_indices(instances: np.ndarray) -> np.ndarray:
    """An over-segmentation of the vertices that never crosses an instance: each instance is split
    in two segments (even / odd vertex index), and segment ids are scrambled so that they are not
    vertex indices (exercises the segIndices indirection)."""
    keys = instances.astype(np.int64) * 2 + (np.arange(len(instances)) % 2)
    _, seg = np.unique(keys, return_inverse=True)
    return (seg * 7 + 3).astype(np.int64)


def write_scannetpp_scene(root: str, scene_id: str, vertices: np.ndarray, faces: np.ndarray,
                          colors: Optional[np.ndarray] = None, instances: Optional[np.ndarray] = None,
                          labels: Optional[Mapping[int, str]] = None, frames: Sequence[FixtureFrame] = (),
                          jpeg_quality: int = 95) -> str:
    """Write ``<root>/data/<scene_id>/...`` in the ScanNet++ layout and return the scene folder.

    vertices (V, 3) metres, faces (F, 3), colors (V, 3) uint8; instances (V,) objectId per vertex
    (0 = unannotated); labels {objectId: raw label}; frames: posed iPhone frames (``frame_%06d``).
    """
    scene_dir = os.path.join(root, "data", scene_id)
    scans, iphone = os.path.join(scene_dir, "scans"), os.path.join(scene_dir, "iphone")
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    instances = np.zeros(len(vertices), np.int64) if instances is None else np.asarray(instances, dtype=np.int64)
    labels = dict(labels or {})
    if instances.shape != (len(vertices),):
        raise ValueError(f"instances must have shape ({len(vertices)},), got {instances.shape}")
    missing = sorted(set(np.unique(instances[instances > 0]).tolist()) - set(labels))
    if missing:
        raise ValueError(f"objectIds without a label: {missing}")
    write_ply(os.path.join(scans, MESH_FILE), vertices, np.full((len(vertices), 3), 128, np.uint8) if colors is None
              else colors, faces)

    seg = _segment_indices(instances)
    _write_json(os.path.join(scans, "segments.json"), {"sceneId": scene_id, "segIndices": seg.tolist()})
    groups = []
    for oid in sorted(labels):
        segs = sorted(set(seg[instances == oid].tolist()))
        groups.append({"id": int(oid), "objectId": int(oid), "label": labels[oid], "segments": segs})
    _write_json(os.path.join(scans, "segments_anno.json"), {"sceneId": scene_id, "segGroups": groups})

    if frames:
        _write_frames(iphone, vertices, faces, colors, list(frames), jpeg_quality)
    return scene_dir


def _write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


def _write_frames(iphone: str, vertices, faces, colors, frames: List[FixtureFrame], jpeg_quality: int) -> None:
    from ..data.scannetpp.render import MeshRaycaster, open3d_available, scale_intrinsics

    needs_render = any(fr.rgb is None or fr.depth is None for fr in frames)
    caster = MeshRaycaster(vertices, faces, threads=1) if needs_render and open3d_available() and len(faces) else None
    for sub in ("rgb", "depth", "colmap"):
        os.makedirs(os.path.join(iphone, sub), exist_ok=True)
    cam_lines, img_lines, pose_json = [], [], {}
    for k, fr in enumerate(frames):
        name = f"frame_{k:06d}"
        K = np.asarray(fr.intrinsics, dtype=np.float64)
        T = np.asarray(fr.cam_to_world, dtype=np.float64)
        rgb = fr.rgb
        if rgb is None:
            rgb = np.full((fr.height, fr.width, 3), 128, np.uint8)
            if caster is not None:
                face_col = (np.asarray(colors, np.float64)[faces].mean(axis=1) if colors is not None
                            else np.full((len(faces), 3), 200.0))
                prim, _ = caster.cast(T, K, fr.width, fr.height)
                rgb[prim >= 0] = np.round(face_col[prim[prim >= 0]]).astype(np.uint8)
        if rgb.shape != (fr.height, fr.width, 3):
            raise ValueError(f"frame {k}: rgb shape {rgb.shape} != ({fr.height}, {fr.width}, 3)")
        Image.fromarray(np.asarray(rgb, np.uint8)).save(os.path.join(iphone, "rgb", name + ".jpg"), quality=jpeg_quality)
        depth = fr.depth
        if depth is None and caster is not None:
            dw, dh = fr.depth_size or (fr.width, fr.height)
            _, z = caster.cast(T, scale_intrinsics(K, dw / fr.width, dh / fr.height), dw, dh)
            depth = np.where(np.isfinite(z), z, 0.0)
        if depth is not None:
            mm = np.clip(np.round(np.asarray(depth, np.float64) * 1000.0), 0, 65535).astype(np.uint16)
            Image.fromarray(mm).save(os.path.join(iphone, "depth", name + ".png"))
        cam_lines.append(f"{k + 1} PINHOLE {fr.width} {fr.height} {float(K[0, 0])!r} {float(K[1, 1])!r} {float(K[0, 2])!r} {float(K[1, 2])!r}")
        w2c = np.linalg.inv(T)
        q, t = rotmat_to_qvec(w2c[:3, :3]), w2c[:3, 3]
        img_lines.append(f"{k + 1} " + " ".join(repr(float(x)) for x in (*q, *t)) + f" {k + 1} {name}.jpg")
        img_lines.append("")  # no 2D points
        pose_json[name] = {"timestamp": k / 60.0, "intrinsic": K.tolist(), "pose": T.tolist(), "aligned_pose": T.tolist()}
    with open(os.path.join(iphone, "colmap", "cameras.txt"), "w") as f:
        f.write("# Camera list with one line of data per camera:\n#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
                f"# Number of cameras: {len(cam_lines)}\n" + "\n".join(cam_lines) + "\n")
    with open(os.path.join(iphone, "colmap", "images.txt"), "w") as f:
        f.write("# Image list with two lines of data per image:\n"
                "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n#   POINTS2D[] as (X, Y, POINT3D_ID)\n"
                f"# Number of images: {len(frames)}, mean observations per image: 0\n" + "\n".join(img_lines) + "\n")
    _write_json(os.path.join(iphone, "pose_intrinsic_imu.json"), pose_json)


def box_mesh(lo: Sequence[float], hi: Sequence[float], vertex_offset: int = 0):
    """An axis-aligned box as a closed triangle mesh: (vertices (8, 3), faces (12, 3) + offset)."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    v = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    # vertex index = 4*ix + 2*iy + iz
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    f = []
    for a, b, c, d in quads:
        f += [(a, b, c), (a, c, d)]
    return v, np.asarray(f, dtype=np.int64) + vertex_offset


def look_at(eye: Sequence[float], target: Sequence[float], up: Sequence[float] = (0, 0, 1)) -> np.ndarray:
    """cam_to_world (4, 4) of an OpenCV camera (x right, y down, z forward) at ``eye`` looking at ``target``."""
    eye, target, up = (np.asarray(a, float) for a in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-9:
        raise ValueError("up is parallel to the viewing direction")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, y, z, eye
    return T
