"""``import_scan``: a phone capture (nerfstudio, Record3D ``.r3d``, ScanNet++ iPhone) -> a processed scan.

The output is OpenMask3D's processed layout (read by :func:`opendas_encoder.threed.read_processed_scene`)::

    OUT/color/<i>.jpg                  colour frames at their own resolution (JPEG bytes copied as stored)
    OUT/depth/<i>.png                  uint16 depth, 1000 per metre, at the depth resolution; 0 = no depth
                                       (also where confidence < min_confidence, beyond max_depth, masked)
    OUT/pose/<i>.txt                   4x4 camera-to-world, OpenCV camera, z-up world
    OUT/intrinsic/intrinsic_color.txt  4x4 intrinsics of the colour images
    OUT/intrinsic/intrinsic_depth.txt  4x4 intrinsics of the depth maps (colour's, scaled: never a stretched image)
    OUT/<OUT name>.ply                 fused cloud (x y z float, red green blue uchar), z-up metres
    OUT/scan.json                      every conversion (name + matrix), units, resolutions, subsampling, counts
    OUT/sanity.png                     frustums over the fused cloud (top and side views)
    OUT/GENERATED                      only when the source carries the marker of generated data

Conversions, each applied once and recorded: OpenGL -> OpenCV camera (``c2w @ diag(1, -1, -1, 1)``),
world up -> +z (``R @ c2w``, :data:`.conventions.UP_TO_Z`), depth units -> millimetres, depth
intrinsics = colour intrinsics scaled by (dw / w, dh / h), every ``frame_step``-th frame kept (renumbered
0, 1, ...). Everything is written to a temporary folder beside OUT and renamed to OUT at the end;
bad input raises :class:`.errors.ScanInputError` naming the file and leaves no OUT.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass
from typing import List, Optional

import numpy as np
from PIL import Image

from ..files import atomic_folder
from ..threed.projection import scale_intrinsic
from .conventions import OPENGL_TO_OPENCV, UP_TO_Z, WORLD_UP_CHOICES, estimate_world_up, pose_problem, to_opencv_z_up
from .errors import ScanInputError
from .fuse import backproject, sample_colors, voxel_downsample
from .source import DEPTH_UNITS, FORMATS, SourceCapture, decode_color

DEPTH_SCALE = 1000.0            # uint16 units per metre in OUT/depth (OpenMask3D's depth_scale)
_MAX_BUFFER = 4_000_000         # back-projected points held before an intermediate voxel pass


@dataclass
class ImportOptions:
    """What ``opendas scan import`` takes. frame_step: keep every n-th frame; voxel_size: metres;
    min_confidence: keep depth pixels with ARKit confidence >= this (0 keeps all; ignored without
    confidence maps); depth_unit: "auto" | "mm" | "m" (nerfstudio depth images; see
    :func:`.source.decode_depth_image`); max_depth: metres, None = no limit; world_up: "auto" (the
    format's: Record3D +y, ScanNet++ +z, nerfstudio estimated from the cameras) or a signed axis."""

    format: str = "auto"
    frame_step: int = 1
    voxel_size: float = 0.02
    min_confidence: int = 1
    depth_unit: str = "auto"
    max_depth: Optional[float] = None
    world_up: str = "auto"

    def validate(self) -> "ImportOptions":
        checks = [
            (self.format in FORMATS, f"format must be one of {FORMATS}, got {self.format!r}"),
            (isinstance(self.frame_step, int) and self.frame_step >= 1,
             f"frame_step must be an integer >= 1, got {self.frame_step!r}"),
            (np.isfinite(self.voxel_size) and self.voxel_size > 0,
             f"voxel_size must be > 0 metres, got {self.voxel_size!r}"),
            (self.min_confidence in (0, 1, 2), f"min_confidence must be 0, 1 or 2, got {self.min_confidence!r}"),
            (self.depth_unit in DEPTH_UNITS, f"depth_unit must be one of {DEPTH_UNITS}, got {self.depth_unit!r}"),
            (self.max_depth is None or (np.isfinite(self.max_depth) and self.max_depth > 0),
             f"max_depth must be > 0 metres or None, got {self.max_depth!r}"),
            (self.world_up in ("auto",) + WORLD_UP_CHOICES,
             f"world_up must be auto or one of {WORLD_UP_CHOICES}, got {self.world_up!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        return self


@dataclass
class ImportResult:
    out: str
    num_frames: int
    num_points: int
    metadata: dict


def detect_format(src: str) -> str:
    """"record3d" (a file ending .r3d, or any zip), "nerfstudio" (a transforms.json or a folder with
    one), "scannetpp" (a folder with iphone/); otherwise a ScanInputError."""
    import zipfile

    from .scannetpp import is_scannetpp_scene

    if not os.path.exists(src):
        raise ScanInputError(src, "scan source not found")
    if os.path.isfile(src):
        if src.lower().endswith(".r3d") or zipfile.is_zipfile(src):
            return "record3d"
        if src.lower().endswith(".json"):
            return "nerfstudio"
    elif os.path.isfile(os.path.join(src, "transforms.json")):
        return "nerfstudio"
    elif is_scannetpp_scene(src):
        return "scannetpp"
    raise ScanInputError(src, "unknown scan format (expected a Record3D .r3d, a nerfstudio folder with "
                              "transforms.json, or a ScanNet++ scene folder with iphone/); pass --format")


def read_source(src: str, fmt: str = "auto", depth_unit: str = "auto") -> SourceCapture:
    """Parse ``src`` with the reader of ``fmt`` ("auto": :func:`detect_format`)."""
    fmt = detect_format(src) if fmt == "auto" else fmt
    if not os.path.exists(src):
        raise ScanInputError(src, "scan source not found")
    if fmt == "nerfstudio":
        from .nerfstudio import read_nerfstudio

        return read_nerfstudio(src, depth_unit)
    if fmt == "record3d":
        from .record3d import read_record3d

        return read_record3d(src)
    if fmt == "scannetpp":
        from .scannetpp import read_scannetpp

        return read_scannetpp(src)
    raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


def _matrix_file(path: str, m: np.ndarray) -> None:
    np.savetxt(path, m, fmt="%.10g")


def _k4(K: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = K
    return m


def _check_capture(cap: SourceCapture, frames) -> None:
    """Validate everything that needs no pixel before any file is written."""
    for f in frames:
        problem = pose_problem(f.cam_to_world)
        if problem:
            raise ScanInputError(cap.path, f"frame {f.name}: {problem}")
    (h, w), (dh, dw) = cap.color_hw, cap.depth_hw
    if min(h, w, dh, dw) <= 0:
        raise ScanInputError(cap.path, f"image sizes must be positive: colour {w}x{h}, depth {dw}x{dh}")
    if abs(w / h - dw / dh) > 0.01 * (w / h):
        raise ScanInputError(cap.path, f"depth {dw}x{dh} and colour {w}x{h} have different aspect ratios; a depth map "
                                       "covering the colour image's field of view is required (crop/resize it first)")


def import_scan(src: str, out: str, options: Optional[ImportOptions] = None, *, overwrite: bool = False,
                progress: bool = True, **kwargs) -> ImportResult:
    """Import the capture ``src`` into the processed scan folder ``out`` (see the module docstring).

    ``options`` or keyword arguments of :class:`ImportOptions` (e.g. ``frame_step=2``); ``overwrite``
    replaces an existing ``out``. Returns the output folder, frame and point counts and ``scan.json``.
    """
    if options is not None and kwargs:
        raise ValueError(f"give ImportOptions or keyword options, not both (got {sorted(kwargs)})")
    opts = (options or ImportOptions(**kwargs)).validate()
    out = os.path.abspath(out)
    if os.path.exists(out) and not overwrite and (not os.path.isdir(out) or os.listdir(out)):
        raise ScanInputError(out, "output exists (pass overwrite=True / --overwrite to replace it)")
    cap = read_source(src, opts.format, opts.depth_unit)
    if opts.depth_unit != "auto" and cap.format != "nerfstudio":
        raise ValueError(f"depth_unit={opts.depth_unit!r} applies to nerfstudio depth images only; {cap.format} "
                         f"depth is {cap.depth_unit} by its format")
    frames = cap.frames[:: opts.frame_step]
    _check_capture(cap, frames)
    up = opts.world_up if opts.world_up != "auto" else cap.world_up
    up_how = "given" if opts.world_up != "auto" else f"{cap.format} convention"
    if up == "auto":
        up = estimate_world_up([f.cam_to_world for f in frames], cap.camera_convention)
        up_how = "estimated: the signed world axis closest to the mean camera up vector"

    # overwrite: the old OUT goes only once the new one is complete
    with atomic_folder(out, prefix=f".{os.path.basename(out)}.importing-") as tmp:
        meta = _write_scan(cap, frames, opts, up, up_how, tmp, os.path.basename(out), progress)
    return ImportResult(out=out, num_frames=meta["num_frames"], num_points=meta["num_points"], metadata=meta)


def _write_scan(cap: SourceCapture, frames, opts: ImportOptions, up: str, up_how: str, d: str, name: str,
                progress: bool) -> dict:
    from tqdm import tqdm

    from ..data.ply import write_ply
    from .sanity import draw_sanity

    for sub in ("color", "depth", "pose", "intrinsic"):
        os.makedirs(os.path.join(d, sub))
    K_color = np.asarray(cap.intrinsic, dtype=np.float64)
    K_depth = scale_intrinsic(K_color, cap.color_hw, cap.depth_hw)
    _matrix_file(os.path.join(d, "intrinsic", "intrinsic_color.txt"), _k4(K_color))
    _matrix_file(os.path.join(d, "intrinsic", "intrinsic_depth.txt"), _k4(K_depth))
    counts = dict(depth_pixels=0, kept=0, no_depth=0, nonfinite=0, low_confidence=0, masked=0, beyond_max_depth=0,
                  over_uint16_range=0)
    reencoded = 0
    buf_p: List[np.ndarray] = []
    buf_c: List[np.ndarray] = []
    buffered = 0
    poses_out = []
    backend = "none"
    for i, f in enumerate(tqdm(frames, desc=f"import {cap.format}", unit="frame", disable=not progress)):
        data = f.read_color()
        rgb = decode_color(data, f.color_name)
        if rgb.shape[:2] != tuple(cap.color_hw):
            raise ScanInputError(f.color_name, f"colour image is {rgb.shape[1]}x{rgb.shape[0]}, the camera's "
                                               f"intrinsics are for {cap.color_hw[1]}x{cap.color_hw[0]} "
                                               "(images are never stretched)")
        if data[:2] != b"\xff\xd8":  # not a JPEG: re-encode (OpenMask3D reads color/<i>.jpg)
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
            data = buf.getvalue()
            reencoded += 1
        with open(os.path.join(d, "color", f"{i}.jpg"), "wb") as fh:
            fh.write(data)

        depth = np.asarray(f.read_depth(), dtype=np.float32)
        if depth.shape != tuple(cap.depth_hw):
            raise ScanInputError(f.depth_name, f"depth map is {depth.shape[1]}x{depth.shape[0]}, expected "
                                               f"{cap.depth_hw[1]}x{cap.depth_hw[0]} like the first frame / metadata")
        finite = np.isfinite(depth)
        depth = np.where(finite, depth, 0.0).astype(np.float32)
        valid = depth > 0
        counts["depth_pixels"] += depth.size
        counts["nonfinite"] += int((~finite).sum())
        counts["no_depth"] += int((finite & ~valid).sum())
        if f.read_confidence is not None:
            conf = np.asarray(f.read_confidence())
            if conf.shape != depth.shape:
                raise ScanInputError(f.depth_name, f"confidence map {conf.shape[::-1]} and depth map "
                                                   f"{depth.shape[::-1]} differ in size")
            low = valid & (conf < opts.min_confidence)
            counts["low_confidence"] += int(low.sum())
            valid &= ~low
        if f.read_mask is not None:
            mask = np.asarray(f.read_mask(), dtype=bool)
            if mask.shape != depth.shape:  # masks come at colour resolution: nearest-neighbour to depth's
                small = Image.fromarray(mask.astype(np.uint8) * 255).resize(depth.shape[::-1], Image.NEAREST)
                mask = np.asarray(small) > 0
            counts["masked"] += int((valid & ~mask).sum())
            valid &= mask
        if opts.max_depth is not None:
            far = valid & (depth > opts.max_depth)
            counts["beyond_max_depth"] += int(far.sum())
            valid &= ~far
        over = valid & (np.round(depth * DEPTH_SCALE) > 65535)
        counts["over_uint16_range"] += int(over.sum())
        valid &= ~over
        counts["kept"] += int(valid.sum())
        mm = np.where(valid, np.round(depth * DEPTH_SCALE), 0).astype(np.uint16)
        Image.fromarray(mm).save(os.path.join(d, "depth", f"{i}.png"))

        pose = to_opencv_z_up(f.cam_to_world, cap.camera_convention, up)
        poses_out.append(pose)
        _matrix_file(os.path.join(d, "pose", f"{i}.txt"), pose)
        # back-project what was written (the uint16 depth), so the cloud matches the depth PNGs exactly
        pts, uv = backproject(mm.astype(np.float64) / DEPTH_SCALE, K_depth, pose, valid)
        buf_p.append(pts)
        buf_c.append(sample_colors(rgb, uv, cap.depth_hw))
        buffered += len(pts)
        if buffered > _MAX_BUFFER:  # bound memory: voxelise what is held (a mean of per-voxel means)
            p, c, backend = voxel_downsample(np.concatenate(buf_p), np.concatenate(buf_c), opts.voxel_size)
            buf_p, buf_c, buffered = [p], [c], len(p)
    points, colors, backend = voxel_downsample(np.concatenate(buf_p), np.concatenate(buf_c), opts.voxel_size)
    if len(points) == 0:
        raise ScanInputError(cap.path, f"no valid depth pixel in {len(frames)} frames (after min_confidence="
                                       f"{opts.min_confidence}, max_depth={opts.max_depth}): nothing to fuse")
    write_ply(os.path.join(d, f"{name}.ply"), points, colors)

    sx, sy = cap.depth_hw[1] / cap.color_hw[1], cap.depth_hw[0] / cap.color_hw[0]
    conversions = [
        {"name": "camera OpenGL -> OpenCV", "applied": cap.camera_convention == "opengl",
         "how": "cam_to_world @ M (x right, y up, z back -> x right, y down, z forward)",
         "M": OPENGL_TO_OPENCV.tolist()},
        {"name": f"world up {up} -> +z", "applied": up != "+z", "how": "M @ cam_to_world; M @ points",
         "source_up": up, "source_up_from": up_how, "M": UP_TO_Z[up].tolist()},
        {"name": "depth units", "applied": True, "from": cap.depth_unit,
         "to": f"uint16 PNG, {DEPTH_SCALE:g} per metre (millimetres); 0 = no depth"},
        {"name": "depth intrinsics = colour intrinsics scaled", "applied": (sx, sy) != (1.0, 1.0),
         "scale_xy": [sx, sy], "color_hw": list(cap.color_hw), "depth_hw": list(cap.depth_hw),
         "how": "rows 0 and 1 of K times (dw / w, dh / h); images are not resampled"},
        {"name": "frame subsampling", "applied": opts.frame_step > 1, "frame_step": opts.frame_step,
         "source_frames": len(cap.frames), "kept_frames": len(frames), "how": "source frame i*step -> output i"},
        {"name": "colour re-encoded as JPEG (quality 95)", "applied": reencoded > 0, "frames": reencoded},
    ]
    meta = {
        "format": cap.format, "source": os.path.abspath(cap.path), "conversions": conversions,
        "depth_scale": DEPTH_SCALE, "color_hw": list(cap.color_hw), "depth_hw": list(cap.depth_hw),
        "intrinsic_color": K_color.tolist(), "intrinsic_depth": K_depth.tolist(),
        "num_frames": len(frames), "frame_step": opts.frame_step,
        "source_frames": [{"index": i, "name": f.name, "color": f.color_name, "depth": f.depth_name}
                          for i, f in enumerate(frames)],
        "confidence": any(f.read_confidence is not None for f in frames), "min_confidence": opts.min_confidence,
        "max_depth": opts.max_depth, "voxel_size": opts.voxel_size, "fusion": backend,
        "num_points": int(len(points)), "ply": f"{name}.ply", "depth_pixels": counts,
        "options": asdict(opts), "source_notes": cap.notes,
    }
    from ..generated.ovseg import is_generated, write_generated_marker

    source_dir = cap.path if os.path.isdir(cap.path) else os.path.dirname(os.path.abspath(cap.path))
    meta["generated"] = is_generated(source_dir)
    if meta["generated"]:  # generated input stays labelled generated downstream
        write_generated_marker(d, f"imported from generated {cap.format} capture {cap.path}")
    with open(os.path.join(d, "scan.json"), "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=1, ensure_ascii=False)
    draw_sanity(os.path.join(d, "sanity.png"), points, colors, poses_out, K_color, tuple(cap.color_hw),
                f"{name} ({cap.format})")
    return meta
