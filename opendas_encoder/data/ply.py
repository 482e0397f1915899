"""PLY files (triangle meshes and point clouds) through ``plyfile``.

One reader and one writer for the whole package: ScanNet++'s ``mesh_aligned_0.05.ply``, ScanNet's
``*_vh_clean_2.ply`` and OpenMask3D's processed scenes, ASCII or binary of either byte order.
``plyfile`` is imported when a file is read or written, so ``import opendas_encoder`` does not load it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

#: Names under which meshes store their face index lists.
_FACE_LISTS = ("vertex_indices", "vertex_index")


def _plyfile():
    try:
        import plyfile
    except ImportError as exc:
        raise ImportError("reading and writing PLY files needs plyfile: pip install plyfile "
                          f"(a dependency of opendas_encoder; import failed: {exc})") from exc
    return plyfile


@dataclass
class Mesh:
    """vertices: (V, 3) float64; faces: (F, 3) int64; colors: (V, 3) uint8 or None."""

    vertices: np.ndarray
    faces: np.ndarray
    colors: Optional[np.ndarray] = None


def read_ply(path: str):
    """The file as ``plyfile.PlyData``; errors name the file.

    Binary triangle lists are memory-mapped (``known_list_len``: 3 indices per face), which reads
    a ScanNet++ mesh without a Python loop; any other face list falls back to plyfile's generic reader.
    """
    plyfile = _plyfile()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"PLY file not found: {path}")
    try:
        try:
            return plyfile.PlyData.read(path, known_list_len={"face": {k: 3 for k in _FACE_LISTS}})
        except plyfile.PlyElementParseError as exc:
            if "unexpected list length" not in str(exc):
                raise
            return plyfile.PlyData.read(path)  # not all faces are triangles: the caller decides
    except plyfile.PlyParseError as exc:
        what = "PLY file truncated" if "early end-of-file" in str(exc) else "not a readable PLY file"
        raise ValueError(f"{path}: {what} ({exc})") from exc


def _vertex_table(path: str, ply) -> np.ndarray:
    if "vertex" not in ply:
        raise ValueError(f"{path}: PLY file has no 'vertex' element (elements: {[e.name for e in ply.elements]})")
    data = ply["vertex"].data
    missing = [k for k in ("x", "y", "z") if k not in data.dtype.names]
    if missing:
        raise ValueError(f"{path}: PLY vertex element lacks {missing}")
    return data


def _xyz(data: np.ndarray) -> np.ndarray:
    return np.stack([np.asarray(data[k], dtype=np.float64) for k in ("x", "y", "z")], axis=1)


def _rgb(data: np.ndarray) -> Optional[np.ndarray]:
    if not all(k in data.dtype.names for k in ("red", "green", "blue")):
        return None
    return np.stack([np.asarray(data[k]) for k in ("red", "green", "blue")], axis=1).astype(np.uint8)


def read_ply_mesh(path: str) -> Mesh:
    """A triangle mesh: vertex x y z (+ red green blue) and ``vertex_indices`` triangles (none: (0, 3))."""
    ply = read_ply(path)
    v = _vertex_table(path, ply)
    faces = np.zeros((0, 3), np.int64)
    if "face" in ply and ply["face"].count:
        fdata = ply["face"].data
        key = next((k for k in _FACE_LISTS if k in fdata.dtype.names), None)
        if key is None:
            raise ValueError(f"{path}: PLY face element has none of {list(_FACE_LISTS)}")
        col = fdata[key]
        if col.dtype == object:  # generic reader: one array per face
            if any(len(f) != 3 for f in col):
                raise ValueError(f"{path}: only triangle faces are supported")
            col = np.stack([np.asarray(f) for f in col])
        faces = np.asarray(col, dtype=np.int64).reshape(-1, 3)
    return Mesh(_xyz(v), faces, _rgb(v))


def read_ply_vertices(path: str) -> Dict[str, np.ndarray]:
    """The vertex element: ``points`` float64 (N, 3), ``colors`` uint8 (N, 3) when red/green/blue exist,
    and every other scalar vertex property under its own name (N,)."""
    v = _vertex_table(path, read_ply(path))
    out = {"points": _xyz(v)}
    colors = _rgb(v)
    if colors is not None:
        out["colors"] = colors
    skip = {"x", "y", "z"} | ({"red", "green", "blue"} if colors is not None else set())
    for name in v.dtype.names:
        if name not in skip and v.dtype[name] != object:
            out[name] = np.array(v[name])
    return out


def write_ply(path: str, points: np.ndarray, colors: Optional[np.ndarray] = None,
              faces: Optional[np.ndarray] = None) -> None:
    """Binary little-endian PLY: vertex (float x y z, optional uchar red green blue) and optional
    triangles (a ``face`` element with ``list uchar int vertex_indices``, as ScanNet meshes)."""
    plyfile = _plyfile()
    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"{path}: points must be (N, 3), got {points.shape}")
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        colors = np.asarray(colors)
        if colors.shape != points.shape:
            raise ValueError(f"{path}: colors must be (N, 3) like points, got {colors.shape}")
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vertex = np.empty(len(points), dtype=fields)
    vertex["x"], vertex["y"], vertex["z"] = np.asarray(points, dtype=np.float32).T
    if colors is not None:
        vertex["red"], vertex["green"], vertex["blue"] = np.asarray(colors, dtype=np.uint8).T
    elements = [plyfile.PlyElement.describe(vertex, "vertex")]
    if faces is not None:
        faces = np.asarray(faces)
        if faces.ndim != 2 or faces.shape[1] != 3 or (len(faces) and (faces.min() < 0 or faces.max() >= len(points))):
            raise ValueError(f"{path}: faces must be (F, 3) vertex indices in [0, {len(points)})")
        table = np.empty(len(faces), dtype=[("vertex_indices", "<i4", (3,))])
        table["vertex_indices"] = faces
        elements.append(plyfile.PlyElement.describe(table, "face", len_types={"vertex_indices": "u1"},
                                                    val_types={"vertex_indices": "i4"}))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    plyfile.PlyData(elements, text=False, byte_order="<").write(path)
