"""Readers for OpenMask3D's processed scene layout, its mask proposals and ScanNet ground truth (used by the
OpenMask3D integration, eval/run_3d.py and the own-scan workflow).

Layout (the paths of ``openmask3d/configs/openmask3d_inference.yaml``, relative to a scene folder)::

    <scene>/pose/<i>.txt                     4x4 camera-to-world, i = 0, 1, ...
    <scene>/intrinsic/intrinsic_color.txt    4x4 (or 3x3) pixel intrinsics, for ``intrinsic_resolution``
    <scene>/color/<i>.jpg                    RGB frames
    <scene>/depth/<i>.png                    uint16 depth, ``depth_scale`` units per metre (1000)
    <scene>/<scene>.ply or *.ply             the scene point cloud / mesh vertices
    <scene>/<scene>_masks.pt | .npy          class-agnostic proposals, (num_points, num_masks);
                                             .pt: a tensor or Mask3D's pickled float16 ndarray
    <root>/gt/<scene>.txt                    ScanNet GT, one ``label_id*1000+instance+1`` per point

Only numpy, PIL and torch are used (no open3d).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from ..data.ply import read_ply_vertices
from ..errors import InputError, read_json
from .scene import PosedFrame, Scene3D


@dataclass
class ProcessedLayout:
    """Where the parts of a processed scene live, relative to the scene folder."""

    poses: str = "pose"
    intrinsic: str = "intrinsic/intrinsic_color.txt"
    intrinsic_resolution: Optional[Tuple[int, int]] = None  # (H, W); None = colour image size
    color: str = "color"
    color_ext: str = ".jpg"
    depth: str = "depth"
    depth_ext: str = ".png"
    depth_scale: float = 1000.0
    frame_step: int = 1          # OpenMask3D's ``frequency``: use every n-th frame
    point_cloud: Optional[str] = None  # None: <scene>.ply, else the only *.ply in the folder


def read_matrix(path: str, shape: Tuple[int, ...]) -> np.ndarray:
    """A whitespace-separated matrix file, checked to be at least ``shape`` (top-left block returned)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"matrix file not found: {path}")
    try:
        m = np.loadtxt(path, dtype=np.float64, ndmin=2, encoding="utf-8")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a numeric matrix ({exc})") from None
    if m.shape[0] < shape[0] or m.shape[1] < shape[1]:
        raise InputError(path, f"expected a {shape[0]}x{shape[1]} matrix, got {m.shape}")
    if not np.isfinite(m).all():
        raise InputError(path, "matrix contains inf/nan (invalid pose?)")
    return m[: shape[0], : shape[1]]


def count_frames(poses_dir: str) -> int:
    """Number of consecutive pose files 0.txt, 1.txt, ... (OpenMask3D's ``get_number_of_images``)."""
    n = 0
    while os.path.isfile(os.path.join(poses_dir, f"{n}.txt")):
        n += 1
    return n


def point_cloud_path(scene_dir: str, layout: ProcessedLayout) -> str:
    if layout.point_cloud:
        return os.path.join(scene_dir, layout.point_cloud)
    named = os.path.join(scene_dir, os.path.basename(os.path.normpath(scene_dir)) + ".ply")
    if os.path.isfile(named):
        return named
    found = sorted(glob.glob(os.path.join(scene_dir, "*.ply")))
    if len(found) != 1:
        raise FileNotFoundError(f"{scene_dir}: expected one *.ply point cloud, found {len(found)} "
                                "(set ProcessedLayout.point_cloud)")
    return found[0]


def read_processed_scene(scene_dir: str, layout: ProcessedLayout = ProcessedLayout()) -> Scene3D:
    """A :class:`Scene3D` from an OpenMask3D processed scene folder (frames decoded lazily)."""
    if not os.path.isdir(scene_dir):
        raise FileNotFoundError(f"scene folder not found: {scene_dir}")
    name = os.path.basename(os.path.normpath(scene_dir))
    poses_dir = os.path.join(scene_dir, layout.poses)
    n = count_frames(poses_dir)
    if n == 0:
        raise FileNotFoundError(f"{poses_dir}: no pose files 0.txt, 1.txt, ...")
    K = read_matrix(os.path.join(scene_dir, layout.intrinsic), (3, 3))
    frames: List[PosedFrame] = []
    for i in range(0, n, layout.frame_step):
        pose = read_matrix(os.path.join(poses_dir, f"{i}.txt"), (4, 4))
        frames.append(PosedFrame(
            color_path=os.path.join(scene_dir, layout.color, f"{i}{layout.color_ext}"),
            depth_path=os.path.join(scene_dir, layout.depth, f"{i}{layout.depth_ext}"),
            cam_to_world=pose, intrinsic=K, depth_scale=layout.depth_scale,
            intrinsic_hw=tuple(layout.intrinsic_resolution) if layout.intrinsic_resolution else None,
            name=str(i)))
    for f in frames:
        for path in (f.color_path, f.depth_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{scene_dir}: frame {f.name} has a pose but no image {path}")
    points = read_ply_vertices(point_cloud_path(scene_dir, layout))["points"]
    return Scene3D(name=name, points=points, frames=frames)


def numpy_array_globals() -> list:
    """The pickle globals of a plain NumPy array, under the module names NumPy 1.x and 2.x write.

    OpenMask3D's Mask3D step saves ``torch.save(pred_masks.astype(np.float16), path)``: a pickled
    ndarray, whose pickle names ``<numpy core>.multiarray._reconstruct``, ``numpy.ndarray`` and
    ``numpy.dtype``. Only these are allow-listed for torch's ``weights_only`` unpickler, so nothing
    else in a file can run.
    """
    try:
        from numpy._core.multiarray import _reconstruct  # NumPy >= 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    allowed = [np.ndarray, np.dtype,
               (_reconstruct, "numpy._core.multiarray._reconstruct"),
               (_reconstruct, "numpy.core.multiarray._reconstruct")]
    dtypes = getattr(np, "dtypes", None)  # NumPy >= 1.25 pickles some dtypes by their class
    if dtypes is not None:
        allowed += [type(np.dtype(t)) for t in (np.bool_, np.uint8, np.int32, np.int64, np.float16,
                                                np.float32, np.float64)]
    return allowed


def _load_torch_proposals(path: str) -> np.ndarray:
    import torch

    try:
        with torch.serialization.safe_globals(numpy_array_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad (or unsafe) file
        first = (str(exc).splitlines() or [""])[0]
        raise InputError(path, f"cannot read mask proposals with torch.load(weights_only=True) and only "
                               f"NumPy arrays allowed ({type(exc).__name__}: {first})") from None
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, np.ndarray):
        return obj
    raise InputError(path, f"expected a tensor or NumPy array (num_points, num_masks), got {type(obj).__name__}")


def read_npy(path: str) -> np.ndarray:
    """A ``.npy`` file (no pickled objects); the header is checked against the file size before anything is
    allocated (a header claiming 10^11 rows is refused, not allocated). Errors: :class:`InputError`."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:  # (3, 0) (UTF-8 field names) is rare; np.save writes it only when needed
                raise ValueError(f"unsupported .npy format version {version}")
            shape, _, dtype = read_header(f)
            data_bytes = os.fstat(f.fileno()).st_size - f.tell()
    except Exception as exc:  # noqa: BLE001 - numpy parses the header with ast and lets its errors through
        raise InputError(path, f"not a NumPy array file ({type(exc).__name__}: {exc})") from None
    if dtype.hasobject:
        raise InputError(path, "holds Python objects (a pickle), which are never loaded")
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if need > data_bytes:
        raise InputError(path, f"truncated or corrupt: header declares shape {shape} {dtype} ({need} bytes), "
                               f"the file holds {data_bytes}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(path, f"not a NumPy array file ({exc})") from None


def read_mask_proposals(path: str, num_points: Optional[int] = None) -> np.ndarray:
    """Class-agnostic proposals as bool (num_points, num_masks) from a ``.pt`` file (a tensor, or the
    pickled float16 NumPy array that OpenMask3D's Mask3D step writes; read with torch's
    ``weights_only`` loader, only NumPy's array globals allowed) or a ``.npy`` file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mask proposals not found: {path}")
    if path.endswith(".npy"):
        arr = read_npy(path)
    elif path.endswith((".pt", ".pth")):
        arr = _load_torch_proposals(path)
    else:
        raise InputError(path, "mask proposals must be .pt or .npy")
    if arr.ndim != 2:
        raise InputError(path, f"proposals must be 2-D (num_points, num_masks), got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise InputError(path, f"proposals must be numbers (bool, int or float), got {arr.dtype}")
    if num_points is not None and arr.shape[0] != num_points:
        if arr.shape[1] == num_points:
            raise InputError(path, f"proposals are (num_masks, num_points) = {arr.shape}; expected "
                                   f"(num_points={num_points}, num_masks) - transpose the file")
        raise InputError(path, f"proposals have {arr.shape[0]} points, the scene has {num_points}")
    return arr > 0


def find_mask_proposals(scene_dir: str, masks_dir: Optional[str] = None) -> str:
    """The proposal file of a scene, looked up in ``where = masks_dir or scene_dir``:

    1. ``<where>/<scene>*_masks.{pt,npy}`` (Mask3D names its file after the PLY; ScanNet processed
       scenes are ``<scene>.ply`` / ``<scene>_vh_clean_2.ply``);
    2. ``<where>/<scene>/*_masks.{pt,npy}``, exactly one: one Mask3D output folder per scene
       (``general.mask_save_dir=<masks_dir>/<scene>``), needed where every scene's PLY has the same
       name, e.g. ScanNet++'s ``mesh_aligned_0.05.ply`` -> ``mesh_aligned_0.05_masks.pt``.
    """
    name = os.path.basename(os.path.normpath(scene_dir))
    where = masks_dir or scene_dir

    def matches(pattern: str) -> List[str]:
        return sorted(glob.glob(pattern + "_masks.pt") + glob.glob(pattern + "_masks.npy"))

    found = matches(os.path.join(where, f"{name}*"))
    if found:
        return found[0]
    sub = os.path.join(where, name)
    found = matches(os.path.join(sub, "*")) if os.path.isdir(sub) else []
    if not found and masks_dir is None:
        found = matches(os.path.join(scene_dir, "*"))
    if len(found) > 1:
        raise ValueError(f"{os.path.dirname(found[0])}: {len(found)} mask proposal files {[os.path.basename(f) for f in found]}; "
                         "keep one *_masks.pt per scene folder")
    if not found:
        raise FileNotFoundError(f"no mask proposals {name}*_masks.pt/.npy in {where} nor *_masks.pt/.npy in {sub} "
                                "(compute them with Mask3D, see integrations/openmask3d/README.md, or use --proposals gt)")
    return found[0]


OPENMASK3D_FEATURES_SUFFIX = "_openmask3d_features.npy"


def find_openmask3d_features(features_dir: str, scene: str, masks_path: Optional[str] = None) -> str:
    """OpenMask3D's feature file of a scene in ``features_dir`` (its ``output.output_directory``).

    OpenMask3D names the file after the proposal file (``<stem>_masks.pt`` ->
    ``<stem>_openmask3d_features.npy``; its ScanNet200 script: ``<scene>_openmask3d_features.npy``).
    Looked up as ``<dir>/<stem>...``, ``<dir>/<scene>/<stem>...`` (one output folder per scene) and
    ``<dir>/<scene>...``.
    """
    candidates = []
    if masks_path:
        base = os.path.basename(masks_path)
        for suffix in ("_masks.pt", "_masks.npy"):
            if base.endswith(suffix):
                stem = base[: -len(suffix)]
                candidates += [os.path.join(features_dir, stem + OPENMASK3D_FEATURES_SUFFIX),
                               os.path.join(features_dir, scene, stem + OPENMASK3D_FEATURES_SUFFIX)]
    candidates.append(os.path.join(features_dir, scene + OPENMASK3D_FEATURES_SUFFIX))
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"no OpenMask3D feature file for scene {scene} (tried {', '.join(candidates)}); run "
                            "OpenMask3D's feature step for it (python -m integrations.openmask3d.launch ...)")


def read_openmask3d_features(path: str, num_masks: Optional[int] = None) -> np.ndarray:
    """OpenMask3D's per-mask features float32 (num_masks, D); all-zero rows are masks no view saw."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"feature file not found: {path}")
    feats = read_npy(path)
    if feats.ndim != 2:
        raise InputError(path, f"features must be 2-D (num_masks, D), got shape {feats.shape}")
    if feats.dtype.kind not in "iuf":
        raise InputError(path, f"features must be numbers, got {feats.dtype}")
    if num_masks is not None and feats.shape[0] != num_masks:
        raise InputError(path, f"{feats.shape[0]} feature rows but the proposal file has {num_masks} masks "
                               "(features computed on other proposals?)")
    if not np.isfinite(feats).all():
        raise InputError(path, "features contain inf/nan")
    return feats.astype(np.float32)


def read_scannet_gt(path: str, num_points: Optional[int] = None) -> np.ndarray:
    """ScanNet instance ground truth txt: int64 (num_points,) of ``label_id * 1000 + instance + 1``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ground truth file not found: {path}")
    try:
        ids = np.loadtxt(path, dtype=np.int64, ndmin=1, encoding="utf-8")
    except (ValueError, UnicodeDecodeError, OverflowError) as exc:
        raise InputError(path, f"expected one integer per line ({exc})") from None
    if ids.ndim != 1:
        raise InputError(path, f"expected one integer per line, got rows of {ids.shape[1]}")
    if num_points is not None and len(ids) != num_points:
        raise InputError(path, f"{len(ids)} ground-truth ids but the scene has {num_points} points")
    return ids


def read_classes_json(path: str) -> dict:
    """``{"class_ids": [...], "class_names": [...], "base": [...]}`` (see opendas_encoder.generated.scene3d)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class list not found: {path}")
    d = read_json(path, "class list")
    ok = (isinstance(d, dict) and isinstance(d.get("class_ids"), list) and isinstance(d.get("class_names"), list)
          and len(d["class_ids"]) == len(d["class_names"]))
    if not ok:
        raise InputError(path, "needs 'class_ids' and 'class_names' lists of equal length")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in d["class_ids"]):
        raise InputError(path, "'class_ids' must be integers")
    if not all(isinstance(n, str) and n.strip() for n in d["class_names"]):
        raise InputError(path, "'class_names' must be non-empty strings")
    if not isinstance(d.get("base", []), list) or not all(isinstance(n, str) for n in d.get("base", [])):
        raise InputError(path, "'base' must be a list of class names")
    return d
