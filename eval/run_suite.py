"""The domain suite: methods x generated target domains x seeds through the normal training engine.

Every run is ``opendas_encoder.train.pipeline.run_experiment`` (the engine of ``opendas train``) on a
generated domain of ``opendas_encoder.generated.world.domains`` (cast, frames, siblings, night: see
docs/domains.md). Per seed s, the training split is ``build_domain(domain, TRAIN, s, "train")`` and
the test split ``build_domain(domain, TEST, 1000 + s, "test")`` (new scenes for every seed, as the
demo); the vocabulary and negative queries are the domain's own. OpenDAS trains in two stages with
the negative queries; the baselines train in one stage ("one-stage-ce") for stage1 + stage2 epochs
without negatives, with their papers' options (``eval/runspec.py``, as Table 2).

Writes ``suite.json`` and ``suite.md`` into ``--out``: per domain, Acc / W-F1 / B-F1 / N-F1 as
mean ± sample std (ddof=1) over seeds, and the paired difference to zero-shot CLIP (same seed, same test
scenes) with a 95 % paired bootstrap interval over the test segments pooled over seeds (resampled within
each seed, both methods' predictions of a segment drawn together, every F1 recomputed:
``opendas_encoder.metrics.intervals.paired_segment_bootstrap``). ``suite.json`` keeps every segment's
predictions. ``--held-out`` tests on scenes of seeds 1000000 + s that no selection run saw (the library
default was selected on the quick mode's test scenes). Everything is measured on **generated** data.

Methods (``--methods``), in the one run syntax of ``eval/runspec.py``,
``[TAG=]NAME[:SETTING][@dotted.key=value]...``:

* ``zeroshot`` - the frozen world CLIP with "a photo of a {}." (no training);
* ``opendas-paper`` - OpenDAS exactly as the paper (``preset: paper``: ``PromptConfig.paper()``, every
  training option off);
* ``opendas-default`` (or ``opendas``) - OpenDAS as the library default (``preset: default``, chosen on
  this suite: docs/ablations.md);
* ``opendas-carry`` - the paper's OpenDAS with ``text_deep_init="carry"``;
* ``cocoop``, ``vpt``, ``rpo``, ``maple``, ``wiseft-text``, ``wiseft-visual``, ``cliplora``, ``promptsrc``.

``:SETTING`` trains in another setting (``opendas-carry:visual-only``, the stage-1 ablation); config
overrides follow ``@`` (values read as YAML), for the ablations of docs/ablations.md:
``opendas-paper@consistency.image=10@averaging.mode=ema``,
``opendas-default:visual-only@prompts.visual_start=2``, ``vpt@method_options.n_tokens=8``. Keys that
resolve to the same training (``runspec.training_key``) are trained once and reported under each key.

Examples::

    python eval/run_suite.py --quick                       # every method, 4 domains, 3 seeds, small sizes
    python eval/run_suite.py                               # full: demo sizes (160 / 100 scenes, 5 + 5 epochs)
    python eval/run_suite.py --domains frames --seeds 3 \\
        --methods opendas-paper opendas-paper:visual-only opendas-carry opendas-carry:visual-only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from eval.runspec import DISPLAY as SPEC_DISPLAY  # noqa: E402  (names, options, dedup: one place)
from eval.runspec import RunSpec, parse_spec, training_key  # noqa: E402
from opendas_encoder.metrics.intervals import mean_std, paired_segment_bootstrap  # noqa: E402
from opendas_encoder.plots import format_table  # noqa: E402
from opendas_encoder.train.config import (DataConfig, DatasetSpec, ModelSpec, RuntimeConfig,  # noqa: E402
                                          ScheduleConfig, TrainConfig, warmup_that_fits)
from opendas_encoder.train.pipeline import METRIC_KEYS, ExperimentData, build_model, prepare_experiment  # noqa: E402
from opendas_encoder.vocab import Vocabulary, select_negative_queries  # noqa: E402
from opendas_encoder.generated.world.domains import (GENERATED_LABEL, HELD_OUT_TEST_SEED_OFFSET,  # noqa: E402
                                                     TEST_SEED_OFFSET, domain_names, evaluation_seed, get_domain)

METRIC_NAMES = {"acc": "Acc", "weighted_f1": "W-F1", "base_f1": "B-F1", "novel_f1": "N-F1"}
DEFAULT_METHODS = ("zeroshot", "opendas-paper", "opendas-default", "cocoop", "vpt", "rpo", "maple",
                   "wiseft-text", "wiseft-visual", "cliplora", "promptsrc")
#: report names (eval/runspec.py's; the suite's base preset is the default, so plain ``opendas`` is it)
DISPLAY = dict(SPEC_DISPLAY, opendas="OpenDAS (default)")


@dataclass(frozen=True)
class Sizes:
    train_scenes: int
    test_scenes: int
    stage1_epochs: int
    stage2_epochs: int
    batch_size: int = 16


#: full = the demo's sizes; quick = small enough for methods x 4 domains x 3 seeds in ~20 min on 2 cores
FULL = Sizes(160, 100, 5, 5)
QUICK = Sizes(40, 30, 3, 3)


# ---------------------------------------------------------------------------------------------- methods
def resolve_method(key: str) -> RunSpec:
    """A method key (``eval/runspec.py`` syntax: ``NAME[:SETTING][@dotted.key=value]...``) -> RunSpec;
    raises ValueError naming the known names."""
    return parse_spec(key)


# ---------------------------------------------------------------------------------------------- configs
def suite_base(domain: str, seed: int, sizes: Sizes, out_dir: str, device: str, held_out: bool = False) -> TrainConfig:
    """The suite's base config of one domain and seed (world CLIP, the domain's splits, the sizes' schedule,
    ``preset: default``); a run is :meth:`RunSpec.config` of it. held_out: test on scenes no selection run
    saw (``evaluation_seed(seed, held_out=True)``)."""
    from opendas_encoder.generated.world import WORLD_MODEL_NAME, WORLD_PRETRAINED

    def split(name: str, n: int, s: int) -> DatasetSpec:
        return DatasetSpec(name="generated-world", split=name, options={"n_scenes": n, "seed": s, "domain": domain})

    test = split("test", sizes.test_scenes, evaluation_seed(seed, held_out))
    return TrainConfig(
        name=f"{GENERATED_LABEL} domain {domain} seed {seed}", seed=seed, preset="default",
        model=ModelSpec(name=WORLD_MODEL_NAME, pretrained=WORLD_PRETRAINED),
        data=DataConfig(train=split("train", sizes.train_scenes, seed), test=test),
        schedule=ScheduleConfig(batch_size=sizes.batch_size, stage1_epochs=sizes.stage1_epochs,
                                stage2_epochs=sizes.stage2_epochs,
                                warmup_epochs=warmup_that_fits(sizes.stage1_epochs, sizes.stage2_epochs)),
        # the distillation option's unlabelled images (used only with @distill.weight>0, a transductive run): the
        # test split's scenes, read without labels
        distill={"unlabelled": test},
        runtime=RuntimeConfig(device=device), output_dir=os.path.join(out_dir, domain, "base", f"seed{seed}"))


def suite_config(domain: str, run: RunSpec, seed: int, sizes: Sizes, out_dir: str, device: str,
                 held_out: bool = False) -> TrainConfig:
    """The training config of ``run`` on ``domain`` at ``seed`` (zeroshot: the default preset's, for its data)."""
    spec = run if run.trained else parse_spec("opendas-default")
    return spec.config(suite_base(domain, seed, sizes, out_dir, device, held_out),
                       name=f"{GENERATED_LABEL} domain {domain}: {run.key} seed {seed}",
                       output_dir=os.path.join(out_dir, domain, run.tag, f"seed{seed}"))


# ---------------------------------------------------------------------------------------------- running
def _summary(metrics: dict) -> dict:
    return {k: float(metrics[k]) for k in METRIC_KEYS}


def prepare_domain_seed(config: TrainConfig, domain: str, progress: bool) -> Tuple[object, ExperimentData,
                                                                                     ExperimentData]:
    """The segments of ``config``'s splits prepared once, with the domain's vocabulary and negative queries:
    (the probe model that prepared them, data with the negatives (OpenDAS), the same data without (the
    baselines)). Shared by this suite and eval/run_fewshot.py."""
    spec = get_domain(domain)
    words = spec.vocabulary()
    vocab = Vocabulary(base=words["base"], test=words["test"], name=f"{GENERATED_LABEL} domain {domain}")
    probe = build_model(config)
    data = prepare_experiment(config, probe, progress=progress, vocab=vocab, negatives=spec.negatives())
    plain = ExperimentData(data.train, data.test, data.vocab, select_negative_queries({}, data.vocab.base),
                           list(data.vocab.base))
    return probe, data, plain


def run_domain_seed(domain: str, runs: Sequence[RunSpec], seed: int, sizes: Sizes, out_dir: str, device: str,
                    progress: bool, held_out: bool = False, resume: bool = False) -> Tuple[Dict[str, dict], dict]:
    """Zero-shot and every training of ``runs`` on one domain and seed: ({key: metrics}, predictions) with
    "zeroshot" always; predictions = {"y_true": [...], "y_pred": {key: [...]}, "labels", "base", "novel"}
    (class names per test segment, the same segments for every key). resume: a run whose folder holds a
    finished run of the same configuration is read back, a partial one continues from its last state
    (``opendas train --resume``); a folder trained with other options is refused."""
    from opendas_encoder.train.evaluate import evaluate, zero_shot_encoder
    from opendas_encoder.train.pipeline import run_experiment
    from opendas_encoder.train.trainer import resolve_device

    probe_config = suite_config(domain, parse_spec("opendas-default"), seed, sizes, out_dir, device, held_out)
    probe, data, plain = prepare_domain_seed(probe_config, domain, progress)
    dev = resolve_device(device)
    zs = evaluate(zero_shot_encoder(probe), data.test, data.vocab, dev, probe_config.runtime.eval_batch_size)
    out = {"zeroshot": _summary(zs.metrics)}
    predictions = {"y_true": list(zs.y_true), "y_pred": {"zeroshot": list(zs.y_pred)},
                   "labels": list(data.vocab.test), "base": list(data.vocab.test_base), "novel": list(data.vocab.novel)}
    done: Dict[str, dict] = {}  # training_key -> metrics: keys that resolve to the same training run once
    predicted: Dict[str, list] = {}  # training_key -> its test predictions
    for run in runs:
        if not run.trained:
            continue
        config = suite_config(domain, run, seed, sizes, out_dir, device, held_out)
        key = training_key(config)
        if key not in done:
            t0 = time.perf_counter()
            res = run_experiment(config, resume=resume, progress=progress, plots=False, model=build_model(config),
                                 data=data if run.method == "opendas" else plain, zero_shot=False)
            done[key] = dict(res["adapted"], seconds=time.perf_counter() - t0)
            predicted[key] = res["test_predictions"]["adapted"]
            if res["test_predictions"]["y_true"] != predictions["y_true"]:
                raise RuntimeError(f"{run.key}: its test segments are not zero-shot CLIP's (unpaired)")
        out[run.key] = done[key]
        predictions["y_pred"][run.key] = predicted[key]
    return out, predictions


def aggregate(per_seed: Dict[str, Dict[str, List[dict]]], methods: Sequence[str],
              predictions: Optional[Dict[str, List[dict]]] = None) -> Dict[str, Dict[str, dict]]:
    """{domain: {method: {metric: mean, metric_std (sample std, ddof=1), diff: {metric: paired interval},
    per_seed}}}. predictions: {domain: [run_domain_seed's predictions of each seed]}; the difference to
    zero-shot CLIP and its 95 % interval come from the paired segment bootstrap over them (a domain without
    predictions gets no diff)."""
    out: Dict[str, Dict[str, dict]] = {}
    for domain, by_method in per_seed.items():
        seeds = (predictions or {}).get(domain)
        out[domain] = {}
        for key in methods:
            rows = by_method[key]
            entry = {"per_seed": rows}
            for k in METRIC_KEYS:
                entry[k], entry[k + "_std"] = mean_std([r[k] for r in rows])
            if key != "zeroshot" and seeds:
                p = seeds[0]
                groups = [(s["y_true"], s["y_pred"][key], s["y_pred"]["zeroshot"]) for s in seeds]
                entry["diff"] = paired_segment_bootstrap(groups, p["labels"], p["base"], p["novel"])
            out[domain][key] = entry
    return out


def format_suite(summary: Dict[str, Dict[str, dict]], meta: dict) -> str:
    head = (f"Domain suite on {GENERATED_LABEL} data (procedurally generated target domains, not real datasets); "
            f"world CLIP {meta['model']}; mean ± sample std (ddof=1) over {meta['seeds']} seed(s); "
            f"{meta['sizes']['train_scenes']} train / "
            f"{meta['sizes']['test_scenes']} test scenes, {meta['sizes']['stage1_epochs']} + "
            f"{meta['sizes']['stage2_epochs']} epochs{' (quick mode)' if meta['quick'] else ''}; test scenes of seeds "
            f"{meta.get('test_seeds')}: " + ("HELD-OUT, seen by no selection run. " if meta.get("held_out") else
                                               "not held-out (the library default was selected on scenes 0-29 of "
                                               "these seeds; --held-out for fresh ones). ") +
            "Brackets: paired difference to zero-shot CLIP (same seeds and test scenes, mean over seeds) and its 95 % "
            "paired bootstrap interval over the test segments pooled over seeds (resampled within each seed; it covers "
            "the test-sample uncertainty of these trained models, segments of a scene taken as independent).")
    parts = [head]
    runs = meta.get("runs", {})
    for domain, rows in summary.items():
        table = []
        # transductive runs (distillation over the test vocabulary) go in their own rows, after a marker row
        ordered = [k for k in rows if not runs.get(k, {}).get("transductive")]
        marked = [k for k in rows if runs.get(k, {}).get("transductive")]
        for key in ordered + marked:
            r = rows[key]
            if marked and key == marked[0]:
                table.append(["**transductive** (unlabelled test images)"] + [""] * len(METRIC_KEYS))
            cells = [DISPLAY.get(key, key) + (" (transductive)" if key in marked else "")]
            for k in METRIC_KEYS:
                cell = f"{r[k]:.1f}" + (f" ± {r[k + '_std']:.1f}" if np.isfinite(r[k + "_std"]) else "")
                if "diff" in r:
                    d = r["diff"][k]
                    cell += f" ({d['mean']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}])" if np.isfinite(d["low"]) \
                        else f" ({d['mean']:+.1f})"
                cells.append(cell)
            table.append(cells)
        parts.append(f"### `{domain}`: {get_domain(domain).summary}\n\n" +
                     format_table(table, ["method"] + [METRIC_NAMES[k] for k in METRIC_KEYS]))
    parts.append(f"total time: {meta['seconds']:.0f} s")
    return "\n\n".join(parts) + "\n"


def run_suite(methods: Sequence[str], domains: Sequence[str], seeds: int, sizes: Sizes, out_dir: str,
              device: str = "auto", progress: bool = False, quick: bool = False, first_seed: int = 0,
              held_out: bool = False, resume: bool = False) -> dict:
    """Every method on every domain and on ``seeds`` seeds from ``first_seed`` (train seed s, test scenes of
    ``evaluation_seed(s, held_out)``); held_out: test scenes no selection run saw. docs/selection.md's
    held-out check uses seeds 3-5. resume: reuse finished runs under ``out_dir`` (:func:`run_domain_seed`)."""
    runs = [resolve_method(m) for m in methods]  # every name checked before any work
    for d in domains:
        get_domain(d)
    transductive = {"zeroshot": False}
    for run in runs:  # every override validated against a real config before any work
        if run.trained:
            transductive[run.key] = suite_config(domains[0], run, 0, sizes, out_dir, device).transductive
    keys = ["zeroshot"] + [r.key for r in runs if r.key != "zeroshot"]
    t0 = time.perf_counter()
    per_seed: Dict[str, Dict[str, List[dict]]] = {d: {k: [] for k in keys} for d in domains}
    predictions: Dict[str, List[dict]] = {d: [] for d in domains}
    for domain in domains:
        for seed in range(first_seed, first_seed + seeds):
            res, predicted = run_domain_seed(domain, runs, seed, sizes, out_dir, device, progress, held_out,
                                             resume)
            predictions[domain].append(predicted)
            for k in keys:
                per_seed[domain][k].append(res[k])
            print(f"[suite] {domain} seed {seed} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    from opendas_encoder.generated.world import WORLD_MODEL_NAME, WORLD_PRETRAINED

    meta = {"label": GENERATED_LABEL, "model": f"{WORLD_MODEL_NAME} ({WORLD_PRETRAINED})", "seeds": seeds,
            "first_seed": first_seed, "sizes": sizes.__dict__, "quick": quick, "methods": keys, "domains": list(domains),
            "held_out": held_out,
            "test_seeds": [evaluation_seed(s, held_out) for s in range(first_seed, first_seed + seeds)],
            "runs": {r.key: {"method": r.method, "setting": r.setting, "preset": r.preset,
                             "transductive": transductive.get(r.key, False),
                             "overrides": {k: json.loads(v) for k, v in r.overrides}} for r in runs},
            "seconds": time.perf_counter() - t0}
    summary = aggregate(per_seed, keys, predictions)
    return {"meta": meta, "results": summary, "table": format_suite(summary, meta), "predictions": predictions}


# ---------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), help="method keys, KEY:SETTING allowed")
    p.add_argument("--domains", nargs="+", default=None, help=f"default: every domain ({', '.join(domain_names())})")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0, help="seeds FIRST..FIRST+SEEDS-1 (held-out check: 3)")
    p.add_argument("--quick", action="store_true", help=f"small sizes: {QUICK}")
    p.add_argument("--scenes", nargs=2, type=int, default=None, metavar=("TRAIN", "TEST"))
    p.add_argument("--epochs", nargs=2, type=int, default=None, metavar=("STAGE1", "STAGE2"))
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/suite")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--resume", action="store_true",
                   help="reuse the finished runs under --out (same configuration) and continue interrupted ones, "
                        "so a long suite can be stopped and started again")
    p.add_argument("--held-out", action="store_true",
                   help=f"test on held-out scenes (seeds {HELD_OUT_TEST_SEED_OFFSET} + s) that no selection run saw; "
                        f"default: seeds {TEST_SEED_OFFSET} + s, the scenes the library default was selected on")
    return p


def main(argv: Optional[List[str]] = None) -> dict:
    import torch

    args = build_parser().parse_args(argv)
    if args.seeds < 1:
        raise SystemExit("--seeds must be >= 1")
    if args.first_seed < 0:
        raise SystemExit("--first-seed must be >= 0")
    try:
        for m in args.methods:
            resolve_method(m)
        for d in args.domains or []:
            get_domain(d)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    sizes = QUICK if args.quick else FULL
    if args.scenes:
        sizes = replace(sizes, train_scenes=args.scenes[0], test_scenes=args.scenes[1])
    if args.epochs:
        sizes = replace(sizes, stage1_epochs=args.epochs[0], stage2_epochs=args.epochs[1])
    torch.set_flush_denormal(True)  # entry point: denormals slow CPU training of the tiny CLIP
    result = run_suite(args.methods, args.domains or domain_names(), args.seeds, sizes, args.out, args.device,
                       progress=args.progress, quick=args.quick, first_seed=args.first_seed, held_out=args.held_out,
                       resume=args.resume)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "suite.json"), "w") as f:
        json.dump({k: v for k, v in result.items() if k != "table"}, f, indent=1, sort_keys=True, default=float)
    with open(os.path.join(args.out, "suite.md"), "w") as f:
        f.write(result["table"])
    print(result["table"])
    print(f"results: {os.path.join(args.out, 'suite.json')}, {os.path.join(args.out, 'suite.md')}")
    return result


if __name__ == "__main__":
    main()
