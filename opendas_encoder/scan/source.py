"""What every reader hands the importer: a capture's frames as stored in its source, before any conversion.

Readers (:mod:`.nerfstudio`, :mod:`.record3d`, :mod:`.scannetpp`) only parse and validate their
format; conventions, units, resolutions and subsampling are applied once, in :mod:`.importers`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import numpy as np
from PIL import Image

from .errors import ScanInputError

DEPTH_UNITS = ("auto", "mm", "m")
FORMATS = ("auto", "nerfstudio", "record3d", "scannetpp")


@dataclass
class SourceFrame:
    """One frame as stored. cam_to_world: (4, 4) in the capture's camera convention and world.
    read_color() -> encoded image bytes; read_depth() -> float32 (Hd, Wd) metres (0 or nan = none);
    read_confidence() -> uint8 (Hd, Wd) 0/1/2 (None: no confidence); read_mask() -> bool (h, w),
    True = keep (None: no mask)."""

    name: str
    cam_to_world: np.ndarray
    read_color: Callable[[], bytes]
    read_depth: Callable[[], np.ndarray]
    color_name: str
    depth_name: str
    read_confidence: Optional[Callable[[], np.ndarray]] = None
    read_mask: Optional[Callable[[], np.ndarray]] = None


@dataclass
class SourceCapture:
    """A parsed capture. intrinsic: (3, 3) pixels for colour images of ``color_hw`` (H, W);
    depth_hw: (H, W) of the depth maps; camera_convention: "opengl" | "opencv"; world_up: a key of
    :data:`.conventions.UP_TO_Z` or "auto"; depth_unit: how the stored depth was read (text)."""

    format: str
    path: str
    frames: List[SourceFrame]
    intrinsic: np.ndarray
    color_hw: Tuple[int, int]
    depth_hw: Tuple[int, int]
    camera_convention: str
    world_up: str
    depth_unit: str
    notes: dict = field(default_factory=dict)


def decode_color(data: bytes, where: str) -> np.ndarray:
    """Encoded image bytes -> uint8 (H, W, 3) RGB; errors name ``where``."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt files
        raise ScanInputError(where, f"unreadable colour image ({type(exc).__name__}: {exc})") from None


def decode_depth_image(data: bytes, where: str, unit: str = "auto") -> Tuple[np.ndarray, str]:
    """A depth image (PNG/TIFF bytes) -> (float32 (H, W) metres, the unit used).

    ``unit="auto"``: integer pixels (16-bit PNG) are millimetres, floating-point pixels (32-bit
    TIFF) metres, the conventions of ARKit/nerfstudio exporters; "mm" or "m" override.
    8-bit or multi-channel images are refused (no depth format stores depth that way).
    """
    if unit not in DEPTH_UNITS:
        raise ValueError(f"depth unit must be one of {DEPTH_UNITS}, got {unit!r}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            mode = img.mode
            raw = np.asarray(img)
    except Exception as exc:  # noqa: BLE001
        raise ScanInputError(where, f"unreadable depth image ({type(exc).__name__}: {exc})") from None
    if raw.ndim != 2 or mode in ("L", "P", "1"):
        raise ScanInputError(where, f"depth image must be single-channel 16-bit (mm) or 32-bit float (m), "
                                    f"got PIL mode {mode!r} shape {raw.shape}")
    if unit == "auto":
        unit = "m" if np.issubdtype(raw.dtype, np.floating) else "mm"
    depth = raw.astype(np.float32)
    return (depth / 1000.0 if unit == "mm" else depth), unit


def read_file_bytes(path: str, what: str) -> bytes:
    """The bytes of ``path``; a missing or unreadable file is a :class:`ScanInputError` naming it."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ScanInputError(path, f"{what} file not found") from None
    except OSError as exc:
        raise ScanInputError(path, f"cannot read {what} file ({exc.strerror or exc})") from None
