"""A queryable scene: points, class-agnostic proposals and their multi-view features, computed once.

:func:`load_index` reads a processed scene folder (OpenMask3D's layout, what ``opendas scan import``
writes), takes its proposals (Mask3D's file, else the CPU fallback of :mod:`.proposals`), computes the
mask features with any encoder of this package (:func:`opendas_encoder.threed.compute_mask_features`)
and caches them under ``<scene>/cache/`` as safetensors + JSON (no pickle). A cache entry is used only
when both keys match:

* the **scene content hash**: SHA-256 over the bytes of the point cloud file, every colour and depth
  image, the pose and intrinsic matrices and the depth scale, streamed in 1 MiB blocks (cost: one read
  of the scene's files: SHA-256 runs at ~430 MB/s here, 0.23 s per 100 MB from the page cache, measured);
  contents, not names or times, so a copied or renamed scene keeps its cache and another scene never
  gets it;
* the **encoder fingerprint**: SHA-256 over the encoder's method, model name, configuration, base-model
  shape facts and weights fingerprint (``encoder.base_fingerprint()``, the one checkpoints are checked
  with) and the bytes of its learned tensors (``encoder.learned_state_dict()``); a module without that
  contract is hashed over its whole ``state_dict``.

The feature entry also keys on the proposals (a hash of the mask matrix) and the feature settings.
Timings of every stage are printed (``progress=True``) and stored in the entry's JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

import numpy as np

from ..threed.features import MaskFeatureConfig
from .proposals import FallbackConfig, scene_proposals

CACHE_DIR = "cache"
CACHE_FORMAT = "opendas_encoder.scan.index"
CACHE_VERSION = 1
_BLOCK = 1 << 20


# ------------------------------------------------------------------------------------------ the index
@dataclass
class SceneIndex:
    """Everything a query needs.

    points float32 (N, 3) metres, z up; colors uint8 (N, 3); masks bool (N, M) proposals; features
    float32 (M, D) (mean of L2-normalised crop embeddings; zero row = mask seen in no frame); views: per
    mask the frame numbers (``color/<i>.jpg``) of its top views, best first.
    """

    scene_dir: str
    points: np.ndarray
    colors: np.ndarray
    masks: np.ndarray
    features: np.ndarray
    views: list
    proposal_source: str
    encoder_fingerprint: str
    scene_hash: str = ""
    timings: Dict[str, float] = field(default_factory=dict)
    from_cache: bool = False
    _pairs: Optional[tuple] = field(default=None, init=False, repr=False, compare=False)
    _boxes: Optional[tuple] = field(default=None, init=False, repr=False, compare=False)
    _dimmed: Optional[np.ndarray] = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_masks(self) -> int:
        return int(self.masks.shape[1])

    @property
    def seen(self) -> np.ndarray:
        """bool (M,): masks with a feature (seen in at least one frame)."""
        return np.linalg.norm(self.features, axis=1) > 0

    def point_mask_pairs(self):
        """The (point, mask) membership as arrays sorted by point, computed once:
        (pair_mask int32 (P,), starts int64 (U,), points_with_mask int64 (U,)) where the masks of point
        ``points_with_mask[u]`` are ``pair_mask[starts[u]:starts[u+1]]``. Scoring and colouring use this
        instead of the (N, M) bool matrix (60 MB at 300k x 200), see :func:`.query.point_colors`."""
        if self._pairs is None:
            pts, msk = np.nonzero(self.masks)                  # row-major: sorted by point
            upts, starts = np.unique(pts, return_index=True)
            self._pairs = (msk.astype(np.int32), starts.astype(np.int64), upts.astype(np.int64))
        return self._pairs

    def dimmed_colors(self) -> np.ndarray:
        """uint8 (N, 3): the grey that points outside the query's answer are drawn in (mean of the point's
        own RGB / 2 + 40), computed once."""
        if self._dimmed is None:
            grey = (self.colors.astype(np.uint16).sum(axis=1) // 6 + 40).astype(np.uint8)
            self._dimmed = np.repeat(grey[:, None], 3, axis=1)
        return self._dimmed

    def mask_boxes(self):
        """(box_min float32 (M, 3), box_max float32 (M, 3), num_points int64 (M,)); empty masks: zeros."""
        if self._boxes is None:
            m = self.num_masks
            lo = np.zeros((m, 3), np.float32)
            hi = np.zeros((m, 3), np.float32)
            msk, pts = np.nonzero(self.masks.T)                # sorted by mask
            counts = np.bincount(msk, minlength=m).astype(np.int64)
            if len(msk):
                used, starts = np.unique(msk, return_index=True)
                p = self.points[pts]
                lo[used] = np.minimum.reduceat(p, starts, axis=0)
                hi[used] = np.maximum.reduceat(p, starts, axis=0)
            self._boxes = (lo, hi, counts)
        return self._boxes


# ------------------------------------------------------------------------------------------ keys
def _hash_file(h, path: str) -> None:
    with open(path, "rb") as f:
        while True:
            block = f.read(_BLOCK)
            if not block:
                break
            h.update(block)


def scene_content_hash(scene, ply_path: str, progress: bool = False) -> str:
    """SHA-256 (hex) of a scene's contents: the point cloud file, then per frame its pose, intrinsic,
    depth scale, colour and depth image bytes. ``scene``: a :class:`~opendas_encoder.threed.Scene3D`."""
    from tqdm import tqdm

    h = hashlib.sha256()
    h.update(b"ply\0")
    _hash_file(h, ply_path)
    for f in tqdm(scene.frames, desc=f"{scene.name}: content hash", leave=False, disable=not progress):
        h.update(b"frame\0")
        h.update(np.ascontiguousarray(f.cam_to_world, dtype=np.float64).tobytes())
        h.update(np.ascontiguousarray(f.intrinsic, dtype=np.float64).tobytes())
        h.update(repr((float(f.depth_scale), f.intrinsic_hw)).encode())
        for path in (f.color_path, f.depth_path):
            h.update(os.path.basename(path).encode() + b"\0")
            _hash_file(h, path)
    return h.hexdigest()


def _round(obj, digits: int = 6):
    """Floats rounded to ``digits`` significant digits, recursively (the base fingerprint's numbers are
    float sums whose last bits may differ with the thread count)."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {str(k): _round(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_round(v, digits) for v in obj]
    return obj


def encoder_fingerprint(encoder) -> str:
    """SHA-256 (hex) identifying what an encoder computes: method, model name, config, base-model shape
    facts and weights fingerprint, and the bytes of its learned tensors (see the module docstring)."""
    import torch

    h = hashlib.sha256()
    if hasattr(encoder, "learned_state_dict") and hasattr(encoder, "base_fingerprint"):
        ident = {"method": getattr(encoder, "method", ""), "model_name": getattr(encoder, "model_name", None),
                 "pretrained": getattr(encoder, "pretrained", None),
                 "config": encoder.config_dict() if hasattr(encoder, "config_dict") else None,
                 "base_signature": encoder.base_signature() if hasattr(encoder, "base_signature") else None,
                 "base_fingerprint": _round(encoder.base_fingerprint())}
        h.update(json.dumps(ident, sort_keys=True, default=str).encode())
        tensors = encoder.learned_state_dict()
    else:
        h.update(type(encoder).__qualname__.encode())
        tensors = encoder.state_dict()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu", torch.float32).contiguous()
        h.update(name.encode() + b"\0" + repr(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _masks_hash(masks: np.ndarray) -> str:
    h = hashlib.sha256(repr(masks.shape).encode())
    h.update(np.packbits(masks, axis=None).tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ storage
def _csr(lists) -> tuple:
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(x) for x in lists])
    flat = np.concatenate([np.asarray(x, dtype=np.int64) for x in lists]) if len(lists) else np.zeros(0, np.int64)
    return flat.astype(np.int64), offsets


def _uncsr(flat: np.ndarray, offsets: np.ndarray) -> list:
    return [flat[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


def _atomic_write(path: str, data: bytes) -> None:
    from ..core.checkpoint import atomic_write_bytes

    atomic_write_bytes(path, data)


def _save_masks(path_stem: str, masks: np.ndarray, meta: dict) -> None:
    from safetensors.numpy import save

    cols = [np.nonzero(masks[:, j])[0] for j in range(masks.shape[1])]
    flat, offsets = _csr(cols)
    _atomic_write(path_stem + ".safetensors", save({"mask_points": flat, "mask_offsets": offsets}))
    _atomic_write(path_stem + ".json", (json.dumps(meta, sort_keys=True, indent=1) + "\n").encode())


def _load_masks(path_stem: str, num_points: int) -> np.ndarray:
    from safetensors.numpy import load_file

    t = load_file(path_stem + ".safetensors")
    flat, offsets = t["mask_points"], t["mask_offsets"]
    masks = np.zeros((num_points, len(offsets) - 1), dtype=bool)
    for j, pts in enumerate(_uncsr(flat, offsets)):
        masks[pts, j] = True
    return masks


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        return d if isinstance(d, dict) else None
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------ build / load
def _read_scene(scene_dir: str):
    from ..data.ply import read_ply_vertices
    from ..threed.processed import ProcessedLayout, point_cloud_path, read_processed_scene

    scene = read_processed_scene(scene_dir)
    ply = point_cloud_path(scene_dir, ProcessedLayout())
    colors = read_ply_vertices(ply).get("colors")
    if colors is None:
        colors = np.full((scene.num_points, 3), 160, dtype=np.uint8)
    return scene, ply, colors


def _warn_corrupt(stem: str, exc: Exception) -> None:
    import warnings

    warnings.warn(f"{stem}.safetensors: corrupt cache entry ignored and recomputed ({type(exc).__name__}: {exc})",
                  stacklevel=3)


class _Timer:
    def __init__(self, progress: bool):
        self.progress, self.t = progress, {}

    def stage(self, name: str, fn, *a, **kw):
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        self.t[name] = round(time.perf_counter() - t0, 4)
        if self.progress:
            print(f"[scan index] {name}: {self.t[name]:.2f} s", flush=True)
        return out


def _proposals(scene_dir, points, scene_hash, proposals, fallback_cfg, progress, timer, use_cache):
    """Proposals, through the cache for the fallback (keyed by scene hash and fallback settings)."""
    if proposals is None or (isinstance(proposals, str) and proposals == "fallback"):
        from ..threed.processed import find_mask_proposals
        try:
            path = find_mask_proposals(scene_dir) if proposals is None else None
        except FileNotFoundError:
            path = None
        if path is None:
            stem = os.path.join(scene_dir, CACHE_DIR, f"proposals-{scene_hash[:16]}-{fallback_cfg.key()}")
            meta = _read_json(stem + ".json")
            if use_cache and meta and meta.get("scene_hash") == scene_hash and os.path.isfile(stem + ".safetensors"):
                try:
                    masks = timer.stage("proposals (cached)", _load_masks, stem, len(points))
                    return masks, meta["source"]
                except Exception as exc:  # noqa: BLE001 - a corrupt cache entry is recomputed, never trusted
                    _warn_corrupt(stem, exc)
            masks, source = timer.stage("proposals", scene_proposals, scene_dir, points, "fallback", fallback_cfg,
                                        progress)
            os.makedirs(os.path.dirname(stem), exist_ok=True)
            _save_masks(stem, masks, {"format": CACHE_FORMAT + ".proposals", "scene_hash": scene_hash,
                                      "source": source, "config": asdict(fallback_cfg),
                                      "num_masks": int(masks.shape[1]), "seconds": timer.t["proposals"]})
            return masks, source
        proposals = path
    return timer.stage("proposals", scene_proposals, scene_dir, points, proposals, fallback_cfg, progress)


def _index(scene_dir, encoder, *, proposals=None, progress=True, cfg: MaskFeatureConfig = MaskFeatureConfig(),
           fallback: FallbackConfig = FallbackConfig(), use_cache: bool = True) -> SceneIndex:
    from safetensors.numpy import load_file, save

    from ..threed.features import compute_mask_features, plan_crops
    from ..threed.views import compute_view_stats, top_k_views

    timer = _Timer(progress)
    t_start = time.perf_counter()
    scene, ply, colors = timer.stage("read scene", _read_scene, scene_dir)
    scene_hash = timer.stage("scene hash", scene_content_hash, scene, ply, progress)
    enc_fp = timer.stage("encoder fingerprint", encoder_fingerprint, encoder)
    points = scene.points.astype(np.float32)
    masks, source = _proposals(scene_dir, scene.points, scene_hash, proposals, fallback, progress, timer, use_cache)
    ident = {"scene": scene_hash, "encoder": enc_fp, "masks": _masks_hash(masks), "cfg": asdict(cfg),
             "version": CACHE_VERSION}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()
    stem = os.path.join(scene_dir, CACHE_DIR, f"features-{scene_hash[:16]}-{enc_fp[:16]}-{key[:16]}")
    meta = _read_json(stem + ".json")
    if (use_cache and meta and meta.get("key") == key and meta.get("scene_hash") == scene_hash
            and meta.get("encoder_fingerprint") == enc_fp and os.path.isfile(stem + ".safetensors")):
        try:
            t = timer.stage("features (cached)", load_file, stem + ".safetensors")
            feats, views = t["features"], [v.tolist() for v in _uncsr(t["views"], t["view_offsets"])]
            if feats.shape[0] != masks.shape[1] or len(views) != masks.shape[1] or not np.isfinite(feats).all():
                raise ValueError(f"{feats.shape[0]} feature rows, {len(views)} view lists for {masks.shape[1]} masks")
        except Exception as exc:  # noqa: BLE001 - a corrupt cache entry is recomputed, never trusted
            _warn_corrupt(stem, exc)
        else:
            timer.t["total"] = round(time.perf_counter() - t_start, 4)
            return SceneIndex(scene_dir, points, colors, masks, feats, views, source, enc_fp, scene_hash,
                              dict(timer.t), from_cache=True)

    stats = timer.stage("visibility", compute_view_stats, scene, masks, cfg.vis_threshold, progress=progress,
                        rounding=cfg.pixel_rounding)
    top = top_k_views(stats.counts, cfg.top_k)
    plan = timer.stage("crop plan", plan_crops, scene, masks, cfg, stats=stats)
    feats = timer.stage("features", compute_mask_features, scene, masks, encoder, cfg, progress=progress, plan=plan)
    names = [int(f.name) if f.name.isdigit() else i for i, f in enumerate(scene.frames)]
    views = [[names[int(i)] for i in v] for v in top]
    timer.t["total"] = round(time.perf_counter() - t_start, 4)
    flat, offsets = _csr(views)
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    _atomic_write(stem + ".safetensors", save({"features": np.ascontiguousarray(feats, dtype=np.float32),
                                               "views": flat, "view_offsets": offsets}))
    meta = {"format": CACHE_FORMAT, "format_version": CACHE_VERSION, "key": key, "scene_hash": scene_hash,
            "encoder_fingerprint": enc_fp, "encoder": {"method": getattr(encoder, "method", type(encoder).__name__),
                                                       "model_name": getattr(encoder, "model_name", None),
                                                       "pretrained": getattr(encoder, "pretrained", None)},
            "proposal_source": source, "num_points": int(len(points)), "num_masks": int(masks.shape[1]),
            "num_frames": len(scene.frames), "num_crops": len(plan), "feature_config": asdict(cfg),
            "timings_s": dict(timer.t)}
    _atomic_write(stem + ".json", (json.dumps(meta, sort_keys=True, indent=1) + "\n").encode())
    return SceneIndex(scene_dir, points, colors, masks, np.asarray(feats, np.float32), views, source, enc_fp,
                      scene_hash, dict(timer.t), from_cache=False)


def build_index(scene_dir: str, encoder, *, proposals=None, progress: bool = True,
                cfg: MaskFeatureConfig = MaskFeatureConfig(),
                fallback: FallbackConfig = FallbackConfig()) -> SceneIndex:
    """Compute proposals (if needed) and mask features of a processed scene, write them to the cache
    (``<scene>/cache/``) and return the index. ``proposals``: None = the scene's Mask3D file if any, else
    the fallback; "fallback"; a proposal file path; or a bool (N, M) array."""
    return _index(scene_dir, encoder, proposals=proposals, progress=progress, cfg=cfg, fallback=fallback,
                  use_cache=False)


def load_index(scene_dir: str, encoder, **kw) -> SceneIndex:
    """The cached index of ``scene_dir`` for ``encoder`` when the scene's contents, the encoder, the
    proposals and the settings all match; otherwise built (and cached) by :func:`build_index`."""
    return _index(scene_dir, encoder, use_cache=True, **kw)


def cache_entries(scene_dir: str) -> List[str]:
    """The feature cache entries (JSON paths) of a scene folder."""
    d = os.path.join(scene_dir, CACHE_DIR)
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.startswith("features-") and f.endswith(".json")) \
        if os.path.isdir(d) else []
