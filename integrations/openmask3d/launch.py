"""Run OpenMask3D's own mask-feature computation with the OpenDAS encoder in place of ``clip.load``.

Usage (OpenMask3D checkout at ``$OPENMASK3D_ROOT``; nothing from it is copied here)::

    python -m integrations.openmask3d.launch --openmask3d-root $OPENMASK3D_ROOT [--script single_scene|scannet200] \\
        [--opendas-model-config JSON_OR_DIR] [--scene SCENE_DIR] \\
        external.clip_backend=opendas external.opendas_checkpoint=checkpoints/my_run \\
        [external.sam_backend=none] data.masks.masks_path=... data.camera.poses_path=... (OpenMask3D overrides)

``--scene DIR`` fills the ``data.*`` paths of a scene in OpenMask3D's processed layout (see
``readers.py``); ``--opendas-model-config`` registers an open_clip model config (file or folder) before
the encoder is built, for base models open_clip does not ship.

What the launcher changes in the running process, and nothing else:

1. ``sys.modules['clip']`` becomes :mod:`integrations.openmask3d.clip_shim`, whose ``load`` returns the
   adapted encoder (``external.opendas_checkpoint``) or the same base model without prompts.
2. OpenMask3D allocates its per-mask features as ``np.zeros((num_masks, 768))``; the ``np`` seen by
   ``openmask3d.mask_features_computation.features_extractor`` is wrapped so that a 768 feature
   width becomes the encoder's ``embed_dim``.
3. With ``external.sam_backend=none`` SAM is not loaded: the "SAM mask" of a view is the set of
   projected visible points, which is what our own implementation uses without SAM.
4. OpenMask3D reads its proposals with a bare ``torch.load(path)``; since torch 2.6 that means
   ``weights_only=True``, which refuses the pickled float16 NumPy array that its own Mask3D step
   writes. The launcher allow-lists exactly NumPy's array globals for torch's weights-only unpickler
   in this process (``readers.numpy_array_globals``), so those files load and nothing else unpickles.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import types
from typing import Optional, Sequence

import numpy as np

from .clip_shim import install as install_clip_shim
from .override import OpenDASOverride, split_overrides

#: The feature width OpenMask3D hard-codes (CLIP ViT-L/14).
OPENMASK3D_FEATURE_DIM = 768

SCRIPTS = {
    "single_scene": "openmask3d.compute_features_single_scene",
    "scannet200": "openmask3d.compute_features_scannet200",
}


class NumpyWithFeatureDim(types.ModuleType):
    """numpy, except that ``zeros((n, 768))`` allocates ``(n, feature_dim)`` instead."""

    def __init__(self, feature_dim: int):
        super().__init__("numpy")
        self.feature_dim = int(feature_dim)

    def __getattr__(self, name):
        return getattr(np, name)

    def zeros(self, shape, *args, **kwargs):
        if isinstance(shape, tuple) and len(shape) == 2 and shape[1] == OPENMASK3D_FEATURE_DIM:
            shape = (shape[0], self.feature_dim)
        return np.zeros(shape, *args, **kwargs)


class ProjectedPointsPredictor:
    """Stands in for ``SamPredictor`` when ``external.sam_backend=none``."""

    def set_image(self, image) -> None:
        self.image_shape = np.asarray(image).shape[:2]


def projected_points_mask(image_size, num_random_rounds, num_selected_points, point_coords, predictor_sam):
    """Replacement of OpenMask3D's ``run_sam``: the mask of the projected points (rows, cols)."""
    mask = np.zeros(predictor_sam.image_shape, dtype=bool)
    mask[point_coords[:, 0], point_coords[:, 1]] = True
    return mask


def build_encoder(override: OpenDASOverride, clip_model_name: str, device: str = "cpu"):
    """The encoder the shim serves: the checkpoint's adapted encoder, or the base model as it is (OpenMask3D's
    own query sentences pass through unchanged: template "{}")."""
    import opendas_encoder as oe

    if override.opendas_checkpoint:
        pretrained = override.opendas_pretrained
        pretrained = None if pretrained in (None, "") else pretrained
        return oe.load_encoder(override.opendas_checkpoint, device=device, pretrained=pretrained)
    name, tag = override.base_model(clip_model_name)
    return oe.create_encoder("zeroshot", name, tag, device=device, template="{}")


def _ensure_segment_anything_importable() -> None:
    """OpenMask3D imports ``segment_anything`` at module level; give it a stub when absent."""
    try:
        import segment_anything  # noqa: F401
    except ImportError:
        stub = types.ModuleType("segment_anything")
        stub.sam_model_registry = {}

        class SamPredictor:  # noqa: D401 - placeholder
            def __init__(self, *a, **k):
                raise ImportError("segment_anything is not installed; use external.sam_backend=none")

        stub.SamPredictor = SamPredictor
        sys.modules["segment_anything"] = stub


def patch_openmask3d(override: OpenDASOverride, builder=None) -> dict:
    """Apply the shim and patches (see module docstring) to the importable ``openmask3d`` package.

    ``builder(clip_model_name, device) -> encoder`` replaces :func:`build_encoder` (tests, benchmarks).
    Returns a dict that receives the built encoder under ``"encoder"`` once ``clip.load`` ran.
    """
    import torch

    from .readers import numpy_array_globals

    torch.serialization.add_safe_globals(numpy_array_globals())  # Mask3D's proposal files (change 4)
    state: dict = {}
    if override.clip_backend == "opendas":
        def _build(name, device):
            state["encoder"] = builder(name, device) if builder else build_encoder(override, name, device)
            return state["encoder"]

        install_clip_shim(_build)
    if override.sam_backend == "none":
        _ensure_segment_anything_importable()
    from openmask3d.mask_features_computation import features_extractor

    if override.clip_backend == "opendas":
        extractor_cls = features_extractor.FeaturesExtractor
        original = extractor_cls.extract_features

        def extract_features(self, *args, **kwargs):
            # only while the per-mask features are allocated and filled: 768 -> the encoder's width
            features_extractor.np = NumpyWithFeatureDim(self.clip_model.embed_dim)
            try:
                return original(self, *args, **kwargs)
            finally:
                features_extractor.np = np

        extractor_cls.extract_features = extract_features
    if override.sam_backend == "none":
        features_extractor.initialize_sam_model = lambda device, model_type, checkpoint: ProjectedPointsPredictor()
        features_extractor.run_sam = projected_points_mask
    return state


def scene_overrides(scene_dir: str, given: Sequence[str]) -> list:
    """OpenMask3D's ``data.*`` overrides for a scene in the processed layout, except keys in ``given``."""
    from PIL import Image

    from .readers import ProcessedLayout, point_cloud_path, find_mask_proposals

    if not os.path.isdir(scene_dir):
        raise FileNotFoundError(f"--scene: scene folder not found: {scene_dir}")
    layout = ProcessedLayout()
    scene_dir = os.path.abspath(scene_dir)
    first = os.path.join(scene_dir, layout.color, "0" + layout.color_ext)
    if not os.path.isfile(first):
        raise FileNotFoundError(f"--scene {scene_dir}: no first colour frame {first}")
    with Image.open(first) as im:
        height, width = im.height, im.width
    values = {
        "data.masks.masks_path": find_mask_proposals(scene_dir),
        "data.camera.poses_path": os.path.join(scene_dir, layout.poses),
        "data.camera.intrinsic_path": os.path.join(scene_dir, layout.intrinsic),
        "data.camera.intrinsic_resolution": f"[{height},{width}]",
        "data.depths.depths_path": os.path.join(scene_dir, layout.depth),
        "data.images.images_path": os.path.join(scene_dir, layout.color),
        "data.point_cloud_path": point_cloud_path(scene_dir, layout),
    }
    keys = {a.lstrip("+").split("=", 1)[0] for a in given}
    return [f"{k}={v}" for k, v in values.items() if k not in keys]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--openmask3d-root", default=os.environ.get("OPENMASK3D_ROOT"),
                        help="OpenMask3D checkout (default: $OPENMASK3D_ROOT)")
    parser.add_argument("--script", choices=sorted(SCRIPTS), default="single_scene",
                        help="which OpenMask3D feature script to run")
    parser.add_argument("--opendas-model-config", action="append", default=[], metavar="JSON_OR_DIR",
                        help="open_clip model config (file or folder) to register before the encoder is built")
    parser.add_argument("--scene", metavar="DIR",
                        help="a scene in OpenMask3D's processed layout: fills the data.* paths (single_scene)")
    args, rest = parser.parse_known_args(argv)
    if not args.openmask3d_root or not os.path.isdir(os.path.join(args.openmask3d_root, "openmask3d")):
        parser.error(f"OpenMask3D checkout not found at {args.openmask3d_root!r} "
                     "(git clone OpenMask3D/openmask3d and pass --openmask3d-root or set OPENMASK3D_ROOT)")
    override, hydra_args = split_overrides(rest)
    if args.scene:
        if args.script != "single_scene":
            parser.error("--scene works with --script single_scene")
        hydra_args += scene_overrides(args.scene, hydra_args)
    if args.opendas_model_config:
        import open_clip

        for path in args.opendas_model_config:
            if not os.path.exists(path):
                parser.error(f"--opendas-model-config: not found: {path}")
            open_clip.add_model_config(path)
    if not any(a.startswith("hydra.run.dir=") for a in hydra_args):
        out = next((a.split("=", 1)[1] for a in hydra_args if a.startswith("output.output_directory=")), "output")
        hydra_args.append(f"hydra.run.dir={os.path.join(os.path.abspath(out), 'hydra')}")
    root = os.path.abspath(args.openmask3d_root)
    if root not in sys.path:
        sys.path.insert(0, root)
    patch_openmask3d(override)
    module = SCRIPTS[args.script]
    sys.argv = [module.replace(".", "/") + ".py"] + list(hydra_args)
    runpy.run_module(module, run_name="__main__", alter_sys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
