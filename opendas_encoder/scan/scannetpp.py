"""ScanNet++ iPhone data through the import path (read by :func:`opendas_encoder.threed.read_scannetpp_scene`).

ScanNet++ poses are already OpenCV camera-to-world in the z-up mesh frame and its iPhone depth PNGs are
uint16 millimetres (:data:`opendas_encoder.threed.scannetpp_scene.SCANNETPP_DEPTH_SCALE`); the importer
applies no convention change, only subsampling, confidence-free fusion and the layout.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from .errors import ScanInputError
from .source import SourceCapture, SourceFrame, read_file_bytes


def is_scannetpp_scene(src: str) -> bool:
    """A ScanNet++ scene folder: ``<root>/data/<scene_id>`` holding ``iphone/``."""
    return os.path.isdir(os.path.join(src, "iphone"))


def read_scannetpp(src: str) -> SourceCapture:
    """Parse the ScanNet++ scene folder ``src`` (``.../data/<scene_id>``)."""
    from ..threed.scannetpp_scene import read_scannetpp_scene

    src = os.path.abspath(src)
    if not is_scannetpp_scene(src):
        raise ScanInputError(src, "not a ScanNet++ scene folder (no iphone/ inside; pass <root>/data/<scene_id>)")
    scene = read_scannetpp_scene(os.path.dirname(src), os.path.basename(src))
    if not scene.frames:
        raise ScanInputError(src, "no iPhone frames")
    f0 = scene.frames[0]
    color_hw = tuple(int(v) for v in (f0.intrinsic_hw or f0.color_size()))
    if not os.path.isfile(f0.depth_path):
        raise ScanInputError(f0.depth_path, "depth file not found")
    with Image.open(f0.depth_path) as img:
        depth_hw = (img.height, img.width)
    frames = []
    for f in scene.frames:
        if not np.allclose(f.intrinsic, f0.intrinsic, rtol=1e-6):
            raise ScanInputError(src, f"frame {f.name} has other intrinsics than {f0.name}; "
                                      "the layout holds one camera")

        def read_depth(f=f):
            if not os.path.isfile(f.depth_path):
                raise ScanInputError(f.depth_path, "depth file not found")
            try:
                return f.load_depth()
            except ScanInputError:
                raise
            except Exception as exc:  # noqa: BLE001
                raise ScanInputError(f.depth_path, f"unreadable depth image ({exc})") from None

        frames.append(SourceFrame(name=f.name, cam_to_world=np.asarray(f.cam_to_world, dtype=np.float64),
                                  color_name=f.color_path, depth_name=f.depth_path,
                                  read_color=lambda p=f.color_path: read_file_bytes(p, "colour"),
                                  read_depth=read_depth))
    notes = {}
    cameras = os.path.join(src, "iphone", "colmap", "cameras.txt")
    if os.path.isfile(cameras):
        from ..data.scannetpp.io import read_colmap_cameras_text

        def extra(c):  # COLMAP parameters after the pinhole ones (f, cx, cy or fx, fy, cx, cy)
            return c.params[3 if c.model.startswith("SIMPLE") or c.model.startswith("RADIAL") else 4:]

        distorted = {c.camera_id: extra(c) for c in read_colmap_cameras_text(cameras).values()
                     if any(v != 0 for v in extra(c))}
        if distorted:  # the package's ScanNet++ reader uses the pinhole part only; the import does the same
            notes["lens distortion ignored (pinhole part used, as opendas_encoder.data.scannetpp does)"] = {
                str(k): list(v) for k, v in distorted.items()}
    return SourceCapture(format="scannetpp", path=src, frames=frames, intrinsic=np.asarray(f0.intrinsic)[:3, :3],
                         color_hw=color_hw, depth_hw=depth_hw, camera_convention="opencv", world_up="+z",
                         depth_unit="millimetres (uint16 PNG)", notes=notes)
