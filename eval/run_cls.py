"""Segment classification tables of the paper: OpenDAS against the baselines, over several seeds.

Trains and evaluates every requested method with the same data, schedule and metrics (the training
engine of ``opendas_encoder.train``) and writes the paper-format tables as Markdown and JSON, each
number the mean ± standard deviation over seeds:

* Table 1: Acc and W-F1 per method (closed-vocabulary adaptation), with #params and seconds/iter;
* Table 2: W-F1, B-F1, N-F1 per method, change against zero-shot CLIP in brackets;
* Table 5: OpenDAS with the triplet weight lambda in {0, 2, 5, 10} (Acc, W-F1);
* Table 7: OpenDAS with K_v in {8, 12} x K_t in {4, 8, 12} (#params, Acc, W-F1).

OpenDAS trains in two stages with the negative queries; the baselines train in one stage
("one-stage-ce") for stage1 + stage2 epochs, without negatives (as in ``configs/make_configs.py``).
OpenDAS is the paper's method exactly (``preset: paper``, as ``configs/table*``).
Zero-shot CLIP ("No adaptation") encodes each class name as "a photo of a {}." (every method's template).
Tables 5 and 7 use prompts in the first 12 layers of each tower (capped at the tower depth).
The seed changes initialisation and batch order; the data stay the same.

Examples::

    python eval/run_cls.py                                   # generated world, Tables 1 + 2, 3 seeds
    python eval/run_cls.py --methods opendas vpt maple --seeds 5 --tables 1 2 5 7
    python eval/run_cls.py --dataset configs/table1/kitti360/opendas.yaml --methods opendas cocoop vpt rpo maple

Without ``--dataset`` the data are the generated world (``opendas_encoder.generated.world``) and the model its
small CLIP (``opendas_encoder/generated/world/clip``, written by ``eval/pretrain_synthetic_clip.py``):
those numbers are measured on generated data, not on a real dataset.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from eval.runspec import DISPLAY as SPEC_DISPLAY  # noqa: E402  (names, options, dedup: one place)
from eval.runspec import RunSpec, parse_spec, training_key  # noqa: E402
from opendas_encoder.plots import format_table, metric_cell  # noqa: E402
from opendas_encoder.train.config import (DataConfig, DatasetSpec, ModelSpec, RuntimeConfig, ScheduleConfig,  # noqa: E402
                                          TrainConfig, load_config, warmup_that_fits)
from opendas_encoder.train.evaluate import ZERO_SHOT_TEMPLATE  # noqa: E402
from opendas_encoder.train.pipeline import (METRIC_KEYS, ExperimentData, build_model, mean_std,  # noqa: E402
                                            prepare_experiment, run_experiment)
from opendas_encoder.train.trainer import read_log  # noqa: E402
from opendas_encoder.vocab import select_negative_queries  # noqa: E402

from opendas_encoder.generated.world import WORLD_LABEL, WORLD_LABEL_LONG  # noqa: E402
DEFAULT_METHODS = ("opendas", "cocoop", "vpt", "rpo", "maple", "cliplora", "promptsrc")
LAMBDAS = (0.0, 2.0, 5.0, 10.0)
TOKEN_GRID = ((8, 4), (8, 8), (8, 12), (12, 4), (12, 8), (12, 12))
ABLATION_DEPTH = 12
#: report names (eval/runspec.py's: one place); here plain ``opendas`` is the base config's, the paper's preset
DISPLAY = dict(SPEC_DISPLAY)


@dataclass
class RunResult:
    spec: RunSpec
    config: TrainConfig  # its training (seed 0)
    params: int
    per_seed: List[dict] = field(default_factory=list)  # adapted metrics per seed
    seconds_per_iter: List[float] = field(default_factory=list)

    def summary(self) -> dict:
        cfg = self.config
        out = {"tag": self.spec.key, "spec": self.spec.key, "method": cfg.method, "setting": cfg.setting,
               "params": self.params,
               "prompts": cfg.prompt_config().to_dict() if cfg.method == "opendas" else {},
               "method_options": dict(cfg.method_options), "lambda_end": cfg.triplet.lambda_end,
               "per_seed": self.per_seed,
               "seconds_per_iter": float(np.mean(self.seconds_per_iter)) if self.seconds_per_iter else None}
        for k in METRIC_KEYS:
            out[k], out[k + "_std"] = mean_std([r.get(k) for r in self.per_seed])
        return out


# ---------------------------------------------------------------------------------------------- plan
def plan_runs(methods: Sequence[str], tables: Sequence[str], vision_layers: int,
              text_layers: int) -> Dict[str, List[RunSpec]]:
    """Runs per table ("1" and "2" share theirs), as :class:`RunSpec` (``eval/runspec.py``) over the base
    config; identical trainings (``training_key``) are trained once."""
    plan: Dict[str, List[RunSpec]] = {}
    if {"1", "2"} & set(tables):
        plan["main"] = [parse_spec(m) for m in methods]
    depths = dict(prompts__visual_depth=min(ABLATION_DEPTH, vision_layers),
                  prompts__text_depth=min(ABLATION_DEPTH, text_layers))
    if "5" in tables:
        plan["5"] = [parse_spec(f"lambda{lam:g}=opendas").with_overrides(**depths, triplet__lambda_end=lam)
                     for lam in LAMBDAS]
    if "7" in tables:
        plan["7"] = [parse_spec(f"kv{kv}_kt{kt}=opendas").with_overrides(**depths, triplet__lambda_end=5.0,
                                                                         prompts__visual_tokens=kv,
                                                                         prompts__text_tokens=kt)
                     for kv, kt in TOKEN_GRID]
    return plan


def run_config(base: TrainConfig, spec: RunSpec, seed: int, out_dir: str) -> TrainConfig:
    """The base configuration as the run ``spec`` at ``seed``."""
    return spec.config(base, name=f"{base.name}/{spec.key}/seed{seed}", seed=seed,
                       output_dir=os.path.join(out_dir, spec.tag, f"seed{seed}"))


# ---------------------------------------------------------------------------------------------- config
def world_config(args) -> TrainConfig:
    from opendas_encoder.generated.world import WORLD_MODEL_NAME, WORLD_PRETRAINED

    pretrained = WORLD_PRETRAINED if args.pretrained is None else (args.pretrained or None)
    return TrainConfig(
        name="generated-world", preset="paper", model=ModelSpec(name=args.model or WORLD_MODEL_NAME, pretrained=pretrained),
        data=DataConfig(train=DatasetSpec(name="generated-world", split="train",
                                          options={"n_scenes": args.world_scenes[0], "seed": 0}),
                        test=DatasetSpec(name="generated-world", split="test",
                                         options={"n_scenes": args.world_scenes[1], "seed": 1000})),
        schedule=ScheduleConfig(), runtime=RuntimeConfig(device=args.device),
        output_dir=args.out)


def base_config(args) -> TrainConfig:
    if args.dataset is None:
        base = world_config(args)
    else:
        base = load_config(args.dataset, args.set)
        if args.model:
            base = base.updated(model=dict(base.model, name=args.model))
        if args.pretrained is not None:
            base = base.updated(model=dict(base.model, pretrained=args.pretrained or None))
        base = base.updated(runtime=dict(base.runtime, device=args.device))
    if args.epochs:
        base = base.updated(schedule=dict(base.schedule, stage1_epochs=args.epochs[0], stage2_epochs=args.epochs[1],
                                          warmup_epochs=warmup_that_fits(*args.epochs,
                                                                         warmup=base.schedule.warmup_epochs)))
    if args.batch_size:
        base = base.updated(schedule=dict(base.schedule, batch_size=args.batch_size))
    return base


# ---------------------------------------------------------------------------------------------- running
def seconds_per_iteration(run_dir: str) -> Optional[float]:
    log = read_log(run_dir)
    return float(np.mean([r["seconds"] for r in log])) if log else None


def run_all(base: TrainConfig, methods: Sequence[str], tables: Sequence[str], seeds: int, out_dir: str,
            world: bool, progress: bool = True, resume: bool = False) -> dict:
    """Train/evaluate every planned run for every seed; returns the JSON-able results."""
    vocab = negatives = None
    if world:
        from opendas_encoder.vocab import Vocabulary
        from opendas_encoder.generated.world import world_negatives, world_vocabulary

        words = world_vocabulary()
        vocab, negatives = Vocabulary(base=words["base"], test=words["test"], name=WORLD_LABEL), world_negatives()
    probe = build_model(base.updated(method="opendas", setting="two-stage", method_options={}, seed=0))
    sig = probe.base_signature()
    data = prepare_experiment(base, probe, progress=progress, vocab=vocab, negatives=negatives)
    if data.test is None:
        raise ValueError(f"{base.name}: the tables need a test split (data.test is not set)")
    plain = ExperimentData(data.train, data.test, data.vocab, select_negative_queries({}, data.vocab.base),
                           list(data.vocab.base))
    plan = plan_runs(methods, tables, sig["vision_layers"], sig["text_layers"])
    specs = [s for specs in plan.values() for s in specs]
    keys = {s.key: training_key(run_config(base, s, 0, out_dir)) for s in specs}  # validates every run first
    results: Dict[str, RunResult] = {}
    zero_shot = None
    for seed in range(seeds):
        for spec in specs:
            key = keys[spec.key]
            if key in results and len(results[key].per_seed) > seed:
                continue  # the same training already ran for this seed (e.g. lambda 5 = kv8_kt4)
            config = run_config(base, spec, seed, out_dir)
            model = build_model(config)
            res = run_experiment(config, resume=resume, progress=progress, plots=False, model=model,
                                 data=data if config.method == "opendas" else plain, zero_shot=zero_shot is None)
            zero_shot = zero_shot or res["zero_shot"]
            entry = results.setdefault(key, RunResult(spec, config, sum(p.numel() for p in model.learned_parameters())))
            entry.per_seed.append(res["adapted"])
            spi = seconds_per_iteration(config.output_dir)
            if spi is not None:
                entry.seconds_per_iter.append(spi)
    return {"dataset": WORLD_LABEL_LONG if world else base.name, "model": {"name": base.model.name,
                                                                      "pretrained": base.model.pretrained},
            "base_model": sig, "seeds": seeds, "vocabulary": data.vocab.counts(),
            "negatives": len(data.negatives.queries), "zero_shot": zero_shot,
            "schedule": {"stage1_epochs": base.schedule.stage1_epochs, "stage2_epochs": base.schedule.stage2_epochs,
                         "batch_size": base.schedule.batch_size, "lr": base.schedule.lr},
            "plan": {t: [s.key for s in table] for t, table in plan.items()},
            "runs": {s.key: dict(results[keys[s.key]].summary(), tag=s.key, trained_as=results[keys[s.key]].spec.key)
                     for s in specs}}


# ---------------------------------------------------------------------------------------------- tables
def _cell(run: dict, key: str, zero_shot: Optional[dict] = None) -> str:
    base = zero_shot.get(key) if zero_shot else None
    return metric_cell(run[key], base, run[key + "_std"] if len(run["per_seed"]) > 1 else None)


def _params(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 10_000_000 else f"{n / 1e3:.0f}K" if n >= 1000 else str(n)


def _spi(run: dict) -> str:
    return f"{run['seconds_per_iter']:.3f} s" if run.get("seconds_per_iter") is not None else "n/a"


def format_tables(results: dict) -> Dict[str, str]:
    """Markdown of each requested table (keys "1", "2", "5", "7")."""
    zs, runs, plan = results["zero_shot"], results["runs"], results["plan"]
    weights = results["model"]["pretrained"] or "random weights"
    head = (f"{results['dataset']}; model {results['model']['name']} ({weights}); "
            f"mean ± sample std (ddof=1) over {results['seeds']} seed(s); {results['schedule']['stage1_epochs']} + "
            f"{results['schedule']['stage2_epochs']} epochs; zero-shot template \"{ZERO_SHOT_TEMPLATE}\"")
    out = {}
    if "main" in plan:
        main = [runs[t] for t in plan["main"]]
        rows = [["No adaptation", "0", metric_cell(zs["acc"]), metric_cell(zs["weighted_f1"]), "-"]]
        rows += [[DISPLAY.get(r["spec"], r["spec"]), _params(r["params"]), _cell(r, "acc"),
                  _cell(r, "weighted_f1"), _spi(r)] for r in main]
        out["1"] = "Table 1: adaptation on base queries. " + head + "\n\n" + \
            format_table(rows, ["Method", "# Params", "Acc", "W-F1", "time/iter"])
        rows = [["No adaptation", "0"] + [metric_cell(zs[k]) for k in ("weighted_f1", "base_f1", "novel_f1")]]
        rows += [[DISPLAY.get(r["spec"], r["spec"]), _params(r["params"])] +
                 [_cell(r, k, zs) for k in ("weighted_f1", "base_f1", "novel_f1")] for r in main]
        out["2"] = ("Table 2: open-vocabulary segment classification, in brackets the change against zero-shot CLIP. " + head +
                    f"; {results['vocabulary']['test_base']} base / {results['vocabulary']['novel']} novel test "
                    "queries\n\n" + format_table(rows, ["Method", "# Params", "W-F1", "B-F1", "N-F1"]))
    if "5" in plan:
        rows = [[f"{runs[t]['lambda_end']:g}", _cell(runs[t], "acc"), _cell(runs[t], "weighted_f1")] for t in plan["5"]]
        out["5"] = "Table 5: triplet weight lambda (OpenDAS). " + head + "\n\n" + \
            format_table(rows, ["lambda", "Acc", "W-F1"])
    if "7" in plan:
        rows = [[str(runs[t]["prompts"]["visual_tokens"]), str(runs[t]["prompts"]["text_tokens"]),
                 _params(runs[t]["params"]), _cell(runs[t], "acc"), _cell(runs[t], "weighted_f1")] for t in plan["7"]]
        out["7"] = "Table 7: number of prompt tokens (OpenDAS). " + head + "\n\n" + \
            format_table(rows, ["K_v", "K_t", "# Params", "Acc", "W-F1"])
    return out


def write_outputs(results: dict, out_dir: str) -> Tuple[str, str]:
    tables = format_tables(results)
    results = dict(results, tables=tables)
    os.makedirs(out_dir, exist_ok=True)
    md_path, json_path = os.path.join(out_dir, "tables.md"), os.path.join(out_dir, "tables.json")
    with open(md_path, "w") as f:
        f.write("\n\n".join(tables[k] for k in sorted(tables)) + "\n")
    with open(json_path, "w") as f:
        json.dump(results, f, indent=1, sort_keys=True, default=float)
    return md_path, json_path


# ---------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default=None, metavar="CONFIG",
                   help="training config (YAML/JSON, opendas_encoder.train.config) giving data, model, schedule; "
                        "default: the generated world with its small CLIP")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="RUN",
                   help="runs of Tables 1 and 2 (eval/runspec.py syntax: NAME[:SETTING][@dotted.key=value]...; "
                        "NAME opendas, opendas-paper, opendas-default or a baseline)")
    p.add_argument("--seeds", type=int, default=3, help="runs per configuration (seeds 0..N-1)")
    p.add_argument("--tables", nargs="+", default=["1", "2"], choices=["1", "2", "5", "7"], help="tables to write")
    p.add_argument("--epochs", nargs=2, type=int, metavar=("STAGE1", "STAGE2"), default=None,
                   help="epochs of stage 1 and stage 2 (baselines: their sum, in one stage)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch size (overrides the config's)")
    p.add_argument("--model", default=None, help="open_clip model name (overrides the config's)")
    p.add_argument("--pretrained", default=None, help="pretrained tag or file ('' = random weights)")
    p.add_argument("--world-scenes", nargs=2, type=int, default=[160, 100], metavar=("TRAIN", "TEST"),
                   help="generated-world scenes for training and testing (without --dataset)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one value of --dataset's config (YAML syntax); repeat for more")
    p.add_argument("--device", default="auto", help="torch device; auto = cuda if available")
    p.add_argument("--out", default="runs/cls", help="folder for the runs and tables.md / tables.json")
    p.add_argument("--resume", action="store_true", help="continue interrupted runs from their last epoch")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.seeds < 1:
        raise SystemExit("--seeds must be >= 1")
    if args.dataset is not None and not os.path.isfile(args.dataset):
        raise SystemExit(f"config file not found: {args.dataset}")
    try:
        base = base_config(args)
        for m in args.methods:
            parse_spec(m)
    except ValueError as exc:  # the config's problems, each named (opendas_encoder.train.config)
        raise SystemExit(f"run_cls: error: {exc}") from None
    results = run_all(base, args.methods, args.tables, args.seeds, args.out, world=args.dataset is None,
                      progress=not args.quiet, resume=args.resume)
    md_path, json_path = write_outputs(results, args.out)
    with open(md_path) as f:
        print(f.read())
    print(f"tables: {md_path}, {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
