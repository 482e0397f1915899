"""Camera and world conventions of phone captures and the conversions to OpenMask3D's.

OpenMask3D (ScanNet) wants camera-to-world poses in the OpenCV camera convention (x right, y down,
z forward) in a z-up world. Phone captures differ:

* nerfstudio's ``transform_matrix`` is camera-to-world in the OpenGL/Blender convention ("+X is right,
  +Y is up, and +Z is pointing back and away from the camera", docs.nerf.studio/quickstart/
  data_conventions.html); OpenCV "flips Y and Z" (same page). So ``c2w_cv = c2w_gl @ diag(1, -1, -1, 1)``.
* ARKit (Record3D) camera axes are the same as OpenGL's, and ARKit's world is gravity-aligned with +y up
  (Apple's ARKit documentation, ``ARConfiguration.WorldAlignment.gravity``).
* A nerfstudio ``transforms.json`` world has no fixed up axis: its converters keep the source's world
  (ARKit y-up for Record3D/Polycam, a permuted COLMAP world for COLMAP, recorded as ``applied_transform``).
  ``world_up="auto"`` therefore estimates it: phones are held upright, so the mean camera up vector
  points along the world's up axis (the signed world axis with the largest mean component wins).

Every conversion is a named 4x4 matrix that :mod:`.importers` records in ``scan.json``.
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

#: Right-multiplied onto an OpenGL camera-to-world pose, gives the OpenCV one (and back: it is its own inverse).
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])

#: Proper rotations (4x4) that take each signed world axis to +z (left-multiplied onto poses and points).
UP_TO_Z: Dict[str, np.ndarray] = {}
for _name, _r in {
    "+z": np.eye(3),
    "-z": np.diag([1.0, -1.0, -1.0]),                           # 180 degrees about x
    "+y": np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]),      # +90 degrees about x: y -> z, z -> -y
    "-y": np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),      # -90 degrees about x
    "+x": np.array([[0.0, 0, -1], [0, 1, 0], [1, 0, 0]]),      # -90 degrees about y: x -> z
    "-x": np.array([[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]]),      # +90 degrees about y
}.items():
    _m = np.eye(4)
    _m[:3, :3] = _r
    UP_TO_Z[_name] = _m
WORLD_UP_CHOICES = tuple(UP_TO_Z)
CAMERA_CONVENTIONS = ("opengl", "opencv")


def camera_up_vectors(cam_to_world: Sequence[np.ndarray], convention: str) -> np.ndarray:
    """World direction (P, 3) of each camera's image "up" (OpenGL +y, OpenCV -y)."""
    if convention not in CAMERA_CONVENTIONS:
        raise ValueError(f"camera convention must be one of {CAMERA_CONVENTIONS}, got {convention!r}")
    ys = np.stack([np.asarray(p, dtype=np.float64)[:3, 1] for p in cam_to_world])
    return ys if convention == "opengl" else -ys


def estimate_world_up(cam_to_world: Sequence[np.ndarray], convention: str) -> str:
    """The signed world axis ("+y", "-z", ...) closest to the mean camera up vector."""
    mean = camera_up_vectors(cam_to_world, convention).mean(axis=0)
    axis = int(np.argmax(np.abs(mean)))
    return ("+" if mean[axis] >= 0 else "-") + "xyz"[axis]


def to_opencv_z_up(cam_to_world: np.ndarray, convention: str, world_up: str) -> np.ndarray:
    """``UP_TO_Z[world_up] @ c2w (@ OPENGL_TO_OPENCV if convention == "opengl")``: (4, 4)."""
    pose = UP_TO_Z[world_up] @ np.asarray(cam_to_world, dtype=np.float64)
    return pose @ OPENGL_TO_OPENCV if convention == "opengl" else pose


def pose_problem(pose: np.ndarray, tol: float = 1e-3) -> str:
    """Why ``pose`` is not a usable rigid camera-to-world matrix ("" when it is): shape, inf/nan,
    a last row other than (0, 0, 0, 1), a singular or non-orthonormal rotation block (``tol`` on
    max |R^T R - I| and |det R - 1|; phones write rotations orthonormal to float32 precision, ~1e-6)."""
    pose = np.asarray(pose, dtype=np.float64)
    if pose.shape != (4, 4):
        return f"pose must be 4x4, got shape {pose.shape}"
    if not np.isfinite(pose).all():
        return "pose contains inf/nan"
    if not np.allclose(pose[3], (0, 0, 0, 1), atol=tol):
        return f"pose's last row is {pose[3].tolist()}, not [0, 0, 0, 1]"
    R = pose[:3, :3]
    det = float(np.linalg.det(R))
    if abs(det) < 1e-9:
        return "pose is not invertible (rotation block has determinant 0)"
    err = float(np.abs(R.T @ R - np.eye(3)).max())
    if err > tol or abs(det - 1) > tol:
        return (f"pose's rotation block is not a rotation (max |R^T R - I| = {err:.3g}, det = {det:.4g}); "
                "scaled, sheared or mirrored poses are not supported")
    return ""


def quaternion_pose(qxyzw: Sequence[float], t: Sequence[float]) -> np.ndarray:
    """4x4 pose from a scalar-last unit quaternion (normalised first) and a translation (scipy)."""
    from scipy.spatial.transform import Rotation

    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_quat(np.asarray(qxyzw, dtype=np.float64)).as_matrix()
    pose[:3, 3] = np.asarray(t, dtype=np.float64)
    return pose
