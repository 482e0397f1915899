"""Rasterise the generated world's objects: signed distance shapes, styles, anti-aliased paint.

Coordinates: an object lives in its own frame (u, v) in [-1, 1]^2 (v points down, like image
rows). :class:`Placement` maps that frame to pixels (centre, radius in pixels, rotation, a
viewpoint squash). Painting happens on a supersampled float canvas (H*ss, W*ss, 3) in 0-255
units together with an ``owner`` map (int16, -1 = background) that records which object covers
each subsample; :func:`downsample` averages ss x ss blocks back to pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

from .attributes import COLOURS, LIGHT_COLOURS, ObjectKind


def _regular_polygon(n: int, radius: float, phase_deg: float) -> np.ndarray:
    ang = np.deg2rad(phase_deg + 360.0 * np.arange(n) / n)
    return np.stack([radius * np.cos(ang), radius * np.sin(ang)], axis=1)


def _star_kites(points: int, outer: float, inner: float, dv: float) -> List[np.ndarray]:
    """A star as the union of convex kites (centre, inner, tip, inner)."""
    ang = np.deg2rad(-90.0 + 180.0 * np.arange(2 * points) / points)
    rad = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    verts = np.stack([rad * np.cos(ang), rad * np.sin(ang) + dv], axis=1)
    centre = np.array([0.0, dv])
    return [np.stack([centre, verts[(2 * k - 1) % (2 * points)], verts[2 * k], verts[2 * k + 1]])
            for k in range(points)]


_A, _E = 0.3, 0.95  # cross: arm half-width, arm extent
#: Each polygonal shape as a union of convex polygons (vertices in order, object units).
CONVEX_PIECES: Dict[str, List[np.ndarray]] = {
    "square": [np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]])],
    "triangle": [np.array([[0.0, -0.78], [0.9, 0.78], [-0.9, 0.78]])],
    "diamond": [np.array([[0.0, -1.0], [0.68, 0.0], [0.0, 1.0], [-0.68, 0.0]])],
    "star": _star_kites(5, 1.0, 0.44, 0.08),
    "cross": [np.array([[-_A, -_E], [_A, -_E], [_A, _E], [-_A, _E]]),
              np.array([[-_E, -_A], [_E, -_A], [_E, _A], [-_E, _A]])],
    "hexagon": [_regular_polygon(6, 0.95, 0.0)],
}
CIRCLE_RADIUS = 0.92
CRESCENT_CUT = (0.4, -0.15, 0.74)  # centre u, centre v, radius of the circle cut from the disc


def _half_planes(poly: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Outward unit normals (K, 2) and offsets (K,) of a convex polygon's edges."""
    edges = np.roll(poly, -1, axis=0) - poly
    normals = np.stack([edges[:, 1], -edges[:, 0]], axis=1)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    offsets = (normals * poly).sum(1)
    if (normals @ poly.mean(0) - offsets).max() > 0:  # vertices were clockwise: flip
        normals, offsets = -normals, -offsets
    return normals.astype(np.float32), offsets.astype(np.float32)


_HALF_PLANES = {k: [_half_planes(p) for p in v] for k, v in CONVEX_PIECES.items()}


def shape_sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance to ``shape`` in object units: negative inside, positive outside.

    Exact inside (depth to the nearest edge, what outlines need); outside, polygons give a
    lower bound of the distance, which keeps the sign right.
    """
    if shape == "circle":
        return np.hypot(u, v) - CIRCLE_RADIUS
    if shape == "crescent":
        cu, cv, cr = CRESCENT_CUT
        return np.maximum(np.hypot(u, v) - CIRCLE_RADIUS, cr - np.hypot(u - cu, v - cv))
    if shape not in _HALF_PLANES:
        raise ValueError(f"unknown shape {shape!r}")
    best = None
    for normals, offsets in _HALF_PLANES[shape]:
        piece = None
        for (nx, ny), d in zip(normals, offsets):
            h = nx * u + ny * v - d
            piece = h if piece is None else np.maximum(piece, h)
        best = piece if best is None else np.minimum(best, piece)
    return best


def pattern_colour(colour: str) -> Tuple[float, float, float]:
    """Colour of stripes/dots on an object of ``colour``: dark on light colours, light otherwise."""
    return (45.0, 38.0, 32.0) if colour in LIGHT_COLOURS else (238.0, 236.0, 228.0)


@dataclass
class Placement:
    """One object on a canvas.

    cx, cy, radius: centre and half-size in output pixels. rotation: radians. squash: scale
    (<= 1 foreshortens) along direction ``squash_axis`` (radians), a viewpoint change.
    rgb: body colour (0-255, after jitter); pattern_rgb: stripe/dot colour.
    pattern_angle: stripe direction (radians, object frame). shade: (gu, gv) linear shading
    gradient in object units (0 = flat). outline_width: border width of outlined objects in
    object units; pattern_period: stripe/dot period in object units.
    """

    kind: ObjectKind
    cx: float
    cy: float
    radius: float
    rotation: float = 0.0
    squash: float = 1.0
    squash_axis: float = 0.0
    rgb: Tuple[float, float, float] = (0.0, 0.0, 0.0)
    pattern_rgb: Tuple[float, float, float] = (255.0, 255.0, 255.0)
    pattern_angle: float = 0.0
    shade: Tuple[float, float] = (0.0, 0.0)
    outline_width: float = 0.22
    pattern_period: float = 0.55

    def forward_matrix(self) -> np.ndarray:
        """2x2 matrix taking object units to pixel offsets (before scaling by radius)."""
        c, s = np.cos(self.squash_axis), np.sin(self.squash_axis)
        axis = np.array([[c, -s], [s, c]])
        squash = axis @ np.diag([self.squash, 1.0]) @ axis.T
        cr, sr = np.cos(self.rotation), np.sin(self.rotation)
        return np.array([[cr, -sr], [sr, cr]]) @ squash

    def extent(self) -> float:
        """Half-size in pixels of a box that surely contains the object."""
        return self.radius * 1.12 * max(1.0, self.squash)


def default_placement(kind: ObjectKind, cx: float, cy: float, radius: float, rng: np.random.Generator,
                      colour_jitter: float = 12.0, **overrides) -> Placement:
    """A placement with jittered colour, random stripe direction and pixel-aware line widths."""
    base = np.asarray(COLOURS[kind.colour], dtype=np.float64)
    rgb = tuple(np.clip(base + rng.uniform(-colour_jitter, colour_jitter, 3), 0, 255))
    pattern = tuple(np.clip(np.asarray(pattern_colour(kind.colour)) + rng.uniform(-8, 8, 3), 0, 255))
    angle = np.deg2rad(rng.choice([0.0, 45.0, 90.0, 135.0]) + rng.uniform(-10, 10))
    fields = dict(
        kind=kind, cx=cx, cy=cy, radius=radius, rgb=rgb, pattern_rgb=pattern, pattern_angle=angle,
        outline_width=float(np.clip(2.3 / radius, 0.17, 0.4)),
        pattern_period=float(np.clip(5.5 / radius, 0.5, 1.1)),
    )
    fields.update(overrides)
    return Placement(**fields)


def paint_object(canvas: np.ndarray, owner: np.ndarray, obj: Placement, index: int, ss: int) -> int:
    """Paint ``obj`` onto a supersampled ``canvas`` (H*ss, W*ss, 3) float and ``owner`` (H*ss, W*ss).

    Subsamples covered by the object take its colour (with style and shading) and ``index``.
    Returns the number of subsamples painted (the object's full area before any occlusion).
    """
    big_h, big_w = owner.shape
    ext = obj.extent()
    x0 = max(0, int(np.floor((obj.cx - ext) * ss)))
    x1 = min(big_w, int(np.ceil((obj.cx + ext) * ss)) + 1)
    y0 = max(0, int(np.floor((obj.cy - ext) * ss)))
    y1 = min(big_h, int(np.ceil((obj.cy + ext) * ss)) + 1)
    if x0 >= x1 or y0 >= y1:
        return 0
    ys = ((np.arange(y0, y1) + 0.5) / ss - obj.cy).astype(np.float32)
    xs = ((np.arange(x0, x1) + 0.5) / ss - obj.cx).astype(np.float32)
    px, py = np.meshgrid(xs, ys)
    inv = (np.linalg.inv(obj.forward_matrix()) / obj.radius).astype(np.float32)
    u = inv[0, 0] * px + inv[0, 1] * py
    v = inv[1, 0] * px + inv[1, 1] * py
    sdf = shape_sdf(obj.kind.shape, u, v)
    style = obj.kind.style
    if style == "outlined":
        cover = (sdf <= 0) & (sdf >= -obj.outline_width)
    else:
        cover = sdf <= 0
    if not cover.any():
        return 0
    colour = np.broadcast_to(np.asarray(obj.rgb, dtype=np.float32), u.shape + (3,)).copy()
    if style in ("striped", "dotted"):
        ca, sa = np.cos(obj.pattern_angle), np.sin(obj.pattern_angle)
        a = (ca * u + sa * v) / obj.pattern_period
        if style == "striped":
            on = (a - np.floor(a)) < 0.5
        else:
            b = (-sa * u + ca * v) / obj.pattern_period
            fa, fb = a - np.round(a), b - np.round(b)
            on = fa * fa + fb * fb < 0.3 ** 2
        colour[on] = np.asarray(obj.pattern_rgb, dtype=np.float32)
    gu, gv = obj.shade
    if gu or gv:
        colour *= np.clip(1.0 + gu * u + gv * v, 0.2, 2.0)[..., None]
    region = canvas[y0:y1, x0:x1]
    region[cover] = colour[cover]
    owner[y0:y1, x0:x1][cover] = index
    return int(cover.sum())


def new_canvas(height: int, width: int, ss: int, rgb=(0.0, 0.0, 0.0)) -> Tuple[np.ndarray, np.ndarray]:
    """A supersampled canvas filled with ``rgb`` and an empty owner map (all -1)."""
    canvas = np.empty((height * ss, width * ss, 3), dtype=np.float32)
    canvas[:] = np.asarray(rgb, dtype=np.float32)
    owner = np.full((height * ss, width * ss), -1, dtype=np.int16)
    return canvas, owner


def downsample(canvas: np.ndarray, ss: int) -> np.ndarray:
    """Average ss x ss blocks: (H*ss, W*ss, C) -> (H, W, C) float32."""
    h, w = canvas.shape[0] // ss, canvas.shape[1] // ss
    return canvas.reshape(h, ss, w, ss, -1).mean(axis=(1, 3))


def owner_masks(owner: np.ndarray, ss: int, n_objects: int) -> np.ndarray:
    """Per-pixel owner by majority vote over each ss x ss block: (H, W) int16, -1 = background.

    A pixel belongs to the object covering most of its subsamples (ties and background
    majorities go to the background), so instance masks never overlap.
    """
    h, w = owner.shape[0] // ss, owner.shape[1] // ss
    blocks = owner.reshape(h, ss, w, ss).transpose(0, 2, 1, 3).reshape(h, w, ss * ss)
    counts = np.stack([(blocks == k).sum(-1) for k in range(-1, n_objects)], axis=-1)  # (H, W, n+1)
    best = counts.argmax(-1) - 1
    return best.astype(np.int16)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Round and clip a float image (0-255 units) to uint8."""
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
