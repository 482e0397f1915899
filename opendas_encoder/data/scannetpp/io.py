"""File formats of a ScanNet++ release: the iPhone COLMAP text model and the annotated PLY mesh.

COLMAP stores world-to-camera rotations as unit quaternions (qw, qx, qy, qz); the conversions use
``scipy.spatial.transform.Rotation`` (which orders quaternions scalar-last). Meshes are read with
:func:`opendas_encoder.data.ply.read_ply_mesh` (plyfile).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
from scipy.spatial.transform import Rotation

from ...errors import InputError
from ..ply import Mesh, read_ply_mesh

__all__ = ["qvec_to_rotmat", "rotmat_to_qvec", "ColmapCamera", "ColmapImage", "read_colmap_cameras_text",
           "read_colmap_images_text", "Mesh", "read_ply_mesh"]


def qvec_to_rotmat(q: Sequence[float]) -> np.ndarray:
    """Rotation matrix (3, 3) of a quaternion (qw, qx, qy, qz) (COLMAP order; normalised first)."""
    w, x, y, z = (float(v) for v in q)
    return Rotation.from_quat([x, y, z, w]).as_matrix()


def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (qw, qx, qy, qz), qw >= 0, of a rotation matrix (3, 3)."""
    x, y, z, w = Rotation.from_matrix(np.asarray(R, dtype=np.float64)).as_quat()
    q = np.array([w, x, y, z])
    return -q if q[0] < 0 else q


#: COLMAP camera models -> (fx, fy, cx, cy) from their parameter lists (distortion is ignored).
_PINHOLE_PARAMS = {
    "SIMPLE_PINHOLE": lambda p: (p[0], p[0], p[1], p[2]),
    "SIMPLE_RADIAL": lambda p: (p[0], p[0], p[1], p[2]),
    "RADIAL": lambda p: (p[0], p[0], p[1], p[2]),
    "SIMPLE_RADIAL_FISHEYE": lambda p: (p[0], p[0], p[1], p[2]),
    "RADIAL_FISHEYE": lambda p: (p[0], p[0], p[1], p[2]),
    "PINHOLE": lambda p: (p[0], p[1], p[2], p[3]),
    "OPENCV": lambda p: (p[0], p[1], p[2], p[3]),
    "OPENCV_FISHEYE": lambda p: (p[0], p[1], p[2], p[3]),
    "FULL_OPENCV": lambda p: (p[0], p[1], p[2], p[3]),
    "FOV": lambda p: (p[0], p[1], p[2], p[3]),
    "THIN_PRISM_FISHEYE": lambda p: (p[0], p[1], p[2], p[3]),
}


@dataclass
class ColmapCamera:
    camera_id: int
    model: str
    width: int
    height: int
    params: Tuple[float, ...]

    @property
    def K(self) -> np.ndarray:
        fx, fy, cx, cy = _PINHOLE_PARAMS[self.model](self.params)
        return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _data_lines(path: str) -> List[Tuple[int, str]]:
    """(line number, line) of a text file; errors (:class:`InputError`) name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"COLMAP file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return [(n, line.rstrip("\n")) for n, line in enumerate(f, 1)]
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_colmap_cameras_text(path: str) -> Dict[int, ColmapCamera]:
    """COLMAP ``cameras.txt``: ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS...`` per line."""
    cams = {}
    for n, line in _data_lines(path):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        try:
            cam = ColmapCamera(int(parts[0]), parts[1], int(parts[2]), int(parts[3]), tuple(float(v) for v in parts[4:]))
        except (IndexError, ValueError):
            raise InputError(path, f"line {n}: bad camera line {line!r}") from None
        if cam.model not in _PINHOLE_PARAMS:
            raise InputError(path, f"line {n}: unsupported camera model {cam.model!r}")
        if cam.width <= 0 or cam.height <= 0:
            raise InputError(path, f"line {n}: camera size {cam.width}x{cam.height} must be positive")
        try:
            fx, fy, cx, cy = _PINHOLE_PARAMS[cam.model](cam.params)
        except IndexError:
            raise InputError(path, f"line {n}: too few parameters for a {cam.model} camera: {line!r}") from None
        if not (np.isfinite(cam.params).all() and fx > 0 and fy > 0):
            raise InputError(path, f"line {n}: camera parameters must be finite with positive focal lengths: {line!r}")
        if cam.camera_id in cams:
            raise InputError(path, f"line {n}: camera id {cam.camera_id} defined twice")
        cams[cam.camera_id] = cam
    if not cams:
        raise InputError(path, "no cameras")
    return cams


@dataclass
class ColmapImage:
    image_id: int
    qvec: np.ndarray  # (4,) world-to-camera rotation (qw, qx, qy, qz)
    tvec: np.ndarray  # (3,) world-to-camera translation
    camera_id: int
    name: str

    @property
    def world_to_camera(self) -> np.ndarray:
        T = np.eye(4)
        T[:3, :3] = qvec_to_rotmat(self.qvec)
        T[:3, 3] = self.tvec
        return T

    @property
    def cam_to_world(self) -> np.ndarray:
        R = qvec_to_rotmat(self.qvec)
        T = np.eye(4)
        T[:3, :3] = R.T
        T[:3, 3] = -R.T @ np.asarray(self.tvec, dtype=np.float64)
        return T


def read_colmap_images_text(path: str) -> List[ColmapImage]:
    """COLMAP ``images.txt`` (two lines per image; the 2D-point line may be empty), sorted by id."""
    images = []
    lines = iter(_data_lines(path))
    for n, line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        try:
            if len(parts) < 10:
                raise ValueError
            qvec = np.array([float(v) for v in parts[1:5]])
            images.append(ColmapImage(int(parts[0]), qvec, np.array([float(v) for v in parts[5:8]]), int(parts[8]),
                                      " ".join(parts[9:])))
        except ValueError:
            raise InputError(path, f"line {n}: bad image line {line!r}") from None
        if not (np.isfinite(qvec).all() and np.isfinite(images[-1].tvec).all()):
            raise InputError(path, f"line {n}: non-finite pose in image line {line!r}")
        if not np.linalg.norm(qvec) > 0:
            raise InputError(path, f"line {n}: zero quaternion in image line {line!r}")
        next(lines, None)  # the POINTS2D line
    return sorted(images, key=lambda im: im.image_id)
