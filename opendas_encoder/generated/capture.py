"""Generated phone captures of a generated 3D office, written the way phones write them.

The scene (:func:`.scene3d.generate_scene`, z-up world, OpenCV cameras) is ray-cast
(:func:`.scene3d.render_frame`, exact depth) at two resolutions, colour (default 512x384) and LiDAR-like
depth (256x192, the iPhone's), then written as

* a nerfstudio capture (:func:`write_nerfstudio_capture`): ``transforms.json`` (global OPENCV camera
  with zero distortion, ``transform_matrix`` camera-to-world in OpenGL axes, y-up world),
  ``images/frame_<i>.jpg``, ``depth/frame_<i>.png`` (uint16 mm) and ``confidence/frame_<i>.png``;
* a Record3D export (:func:`write_record3d_capture`): a zip with ``metadata`` (column-major ``K``,
  ``poses`` ``[qx, qy, qz, qw, tx, ty, tz]`` ARKit camera-to-world, ``w, h, dw, dh``), ``rgbd/<i>.jpg``,
  ``rgbd/<i>.depth`` (LZFSE float32 metres) and ``rgbd/<i>.conf`` (LZFSE uint8).

Confidence maps are 2 (high) almost everywhere, 1 on a random ``medium_fraction`` of pixels (depth
still exact) and 0 on a random ``wrong_fraction`` whose depth is wrong (50-80 % of the truth, flying
pixels in front of surfaces): a confidence threshold of 1 must remove exactly those. A ``GENERATED``
marker is written beside each capture; the importer carries it into the imported scene.
The phone conventions are written out here independently of the importer (axis swaps spelled out).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image

from ..threed.projection import scale_intrinsic
from .ovseg import write_generated_marker
from .scene3d import GeneratedScene, generate_scene, render_frame


@dataclass
class RenderedCapture:
    """Truth and observations of a generated capture. poses: the generator's cameras (4, 4) OpenCV
    camera-to-world, z-up world; K_color / K_depth: (3, 3) for color_hw / depth_hw (H, W); rgb: uint8
    (H, W, 3); depth_true / depth: float32 (Hd, Wd) metres, exact / as written; confidence: uint8;
    wrong: bool (Hd, Wd), the pixels whose written depth is wrong."""

    scene: GeneratedScene
    poses: List[np.ndarray]
    K_color: np.ndarray
    color_hw: Tuple[int, int]
    K_depth: np.ndarray
    depth_hw: Tuple[int, int]
    rgb: List[np.ndarray] = field(default_factory=list)
    depth_true: List[np.ndarray] = field(default_factory=list)
    depth: List[np.ndarray] = field(default_factory=list)
    confidence: List[np.ndarray] = field(default_factory=list)
    wrong: List[np.ndarray] = field(default_factory=list)


def render_capture(scene: GeneratedScene, color_hw: Tuple[int, int] = (384, 512),
                   depth_hw: Tuple[int, int] = (192, 256), wrong_fraction: float = 0.02,
                   medium_fraction: float = 0.1, seed: int = 0) -> RenderedCapture:
    """Render every camera of ``scene`` at ``color_hw`` (colour) and ``depth_hw`` (depth, confidence)."""
    rng = np.random.default_rng(seed)
    base_hw = (scene.height, scene.width)
    cap = RenderedCapture(scene, [np.asarray(p, dtype=np.float64) for p in scene.cam_to_world],
                          scale_intrinsic(scene.intrinsic, base_hw, color_hw), tuple(color_hw),
                          scale_intrinsic(scene.intrinsic, base_hw, depth_hw), tuple(depth_hw))
    for pose in cap.poses:
        rgb, _ = render_frame(scene.primitives, pose, cap.K_color, *color_hw)
        _, depth = render_frame(scene.primitives, pose, cap.K_depth, *depth_hw)
        u = rng.random(depth_hw)
        wrong = u < wrong_fraction
        conf = np.where(wrong, 0, np.where(u < wrong_fraction + medium_fraction, 1, 2)).astype(np.uint8)
        observed = np.where(wrong, depth * rng.uniform(0.5, 0.8, depth_hw), depth).astype(np.float32)
        cap.rgb.append(rgb)
        cap.depth_true.append(depth)
        cap.depth.append(observed)
        cap.confidence.append(conf)
        cap.wrong.append(wrong)
    return cap


def surface_distance(points: np.ndarray, primitives: Sequence) -> np.ndarray:
    """Exact distance (N,) of points (N, 3) to the nearest surface of ``primitives`` (axis-aligned
    boxes, closed vertical cylinders; :class:`.scene3d.Primitive`), inside or outside."""
    points = np.asarray(points, dtype=np.float64)
    best = np.full(len(points), np.inf)
    for p in primitives:
        if p.kind == "box":
            q = np.abs(points - p.center) - p.size / 2
            d = np.where((q <= 0).all(axis=1), -q.max(axis=1), np.linalg.norm(np.maximum(q, 0), axis=1))
        else:
            dr = np.linalg.norm(points[:, :2] - p.center[:2], axis=1) - p.size[0] / 2
            dz = np.abs(points[:, 2] - p.center[2]) - p.size[2] / 2
            d = np.where((dr <= 0) & (dz <= 0), -np.maximum(dr, dz), np.hypot(np.maximum(dr, 0), np.maximum(dz, 0)))
        best = np.minimum(best, d)
    return best


def instance_gt(scene: GeneratedScene, points: np.ndarray) -> np.ndarray:
    """ScanNet-encoded ground truth (N,) int64 of arbitrary points (e.g. an imported, fused cloud): the
    id of the primitive whose surface is nearest (``label_id * 1000 + instance + 1``, label ids as in
    :func:`.scene3d.generate_scene`), 0 for walls, floor and ceiling."""
    d = np.stack([surface_distance(points, [p]) for p in scene.primitives], axis=1)
    owner = d.argmin(axis=1)
    gt = np.zeros(len(points), dtype=np.int64)
    for pi, p in enumerate(scene.primitives):
        if p.instance >= 0:
            gt[owner == pi] = (scene.classes.index(p.label) + 1) * 1000 + p.instance + 1
    return gt


def phone_pose(cam_to_world_opencv_zup: np.ndarray) -> np.ndarray:
    """The pose a phone writes for a camera: OpenGL camera axes (y up, z back: the OpenCV y and z
    columns negated) in a y-up world (phone world (x, y, z) = z-up world (x, z, -y))."""
    pose = np.array(cam_to_world_opencv_zup, dtype=np.float64)
    pose[:3, 1] *= -1.0
    pose[:3, 2] *= -1.0
    zup_to_yup = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]])
    return zup_to_yup @ pose


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_nerfstudio_capture(cap: RenderedCapture, out_dir: str) -> str:
    """Write ``cap`` as a nerfstudio capture folder; returns its ``transforms.json`` path."""
    for sub in ("images", "depth", "confidence"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    K = cap.K_color
    meta = {"camera_model": "OPENCV", "fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2],
            "w": cap.color_hw[1], "h": cap.color_hw[0], "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": []}
    for i, pose in enumerate(cap.poses):
        stem = f"frame_{i + 1:05d}"
        with open(os.path.join(out_dir, "images", stem + ".jpg"), "wb") as f:
            f.write(_jpeg(cap.rgb[i]))
        depth_mm = np.round(cap.depth[i] * 1000.0).astype(np.uint16)
        Image.fromarray(depth_mm).save(os.path.join(out_dir, "depth", stem + ".png"))
        Image.fromarray(cap.confidence[i]).save(os.path.join(out_dir, "confidence", stem + ".png"))
        meta["frames"].append({"file_path": f"images/{stem}.jpg", "depth_file_path": f"depth/{stem}.png",
                               "confidence_path": f"confidence/{stem}.png",
                               "transform_matrix": phone_pose(pose).tolist()})
    path = os.path.join(out_dir, "transforms.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
    write_generated_marker(out_dir, "nerfstudio capture of a generated office")
    return path


def write_record3d_capture(cap: RenderedCapture, path: str) -> str:
    """Write ``cap`` as a Record3D ``.r3d`` zip at ``path``; returns ``path``."""
    import lzfse
    from scipy.spatial.transform import Rotation

    poses = []
    for pose in cap.poses:
        p = phone_pose(pose)
        poses.append(list(Rotation.from_matrix(p[:3, :3]).as_quat()) + list(p[:3, 3]))  # scalar-last
    meta = {"w": cap.color_hw[1], "h": cap.color_hw[0], "dw": cap.depth_hw[1], "dh": cap.depth_hw[0],
            "K": np.asarray(cap.K_color).T.reshape(-1).tolist(),  # column-major, as Record3D stores it
            "poses": poses, "fps": 30, "cameraType": 1}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("metadata", json.dumps(meta))
        for i in range(len(cap.poses)):
            zf.writestr(f"rgbd/{i}.jpg", _jpeg(cap.rgb[i]))
            depth = np.ascontiguousarray(cap.depth[i], dtype=np.float32)
            conf = np.ascontiguousarray(cap.confidence[i], dtype=np.uint8)
            zf.writestr(f"rgbd/{i}.depth", lzfse.compress(depth.tobytes()))
            zf.writestr(f"rgbd/{i}.conf", lzfse.compress(conf.tobytes()))
    write_generated_marker(os.path.dirname(os.path.abspath(path)), "Record3D capture of a generated office")
    return path


def generate_captures(out_dir: str, formats: Sequence[str] = ("nerfstudio", "record3d"), seed: int = 0,
                      num_objects: int = 8, num_frames: int = 6, color_hw: Tuple[int, int] = (384, 512)) -> dict:
    """Generate a scene and write its capture in ``formats`` under ``out_dir``:
    ``out_dir/nerfstudio/transforms.json`` and ``out_dir/capture.r3d``. Returns {format: path}."""
    scene = generate_scene(name=f"generated_capture_{seed:02d}", seed=seed, num_objects=num_objects,
                           num_frames=num_frames)
    cap = render_capture(scene, color_hw=color_hw, seed=seed)
    out = {}
    if "nerfstudio" in formats:
        out["nerfstudio"] = write_nerfstudio_capture(cap, os.path.join(out_dir, "nerfstudio"))
    if "record3d" in formats:
        out["record3d"] = write_record3d_capture(cap, os.path.join(out_dir, "capture.r3d"))
    return out


def main(argv=None) -> int:
    """``python -m opendas_encoder.generated.capture DIR``: a generated capture to try ``opendas scan import`` on."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m opendas_encoder.generated.capture",
                                description="Write a GENERATED phone capture of a generated office: DIR/capture.r3d "
                                            "(Record3D) and DIR/nerfstudio/transforms.json (nerfstudio).")
    p.add_argument("out", help="output folder")
    p.add_argument("--format", choices=("both", "nerfstudio", "record3d"), default="both")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-objects", type=int, default=8)
    p.add_argument("--num-frames", type=int, default=6)
    args = p.parse_args(argv)
    formats = ("nerfstudio", "record3d") if args.format == "both" else (args.format,)
    for fmt, path in generate_captures(args.out, formats, seed=args.seed, num_objects=args.num_objects,
                                       num_frames=args.num_frames).items():
        print(f"{fmt}: {path}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
