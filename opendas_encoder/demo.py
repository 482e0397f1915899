"""`opendas demo`: OpenDAS on the generated world, end to end, in a few minutes on a laptop CPU.

Loads the small CLIP shipped in ``opendas_encoder/generated/world/clip`` (pretrained on the world's
source domain by ``eval/pretrain_synthetic_clip.py``), generates the shifted target domain (base
classes for adaptation, base + novel for testing), evaluates zero-shot CLIP, runs both OpenDAS
stages, evaluates again and prints the base/novel table. Every number it prints is measured on the
**generated world**, not on a real dataset.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import List, Optional

from tqdm.auto import tqdm

from .generated.world import WORLD_LABEL, WORLD_LABEL_LONG
from .plots import format_table, metric_cell
from .train.config import (DataConfig, DatasetSpec, ModelSpec, RuntimeConfig, ScheduleConfig, TrainConfig,
                           warmup_that_fits)
from .train.pipeline import METRIC_KEYS, mean_std, prepare_experiment, run_experiment, zero_shot_note

#: OpenDAS variants the demo can run, as (preset, prompt fields): the library default (``preset: default``,
#: chosen on the generated domain suite, docs/selection.md), the paper's method exactly (``preset: paper``),
#: and the paper's with deep text prompts that start as the frozen model's own hidden states
#: (``text_deep_init="carry"``, exact zero-shot CLIP at step 0).
OPENDAS_VARIANTS = {
    "opendas": ("default", {}),
    "opendas-paper": ("paper", {}),
    "opendas-carry": ("paper", {"text_deep_init": "carry"}),
}


@dataclass
class DemoOptions:
    seeds: int = 3
    train_scenes: int = 160
    test_scenes: int = 100
    stage1_epochs: int = 5
    stage2_epochs: int = 5
    batch_size: int = 16
    lr: float = 0.0025
    out_dir: str = "runs/demo"
    baselines: Optional[List[str]] = None
    variants: tuple = ("opendas", "opendas-paper")
    device: str = "auto"
    progress: bool = True
    domain: str = "cast"  # a generated target domain (opendas_encoder.generated.world.domains)
    held_out: bool = False  # test on held-out scenes (no selection run saw them), not the selection-time ones


def demo_config(opts: DemoOptions, seed: int, method: str = "opendas", setting: Optional[str] = None) -> TrainConfig:
    """The training config of one demo run; ``method`` is a baseline or a key of ``OPENDAS_VARIANTS``;
    ``setting`` None: the method's default (OpenDAS two-stage, a baseline its single stage)."""
    from .generated.world import WORLD_MODEL_NAME, WORLD_PRETRAINED
    from .generated.world.domains import evaluation_seed

    preset, prompts = OPENDAS_VARIANTS.get(method, ("default", None))
    return TrainConfig(
        name=f"{WORLD_LABEL}: {method} seed {seed}", seed=seed, preset=preset,
        method="opendas" if prompts is not None else method, setting=setting, prompts=dict(prompts or {}),
        model=ModelSpec(name=WORLD_MODEL_NAME, pretrained=WORLD_PRETRAINED),
        data=DataConfig(train=DatasetSpec(name="generated-world", split="train",
                                          options={"n_scenes": opts.train_scenes, "seed": seed, "domain": opts.domain}),
                        test=DatasetSpec(name="generated-world", split="test",
                                         options={"n_scenes": opts.test_scenes,
                                                  "seed": evaluation_seed(seed, opts.held_out),
                                                  "domain": opts.domain})),
        schedule=ScheduleConfig(lr=opts.lr, batch_size=opts.batch_size, stage1_epochs=opts.stage1_epochs,
                                stage2_epochs=opts.stage2_epochs,  # --epochs 1: no warm-up epoch (it would be all)
                                warmup_epochs=warmup_that_fits(opts.stage1_epochs, opts.stage2_epochs)),
        runtime=RuntimeConfig(device=opts.device),
        output_dir=os.path.join(opts.out_dir, *([] if opts.domain == "cast" else [opts.domain]), method, f"seed{seed}"),
    )


def run_demo(opts: DemoOptions) -> dict:
    """Run the demo for ``opts.seeds`` seeds; returns {"zero_shot", "opendas", "seconds", "per_seed", ...}."""
    from .generated.world.domains import get_domain
    from .vocab import Vocabulary

    t0 = time.perf_counter()
    domain = get_domain(opts.domain)
    words = domain.vocabulary()
    vocab = Vocabulary(base=words["base"], test=words["test"], name=f"{WORLD_LABEL} ({domain.name})")
    negatives = domain.negatives()
    methods = list(opts.variants) + list(opts.baselines or [])
    per_seed = {m: [] for m in methods}
    zero_shot = []
    overall = tqdm(total=opts.seeds * len(methods), desc="demo runs (variant x seed)", unit="run",
                   disable=not opts.progress, position=0)
    for seed in range(opts.seeds):
        for method in methods:
            overall.set_postfix_str(f"{method} seed {seed}")
            config = demo_config(opts, seed, method)
            from .train.pipeline import build_model

            model = build_model(config)
            data = prepare_experiment(config, model, progress=opts.progress, vocab=vocab, negatives=negatives)
            first = method == methods[0]
            res = run_experiment(config, progress=opts.progress, data=data, model=model, zero_shot=first)
            per_seed[method].append(res)
            if first:
                zero_shot.append(res["zero_shot"])
            overall.update()
    overall.close()
    summary = {"world": WORLD_LABEL, "domain": opts.domain, "seeds": opts.seeds, "vocabulary": vocab.counts(),
               "held_out": opts.held_out,
               "zero_shot": _aggregate(zero_shot)}
    for method in methods:
        summary[method] = _aggregate([r["adapted"] for r in per_seed[method]])
        summary.setdefault("seconds_per_iter", {})[method] = per_seed[method][0]["seconds_per_iter"]
    summary["per_seed"] = {"zero_shot": zero_shot,
                           **{m: [r["adapted"] for r in per_seed[m]] for m in methods}}
    summary["checkpoint"] = {m: per_seed[m][0]["checkpoint"] for m in methods}
    summary["plots"] = per_seed[methods[0]][0].get("plots", {})
    summary["seconds"] = time.perf_counter() - t0
    return summary


def _aggregate(rows: List[dict]) -> dict:
    out = {}
    for k in METRIC_KEYS:
        mean, std = mean_std([r[k] for r in rows])
        out[k] = mean
        out[k + "_std"] = std
    return out


def format_demo_table(summary: dict) -> str:
    zs = summary["zero_shot"]
    methods = [m for m in summary if m not in ("world", "domain", "seeds", "vocabulary", "zero_shot", "per_seed",
                                              "seconds", "checkpoint", "plots", "seconds_per_iter", "held_out")]
    rows = [["zero-shot CLIP"] + [metric_cell(zs[k], spread=zs[k + "_std"]) for k in METRIC_KEYS]]
    for m in methods:
        r = summary[m]
        rows.append([m] + [metric_cell(r[k], zs[k], r[k + "_std"]) for k in METRIC_KEYS])
    c = summary["vocabulary"]
    head = (f"OpenDAS on the {WORLD_LABEL_LONG}, domain {summary.get('domain', 'cast')!r}: "
            f"{c['base']} base / {c['novel']} novel classes, mean ± sample std (ddof=1) over "
            f"{summary['seeds']} seed(s)")
    from .generated.world.domains import HELD_OUT_TEST_SEED_OFFSET, TEST_SEED_OFFSET

    if summary.get("held_out"):
        head += (f"; HELD-OUT test scenes (seeds {HELD_OUT_TEST_SEED_OFFSET} + s), seen by no selection or tuning "
                 "run")
    else:
        head += (f"; test scenes of seeds {TEST_SEED_OFFSET} + s: the library default was selected on a prefix of "
                 "them (not held-out; --held-out tests on fresh scenes)")
    described = {"opendas": "opendas: the library default (preset 'default': prompts + rank-2 low-rank updates "
                            "merged toward zero-shot, chosen on the generated domain suite: docs/selection.md)",
                 "opendas-paper": "opendas-paper: the paper's method exactly (preset 'paper')",
                 "opendas-carry": "opendas-carry: the paper's with deep text prompts starting as the frozen CLIP's "
                                  "hidden states (text_deep_init='carry')"}
    shown = [described[m] for m in methods if m in described]  # only the variants this table has
    notes = ("; ".join(shown) + ". " if shown else "") + "Brackets: change against zero-shot CLIP. " + zero_shot_note()
    ckpts = "\n".join(f"  {m}: {p}" for m, p in summary["checkpoint"].items())
    return head + "\n\n" + format_table(rows, ["encoder", "Acc", "W-F1", "B-F1", "N-F1"]) + "\n\n" + notes + \
        f"\n\ntotal time: {summary['seconds']:.0f} s; adapted checkpoints (seed 0):\n{ckpts}"


def main_demo(opts: DemoOptions, json_path: Optional[str] = None) -> dict:
    summary = run_demo(opts)
    print(format_demo_table(summary))
    if summary.get("plots"):
        print("plots: " + ", ".join(summary["plots"].values()))
    path = json_path or os.path.join(opts.out_dir, "demo_results.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({k: v for k, v in summary.items()}, f, indent=1, sort_keys=True, default=float)
    print(f"results: {path}")
    return summary
