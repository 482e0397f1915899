"""Mask-feature aggregation speed: batched crops vs a per-mask loop (vs OpenMask3D's own loop).

On a generated scene (``--data DIR`` = an OpenMask3D-layout scene folder, else one is generated in a
temporary folder) with a tiny random encoder (``--model``), times the crop encoding + averaging
for the same crop plan: all masks' crops in shared batches vs one encoder call per mask. With
``--openmask3d-root`` (or ``$OPENMASK3D_ROOT``) it also times OpenMask3D's
``FeaturesExtractor.extract_features`` with the same encoder (SAM off). Prints seconds per mask
and the loop / batched ratio; ``--json PATH`` writes them.

    python eval/bench_aggregate.py --json /tmp/bench_aggregate.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from integrations.openmask3d.readers import find_mask_proposals, read_mask_proposals, read_processed_scene  # noqa: E402
from opendas_encoder.threed import (MaskFeatureConfig, compute_mask_features, compute_mask_features_loop,  # noqa: E402
                                    plan_crops)
from opendas_encoder.generated.scene3d import generate_scene, write_openmask3d_layout  # noqa: E402


def best_of(fn, repeats: int) -> float:
    """Fastest of ``repeats`` calls, in seconds (CUDA work finished before each clock read)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def time_openmask3d(root: str, scene_dir: str, encoder, cfg: MaskFeatureConfig, repeats: int) -> float:
    """Seconds of OpenMask3D's ``extract_features`` (views precomputed, as in its own run)."""
    from integrations.openmask3d.launch import patch_openmask3d
    from integrations.openmask3d.override import OpenDASOverride

    if root not in sys.path:
        sys.path.insert(0, root)
    patch_openmask3d(OpenDASOverride(clip_backend="opendas", sam_backend="none"), builder=lambda name, dev: encoder)
    from openmask3d.data.load import Camera, Images, InstanceMasks3D, PointCloud, get_number_of_images
    from openmask3d.mask_features_computation.features_extractor import FeaturesExtractor

    name = os.path.basename(scene_dir)
    poses = os.path.join(scene_dir, "pose")
    images = Images(os.path.join(scene_dir, "color"), ".jpg", np.arange(get_number_of_images(poses)))
    hw = np.asarray(images.images[0]).shape[:2]
    camera = Camera(os.path.join(scene_dir, "intrinsic", "intrinsic_color.txt"), list(hw), poses,
                    os.path.join(scene_dir, "depth"), ".png", 1000)
    extractor = FeaturesExtractor(camera, "opendas", images, InstanceMasks3D(os.path.join(scene_dir, f"{name}_masks.pt")),
                                  PointCloud(os.path.join(scene_dir, f"{name}.ply")), "vit_h", "", cfg.vis_threshold,
                                  str(next(encoder.parameters()).device))
    return best_of(lambda: extractor.extract_features(cfg.top_k, cfg.expansion_ratio, cfg.num_levels, 1, 5,
                                                      False, tempfile.gettempdir()), repeats)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="OpenMask3D-layout scene folder (default: generate one)")
    p.add_argument("--model", default="opendas-tiny-vit", help="open_clip model (random weights)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--openmask3d-root", default=os.environ.get("OPENMASK3D_ROOT"))
    p.add_argument("--device", default="cpu", help="encoder device (cpu, cuda)")
    p.add_argument("--amp", default="off", choices=["off", "bf16"], help="bf16 autocast around the encoder (CUDA)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--json", help="write the timings here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import opendas_encoder as oe

    encoder = oe.create_encoder("zeroshot", args.model, None, device=args.device).eval()
    autocast = torch.autocast(device_type=torch.device(args.device).type, dtype=torch.bfloat16,
                              enabled=args.amp == "bf16")
    with tempfile.TemporaryDirectory() as tmp, autocast:
        scene_dir = args.data or write_openmask3d_layout(generate_scene(num_objects=10), tmp)
        scene = read_processed_scene(scene_dir)
        masks = read_mask_proposals(find_mask_proposals(scene_dir), scene.num_points)
        cfg = MaskFeatureConfig(batch_size=args.batch_size)
        plan = plan_crops(scene, masks, cfg)
        batched = best_of(lambda: compute_mask_features(scene, masks, encoder, cfg, plan=plan), args.repeats)
        loop = best_of(lambda: compute_mask_features_loop(scene, plan, encoder), args.repeats)
        result = {"model": args.model, "device": args.device, "amp": args.amp, "threads": args.threads,
                  "repeats": args.repeats, "num_masks": int(masks.shape[1]), "num_crops": len(plan),
                  "batch_size": args.batch_size, "seconds_per_mask_batched": batched / masks.shape[1],
                  "seconds_per_mask_loop": loop / masks.shape[1], "loop_over_batched": loop / batched}
        if args.openmask3d_root:
            om3d = time_openmask3d(os.path.abspath(args.openmask3d_root), scene_dir, encoder, cfg, args.repeats)
            result["seconds_per_mask_openmask3d"] = om3d / masks.shape[1]
            result["openmask3d_over_batched"] = om3d / batched
    for k, v in result.items():
        print(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
