"""One ScanNet++ scene on disk: posed iPhone frames, the annotated mesh, per-vertex instances.

Layout of a ScanNet++ release (``<root>`` holds ``data/``; ``<root>/data`` itself is accepted too)::

    <root>/data/<scene_id>/scans/mesh_aligned_0.05.ply        annotated mesh (vertex x y z, red green blue)
    <root>/data/<scene_id>/scans/segments.json                {"segIndices": [segment id per vertex]}
    <root>/data/<scene_id>/scans/segments_anno.json           {"segGroups": [{"objectId", "label", "segments"}]}
    <root>/data/<scene_id>/iphone/rgb/frame_000000.jpg        extracted iPhone frames
    <root>/data/<scene_id>/iphone/depth/frame_000000.png      uint16 depth in millimetres (256 x 192)
    <root>/data/<scene_id>/iphone/colmap/{cameras,images}.txt COLMAP text model (world-to-camera qvec, tvec)
    <root>/data/<scene_id>/iphone/pose_intrinsic_imu.json     {"frame_000000": {"intrinsic", "aligned_pose", ...}}

No 2D segment logic here: the 3D code (:mod:`opendas_encoder.threed.scannetpp_scene`) and the
segment dataset (:mod:`.dataset`) both read scenes through :class:`ScanNetPPScene`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ...errors import InputError, read_json
from ...vocab import normalize_name
from .io import Mesh, read_colmap_cameras_text, read_colmap_images_text, read_ply_mesh

MESH_FILE = "mesh_aligned_0.05.ply"
#: Raw annotation labels that are bookkeeping, not object classes (compared lower-case).
IGNORED_LABELS = frozenset({"remove", "split", ""})


@dataclass
class ScanNetPPFrame:
    """One posed iPhone frame. cam_to_world: (4, 4) OpenCV camera -> world (mesh) coordinates;
    intrinsics: (3, 3) pinhole K of the RGB image of size (width, height) in pixels."""

    name: str
    rgb_path: str
    depth_path: str
    cam_to_world: np.ndarray
    intrinsics: np.ndarray
    width: int
    height: int


def resolve_data_root(root: str) -> str:
    """``<root>/data`` if it exists (a ScanNet++ release), else ``root`` (already the data folder)."""
    inner = os.path.join(root, "data")
    return inner if os.path.isdir(inner) else root


class ScanNetPPScene:
    """Files of one ScanNet++ scene. root: the release folder (with ``data/``) or its ``data/`` folder."""

    def __init__(self, root: str, scene_id: str):
        self.root = root
        self.scene_id = scene_id
        self.scene_dir = os.path.join(resolve_data_root(root), scene_id)
        if not os.path.isdir(self.scene_dir):
            raise FileNotFoundError(f"ScanNet++ scene folder not found: {self.scene_dir}")
        self._mesh: Optional[Mesh] = None

    # paths
    @property
    def scans_dir(self) -> str:
        return os.path.join(self.scene_dir, "scans")

    @property
    def iphone_dir(self) -> str:
        return os.path.join(self.scene_dir, "iphone")

    @property
    def mesh_path(self) -> str:
        return os.path.join(self.scans_dir, MESH_FILE)

    @property
    def segments_path(self) -> str:
        return os.path.join(self.scans_dir, "segments.json")

    @property
    def annotation_path(self) -> str:
        return os.path.join(self.scans_dir, "segments_anno.json")

    @property
    def colmap_dir(self) -> str:
        return os.path.join(self.iphone_dir, "colmap")

    @property
    def pose_json_path(self) -> str:
        return os.path.join(self.iphone_dir, "pose_intrinsic_imu.json")

    # frames
    def frames(self, stride: int = 1, source: str = "auto", check_files: bool = True,
               allow_unaligned_poses: bool = False) -> List[ScanNetPPFrame]:
        """Every stride-th iPhone frame (in COLMAP image-id order, or sorted frame names).

        source: "colmap" (iphone/colmap/*.txt), "pose_json" (aligned_pose of pose_intrinsic_imu.json)
        or "auto" (colmap when present). check_files: raise FileNotFoundError for a missing RGB image.
        allow_unaligned_poses: a ``pose_intrinsic_imu.json`` frame without ``aligned_pose`` is an error
        (its ``pose`` is ARKit's own frame, not the mesh's: masks would be rendered in the wrong place);
        True uses ``pose`` for such frames instead (only for scenes whose ARKit frame is the mesh frame).
        """
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if source == "auto":
            source = "colmap" if os.path.isfile(os.path.join(self.colmap_dir, "images.txt")) else "pose_json"
        if source == "colmap":
            frames = self._colmap_frames()
        elif source == "pose_json":
            frames = self._pose_json_frames(allow_unaligned_poses)
        else:
            raise ValueError(f"source must be 'auto', 'colmap' or 'pose_json', got {source!r}")
        frames = frames[::stride]
        if check_files:
            for fr in frames:
                if not os.path.isfile(fr.rgb_path):
                    raise FileNotFoundError(f"scene {self.scene_id}: frame {fr.name} has no RGB image: {fr.rgb_path}")
        return frames

    def _frame_paths(self, name: str) -> Tuple[str, str, str]:
        base = os.path.basename(name)
        stem = os.path.splitext(base)[0]
        return stem, os.path.join(self.iphone_dir, "rgb", stem + ".jpg"), os.path.join(self.iphone_dir, "depth", stem + ".png")

    def _colmap_frames(self) -> List[ScanNetPPFrame]:
        cams = read_colmap_cameras_text(os.path.join(self.colmap_dir, "cameras.txt"))
        out = []
        for im in read_colmap_images_text(os.path.join(self.colmap_dir, "images.txt")):
            if im.camera_id not in cams:
                raise InputError(os.path.join(self.colmap_dir, "images.txt"),
                                 f"image {im.name} uses camera {im.camera_id}, which "
                                 f"{os.path.join(self.colmap_dir, 'cameras.txt')} does not define")
            cam = cams[im.camera_id]
            stem, rgb, depth = self._frame_paths(im.name)
            out.append(ScanNetPPFrame(stem, rgb, depth, im.cam_to_world, cam.K, cam.width, cam.height))
        return out

    def _pose_json_frames(self, allow_unaligned_poses: bool = False) -> List[ScanNetPPFrame]:
        path = self.pose_json_path
        if not os.path.isfile(path):
            raise FileNotFoundError(f"scene {self.scene_id}: no camera poses (neither {os.path.join(self.colmap_dir, 'images.txt')} nor {path})")
        data = read_json(path, "pose file")
        if not isinstance(data, dict):
            raise InputError(path, "expected an object {frame name: {intrinsic, aligned_pose, ...}}")
        out = []
        for key in sorted(data):
            entry = data[key]
            if not isinstance(entry, dict):
                raise InputError(path, f"frame {key} is not an object")
            if "intrinsic" not in entry:
                raise InputError(path, f"frame {key} lacks 'intrinsic'")
            pose = entry.get("aligned_pose")
            if pose is None:
                if "pose" not in entry or not allow_unaligned_poses:
                    raise InputError(path,
                        f"frame {key} has no 'aligned_pose'" + (
                            " (only the unaligned ARKit 'pose', which is not in the mesh's frame; pass "
                            "allow_unaligned_poses=True to use it anyway)" if "pose" in entry else ""))
                pose = entry["pose"]
            stem, rgb, depth = self._frame_paths(key)
            width, height = (0, 0)
            if os.path.isfile(rgb):
                try:
                    with Image.open(rgb) as im:
                        width, height = im.size
                except Exception as exc:  # noqa: BLE001 - PIL raises several types for a corrupt image
                    raise InputError(rgb, f"unreadable image ({type(exc).__name__}: {exc})") from None
            out.append(ScanNetPPFrame(stem, rgb, depth, _matrix(path, key, "pose", pose, (4, 4)),
                                      _matrix(path, key, "intrinsic", entry["intrinsic"], (3, 3)), width, height))
        return out

    # mesh and annotation
    def mesh(self) -> Mesh:
        if self._mesh is None:
            self._mesh = read_ply_mesh(self.mesh_path)
        return self._mesh

    def mesh_vertices(self) -> np.ndarray:
        """(V, 3) float64 vertex positions (world coordinates, metres)."""
        return self.mesh().vertices

    def mesh_faces(self) -> np.ndarray:
        """(F, 3) int64 vertex indices."""
        return self.mesh().faces

    def mesh_colors(self) -> Optional[np.ndarray]:
        """(V, 3) uint8 vertex colours, or None."""
        return self.mesh().colors

    def annotation(self) -> dict:
        path = self.annotation_path
        if not os.path.isfile(path):
            raise FileNotFoundError(f"scene {self.scene_id}: annotation not found: {path}")
        anno = read_json(path, "annotation")
        if not isinstance(anno, dict) or not isinstance(anno.get("segGroups"), list):
            raise InputError(path, "no 'segGroups' list")
        for i, g in enumerate(anno["segGroups"]):
            ok = isinstance(g, dict) and isinstance(g.get("label", ""), str) and isinstance(g.get("segments"), list)
            oid = g.get("objectId", g.get("id")) if isinstance(g, dict) else None
            if not ok or not isinstance(oid, int) or isinstance(oid, bool):
                raise InputError(path, f"segGroups[{i}] needs an integer 'objectId', a 'label' string and a "
                                       "'segments' list")
            if not all(isinstance(s, int) and not isinstance(s, bool) and -2**63 <= s < 2**63 for s in g["segments"]):
                raise InputError(path, f"segGroups[{i}]: 'segments' must be integers")
        return anno

    def instance_labels(self, ignore: Iterable[str] = IGNORED_LABELS) -> Dict[int, str]:
        """{objectId: class name} of the annotated objects (labels lower-cased with single spaces, ``vocab.normalize_name``; ignored labels dropped)."""
        ignore = {normalize_name(x) for x in ignore}
        out = {}
        for g in self.annotation()["segGroups"]:
            label = normalize_name(g.get("label", ""))
            if label in ignore:
                continue
            out[int(g.get("objectId", g.get("id")))] = label
        return out

    def vertex_instances(self, ignore: Iterable[str] = IGNORED_LABELS) -> Tuple[np.ndarray, Dict[int, str]]:
        """(objectId per vertex (V,) int64, 0 = unannotated; {objectId: class name}).

        A vertex belongs to an object when its segment (``segments.json`` segIndices) is listed in
        the object's ``segments``; where objects overlap, the smallest object wins.
        """
        path = self.segments_path
        if not os.path.isfile(path):
            raise FileNotFoundError(f"scene {self.scene_id}: segments not found: {path}")
        data = read_json(path, "segments")
        seg = data.get("segIndices") if isinstance(data, dict) else None
        if not isinstance(seg, list) or not all(isinstance(s, int) and not isinstance(s, bool) and -2**63 <= s < 2**63
                                                for s in seg):
            raise InputError(path, "needs 'segIndices': a list of integers (one segment id per mesh vertex)")
        seg_indices = np.asarray(seg, dtype=np.int64).reshape(-1)
        n_vertices = len(self.mesh_vertices())
        if len(seg_indices) != n_vertices:
            raise InputError(path, f"{len(seg_indices)} segment ids but the mesh {self.mesh_path} has {n_vertices} "
                                   "vertices")
        labels = self.instance_labels(ignore)
        groups = [g for g in self.annotation()["segGroups"] if int(g.get("objectId", g.get("id"))) in labels]
        masks = [(np.isin(seg_indices, np.asarray(g["segments"], dtype=np.int64)), int(g.get("objectId", g.get("id"))))
                 for g in groups]
        out = np.zeros(len(seg_indices), dtype=np.int64)
        for mask, oid in sorted(masks, key=lambda m: -int(m[0].sum())):
            out[mask] = oid
        present = set(np.unique(out).tolist())
        return out, {oid: lab for oid, lab in labels.items() if oid in present}


def _matrix(path: str, frame: str, what: str, value, shape: Tuple[int, int]) -> np.ndarray:
    try:
        m = np.asarray(value, dtype=np.float64).reshape(shape)
    except (ValueError, TypeError):
        raise InputError(path, f"frame {frame}: {what} is not a {shape[0]}x{shape[1]} matrix of numbers") from None
    if not np.isfinite(m).all():
        raise InputError(path, f"frame {frame}: {what} contains inf/nan")
    return m


def annotation_labels(root: str, scene_ids: Sequence[str]) -> List[str]:
    """Sorted class names of the annotated objects of the given scenes."""
    labels = set()
    for sid in scene_ids:
        labels.update(ScanNetPPScene(root, sid).instance_labels().values())
    return sorted(labels)
