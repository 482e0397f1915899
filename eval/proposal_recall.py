"""Class-agnostic recall of the CPU fallback proposals on generated 3D offices (issue 23, step 2).

For each generated scene (``opendas_encoder.generated.scene3d.generate_scene``, seeds seed..seed+n-1),
the fallback proposals (:func:`opendas_encoder.scan.proposals.fallback_proposals`: RANSAC plane removal +
DBSCAN) are compared with the generator's ground-truth instances: recall at IoU t = the fraction of
ground-truth instances whose best proposal has IoU >= t. Generated data: the objects stand apart on a
jittered grid (they never touch), so this measures the plane removal and clustering, not the separation
of touching objects.

    python eval/proposal_recall.py --scenes 8

``--write-masks DIR --data-root ROOT`` instead writes the fallback proposals of every processed scene in
ROOT as ``DIR/<scene>_masks.npy`` (bool num_points x num_masks), the proposal files ``eval/run_3d.py
--proposals files --masks-dir DIR`` reads (AP with the fallback proposals)::

    python eval/run_3d.py --generate /tmp/gen3d --num-scenes 4 --clip-only --model opendas-world-vit \
        --pretrained generated-world --out /tmp/gen3d/res_gt
    python eval/proposal_recall.py --write-masks /tmp/gen3d/fallback --data-root /tmp/gen3d/openmask3d
    python eval/run_3d.py --data-root /tmp/gen3d/openmask3d --clip-only --model opendas-world-vit \
        --pretrained generated-world --proposals files --masks-dir /tmp/gen3d/fallback --out /tmp/gen3d/res_fb
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def measure(num_scenes: int, seed: int = 0, num_objects: int = 8):
    """Rows (scene, points, gt instances, proposals, recall@0.5, recall@0.25, mean best IoU, seconds)."""
    from opendas_encoder.generated.scene3d import generate_scene, proposals_from_gt
    from opendas_encoder.scan.proposals import fallback_proposals, proposal_recall

    rows = []
    for i in range(num_scenes):
        scene = generate_scene(name=f"generated_office_{seed + i:02d}", seed=seed + i, num_frames=1,
                               num_objects=num_objects)
        t0 = time.perf_counter()
        masks = fallback_proposals(scene.points)
        dt = time.perf_counter() - t0
        gt = proposals_from_gt(scene.gt_ids)
        r = proposal_recall(masks, gt)
        rows.append((scene.name, len(scene.points), gt.shape[1], masks.shape[1], r[0.5], r[0.25],
                     float(r["best_iou"].mean()), dt))
    return rows


def write_masks(data_root: str, out_dir: str) -> List[str]:
    """Fallback proposals of every processed scene (folders with pose/) of ``data_root`` -> ``out_dir``."""
    from opendas_encoder.scan.proposals import fallback_proposals
    from opendas_encoder.threed.processed import read_processed_scene

    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name in sorted(os.listdir(data_root)):
        if not os.path.isdir(os.path.join(data_root, name, "pose")):
            continue
        masks = fallback_proposals(read_processed_scene(os.path.join(data_root, name)).points)
        path = os.path.join(out_dir, f"{name}_masks.npy")
        np.save(path, masks)
        print(f"{path}: {masks.shape[1]} proposals")
        written.append(path)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--objects", type=int, default=8, help="objects per scene (at most 12)")
    ap.add_argument("--write-masks", metavar="DIR", help="write the fallback proposals of --data-root's scenes here")
    ap.add_argument("--data-root", help="processed scenes (OpenMask3D layout), with --write-masks")
    args = ap.parse_args(argv)
    if args.write_masks:
        if not args.data_root:
            ap.error("--write-masks needs --data-root")
        write_masks(args.data_root, args.write_masks)
        return 0
    rows = measure(args.scenes, args.seed, args.objects)
    print(f"fallback proposals (planes+dbscan) vs ground truth, generated scenes (seeds {args.seed}.."
          f"{args.seed + args.scenes - 1}, {args.objects} objects):")
    print(f"{'scene':<22} {'points':>7} {'gt':>3} {'props':>5} {'R@0.5':>6} {'R@0.25':>6} {'mIoU':>5} {'s':>5}")
    for name, n, k, m, r50, r25, miou, dt in rows:
        print(f"{name:<22} {n:>7} {k:>3} {m:>5} {r50:>6.3f} {r25:>6.3f} {miou:>5.2f} {dt:>5.2f}")
    k = np.array([r[2] for r in rows], dtype=np.float64)
    r50 = float((np.array([r[4] for r in rows]) * k).sum() / k.sum())
    r25 = float((np.array([r[5] for r in rows]) * k).sum() / k.sum())
    miou = float(np.mean([r[6] for r in rows]))
    print(f"{'all (instance-weighted)':<22} {'':>7} {int(k.sum()):>3} {'':>5} {r50:>6.3f} {r25:>6.3f} {miou:>5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
