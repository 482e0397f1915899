"""Zero-shot accuracy of the world CLIP on each generated target domain (the design measurement).

For every domain: accuracy (all / base / novel segments of the test split) with the domain's own
labels, and with the source captions' names of the same classes ("canonical"). The gap between the
two is the share of the shift that sits in the names (the text side). All data are generated.

    python eval/domain_zero_shot.py                       # 3 test seeds x 100 scenes, every domain
    python eval/domain_zero_shot.py --domains frames --scenes 30 --seeds 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> dict:
    from opendas_encoder.generated.world.domains import (GENERATED_LABEL, build_domain, domain_names, evaluation_seed,
                                                         get_domain)
    from opendas_encoder.metrics.intervals import mean_std

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--domains", nargs="+", default=None, help=f"default: all ({', '.join(domain_names())})")
    p.add_argument("--scenes", type=int, default=100, help="test scenes per seed")
    p.add_argument("--seeds", type=int, default=3, help="test seeds 1000, 1001, ... (the demo's test seeds)")
    p.add_argument("--json", default=None, help="also write the numbers here")
    args = p.parse_args(argv)

    import torch

    import opendas_encoder as oe
    from opendas_encoder.generated.world import WORLD_MODEL_NAME, WORLD_PRETRAINED
    from opendas_encoder.generated.world.zero_shot import target_zero_shot_report

    for name in args.domains or []:
        get_domain(name)  # unknown names fail before any work
    torch.manual_seed(0)
    enc = oe.create_encoder("zeroshot", WORLD_MODEL_NAME, WORLD_PRETRAINED)
    out = {"label": GENERATED_LABEL, "scenes": args.scenes, "seeds": args.seeds, "domains": {}}
    t0 = time.perf_counter()
    for name in args.domains or domain_names():
        spec = get_domain(name)
        v = spec.vocabulary()
        rows = []
        for seed in range(args.seeds):
            ds = build_domain(name, args.scenes, evaluation_seed(seed), "test")
            own = target_zero_shot_report(enc.clip, enc.preprocess, enc.tokenizer, ds, v["base"], v["novel"])
            canon = target_zero_shot_report(enc.clip, enc.preprocess, enc.tokenizer, ds, v["base"], v["novel"],
                                            spec.canonical_names())
            rows.append([own["accuracy"], own["base_accuracy"], own["novel_accuracy"],
                         canon["accuracy"], canon["base_accuracy"], canon["novel_accuracy"], len(ds)])
        r = np.asarray(rows)
        keys = ["acc", "base_acc", "novel_acc", "canonical_acc", "canonical_base_acc", "canonical_novel_acc", "segments"]
        out["domains"][name] = {k: float(r[:, i].mean()) for i, k in enumerate(keys)} | \
            {"acc_std": mean_std(r[:, 0].tolist())[1], "chance": 100.0 / len(v["test"])}  # sample std
    # the text-side collision that `frames` is built on: "X" vs "X frame" for every colour-shape pair
    from opendas_encoder.generated.world import COLOURS, SHAPES

    pairs = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    with torch.no_grad():
        plain = enc.encode_text(pairs, normalize=True)
        framed = enc.encode_text([p + " frame" for p in pairs], normalize=True)
    out["cosine_x_vs_x_frame"] = float((plain * framed).sum(-1).mean())
    out["seconds"] = time.perf_counter() - t0
    print(f"Zero-shot accuracy (%) of the world CLIP on the {GENERATED_LABEL} target domains "
          f"(test split, {args.seeds} seed(s) x {args.scenes} scenes):\n")
    print("Acc: mean ± sample std (ddof=1) over the test seeds.\n")
    print("| domain | Acc | base | novel | Acc, canonical names | base | novel | chance |")
    print("|---|---|---|---|---|---|---|---|")
    for name, d in out["domains"].items():
        print(f"| `{name}` | {d['acc']:.1f} ± {d['acc_std']:.1f} | {d['base_acc']:.1f} | {d['novel_acc']:.1f} | "
              f"{d['canonical_acc']:.1f} | {d['canonical_base_acc']:.1f} | {d['canonical_novel_acc']:.1f} | "
              f"{d['chance']:.1f} |")
    print(f"\nmean cosine of the zero-shot text embeddings of 'X' and 'X frame' over {len(pairs)} colour-shape "
          f"pairs: {out['cosine_x_vs_x_frame']:.3f}\n{out['seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
