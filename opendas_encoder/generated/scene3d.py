"""A generated 3D office: coloured boxes and cylinders in a room, posed RGB-D frames, ground truth.

Everything is rendered on the CPU by ray casting the analytic primitives (exact per-pixel depth, a
z-buffer over primitives). The scene is written in two on-disk layouts:

* OpenMask3D's processed layout (``write_openmask3d_layout``): ``color/<i>.jpg``, ``depth/<i>.png``
  (uint16, 1000 per metre), ``pose/<i>.txt`` (camera-to-world), ``intrinsic/intrinsic_color.txt``
  (4x4), ``<scene>.ply``, class-agnostic proposals ``<scene>_masks.pt`` (bool num_points x
  num_masks) and ScanNet ground truth ``gt/<scene>.txt`` (``label_id * 1000 + instance + 1``).
* ScanNet++'s layout (``write_scannetpp_layout``): ``data/<scene>/scans/mesh_aligned_0.05.ply``,
  ``segments.json``, ``segments_anno.json``, ``iphone/rgb/frame_*.jpg``, ``iphone/depth/frame_*.png``
  (lower resolution than RGB, like the iPhone's LiDAR) and ``iphone/colmap/{cameras,images}.txt``.

Object classes: colour + 3D shape names built from the generated world's colour vocabulary
(:data:`opendas_encoder.generated.world.attributes.COLOURS`). Walls, floor and ceiling are geometry
without instance ground truth.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

from ..data.ply import write_ply
from .scannetpp import FixtureFrame, look_at, write_scannetpp_scene
from .world.attributes import COLOURS

_SURFACE_COLOURS = {"wall": (200, 196, 188), "floor": (120, 110, 100), "ceiling": (230, 230, 230)}
SHAPES_3D = ("box", "cylinder")


def scene_colours() -> Dict[str, Tuple[int, int, int]]:
    """Object colours: the generated world's palette."""
    return dict(COLOURS)


def scene_classes() -> List[str]:
    """The class vocabulary of generated scenes: "<colour> <shape>" for every colour and 3D shape."""
    return [f"{c} {s}" for c in scene_colours() for s in SHAPES_3D]


@dataclass
class Primitive:
    """An axis-aligned box (``size`` = full extents) or a vertical cylinder (``size`` = (2r, 2r, h))
    centred at ``center`` (metres, z up). ``instance`` < 0 = background geometry."""

    kind: str
    center: np.ndarray
    size: np.ndarray
    color: Tuple[int, int, int]
    label: str
    instance: int = -1


@dataclass
class GeneratedScene:
    """A generated scene with everything needed to write both layouts."""

    name: str
    primitives: List[Primitive]
    points: np.ndarray           # (N, 3) float32 surface samples
    point_colors: np.ndarray     # (N, 3) uint8
    point_instance: np.ndarray   # (N,) int64 primitive index, -1 for none
    classes: List[str]
    gt_ids: np.ndarray           # (N,) ScanNet encoding
    faces: np.ndarray = None     # (F, 3) int64 triangles over ``points`` (the mesh)
    cam_to_world: List[np.ndarray] = field(default_factory=list)
    intrinsic: np.ndarray = None  # 3x3 for (height, width)
    height: int = 120
    width: int = 160


# ---------------------------------------------------------------------------------------- geometry
def _grid_faces(rows: int, cols: int, offset: int, wrap: bool = False) -> np.ndarray:
    """Two triangles per cell of a (rows x cols) vertex grid numbered row-major from ``offset``;
    ``wrap`` closes the grid along the row direction (cylinder side)."""
    r, c = np.meshgrid(np.arange(rows if wrap else rows - 1), np.arange(cols - 1), indexing="ij")
    a = offset + r * cols + c
    b = offset + ((r + 1) % rows) * cols + c
    return np.concatenate([np.stack([a, b, a + 1], -1).reshape(-1, 3), np.stack([a + 1, b, b + 1], -1).reshape(-1, 3)])


def _box_samples(center, size, spacing):
    """Surface vertices (V, 3) and triangles (F, 3) of an axis-aligned box (a grid per face)."""
    lo, hi = center - size / 2, center + size / 2
    pts, faces, n = [], [], 0
    for axis in range(3):
        a, b = [i for i in range(3) if i != axis]
        na = max(2, int(np.ceil(size[a] / spacing)) + 1)
        nb = max(2, int(np.ceil(size[b] / spacing)) + 1)
        ga, gb = np.meshgrid(np.linspace(lo[a], hi[a], na), np.linspace(lo[b], hi[b], nb), indexing="ij")
        for value in (lo[axis], hi[axis]):
            face = np.zeros((ga.size, 3))
            face[:, a], face[:, b], face[:, axis] = ga.ravel(), gb.ravel(), value
            pts.append(face)
            faces.append(_grid_faces(na, nb, n))
            n += len(face)
    return np.concatenate(pts), np.concatenate(faces)


def _cylinder_samples(center, size, spacing):
    """Surface vertices and triangles of a closed vertical cylinder (side grid, ring grids + centre caps)."""
    r, h = size[0] / 2, size[2]
    n_ang = max(8, int(np.ceil(2 * np.pi * r / spacing)))
    n_h = max(2, int(np.ceil(h / spacing)) + 1)
    ang = np.linspace(0, 2 * np.pi, n_ang, endpoint=False)
    A, Z = np.meshgrid(ang, np.linspace(center[2] - h / 2, center[2] + h / 2, n_h), indexing="ij")
    side = np.stack([center[0] + r * np.cos(A.ravel()), center[1] + r * np.sin(A.ravel()), Z.ravel()], axis=1)
    pts, faces, n = [side], [_grid_faces(n_ang, n_h, 0, wrap=True)], len(side)
    radii = np.linspace(r, 0, max(2, int(np.ceil(r / spacing)) + 1))[:-1]
    for z in (center[2] - h / 2, center[2] + h / 2):
        R, A2 = np.meshgrid(radii, ang, indexing="ij")        # rows: rings from the rim inwards
        ring = np.stack([center[0] + R.ravel() * np.cos(A2.ravel()), center[1] + R.ravel() * np.sin(A2.ravel()),
                         np.full(R.size, z)], axis=1)
        rows = np.arange(len(radii) - 1)[:, None] * n_ang
        a = n + rows + np.arange(n_ang)[None]
        b = n + rows + (np.arange(n_ang)[None] + 1) % n_ang
        cap = [np.stack([a, b, a + n_ang], -1).reshape(-1, 3), np.stack([b, b + n_ang, a + n_ang], -1).reshape(-1, 3)]
        centre_idx = n + len(ring)
        inner = n + (len(radii) - 1) * n_ang + np.arange(n_ang)
        cap.append(np.stack([inner, n + (len(radii) - 1) * n_ang + (np.arange(n_ang) + 1) % n_ang,
                             np.full(n_ang, centre_idx)], -1))
        pts += [ring, np.array([[center[0], center[1], z]])]
        faces += cap
        n += len(ring) + 1
    return np.concatenate(pts), np.concatenate(faces)


def _ray_box(origins, dirs, center, size):
    """Hit distance (P,) (inf = miss) and normals (P, 3) of rays against an axis-aligned box."""
    lo, hi = center - size / 2, center + size / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dirs
        t1, t2 = (lo - origins) * inv, (hi - origins) * inv
    tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
    tmin = np.nan_to_num(tmin, nan=-np.inf)
    tmax = np.nan_to_num(tmax, nan=np.inf)
    t_near, t_far = tmin.max(axis=1), tmax.min(axis=1)
    inside = (origins > lo).all(axis=1) & (origins < hi).all(axis=1)
    t = np.where(inside, t_far, t_near)
    axis = np.where(inside, tmax.argmin(axis=1), tmin.argmax(axis=1))
    hit = (t_near <= t_far) & (t > 1e-6)
    normals = np.zeros_like(dirs)
    rows = np.arange(len(dirs))
    normals[rows, axis] = -np.sign(dirs[rows, axis])
    return np.where(hit, t, np.inf), normals


def _ray_cylinder(origins, dirs, center, size):
    """Hit distance (P,) and normals (P, 3) of rays against a vertical closed cylinder."""
    r, z0, z1 = size[0] / 2, center[2] - size[2] / 2, center[2] + size[2] / 2
    ox, oy = origins[:, 0] - center[0], origins[:, 1] - center[1]
    dx, dy = dirs[:, 0], dirs[:, 1]
    a = dx * dx + dy * dy
    b = 2 * (ox * dx + oy * dy)
    c = ox * ox + oy * oy - r * r
    disc = b * b - 4 * a * c
    t_side = np.full(len(dirs), np.inf)
    ok = (disc >= 0) & (a > 1e-12)
    sq = np.sqrt(np.where(ok, disc, 0))
    for t_c in ((-b - sq) / np.where(a > 1e-12, 2 * a, 1), (-b + sq) / np.where(a > 1e-12, 2 * a, 1)):
        z = origins[:, 2] + t_c * dirs[:, 2]
        good = ok & (t_c > 1e-6) & (z >= z0) & (z <= z1) & (t_c < t_side)
        t_side = np.where(good, t_c, t_side)
    t_cap = np.full(len(dirs), np.inf)
    cap_z = np.zeros(len(dirs))
    with np.errstate(divide="ignore", invalid="ignore"):
        for zc in (z0, z1):
            t_c = (zc - origins[:, 2]) / dirs[:, 2]
            px, py = ox + t_c * dx, oy + t_c * dy
            good = np.isfinite(t_c) & (t_c > 1e-6) & (px * px + py * py <= r * r) & (t_c < t_cap)
            t_cap = np.where(good, t_c, t_cap)
            cap_z = np.where(good, np.sign(origins[:, 2] - zc), cap_z)
    t = np.minimum(t_side, t_cap)
    normals = np.zeros_like(dirs)
    side = t_side <= t_cap
    hx, hy = ox + t * dx, oy + t * dy
    normals[side, 0], normals[side, 1] = hx[side] / r, hy[side] / r
    normals[~side, 2] = cap_z[~side]
    return t, normals


def render_frame(primitives: Sequence[Primitive], cam_to_world: np.ndarray, intrinsic: np.ndarray,
                 height: int, width: int) -> Tuple[np.ndarray, np.ndarray]:
    """Ray-cast one view: (rgb uint8 (H, W, 3), depth float32 (H, W) metres along the optical axis).

    Rays go through pixel centres (c + 0.5, r + 0.5); the nearest primitive wins (z-buffer).
    """
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    pix = np.stack([cols.ravel(), rows.ravel(), np.ones(cols.size)], axis=1)
    cam_dirs = pix @ np.linalg.inv(intrinsic).T            # z component == 1 -> t is the depth
    dirs = cam_dirs @ cam_to_world[:3, :3].T
    origins = np.broadcast_to(cam_to_world[:3, 3], dirs.shape)
    depth = np.full(len(dirs), np.inf)
    color = np.zeros((len(dirs), 3))
    light = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    for prim in primitives:
        fn = _ray_box if prim.kind == "box" else _ray_cylinder
        t, n = fn(origins, dirs, prim.center, prim.size)
        closer = t < depth
        depth[closer] = t[closer]
        shade = 0.6 + 0.4 * np.abs(n[closer] @ light)
        color[closer] = np.asarray(prim.color, dtype=np.float64)[None] * shade[:, None]
    depth[~np.isfinite(depth)] = 0.0
    rgb = np.clip(color, 0, 255).astype(np.uint8).reshape(height, width, 3)
    return rgb, depth.reshape(height, width).astype(np.float32)


# ---------------------------------------------------------------------------------------- scene
def generate_scene(name: str = "generated_office_00", seed: int = 0, num_objects: int = 8, num_frames: int = 6,
                   height: int = 120, width: int = 160, spacing: float = 0.04) -> GeneratedScene:
    """A 4 x 3 x 2.5 m room with ``num_objects`` primitives and ``num_frames`` views around it."""
    rng = np.random.default_rng(seed)
    colours = scene_colours()
    classes = scene_classes()
    room = np.array([4.0, 3.0, 2.5])
    t = 0.05
    prims = [
        Primitive("box", np.array([0, 0, -t / 2]), np.array([room[0], room[1], t]), _SURFACE_COLOURS["floor"], "floor"),
        Primitive("box", np.array([0, 0, room[2] + t / 2]), np.array([room[0], room[1], t]), _SURFACE_COLOURS["ceiling"], "ceiling"),
    ]
    for sx, sy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        c = np.array([sx * (room[0] + t) / 2, sy * (room[1] + t) / 2, room[2] / 2])
        s = np.array([t if sx else room[0] + 2 * t, t if sy else room[1] + 2 * t, room[2]])
        prims.append(Primitive("box", c, s, _SURFACE_COLOURS["wall"], "wall"))
    # objects on a jittered grid so that they do not intersect
    cells = [(x, y) for x in np.linspace(-1.35, 1.35, 4) for y in np.linspace(-0.9, 0.9, 3)]
    order = rng.permutation(len(cells))[:num_objects]
    for inst, ci in enumerate(order):
        cls = classes[int(rng.integers(len(classes)))]
        colour_name, shape = cls.rsplit(" ", 1)
        w, d, h = rng.uniform(0.35, 0.6), rng.uniform(0.35, 0.6), rng.uniform(0.4, 1.1)
        if shape == "cylinder":
            w = d = min(w, d)
        x, y = cells[ci]
        center = np.array([x + rng.uniform(-0.08, 0.08), y + rng.uniform(-0.08, 0.08), h / 2])
        prims.append(Primitive(shape, center, np.array([w, d, h]), colours[colour_name], cls, inst))

    pts, cols, owner, faces, n = [], [], [], [], 0
    for pi, prim in enumerate(prims):
        sampler = _box_samples if prim.kind == "box" else _cylinder_samples
        p, f = sampler(prim.center, prim.size, spacing if prim.instance >= 0 else 2.5 * spacing)
        if prim.instance < 0:  # keep only the inner faces of the room shell
            keep = ((np.abs(p[:, 0]) <= room[0] / 2 + 1e-6) & (np.abs(p[:, 1]) <= room[1] / 2 + 1e-6)
                    & (p[:, 2] >= -1e-6) & (p[:, 2] <= room[2] + 1e-6))
            remap = np.cumsum(keep) - 1
            f = remap[f[keep[f].all(axis=1)]]
            p = p[keep]
        pts.append(p)
        faces.append(f + n)
        n += len(p)
        cols.append(np.tile(np.asarray(prim.color, np.uint8), (len(p), 1)))
        owner.append(np.full(len(p), pi))
    points = np.concatenate(pts).astype(np.float32)
    owner = np.concatenate(owner)
    gt = np.zeros(len(points), dtype=np.int64)
    for pi, prim in enumerate(prims):
        if prim.instance >= 0:
            gt[owner == pi] = (classes.index(prim.label) + 1) * 1000 + prim.instance + 1

    fx = fy = 0.55 * width
    K = np.array([[fx, 0, width / 2], [0, fy, height / 2], [0, 0, 1.0]])
    poses = []
    for i in range(num_frames):
        ang = 2 * np.pi * i / num_frames + rng.uniform(-0.15, 0.15)
        eye = np.array([1.6 * np.cos(ang), 1.15 * np.sin(ang), rng.uniform(1.3, 1.7)])
        target = np.array([-0.6 * np.cos(ang), -0.4 * np.sin(ang), 0.35])
        poses.append(look_at(eye, target))
    inst_of_point = np.array([prims[o].instance for o in owner], dtype=np.int64)
    return GeneratedScene(name=name, primitives=prims, points=points, point_colors=np.concatenate(cols),
                          faces=np.concatenate(faces).astype(np.int64),
                          point_instance=inst_of_point, classes=classes, gt_ids=gt, cam_to_world=poses,
                          intrinsic=K, height=height, width=width)


def proposals_from_gt(gt_ids: np.ndarray) -> np.ndarray:
    """Class-agnostic proposals bool (N, K): one mask per ground-truth instance (CPU proposal mode)."""
    uniq = np.unique(gt_ids)
    uniq = uniq[uniq > 0]
    return gt_ids[:, None] == uniq[None, :]


def _save_depth_png(path: str, depth_m: np.ndarray, scale: float) -> None:
    Image.fromarray(np.round(depth_m * scale).astype(np.uint16)).save(path)


def write_classes_json(path: str, classes: Sequence[str], base: Sequence[str]) -> None:
    """``{"class_ids": [...], "class_names": [...], "base": [...]}`` (label id = index + 1)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"class_ids": list(range(1, len(classes) + 1)), "class_names": list(classes),
                   "base": list(base)}, f, indent=2, sort_keys=True)


def write_openmask3d_layout(scene: GeneratedScene, root: str, depth_scale: float = 1000.0) -> str:
    """Write ``scene`` in OpenMask3D's processed layout under ``root/<scene.name>``; return that dir."""
    import torch

    d = os.path.join(root, scene.name)
    for sub in ("color", "depth", "pose", "intrinsic"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    os.makedirs(os.path.join(root, "gt"), exist_ok=True)
    K4 = np.eye(4)
    K4[:3, :3] = scene.intrinsic
    np.savetxt(os.path.join(d, "intrinsic", "intrinsic_color.txt"), K4, fmt="%.6f")
    np.savetxt(os.path.join(d, "intrinsic", "intrinsic_depth.txt"), K4, fmt="%.6f")
    for i, pose in enumerate(scene.cam_to_world):
        rgb, depth = render_frame(scene.primitives, pose, scene.intrinsic, scene.height, scene.width)
        Image.fromarray(rgb).save(os.path.join(d, "color", f"{i}.jpg"), quality=95)
        _save_depth_png(os.path.join(d, "depth", f"{i}.png"), depth, depth_scale)
        np.savetxt(os.path.join(d, "pose", f"{i}.txt"), pose, fmt="%.8f")
    write_ply(os.path.join(d, f"{scene.name}.ply"), scene.points, scene.point_colors, scene.faces)
    torch.save(torch.from_numpy(proposals_from_gt(scene.gt_ids)), os.path.join(d, f"{scene.name}_masks.pt"))
    np.savetxt(os.path.join(root, "gt", f"{scene.name}.txt"), scene.gt_ids, fmt="%d")
    return d


def write_scannetpp_layout(scene: GeneratedScene, root: str, depth_downsample: int = 2) -> str:
    """Write ``scene`` in ScanNet++'s layout under ``root/data/<scene.name>``
    (:func:`.scannetpp.write_scannetpp_scene`); return that dir.

    Depth frames are ``depth_downsample`` times smaller than RGB (ScanNet++: 256x192 vs 1920x1440).
    Objects are annotated instances (objectId = instance + 1, labelled with their class); walls,
    floor and ceiling are unannotated.
    """
    dh, dw = scene.height // depth_downsample, scene.width // depth_downsample
    Kd = scene.intrinsic.copy()
    Kd[:2] /= depth_downsample
    frames = []
    for pose in scene.cam_to_world:
        rgb, _ = render_frame(scene.primitives, pose, scene.intrinsic, scene.height, scene.width)
        _, depth = render_frame(scene.primitives, pose, Kd, dh, dw)
        frames.append(FixtureFrame(pose, scene.intrinsic, scene.width, scene.height, rgb=rgb, depth=depth))
    objects = np.where(scene.point_instance >= 0, scene.point_instance + 1, 0)
    labels = {p.instance + 1: p.label for p in scene.primitives if p.instance >= 0}
    d = write_scannetpp_scene(root, scene.name, scene.points, scene.faces, scene.point_colors, objects, labels, frames)
    os.makedirs(os.path.join(root, "metadata"), exist_ok=True)
    with open(os.path.join(root, "metadata", "instance_classes.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(scene.classes) + "\n")
    return d


def generate_dataset(out_dir: str, num_scenes: int = 2, seed: int = 0, **kwargs) -> List[str]:
    """Generate ``num_scenes`` scenes in both layouts under ``out_dir/openmask3d`` and
    ``out_dir/scannetpp``, plus ``classes.json`` (first half of the classes = base). Returns names."""
    names = []
    for i in range(num_scenes):
        scene = generate_scene(name=f"generated_office_{i:02d}", seed=seed + i, **kwargs)
        write_openmask3d_layout(scene, os.path.join(out_dir, "openmask3d"))
        write_scannetpp_layout(scene, os.path.join(out_dir, "scannetpp"))
        names.append(scene.name)
    classes = scene_classes()
    base = classes[: len(classes) // 2]
    for sub in ("openmask3d", "scannetpp", ""):
        write_classes_json(os.path.join(out_dir, sub, "classes.json"), classes, base)
    with open(os.path.join(out_dir, "scenes.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(names) + "\n")
    return names
