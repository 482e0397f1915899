"""Step 6 of issue 23 (generated data): does querying an object's class name return that object first?

For each generated 3D office (``opendas_encoder.generated.scene3d``: generate_scene +
write_openmask3d_layout), the scene's index is built (proposals -> multi-view mask features, cached) and
every class present in the scene is queried by its name with ``opendas query``'s Python API
(:func:`opendas_encoder.scan.query.query_scene`). A query is a hit when its top-ranked mask is an
instance of that class: with ``--proposals gt`` the mask is a ground-truth instance; with ``fallback``
the mask's best-IoU ground-truth instance (IoU >= 0.5) must have the class. The top-1 rate is hits /
queries over all scenes. Default encoder: the shipped world CLIP zero-shot (``opendas-world-vit`` /
``generated-world``, template "a photo of a {}.").

    python eval/query_top1.py --scenes 6 --proposals gt fallback
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Dict, List

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def scene_queries(index, gt_ids: np.ndarray, classes: List[str], encoder, iou: float = 0.5) -> List[dict]:
    """One record per class present in the scene: {class, top_mask, hit, score}. The top mask is a hit
    when its best-matching ground-truth instance (IoU >= ``iou``) has the queried class."""
    from opendas_encoder.generated.scene3d import proposals_from_gt
    from opendas_encoder.scan.query import query_scene

    gt = proposals_from_gt(gt_ids)                          # (N, K), sorted by gt id
    uniq = np.unique(gt_ids[gt_ids > 0])
    gt_class = [classes[int(u // 1000) - 1] for u in uniq]
    masks = index.masks.astype(np.float64)
    inter = masks.T @ gt.astype(np.float64)                  # (M, K)
    union = masks.sum(0)[:, None] + gt.sum(0)[None, :] - inter
    ious = inter / np.maximum(union, 1)
    best_gt = ious.argmax(axis=1)
    records = []
    for name in sorted(set(gt_class)):
        res = query_scene(index, encoder, [name], top_k=1)
        top = res.ranked[0].mask_id if res.ranked else -1
        hit = top >= 0 and ious[top, best_gt[top]] >= iou and gt_class[best_gt[top]] == name
        records.append({"class": name, "top_mask": int(top), "hit": bool(hit),
                        "score": float(res.ranked[0].score) if res.ranked else float("nan")})
    return records


def run(num_scenes: int, proposals: List[str], encoder, root: str, seed: int = 0, num_frames: int = 6,
        progress: bool = False) -> Dict[str, dict]:
    """Top-1 rate per proposal source over ``num_scenes`` generated scenes (seeds seed..seed+n-1)."""
    from opendas_encoder.generated.scene3d import generate_scene, write_openmask3d_layout
    from opendas_encoder.scan.index import load_index

    out = {p: {"queries": 0, "hits": 0, "records": []} for p in proposals}
    for i in range(num_scenes):
        scene = generate_scene(name=f"generated_office_{seed + i:02d}", seed=seed + i, num_frames=num_frames)
        d = write_openmask3d_layout(scene, root)
        for p in proposals:
            index = load_index(d, encoder, proposals=None if p == "gt" else "fallback", progress=progress)
            recs = scene_queries(index, scene.gt_ids, scene.classes, encoder)
            out[p]["records"] += [dict(r, scene=scene.name) for r in recs]
            out[p]["queries"] += len(recs)
            out[p]["hits"] += sum(r["hit"] for r in recs)
    for p in proposals:
        out[p]["rate"] = out[p]["hits"] / max(1, out[p]["queries"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--proposals", nargs="+", choices=("gt", "fallback"), default=["gt", "fallback"])
    ap.add_argument("--root", help="where to write the scenes (default: a temporary folder)")
    ap.add_argument("--verbose", action="store_true", help="print every query")
    args = ap.parse_args(argv)
    import torch

    from opendas_encoder.scan.query_cli import load_query_encoder

    torch.set_flush_denormal(True)
    encoder = load_query_encoder()
    with tempfile.TemporaryDirectory() as tmp:
        res = run(args.scenes, args.proposals, encoder, args.root or tmp, args.seed, args.frames)
    print(f"top-1 query rate, generated scenes (seeds {args.seed}..{args.seed + args.scenes - 1}, "
          f"{args.frames} frames), zero-shot opendas-world-vit/generated-world:")
    print(f"{'proposals':<10} {'queries':>7} {'hits':>5} {'top-1':>6}")
    for p, r in res.items():
        print(f"{p:<10} {r['queries']:>7} {r['hits']:>5} {r['rate']:>6.3f}")
        if args.verbose:
            for rec in r["records"]:
                print(f"    {rec['scene']} {rec['class']:<20} {'hit ' if rec['hit'] else 'MISS'} {rec['score']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
