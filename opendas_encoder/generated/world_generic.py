"""The generated world written in the generic on-disk format: a small own-domain dataset to try
``opendas train`` on with the shipped CLIP (``opendas-world-vit`` / ``generated-world``).

``python -m opendas_encoder.generated.world_generic OUT [--train-scenes 24] [--test-scenes 12]``
writes ``OUT/classes.txt`` (the domain's base + novel classes), ``OUT/images/<split>/scene_*.png``
and ``OUT/instances/<split>/scene_*.{png,json}`` (one instance per generated segment),
``OUT/negatives.json`` (five negative queries per base class) and ``OUT/vocabulary.json`` (the
domain's base and test classes, for ``data.vocabulary``). Only base classes appear in the train
split, the test split holds base and novel classes: the vocabulary a run derives from the splits
(without ``data.vocabulary``) is the domain's when every base class has a training segment.
Everything written is generated data, not a real dataset.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from typing import Dict, List, Optional

import numpy as np
from PIL import Image


def write_world_generic(root: str, train_scenes: int = 24, test_scenes: int = 12, seed: int = 0,
                        domain: str = "cast") -> Dict[str, int]:
    """Write the generated ``domain`` (train scenes from ``seed``, test scenes from ``evaluation_seed(seed)``,
    as the demo) under ``root`` in the generic layout; returns {split: segments written}."""
    from ..data.registry import build_dataset
    from .world.domains import evaluation_seed, get_domain

    words = get_domain(domain).vocabulary()
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "classes.txt"), "w", encoding="utf-8") as f:
        f.write("# generated world (not a real dataset), domain " + domain + "\n" + "\n".join(words["test"]) + "\n")
    with open(os.path.join(root, "negatives.json"), "w", encoding="utf-8") as f:
        json.dump(get_domain(domain).negatives(), f, indent=1, sort_keys=True)
    with open(os.path.join(root, "vocabulary.json"), "w", encoding="utf-8") as f:
        json.dump({"base": words["base"], "test": words["test"]}, f, indent=1)
    counts = {}
    for split, n, split_seed in (("train", train_scenes, seed), ("test", test_scenes, evaluation_seed(seed))):
        ds = build_dataset("generated-world", None, split, n_scenes=n, seed=split_seed, domain=domain)
        scenes: Dict[str, List] = defaultdict(list)
        for i in range(len(ds)):
            segment = ds[i]
            scenes[segment.source.split("#")[0]].append(segment)
        for d in ("images", "instances"):
            os.makedirs(os.path.join(root, d, split), exist_ok=True)
        for source, segments in scenes.items():
            stem = os.path.basename(source)
            ids = np.zeros(segments[0].mask.shape, np.uint8)
            for k, segment in enumerate(segments, start=1):  # generated segments do not overlap
                ids[segment.mask] = k
            Image.fromarray(segments[0].image).save(os.path.join(root, "images", split, stem + ".png"))
            Image.fromarray(ids).save(os.path.join(root, "instances", split, stem + ".png"))
            with open(os.path.join(root, "instances", split, stem + ".json"), "w", encoding="utf-8") as f:
                json.dump({str(k): s.label for k, s in enumerate(segments, start=1)}, f)
        counts[split] = len(ds)
    return counts


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m opendas_encoder.generated.world_generic",
                                description="write the generated world in the generic format (generated data)")
    p.add_argument("out", help="dataset folder to write")
    p.add_argument("--train-scenes", type=int, default=24)
    p.add_argument("--test-scenes", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--domain", default="cast", help="generated target domain (docs/domains.md)")
    args = p.parse_args(argv)
    counts = write_world_generic(args.out, args.train_scenes, args.test_scenes, args.seed, args.domain)
    print(f"{args.out}: generated world (domain {args.domain}) in the generic format, "
          f"{counts['train']} train / {counts['test']} test segments")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
