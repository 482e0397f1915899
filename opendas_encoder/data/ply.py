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

from ..errors import InputError

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


#: Bytes of one value of each PLY scalar type (binary formats).
_TYPE_BYTES = {t: n for n, names in ((1, "char int8 uchar uint8"), (2, "short int16 ushort uint16"),
                                    (4, "int int32 uint uint32 float float32"), (8, "double float64"))
               for t in names.split()}
_MAX_HEADER_BYTES = 1 << 20


def _check_declared_sizes(path: str) -> None:
    """Refuse a header whose element counts need more bytes than the file holds, before plyfile allocates
    ``count`` rows (a header claiming 10^12 vertices would otherwise allocate terabytes). A binary row
    needs its scalars plus each list's length field; an ASCII row at least one character and one
    separator per property."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(min(size, _MAX_HEADER_BYTES))
    end = head.find(b"end_header")
    if not head.startswith(b"ply") or end < 0:
        return  # plyfile reports what is wrong with the header
    data_bytes = size - head.index(b"\n", end) - 1 if b"\n" in head[end:] else 0
    binary, need, rows = True, 0, None  # rows: [count, min bytes per row] of the current element
    for line in head[:end].decode("ascii", "replace").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "format":
            binary = words[1] != "ascii"
        elif len(words) == 3 and words[0] == "element":
            if rows:
                need += rows[0] * rows[1]
            try:
                count = int(words[2])
            except ValueError:
                return
            if count < 0:
                raise InputError(path, f"PLY header declares a negative count for element {words[1]!r}")
            rows = [count, 0]
        elif len(words) >= 3 and words[0] == "property" and rows:
            if not binary:
                rows[1] += 2
            elif words[1] == "list":
                rows[1] += _TYPE_BYTES.get(words[2], 1)
            else:
                rows[1] += _TYPE_BYTES.get(words[1], 1)
    if rows:
        need += rows[0] * rows[1]
    if need > data_bytes:
        raise InputError(path, f"PLY file truncated or header corrupt: its element counts need at least {need} "
                               f"bytes of data, the file has {data_bytes}")


def read_ply(path: str):
    """The file as ``plyfile.PlyData``; errors (:class:`InputError`) name the file.

    Binary triangle lists are memory-mapped (``known_list_len``: 3 indices per face), which reads
    a ScanNet++ mesh without a Python loop; any other face list falls back to plyfile's generic reader.
    """
    plyfile = _plyfile()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"PLY file not found: {path}")
    _check_declared_sizes(path)
    try:
        try:
            return plyfile.PlyData.read(path, known_list_len={"face": {k: 3 for k in _FACE_LISTS}})
        except plyfile.PlyElementParseError as exc:
            if "unexpected list length" not in str(exc):
                raise
            return plyfile.PlyData.read(path)  # not all faces are triangles: the caller decides
    except plyfile.PlyParseError as exc:
        what = "PLY file truncated" if "early end-of-file" in str(exc) else "not a readable PLY file"
        raise InputError(path, f"{what} ({exc})") from None
    except (ValueError, OverflowError, TypeError, MemoryError) as exc:
        # plyfile lets numpy's and the codecs' own errors through for malformed data (a value out of its
        # type's range, non-ASCII bytes in an ASCII file, a buffer that is not a whole number of rows)
        raise InputError(path, f"not a readable PLY file ({type(exc).__name__}: {exc})") from None


def _vertex_table(path: str, ply) -> np.ndarray:
    if "vertex" not in ply:
        raise InputError(path, f"PLY file has no 'vertex' element (elements: {[e.name for e in ply.elements]})")
    data = ply["vertex"].data
    missing = [k for k in ("x", "y", "z") if k not in data.dtype.names]
    if missing:
        raise InputError(path, f"PLY vertex element lacks {missing}")
    if any(data.dtype[k] == object for k in ("x", "y", "z")):
        raise InputError(path, "PLY vertex x, y, z must be scalars, not lists")
    return data


def _xyz(path: str, data: np.ndarray) -> np.ndarray:
    xyz = np.stack([np.asarray(data[k], dtype=np.float64) for k in ("x", "y", "z")], axis=1).reshape(-1, 3)
    bad = ~np.isfinite(xyz).all(axis=1)
    if bad.any():
        raise InputError(path, f"{int(bad.sum())} vertices have non-finite coordinates (first: vertex "
                               f"{int(np.flatnonzero(bad)[0])})")
    return xyz


def _rgb(data: np.ndarray) -> Optional[np.ndarray]:
    if not all(k in data.dtype.names and data.dtype[k] != object for k in ("red", "green", "blue")):
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
            raise InputError(path, f"PLY face element has none of {list(_FACE_LISTS)}")
        col = fdata[key]
        if col.dtype == object:  # generic reader: one array per face
            if any(len(f) != 3 for f in col):
                raise InputError(path, "only triangle faces are supported")
            col = np.stack([np.asarray(f) for f in col])
        if col.dtype.kind not in "iu":
            raise InputError(path, f"PLY face indices must be integers, got {col.dtype}")
        faces = np.asarray(col, dtype=np.int64).reshape(-1, 3)
        bad = (faces < 0) | (faces >= len(v))
        if bad.any():
            raise InputError(path, f"{int(bad.any(axis=1).sum())} faces index vertices outside [0, {len(v)})")
    return Mesh(_xyz(path, v), faces, _rgb(v))


def read_ply_vertices(path: str) -> Dict[str, np.ndarray]:
    """The vertex element: ``points`` float64 (N, 3), ``colors`` uint8 (N, 3) when red/green/blue exist,
    and every other scalar vertex property under its own name (N,)."""
    v = _vertex_table(path, read_ply(path))
    out = {"points": _xyz(path, v)}
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
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # through a temporary file and a rename: never a half-written PLY, and a reader that still maps the
    # old file (read_ply memory-maps binary meshes) keeps its data instead of dying with SIGBUS
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        plyfile.PlyData(elements, text=False, byte_order="<").write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
