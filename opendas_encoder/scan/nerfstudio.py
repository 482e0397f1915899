"""nerfstudio captures: ``transforms.json`` with colour, depth and optional mask / confidence images.

Facts relied on (docs.nerf.studio/quickstart/data_conventions.html and nerfstudio's dataparser):

* intrinsics ``fl_x, fl_y, cx, cy, w, h`` and ``camera_model`` sit at the top of the file when shared,
  or in each frame; ``camera_model`` is OPENCV (pinhole + k1, k2, k3, k4, p1, p2), OPENCV_FISHEYE or
  EQUIRECTANGULAR (nerfstudio's default is OPENCV); ``cx, cy`` are measured from the image corner, a pixel's
  ray going through its centre (the convention of :mod:`opendas_encoder.threed.projection`);
* ``frames[].transform_matrix`` is camera-to-world in the OpenGL convention (x right, y up, z back);
* ``frames[].depth_file_path``: depth images, 16-bit PNG scaled by ``depth_unit_scale_factor`` (default
  1e-3: millimetres); ``frames[].mask_path``: 0 = ignore the pixel;
* ``applied_transform`` (3x4, optional) records what nerfstudio's converters applied to the source
  world; poses in the file already include it, so it is recorded in ``scan.json``, not re-applied.

Not part of nerfstudio, read when present: ``frames[].confidence_path``, an 8-bit image of ARKit
confidence 0/1/2 at depth resolution (what :mod:`opendas_encoder.generated.capture` writes).

Lens distortion is refused, never ignored: undistorting needs OpenCV (not a core dependency) and a
distorted image read as pinhole would misplace every back-projected point.
"""

from __future__ import annotations

import io
import json
import os
from typing import List, Optional

import numpy as np
from PIL import Image

from .errors import ScanInputError
from .source import SourceCapture, SourceFrame, decode_depth_image, read_file_bytes

TRANSFORMS = "transforms.json"
PINHOLE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "PERSPECTIVE")
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "k5", "k6", "p1", "p2")
_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_model") + DISTORTION_KEYS


def find_transforms(src: str) -> str:
    """``src`` itself if it is a file, else ``src/transforms.json``."""
    path = src if os.path.isfile(src) else os.path.join(src, TRANSFORMS)
    if not os.path.isfile(path):
        raise ScanInputError(path, "nerfstudio transforms.json not found")
    return path


def _camera(params: dict, where: str) -> tuple:
    """(K (3, 3), (h, w) or None) of one camera description; refuses unknown models and distortion."""
    model = str(params.get("camera_model", "OPENCV")).upper()
    if model not in PINHOLE_MODELS:
        raise ScanInputError(where, f"camera_model {model!r} is not supported (pinhole models only: "
                                    f"{', '.join(PINHOLE_MODELS)}); fisheye / equirectangular captures must be "
                                    "undistorted to a pinhole camera first")
    dist = {k: float(params[k]) for k in DISTORTION_KEYS if k in params and float(params[k]) != 0.0}
    if dist:
        coeffs = ", ".join(f"{k}={v:g}" for k, v in dist.items())
        raise ScanInputError(where, f"camera_model {model} has non-zero lens distortion ({coeffs}); this importer "
                                    "does not undistort: undistort colour and depth first (e.g. OpenCV's "
                                    "cv2.undistort) and write zero coefficients")
    try:
        fx = float(params["fl_x"])
        fy = float(params.get("fl_y", fx)) if model == "SIMPLE_PINHOLE" else float(params["fl_y"])
        cx, cy = float(params["cx"]), float(params["cy"])
    except KeyError as exc:
        raise ScanInputError(where, f"intrinsics lack {exc.args[0]!r} (need fl_x, fl_y, cx, cy)") from None
    except (TypeError, ValueError) as exc:
        raise ScanInputError(where, f"intrinsics are not numbers ({exc})") from None
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    if not np.isfinite(K).all() or fx <= 0 or fy <= 0:
        raise ScanInputError(where, f"invalid intrinsics fl_x={fx}, fl_y={fy}, cx={cx}, cy={cy}")
    hw = (int(params["h"]), int(params["w"])) if "h" in params and "w" in params else None
    return K, hw


def _all_or_none(frames: list, key: str, path: str) -> bool:
    have = sum(1 for f in frames if f.get(key))
    if 0 < have < len(frames):
        raise ScanInputError(path, f"{have} of {len(frames)} frames have {key!r}: frame count mismatch "
                                   f"(every frame needs one, or none)")
    return have == len(frames)


def read_nerfstudio(src: str, depth_unit: str = "auto") -> SourceCapture:
    """Parse a nerfstudio capture (``src``: its folder or its transforms.json)."""
    path = find_transforms(src)
    root = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ScanInputError(path, f"not valid JSON ({exc})") from None
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not isinstance(frames, list) or not frames:
        raise ScanInputError(path, "no 'frames' list")
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict) or "file_path" not in fr or "transform_matrix" not in fr:
            raise ScanInputError(path, f"frame {i} lacks 'file_path' or 'transform_matrix'")
    if not _all_or_none(frames, "depth_file_path", path):
        raise ScanInputError(path, "no frame has 'depth_file_path': depth is needed to place the scan in 3D")
    has_conf = _all_or_none(frames, "confidence_path", path)
    has_mask = _all_or_none(frames, "mask_path", path)

    Ks, hws = [], []
    glob_params = {k: meta[k] for k in _INTRINSIC_KEYS if k in meta}
    for i, fr in enumerate(frames):
        K, hw = _camera({**glob_params, **{k: fr[k] for k in _INTRINSIC_KEYS if k in fr}},
                        f"{path} (frame {i}, {fr['file_path']})")
        Ks.append(K)
        hws.append(hw)
    if any(not np.allclose(K, Ks[0], rtol=1e-6, atol=1e-9) for K in Ks) or len(set(hws)) > 1:
        raise ScanInputError(path, "frames have different intrinsics or image sizes; the processed layout holds "
                                   "one camera (split the capture per camera)")
    resolve = lambda p: os.path.normpath(os.path.join(root, p))  # noqa: E731
    first_color = resolve(frames[0]["file_path"])
    color_hw = hws[0]
    if color_hw is None:
        try:
            with Image.open(first_color) as img:
                color_hw = (img.height, img.width)
        except FileNotFoundError:
            raise ScanInputError(first_color, "colour file not found") from None
        except Exception as exc:  # noqa: BLE001
            raise ScanInputError(first_color, f"unreadable colour image ({exc})") from None
    first_depth = resolve(frames[0]["depth_file_path"])
    depth0, unit = decode_depth_image(read_file_bytes(first_depth, "depth"), first_depth, depth_unit)

    for key, what in (("file_path", "colour"), ("depth_file_path", "depth"), ("confidence_path", "confidence"),
                      ("mask_path", "mask")):
        missing = [resolve(fr[key]) for fr in frames if key in fr and not os.path.isfile(resolve(fr[key]))]
        if missing:  # checked before any work: a capture copied in part fails at once, not at frame 900
            raise ScanInputError(missing[0], f"{what} file not found" + (
                f" ({len(missing)} of {len(frames)} {what} files of {path} are missing)" if len(missing) > 1 else ""))
    out: List[SourceFrame] = []
    for i, fr in enumerate(frames):
        color_path, depth_path = resolve(fr["file_path"]), resolve(fr["depth_file_path"])
        try:
            pose = np.asarray(fr["transform_matrix"], dtype=np.float64)
        except (TypeError, ValueError):
            raise ScanInputError(path, f"frame {i} ({fr['file_path']}): transform_matrix is not numeric") from None
        if pose.shape == (3, 4):
            pose = np.vstack([pose, [0, 0, 0, 1.0]])
        conf_path = resolve(fr["confidence_path"]) if has_conf else None
        mask_path = resolve(fr["mask_path"]) if has_mask else None
        out.append(SourceFrame(
            name=fr["file_path"], cam_to_world=pose, color_name=color_path, depth_name=depth_path,
            read_color=lambda p=color_path: read_file_bytes(p, "colour"),
            read_depth=lambda p=depth_path: decode_depth_image(read_file_bytes(p, "depth"), p, unit)[0],
            read_confidence=(lambda p=conf_path: _read_uint8(p, "confidence")) if has_conf else None,
            read_mask=(lambda p=mask_path: _read_uint8(p, "mask") > 0) if has_mask else None))
    notes = {"transforms": path}
    if "applied_transform" in meta:
        notes["applied_transform (recorded by the converter, already in the poses)"] = meta["applied_transform"]
    return SourceCapture(format="nerfstudio", path=path, frames=out, intrinsic=Ks[0], color_hw=tuple(color_hw),
                         depth_hw=tuple(depth0.shape), camera_convention="opengl", world_up="auto",
                         depth_unit={"mm": "millimetres (integer image)", "m": "metres (float image)"}[unit],
                         notes=notes)


def _read_uint8(path: Optional[str], what: str) -> np.ndarray:
    """A single-channel 8-bit image (confidence 0/1/2, or a mask: 0 = ignore) as uint8 (H, W)."""
    data = read_file_bytes(path, what)
    try:
        with Image.open(io.BytesIO(data)) as img:
            arr = np.asarray(img.convert("L") if img.mode in ("1", "P", "RGB", "RGBA", "LA") else img)
    except Exception as exc:  # noqa: BLE001
        raise ScanInputError(path, f"unreadable {what} image ({exc})") from None
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise ScanInputError(path, f"{what} image must be 8-bit single-channel, got {arr.dtype} shape {arr.shape}")
    return arr
