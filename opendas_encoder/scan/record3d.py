"""Record3D ``.r3d`` exports (a zip archive) read without unpacking.

Facts relied on (nerfstudio's ``process_data/record3d_utils.py``; Record3D exports read by open
projects, e.g. codekansas/usa ``tasks/datasets/r3d.py``; the Record3D app's export description):

* members ``metadata`` (JSON), ``rgbd/<i>.jpg`` (colour), ``rgbd/<i>.depth`` (LZFSE-compressed float32
  metres, ``dh x dw`` row-major), ``rgbd/<i>.conf`` (LZFSE-compressed uint8 ARKit confidence 0 low,
  1 medium, 2 high), ``i = 0 .. N-1``;
* ``metadata["K"]``: the colour camera's 3x3 intrinsics flattened column-major (``reshape(3, 3).T``),
  for colour images of ``metadata["w"] x metadata["h"]``; depth maps are ``metadata["dw"] x
  metadata["dh"]`` over the same field of view;
* ``metadata["poses"]``: one ``[qx, qy, qz, qw, tx, ty, tz]`` per frame (scalar-last quaternion, as
  scipy's ``Rotation.from_quat``), camera-to-world in ARKit's convention: OpenGL camera axes
  (x right, y up, z back) in a gravity-aligned y-up world.

LZFSE is decoded with the ``lzfse`` package (``pip install lzfse``, the ``scan`` extra).
"""

from __future__ import annotations

import json
import re
import zipfile
from typing import Dict, List

import numpy as np

from .conventions import quaternion_pose
from .errors import ScanInputError
from .source import SourceCapture, SourceFrame

_MEMBER = re.compile(r"^rgbd/(\d+)\.(jpg|depth|conf)$")


def _lzfse():
    try:
        import lzfse
    except ImportError as exc:
        raise ImportError("reading Record3D .r3d files needs the lzfse package: pip install lzfse "
                          f"(or pip install 'opendas_encoder[scan]'; import failed: {exc})") from exc
    return lzfse


def _decode(zf: zipfile.ZipFile, where: str, member: str, dtype, hw) -> np.ndarray:
    lzfse = _lzfse()
    try:
        raw = lzfse.decompress(zf.read(member))
    except Exception as exc:  # noqa: BLE001 - lzfse.error, zlib/zip errors
        raise ScanInputError(f"{where}:{member}", f"not LZFSE-compressed data ({type(exc).__name__}: {exc})") from None
    n = hw[0] * hw[1] * np.dtype(dtype).itemsize
    if len(raw) != n:
        raise ScanInputError(f"{where}:{member}", f"decompressed to {len(raw)} bytes, expected {n} "
                                                  f"({hw[1]}x{hw[0]} {np.dtype(dtype).name} from metadata dw, dh)")
    return np.frombuffer(raw, dtype=dtype).reshape(hw).copy()


def read_record3d(src: str) -> SourceCapture:
    """Parse a ``.r3d`` export; frames decode lazily (the zip is reopened per read)."""
    if not zipfile.is_zipfile(src):
        raise ScanInputError(src, "not a zip archive (a Record3D .r3d export is a zip)")
    with zipfile.ZipFile(src) as zf:
        names = set(zf.namelist())
        if "metadata" not in names:
            raise ScanInputError(src, "zip has no 'metadata' member: not a Record3D .r3d export")
        try:
            meta = json.loads(zf.read("metadata"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ScanInputError(f"{src}:metadata", f"not valid JSON ({exc})") from None
    missing = [k for k in ("K", "poses", "w", "h", "dw", "dh") if k not in meta]
    if missing:
        raise ScanInputError(f"{src}:metadata", f"lacks {missing} (a Record3D metadata has K, poses, w, h, dw, dh)")
    try:
        K = np.asarray(meta["K"], dtype=np.float64).reshape(3, 3).T  # column-major in the file
        poses = np.asarray(meta["poses"], dtype=np.float64)
        color_hw, depth_hw = (int(meta["h"]), int(meta["w"])), (int(meta["dh"]), int(meta["dw"]))
    except (TypeError, ValueError) as exc:
        raise ScanInputError(f"{src}:metadata",
                             f"K, poses, w, h, dw, dh are not numeric of the right size ({exc})") from None
    if poses.ndim != 2 or poses.shape[1] != 7:
        raise ScanInputError(f"{src}:metadata",
                             f"poses must be N x 7 [qx, qy, qz, qw, tx, ty, tz], got shape {poses.shape}")

    members: Dict[str, List[int]] = {"jpg": [], "depth": [], "conf": []}
    for name in names:
        m = _MEMBER.match(name)
        if m:
            members[m.group(2)].append(int(m.group(1)))
    n = len(poses)
    counts = {k: len(v) for k, v in members.items()}
    expected = list(range(n))
    for kind in ("jpg", "depth") + (("conf",) if counts["conf"] else ()):
        if sorted(members[kind]) != expected:
            raise ScanInputError(src, f"frame count mismatch: {n} poses, {counts['jpg']} rgbd/*.jpg, "
                                      f"{counts['depth']} rgbd/*.depth, {counts['conf']} rgbd/*.conf "
                                      f"(each needs rgbd/0..{n - 1})")

    def read_member(member: str) -> bytes:
        with zipfile.ZipFile(src) as zf:
            return zf.read(member)

    def read_array(member: str, dtype) -> np.ndarray:
        with zipfile.ZipFile(src) as zf:
            return _decode(zf, src, member, dtype, depth_hw)

    frames = []
    for i, row in enumerate(poses):
        if not np.isfinite(row).all():
            raise ScanInputError(f"{src}:metadata", f"pose {i} contains inf/nan: {row.tolist()}")
        if not np.linalg.norm(row[:4]) > 1e-9:
            raise ScanInputError(f"{src}:metadata", f"pose {i} has a zero quaternion (not invertible): {row.tolist()}")
        frames.append(SourceFrame(
            name=f"rgbd/{i}.jpg", cam_to_world=quaternion_pose(row[:4], row[4:]),
            color_name=f"{src}:rgbd/{i}.jpg", depth_name=f"{src}:rgbd/{i}.depth",
            read_color=lambda i=i: read_member(f"rgbd/{i}.jpg"),
            read_depth=lambda i=i: read_array(f"rgbd/{i}.depth", np.float32),
            read_confidence=(lambda i=i: read_array(f"rgbd/{i}.conf", np.uint8)) if counts["conf"] else None))
    notes = {k: meta[k] for k in ("fps", "cameraType") if k in meta}
    if "perFrameIntrinsicCoeffs" in meta:
        notes["perFrameIntrinsicCoeffs"] = "present, not used (the layout holds one camera: metadata K)"
    return SourceCapture(format="record3d", path=src, frames=frames, intrinsic=K, color_hw=color_hw,
                         depth_hw=depth_hw, camera_convention="opengl", world_up="+y",
                         depth_unit="metres (float32, LZFSE)", notes=notes)
