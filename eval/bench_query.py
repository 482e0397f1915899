"""Query latency once a scene's features exist (issue 23, step 4): text encode + scoring + colouring, CPU.

A synthetic index of ``--points`` points (300k) and ``--masks`` proposals (200) with ``--dim`` features:
points are split among the masks by nearest random centre (Mask3D-like instances), ``--background``
of the points in no mask, ``--overlap`` of the masked points also in a second mask. Timed (median of
``--repeats``): the one-time preparation when an index is loaded (point-mask membership, boxes), the
text encoding of one query with ``--model`` (zero-shot; random weights unless ``--pretrained``), the
scoring + ranking (:func:`opendas_encoder.scan.query.score_masks` + ``rank``) and the colouring of all
points (:func:`~opendas_encoder.scan.query.point_colors`). The goal of the issue: scoring + colouring
under 50 ms; printed as a ratio (< 1 meets it). For comparison, the same colouring over the dense
(N, M) bool matrix.

    python eval/bench_query.py
    python eval/bench_query.py --model ViT-B-16 --dim 512
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

GOAL_S = 0.050


def synthetic_index(num_points: int, num_masks: int, dim: int, background: float = 0.3, overlap: float = 0.2,
                    seed: int = 0):
    from sklearn.neighbors import NearestNeighbors

    from opendas_encoder.scan.index import SceneIndex

    rng = np.random.default_rng(seed)
    points = rng.uniform([-4, -3, 0], [4, 3, 2.5], size=(num_points, 3)).astype(np.float32)
    centres = rng.uniform([-4, -3, 0], [4, 3, 2.5], size=(num_masks, 3))
    _, nearest = NearestNeighbors(n_neighbors=2).fit(centres).kneighbors(points)
    masks = np.zeros((num_points, num_masks), dtype=bool)
    in_mask = rng.random(num_points) >= background
    rows = np.nonzero(in_mask)[0]
    masks[rows, nearest[rows, 0]] = True
    second = rows[rng.random(len(rows)) < overlap]
    masks[second, nearest[second, 1]] = True
    feats = rng.normal(size=(num_masks, dim)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    colors = rng.integers(0, 256, (num_points, 3)).astype(np.uint8)
    return SceneIndex("synthetic", points, colors, masks, feats, [[0, 1, 2]] * num_masks, "synthetic", "none")


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=300_000)
    ap.add_argument("--masks", type=int, default=200)
    ap.add_argument("--dim", type=int, default=None, help="feature dimension (default: the model's)")
    ap.add_argument("--model", default="opendas-world-vit")
    ap.add_argument("--pretrained", default=None, help="weights tag (default: generated-world for "
                    "opendas-world-vit, else random weights: the timing does not depend on them)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args(argv)

    import torch

    import opendas_encoder as oe
    from opendas_encoder.scan.query import encode_query, point_colors, rank, score_masks

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    tag = args.pretrained or ("generated-world" if args.model == "opendas-world-vit" else None)
    encoder = oe.create_encoder("zeroshot", args.model, tag).eval()
    dim = args.dim or encoder.embed_dim
    t0 = time.perf_counter()
    index = synthetic_index(args.points, args.masks, dim)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.point_mask_pairs()
    index.mask_boxes()
    t_prep = time.perf_counter() - t0

    texts = ["red office chair"]
    encode_query(encoder, texts)                       # warm-up (tokenizer, first call)
    t_text = median_time(lambda: encode_query(encoder, texts), args.repeats)
    tf = encode_query(encoder, texts)
    if tf.shape[1] != dim:
        tf = np.random.default_rng(1).normal(size=(1, dim)).astype(np.float32)
        tf /= np.linalg.norm(tf)
    scores = score_masks(index, tf)
    t_score = median_time(lambda: rank(index, score_masks(index, tf), 10), args.repeats)
    t_colour = median_time(lambda: point_colors(index, scores, None, 0.1, 0.4), args.repeats)
    t_colour_thr = median_time(lambda: point_colors(index, scores, float(np.median(scores)), 0.1, 0.4), args.repeats)

    def dense():
        s = np.where(index.masks, scores[None, :], -np.inf).max(axis=1)
        return s

    t_dense = median_time(dense, max(3, args.repeats // 4))
    part = t_score + t_colour
    print(f"query latency, CPU ({args.threads} torch thread(s)), synthetic index: {args.points} points, "
          f"{args.masks} masks ({int(index.masks.sum())} point-mask pairs), D={dim}; median of {args.repeats}")
    print(f"  index load preparation (once per index): {t_prep * 1e3:8.1f} ms   (synthetic index built in "
          f"{t_build:.1f} s)")
    print(f"  text encode ({args.model}, 1 text):       {t_text * 1e3:8.1f} ms")
    print(f"  scoring + ranking (top 10):              {t_score * 1e3:8.2f} ms")
    print(f"  colouring all points:                    {t_colour * 1e3:8.2f} ms   (with a threshold: "
          f"{t_colour_thr * 1e3:.2f} ms)")
    print(f"  [dense (N, M) per-point max, reference:  {t_dense * 1e3:8.2f} ms]")
    print(f"  scoring + colouring: {part * 1e3:.2f} ms = {part / GOAL_S:.3f} x the 50 ms goal "
          f"({'meets' if part < GOAL_S else 'MISSES'} it); with text encode {(part + t_text) * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
