"""Minimal PLY vertex reader/writer (numpy only; no open3d or plyfile needed).

Reads the ``vertex`` element of ASCII and binary (little/big endian) PLY files, e.g. ScanNet's
``*_vh_clean_2.ply`` and ScanNet++'s ``mesh_aligned_0.05.ply``. Elements after ``vertex``
(faces) are not parsed. Writes binary little-endian files: vertices, optional uint8 colours and
optional triangle faces.
"""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import numpy as np

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


def _parse_header(path: str, fh) -> Tuple[str, list]:
    """Return (format, elements) where elements = [(name, count, [(prop, dtype or 'list')])]."""
    first = fh.readline().strip()
    if first != b"ply":
        raise ValueError(f"{path}: not a PLY file (first line {first[:20]!r})")
    fmt, elements = None, []
    while True:
        line = fh.readline()
        if not line:
            raise ValueError(f"{path}: PLY header has no end_header")
        words = line.decode("ascii", errors="replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            break
        if words[0] == "format":
            fmt = words[1]
        elif words[0] == "element":
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property":
            if not elements:
                raise ValueError(f"{path}: PLY property before any element")
            if words[1] == "list":
                elements[-1][2].append((words[-1], "list"))
            else:
                if words[1] not in _PLY_TYPES:
                    raise ValueError(f"{path}: unknown PLY property type {words[1]!r}")
                elements[-1][2].append((words[2], _PLY_TYPES[words[1]]))
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise ValueError(f"{path}: unsupported PLY format {fmt!r}")
    return fmt, elements


def read_ply_vertices(path: str) -> Dict[str, np.ndarray]:
    """Read the vertex element of a PLY file.

    Returns a dict with ``points`` float64 (N, 3) and, when present, ``colors`` uint8 (N, 3)
    plus every other scalar vertex property under its own name (N,).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"PLY file not found: {path}")
    with open(path, "rb") as fh:
        fmt, elements = _parse_header(path, fh)
        if not elements or elements[0][0] != "vertex":
            raise ValueError(f"{path}: the first PLY element must be 'vertex', got {[e[0] for e in elements]}")
        _, count, props = elements[0]
        if any(kind == "list" for _, kind in props):
            raise ValueError(f"{path}: list properties in the vertex element are not supported")
        if fmt == "ascii":
            rows = [fh.readline().split() for _ in range(count)]
            if len(rows) != count or (rows and len(rows[-1]) < len(props)):
                raise ValueError(f"{path}: PLY file truncated (expected {count} vertices)")
            table = np.asarray(rows, dtype=np.float64).reshape(count, len(props))
            data = {name: table[:, i].astype(kind) for i, (name, kind) in enumerate(props)}
        else:
            order = "<" if fmt == "binary_little_endian" else ">"
            dtype = np.dtype([(name, order + kind) for name, kind in props])
            raw = fh.read(dtype.itemsize * count)
            if len(raw) != dtype.itemsize * count:
                raise ValueError(f"{path}: PLY file truncated (expected {count} vertices)")
            arr = np.frombuffer(raw, dtype=dtype, count=count)
            data = {name: np.asarray(arr[name]).astype(arr[name].dtype.newbyteorder("=")) for name, _ in props}
    for axis in ("x", "y", "z"):
        if axis not in data:
            raise ValueError(f"{path}: PLY vertex element has no {axis!r} property")
    out = {"points": np.stack([data.pop("x"), data.pop("y"), data.pop("z")], axis=1).astype(np.float64)}
    if all(c in data for c in ("red", "green", "blue")):
        out["colors"] = np.stack([data.pop("red"), data.pop("green"), data.pop("blue")], axis=1).astype(np.uint8)
    out.update(data)
    return out


def write_ply_points(path: str, points: np.ndarray, colors: Optional[np.ndarray] = None,
                     faces: Optional[np.ndarray] = None) -> None:
    """Write a binary little-endian PLY: points (N, 3) float, colors (N, 3) uint8, and optional
    triangles faces (F, 3) int (a ``face`` element with ``vertex_indices`` lists, as in meshes)."""
    points = np.asarray(points, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"{path}: points must be (N, 3), got {points.shape}")
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if colors is not None:
        colors = np.asarray(colors, dtype=np.uint8)
        if colors.shape != points.shape:
            raise ValueError(f"{path}: colors must be (N, 3) like points, got {colors.shape}")
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    table = np.empty(len(points), dtype=np.dtype(fields))
    table["x"], table["y"], table["z"] = points[:, 0], points[:, 1], points[:, 2]
    if colors is not None:
        table["red"], table["green"], table["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(points)}",
              "property float x", "property float y", "property float z"]
    if colors is not None:
        header += ["property uchar red", "property uchar green", "property uchar blue"]
    face_table = None
    if faces is not None:
        faces = np.asarray(faces)
        if faces.ndim != 2 or faces.shape[1] != 3 or (len(faces) and (faces.min() < 0 or faces.max() >= len(points))):
            raise ValueError(f"{path}: faces must be (F, 3) vertex indices in [0, {len(points)})")
        face_table = np.empty(len(faces), dtype=np.dtype([("n", "u1"), ("v", "<i4", (3,))]))
        face_table["n"], face_table["v"] = 3, faces
        header += [f"element face {len(faces)}", "property list uchar int vertex_indices"]
    header.append("end_header")
    with open(path, "wb") as fh:
        fh.write(("\n".join(header) + "\n").encode("ascii"))
        fh.write(table.tobytes())
        if face_table is not None:
            fh.write(face_table.tobytes())
