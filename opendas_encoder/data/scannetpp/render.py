"""Per-frame 2D instance maps of ScanNet++ scenes, rendered from the annotated mesh and cached.

The mesh is ray cast into posed pinhole cameras (open3d, CPU): every pixel gets the value of the
first face its ray hits (occlusion is exact), 0 where no face is hit. The maps are cached as
16-bit PNGs (objectId per pixel) by :func:`render_scene_instance_maps`.

Camera conventions (OpenCV / COLMAP): x right, y down, z forward; ``cam_to_world`` maps camera
coordinates to world coordinates; pixel (row i, col j) covers [j, j+1) x [i, i+1) in image
coordinates, so its centre is (j + 0.5, i + 0.5).

open3d is imported lazily (``pip install open3d``).
"""

from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..segments import SegmentError, read_label_png
from .scene import ScanNetPPFrame, ScanNetPPScene

INVALID = np.iinfo(np.uint32).max  # open3d's RaycastingScene.INVALID_ID


def _open3d():
    try:
        import open3d as o3d
    except (ImportError, OSError) as exc:  # OSError: a missing system library (e.g. libusb-1.0)
        raise ImportError("rendering ScanNet++ masks needs open3d: pip install open3d "
                          f"(or pip install 'opendas_encoder[datasets]'); import failed: {exc}") from exc
    return o3d


def open3d_available() -> bool:
    try:
        _open3d()
        return True
    except ImportError:
        return False


def face_values_from_vertices(faces: np.ndarray, vertex_values: np.ndarray) -> np.ndarray:
    """Per-face value (F,) from per-vertex values (V,): the majority of the face's three vertices
    (the first vertex's value when all three differ)."""
    faces = np.asarray(faces, dtype=np.int64)
    a, b, c = (np.asarray(vertex_values)[faces[:, k]] for k in range(3))
    return np.where((b == c) & (a != b), b, a)


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """Intrinsics of the same camera for an image resized by (sx, sy) (pixel-edge convention)."""
    K2 = np.array(K, dtype=np.float64, copy=True)
    K2[0, :] *= sx
    K2[1, :] *= sy
    K2[2, :] = (0.0, 0.0, 1.0)
    return K2


def pixel_rays(cam_to_world: np.ndarray, K: np.ndarray, width: int, height: int) -> Tuple[np.ndarray, np.ndarray]:
    """Ray origins and directions (H*W, 3) through pixel centres, row-major.

    Directions are not normalised: their camera-frame z component is 1, so the hit distance
    along them equals the z-depth in the camera frame.
    """
    T = np.asarray(cam_to_world, dtype=np.float64)
    Kinv = np.linalg.inv(np.asarray(K, dtype=np.float64))
    jj, ii = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    pix = np.stack([jj.ravel(), ii.ravel(), np.ones(jj.size)], axis=1)  # (N, 3) homogeneous
    d_cam = pix @ Kinv.T
    d_cam /= d_cam[:, 2:3]
    dirs = d_cam @ T[:3, :3].T
    origins = np.broadcast_to(T[:3, 3], dirs.shape)
    return origins, dirs


class MeshRaycaster:
    """A triangle mesh ready for ray casting. vertices: (V, 3) float; faces: (F, 3) int."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, threads: int = 0):
        o3d = _open3d()
        self._o3d = o3d
        self.threads = int(threads)
        self.num_faces = int(len(faces))
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(o3d.core.Tensor(np.ascontiguousarray(vertices, dtype=np.float32)),
                                 o3d.core.Tensor(np.ascontiguousarray(faces, dtype=np.uint32)))

    def cast(self, cam_to_world: np.ndarray, K: np.ndarray, width: int, height: int) -> Tuple[np.ndarray, np.ndarray]:
        """(face index (H, W) int64, -1 = no hit; z-depth (H, W) float32, inf = no hit)."""
        origins, dirs = pixel_rays(cam_to_world, K, width, height)
        rays = np.concatenate([origins, dirs], axis=1).astype(np.float32)
        out = self.scene.cast_rays(self._o3d.core.Tensor(rays), nthreads=self.threads)
        prim = out["primitive_ids"].numpy().astype(np.int64)
        prim[prim == INVALID] = -1
        depth = out["t_hit"].numpy().astype(np.float32)
        depth[prim < 0] = np.inf
        return prim.reshape(height, width), depth.reshape(height, width)

    def render_values(self, face_values: np.ndarray, cam_to_world: np.ndarray, K: np.ndarray,
                      width: int, height: int, background: int = 0) -> np.ndarray:
        """Per-pixel value (H, W) int64 of the first face hit (``face_values[face]``), ``background`` elsewhere."""
        face_values = np.asarray(face_values)
        if face_values.shape != (self.num_faces,):
            raise ValueError(f"face_values must have shape ({self.num_faces},), got {face_values.shape}")
        prim, _ = self.cast(cam_to_world, K, width, height)
        out = np.full(prim.shape, background, dtype=np.int64)
        hit = prim >= 0
        out[hit] = face_values[prim[hit]]
        return out


def render_scene_instance_maps(scene: ScanNetPPScene, frames: Sequence[ScanNetPPFrame], render_dir: str,
                               scale: float = 0.25, threads: int = 0, progress: bool = True) -> List[str]:
    """Paths of 16-bit instance maps (objectId per pixel, 0 = none) for ``frames``; renders the missing ones."""
    out_dir = os.path.join(render_dir, scene.scene_id)
    paths = [os.path.join(out_dir, f.name + ".png") for f in frames]
    todo = [(f, p) for f, p in zip(frames, paths) if not _valid_png(p)]
    if not todo:
        return paths
    os.makedirs(out_dir, exist_ok=True)
    vertex_ids, _ = scene.vertex_instances()
    if vertex_ids.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"scene {scene.scene_id}: objectId {vertex_ids.max()} does not fit a 16-bit PNG")
    caster = MeshRaycaster(scene.mesh_vertices(), scene.mesh_faces(), threads=threads)
    face_ids = face_values_from_vertices(scene.mesh_faces(), vertex_ids)
    for f, p in tqdm(todo, desc=f"render {scene.scene_id}", disable=not progress, leave=False):
        if f.width <= 0 or f.height <= 0:
            raise ValueError(f"scene {scene.scene_id}: frame {f.name} has no image size")
        w, h = max(1, int(round(f.width * scale))), max(1, int(round(f.height * scale)))
        K = scale_intrinsics(f.intrinsics, w / f.width, h / f.height)
        ids = caster.render_values(face_ids, f.cam_to_world, K, w, h)
        tmp = p + ".tmp.png"
        Image.fromarray(ids.astype(np.uint16)).save(tmp)
        os.replace(tmp, p)
    return paths


def _valid_png(path: str) -> bool:
    if not os.path.isfile(path):
        return False
    try:
        read_label_png(path)
        return True
    except SegmentError:
        return False
