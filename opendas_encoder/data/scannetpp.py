"""ScanNet++ layout reader and the ScanNet++ Offices segment dataset (paper Appendix E).

Layout of a ScanNet++ release (``<root>`` holds ``data/``; ``<root>/data`` itself is accepted too)::

    <root>/data/<scene_id>/scans/mesh_aligned_0.05.ply        annotated mesh (vertex x y z, red green blue)
    <root>/data/<scene_id>/scans/segments.json                {"segIndices": [segment id per vertex]}
    <root>/data/<scene_id>/scans/segments_anno.json           {"segGroups": [{"objectId", "label", "segments"}]}
    <root>/data/<scene_id>/iphone/rgb/frame_000000.jpg        extracted iPhone frames
    <root>/data/<scene_id>/iphone/depth/frame_000000.png      uint16 depth in millimetres (256 x 192)
    <root>/data/<scene_id>/iphone/colmap/{cameras,images}.txt COLMAP text model (world-to-camera qvec, tvec)
    <root>/data/<scene_id>/iphone/pose_intrinsic_imu.json     {"frame_000000": {"intrinsic", "aligned_pose", ...}}

:class:`ScanNetPPScene` reads frames, the mesh and per-vertex instances without any 2D segment
logic (shared with the 3D code). :class:`ScanNetPPOffices` renders the annotated mesh into every
stride-th posed frame (:mod:`.scannetpp_render`, open3d), caches the instance maps as 16-bit PNGs
and enumerates one segment per visible instance.

Command line (the class-vocabulary counts of the paper: 156 training, 233 test, 108 base, 125 novel)::

    python -m opendas_encoder.data.scannetpp vocab --root <root> --out scannetpp_offices_vocab.json
    python -m opendas_encoder.data.scannetpp render --root <root> --split train --stride 10
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..vocab import Vocabulary
from .generic import LabelFrame, LabelMapSegmentDataset
from .segments import DEFAULT_MIN_PIXELS, SegmentError, read_label_png

MESH_FILE = "mesh_aligned_0.05.ply"
#: Raw annotation labels that are bookkeeping, not object classes (compared lower-case).
IGNORED_LABELS = frozenset({"remove", "split", ""})


# ---------------------------------------------------------------------- COLMAP text model
def qvec_to_rotmat(q: Sequence[float]) -> np.ndarray:
    """Rotation matrix (3, 3) of a unit quaternion (qw, qx, qy, qz) (COLMAP order)."""
    w, x, y, z = (float(v) for v in q)
    n = np.sqrt(w * w + x * x + y * y + z * z)
    if n == 0:
        raise ValueError("zero quaternion")
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """Unit quaternion (qw, qx, qy, qz), qw >= 0, of a rotation matrix (3, 3)."""
    R = np.asarray(R, dtype=np.float64)
    # Largest-eigenvector method (robust for all rotations).
    K = np.array([
        [R[0, 0] - R[1, 1] - R[2, 2], 0, 0, 0],
        [R[1, 0] + R[0, 1], R[1, 1] - R[0, 0] - R[2, 2], 0, 0],
        [R[2, 0] + R[0, 2], R[2, 1] + R[1, 2], R[2, 2] - R[0, 0] - R[1, 1], 0],
        [R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1], R[0, 0] + R[1, 1] + R[2, 2]],
    ]) / 3.0
    vals, vecs = np.linalg.eigh(K)
    x, y, z, w = vecs[:, np.argmax(vals)]
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


def _data_lines(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"COLMAP file not found: {path}")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            yield n, line.rstrip("\n")


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
            raise ValueError(f"{path}:{n}: bad camera line {line!r}") from None
        if cam.model not in _PINHOLE_PARAMS:
            raise ValueError(f"{path}:{n}: unsupported camera model {cam.model!r}")
        cams[cam.camera_id] = cam
    if not cams:
        raise ValueError(f"{path}: no cameras")
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
    lines = _data_lines(path)
    for n, line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        try:
            images.append(ColmapImage(int(parts[0]), np.array([float(v) for v in parts[1:5]]),
                                      np.array([float(v) for v in parts[5:8]]), int(parts[8]), " ".join(parts[9:])))
        except (IndexError, ValueError):
            raise ValueError(f"{path}:{n}: bad image line {line!r}") from None
        if not images[-1].name:
            raise ValueError(f"{path}:{n}: image line without a name")
        next(lines, None)  # the POINTS2D line
    return sorted(images, key=lambda im: im.image_id)


# ---------------------------------------------------------------------- PLY meshes
_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def _read_ply_numpy(path: str) -> Dict[str, np.ndarray]:
    """Minimal PLY reader (binary or ascii; triangle faces only): {'vertex': structured, 'faces': (F, 3)}."""
    with open(path, "rb") as f:
        if f.readline().strip() != b"ply":
            raise ValueError(f"{path}: not a PLY file")
        fmt, elements = None, []
        while True:
            line = f.readline()
            if not line:
                raise ValueError(f"{path}: PLY header has no end_header")
            tok = line.decode("ascii", "replace").split()
            if not tok or tok[0] in ("comment", "obj_info"):
                continue
            if tok[0] == "end_header":
                break
            if tok[0] == "format":
                fmt = tok[1]
            elif tok[0] == "element":
                elements.append((tok[1], int(tok[2]), []))
            elif tok[0] == "property":
                elements[-1][2].append(tuple(tok[1:]))
        if fmt not in ("binary_little_endian", "binary_big_endian", "ascii"):
            raise ValueError(f"{path}: unsupported PLY format {fmt!r}")
        endian = ">" if fmt == "binary_big_endian" else "<"
        out = {}
        for name, count, props in elements:
            fields = []
            for p in props:
                if p[0] == "list":
                    if count and name != "face":
                        raise ValueError(f"{path}: list property in element {name!r} is not supported")
                    fields.append((p[3], endian + _PLY_TYPES[p[1]], endian + _PLY_TYPES[p[2]]))
                else:
                    fields.append((p[1], endian + _PLY_TYPES[p[0]], None))
            if fmt == "ascii":
                rows = [f.readline().split() for _ in range(count)]
                if name == "face":
                    out["faces"] = np.array([[int(v) for v in r[1:4]] for r in rows if r], dtype=np.int64).reshape(-1, 3)
                    if any(int(r[0]) != 3 for r in rows):
                        raise ValueError(f"{path}: only triangle faces are supported")
                else:
                    dt = np.dtype([(fn, ft) for fn, ft, lt in fields])
                    arr = np.zeros(count, dtype=dt)
                    for k, (fn, _, _) in enumerate(fields):
                        arr[fn] = [r[k] for r in rows]
                    out[name] = arr
                continue
            dt_fields = []
            for fn, ft, lt in fields:
                if lt is None:
                    dt_fields.append((fn, ft))
                else:  # assume triangles: count + 3 indices, checked below
                    dt_fields += [("_n_" + fn, ft), (fn, lt, (3,))]
            dt = np.dtype(dt_fields)
            arr = np.frombuffer(f.read(dt.itemsize * count), dtype=dt, count=count)
            if name == "face":
                key = next(fn for fn, _, lt in fields if lt is not None)
                if count and not np.all(arr["_n_" + key] == 3):
                    raise ValueError(f"{path}: only triangle faces are supported")
                out["faces"] = arr[key].astype(np.int64).reshape(-1, 3)
            else:
                out[name] = arr
    return out


@dataclass
class Mesh:
    """vertices: (V, 3) float64; faces: (F, 3) int64; colors: (V, 3) uint8 or None."""

    vertices: np.ndarray
    faces: np.ndarray
    colors: Optional[np.ndarray] = None


def read_ply_mesh(path: str) -> Mesh:
    """Read a triangle mesh. Uses plyfile if installed, else a built-in numpy reader, else open3d."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mesh not found: {path}")
    try:
        import plyfile  # noqa: F401
    except ImportError:
        plyfile = None
    if plyfile is not None:
        try:  # fast path: every face a triangle
            ply = plyfile.PlyData.read(path, known_list_len={"face": {"vertex_indices": 3}})
        except Exception:
            ply = plyfile.PlyData.read(path)
        v = ply["vertex"].data
        fdata = ply["face"].data
        key = "vertex_indices" if "vertex_indices" in fdata.dtype.names else "vertex_index"
        col = fdata[key]
        if len(fdata) == 0:
            faces = np.zeros((0, 3), np.int64)
        elif col.dtype == object:
            if any(len(f) != 3 for f in col):
                raise ValueError(f"{path}: only triangle faces are supported")
            faces = np.stack([np.asarray(f, dtype=np.int64) for f in col])
        else:
            faces = np.asarray(col, dtype=np.int64).reshape(-1, 3)
    else:
        try:
            data = _read_ply_numpy(path)
            v, faces = data["vertex"], data.get("faces", np.zeros((0, 3), np.int64))
        except ValueError:
            try:
                import open3d as o3d
            except ImportError:
                raise
            m = o3d.io.read_triangle_mesh(path)
            cols = (np.asarray(m.vertex_colors) * 255).round().astype(np.uint8) if m.has_vertex_colors() else None
            return Mesh(np.asarray(m.vertices, dtype=np.float64), np.asarray(m.triangles, dtype=np.int64), cols)
    verts = np.stack([np.asarray(v[k], dtype=np.float64) for k in ("x", "y", "z")], axis=1)
    names = v.dtype.names
    colors = (np.stack([np.asarray(v[k]) for k in ("red", "green", "blue")], axis=1).astype(np.uint8)
              if all(k in names for k in ("red", "green", "blue")) else None)
    return Mesh(verts, faces, colors)


# ---------------------------------------------------------------------- scenes
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


def normalize_label(label: str) -> str:
    """Raw ScanNet++ label -> class name: stripped, lower-case, single spaces."""
    return " ".join(str(label).strip().lower().split())


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
                raise ValueError(f"{os.path.join(self.colmap_dir, 'images.txt')}: image {im.name} uses unknown camera {im.camera_id}")
            cam = cams[im.camera_id]
            stem, rgb, depth = self._frame_paths(im.name)
            out.append(ScanNetPPFrame(stem, rgb, depth, im.cam_to_world, cam.K, cam.width, cam.height))
        return out

    def _pose_json_frames(self, allow_unaligned_poses: bool = False) -> List[ScanNetPPFrame]:
        path = self.pose_json_path
        if not os.path.isfile(path):
            raise FileNotFoundError(f"scene {self.scene_id}: no camera poses (neither {os.path.join(self.colmap_dir, 'images.txt')} nor {path})")
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        out = []
        for key in sorted(data):
            entry = data[key]
            if "intrinsic" not in entry:
                raise ValueError(f"{path}: frame {key} lacks 'intrinsic'")
            pose = entry.get("aligned_pose")
            if pose is None:
                if "pose" not in entry or not allow_unaligned_poses:
                    raise ValueError(
                        f"{path}: frame {key} has no 'aligned_pose'" + (
                            " (only the unaligned ARKit 'pose', which is not in the mesh's frame; pass "
                            "allow_unaligned_poses=True to use it anyway)" if "pose" in entry else ""))
                pose = entry["pose"]
            stem, rgb, depth = self._frame_paths(key)
            width, height = (Image.open(rgb).size if os.path.isfile(rgb) else (0, 0))
            out.append(ScanNetPPFrame(stem, rgb, depth, np.asarray(pose, dtype=np.float64).reshape(4, 4),
                                      np.asarray(entry["intrinsic"], dtype=np.float64).reshape(3, 3), width, height))
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
        with open(path, encoding="utf-8") as f:
            anno = json.load(f)
        if "segGroups" not in anno:
            raise ValueError(f"{path}: no 'segGroups'")
        return anno

    def instance_labels(self, ignore: Iterable[str] = IGNORED_LABELS) -> Dict[int, str]:
        """{objectId: class name} of the annotated objects (normalised labels; ignored labels dropped)."""
        ignore = {normalize_label(x) for x in ignore}
        out = {}
        for g in self.annotation()["segGroups"]:
            label = normalize_label(g.get("label", ""))
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
        with open(path, encoding="utf-8") as f:
            seg_indices = np.asarray(json.load(f)["segIndices"], dtype=np.int64)
        labels = self.instance_labels(ignore)
        groups = [g for g in self.annotation()["segGroups"] if int(g.get("objectId", g.get("id"))) in labels]
        masks = [(np.isin(seg_indices, np.asarray(g["segments"], dtype=np.int64)), int(g.get("objectId", g.get("id"))))
                 for g in groups]
        out = np.zeros(len(seg_indices), dtype=np.int64)
        for mask, oid in sorted(masks, key=lambda m: -int(m[0].sum())):
            out[mask] = oid
        present = set(np.unique(out).tolist())
        return out, {oid: lab for oid, lab in labels.items() if oid in present}


# ---------------------------------------------------------------------- the Offices split
def offices_split(path: Optional[str] = None) -> Dict[str, List[str]]:
    """{"train": 14 scene ids, "test": 16 scene ids} (paper Appendix E)."""
    if path is None:
        from .registry import resource_path
        path = resource_path("scannetpp_offices_split.json")
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return {"train": list(data["train"]), "test": list(data["test"])}


def split_scene_ids(split: str, split_file: Optional[str] = None) -> List[str]:
    aliases = {"train": "train", "training": "train", "test": "test", "val": "test", "validation": "test"}
    if split not in aliases:
        raise ValueError(f"ScanNet++ Offices split must be one of {sorted(aliases)}, got {split!r}")
    return offices_split(split_file)[aliases[split]]


class ScanNetPPOffices(LabelMapSegmentDataset):
    """Segments of ScanNet++ scenes: one per annotated object visible in a rendered frame.

    root: ScanNet++ release folder. split: "train" (14 scenes) or "test" (16 scenes) of the Offices
    split, or give ``scene_ids``. stride: keep every stride-th posed frame. render_scale: render
    the masks (and load the RGB) at this fraction of the RGB resolution. render_dir: where the
    instance maps are cached (default ``~/.cache/opendas_encoder/scannetpp_renders``).
    pose_source / allow_unaligned_poses: see :meth:`ScanNetPPScene.frames` (frames without an
    ``aligned_pose`` are refused unless allow_unaligned_poses=True).
    classes: the labels of the split's annotated objects (sorted).
    """

    def __init__(self, root: str, split: str = "train", stride: int = 10, min_pixels: int = DEFAULT_MIN_PIXELS,
                 render_scale: float = 0.25, render_dir: Optional[str] = None,
                 scene_ids: Optional[Sequence[str]] = None, split_file: Optional[str] = None,
                 pose_source: str = "auto", allow_unaligned_poses: bool = False, threads: int = 0,
                 index_cache: Optional[str] = None, progress: bool = True):
        if not 0 < render_scale <= 1:
            raise ValueError(f"render_scale must be in (0, 1], got {render_scale}")
        ids = list(scene_ids) if scene_ids is not None else split_scene_ids(split, split_file)
        scenes = [ScanNetPPScene(root, sid) for sid in ids]  # raises for a missing scene folder
        self.render_dir = os.path.join(render_dir or os.path.expanduser("~/.cache/opendas_encoder/scannetpp_renders"),
                                       f"scale_{render_scale:g}")
        frames, all_labels = [], set()
        for scene in tqdm(scenes, desc="ScanNet++ scenes", disable=not progress, leave=False):
            fr = scene.frames(stride, source=pose_source, allow_unaligned_poses=allow_unaligned_poses)
            maps = render_scene_instance_maps(scene, fr, self.render_dir, render_scale, threads, progress)
            labels = scene.instance_labels()
            all_labels.update(labels.values())
            frames += [LabelFrame(f.rgb_path, m, labels, resize_image=True) for f, m in zip(fr, maps)]
        super().__init__(f"scannetpp-offices/{split}" if scene_ids is None else "scannetpp", sorted(all_labels), min_pixels)
        self.root, self.scene_ids, self.stride = root, ids, stride
        self._enumerate(frames, progress, index_cache)


def render_scene_instance_maps(scene: ScanNetPPScene, frames: Sequence[ScanNetPPFrame], render_dir: str,
                               scale: float = 0.25, threads: int = 0, progress: bool = True) -> List[str]:
    """Paths of 16-bit instance maps (objectId per pixel, 0 = none) for ``frames``; renders the missing ones."""
    out_dir = os.path.join(render_dir, scene.scene_id)
    paths = [os.path.join(out_dir, f.name + ".png") for f in frames]
    todo = [(f, p) for f, p in zip(frames, paths) if not _valid_png(p)]
    if not todo:
        return paths
    from .scannetpp_render import MeshRaycaster, face_values_from_vertices, scale_intrinsics

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


# ---------------------------------------------------------------------- vocabularies
def annotation_labels(root: str, scene_ids: Sequence[str]) -> List[str]:
    """Sorted class names of the annotated objects of the given scenes."""
    labels = set()
    for sid in scene_ids:
        labels.update(ScanNetPPScene(root, sid).instance_labels().values())
    return sorted(labels)


def offices_vocabulary(root: str, split_file: Optional[str] = None) -> Vocabulary:
    """base = labels of the training scenes, test = labels of the test scenes (novel = test - base)."""
    split = offices_split(split_file)
    return Vocabulary(base=annotation_labels(root, split["train"]), test=annotation_labels(root, split["test"]),
                      name="scannetpp-offices")


def vocabulary_report(vocab: Vocabulary) -> str:
    c = vocab.counts()
    return (f"training labels: {c['base']}\ntest labels: {c['test']}\n"
            f"base (test labels seen in training): {c['test_base']}\nnovel (test - training): {c['novel']}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m opendas_encoder.data.scannetpp", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("vocab", help="derive base/test/novel vocabularies of the Offices split and print the counts")
    v.add_argument("--root", required=True)
    v.add_argument("--split-file", default=None)
    v.add_argument("--out", default=None, help="write the vocabulary JSON here")
    r = sub.add_parser("render", help="render (cache) the instance maps of a split")
    r.add_argument("--root", required=True)
    r.add_argument("--split", default="train")
    r.add_argument("--stride", type=int, default=10)
    r.add_argument("--scale", type=float, default=0.25)
    r.add_argument("--render-dir", default=None)
    r.add_argument("--allow-unaligned-poses", action="store_true",
                   help="use ARKit's unaligned 'pose' for frames of pose_intrinsic_imu.json without 'aligned_pose' "
                        "(refused by default: those poses are not in the mesh's frame)")
    args = ap.parse_args(argv)
    if args.cmd == "vocab":
        vocab = offices_vocabulary(args.root, args.split_file)
        print(vocabulary_report(vocab))
        if args.out:
            vocab.save(args.out)
            print(f"saved {args.out}")
    else:
        ds = ScanNetPPOffices(args.root, args.split, stride=args.stride, render_scale=args.scale, render_dir=args.render_dir,
                              allow_unaligned_poses=args.allow_unaligned_poses)
        print(f"{ds.name}: {len(ds)} segments, {len(ds.classes)} classes, {len(ds.frames)} frames\n"
              f"{ds.enumeration_skips.summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
