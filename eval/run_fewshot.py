"""Few-shot learning curves: B-F1 and N-F1 against K labelled segments per base class (generated domains).

Every point is one run of the normal training engine (``opendas_encoder.train.pipeline.run_experiment``,
as ``opendas train`` and ``eval/run_cls.py``) with ``data.shots: K``: K usable training segments per
base class, sampled per class with the run's seed, so every method trained at a seed sees the same
K-shot set (``opendas_encoder.train.shots``; each run folder holds its ``shots.json``). K runs over
1, 2, 4, 8, 16 and ``all`` (every training segment) and each (domain, K, method) over seeds 0..N-1.

Data: per domain and seed s, the training split is ``generated-world`` with ``--world-scenes`` TRAIN
scenes (default 48) and seed s, the test split TEST scenes (default 30) with seed 1000 + s (new scenes
for every seed, as ``opendas demo`` and ``eval/run_suite.py``; the scenes the library default was
selected on, so its curve is not held-out); the model is the world's small CLIP.
Every number is measured on **generated** data (procedurally generated domains, not real datasets).
Domains: every domain of ``opendas_encoder.generated.world.domains`` (cast, frames, night, siblings).

Methods (``--methods``, the one run syntax of ``eval/runspec.py``): ``opendas`` (the library default,
``preset: default``), ``opendas-paper`` (the paper's method exactly, ``preset: paper``; where both
resolve to the same training it runs once and is reported under both names), and the baselines with
their papers' options (``vpt``, ``cocoop``, ``rpo``, ``maple``, ``cliplora``, ``promptsrc``, ...). A
variant is ``[TAG=]NAME[:SETTING][@dotted.key=value]...`` with dotted training-config keys (values in
YAML), e.g. ``opendas-carry=opendas@prompts.text_deep_init=carry``. Zero-shot CLIP ("a photo of a
{}.") is always measured (once per domain and seed: it does not depend on K). OpenDAS trains in two
stages with the negative queries; the baselines in one stage (``one-stage-ce``) for stage1 + stage2
epochs without negatives, as in Table 2.

Epochs: ``all`` trains the configured stage epochs (default 3 + 3, the suite's quick schedule). A
K-shot set of K x C segments (C base classes) has few steps per epoch, so each stage trains
``max(epochs, ceil(min_steps / ceil(K * C / batch)))`` epochs (default min_steps 10; CoOp likewise
trains few-shot sets for more epochs).

CPU threads: on a CPU shared with other jobs use one thread (``OMP_NUM_THREADS=1`` or ``--threads 1``);
measured here with the two cores busy, a training step of the world CLIP took ~4.8 s with two threads
and ~0.1 s with one.

Writes into ``--out``: ``fewshot.json`` (per domain, K, method: per-seed metrics, mean ± sample std
(ddof=1); zero-shot; the smallest K), ``fewshot.md`` (B-F1 and N-F1 tables, mean ± sample std per K and method), ``fewshot.png``
(B-F1 and N-F1 against K, one line per method). The smallest K at which an OpenDAS variant beats
zero-shot CLIP on B-F1 by ``--gain`` (10) points without losing N-F1 (means over seeds of the paired
differences to zero-shot at the same seed) is printed and stored. Runs whose ``results.json`` exists
with the same ``config.json`` are not trained again (resumable: rerun the command).

Examples::

    OMP_NUM_THREADS=1 python eval/run_fewshot.py                 # K in {1,2,4,8,16,all}, 3 seeds, every domain
    python eval/run_fewshot.py --quick                           # 1 seed, K in {1,4,all}, tiny sizes: smoke test
    python eval/run_fewshot.py --methods opendas vpt cocoop 'opendas-carry=opendas@prompts.text_deep_init=carry'
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from eval import run_suite  # noqa: E402  (the suite's sizes and data preparation)
from eval.runspec import DISPLAY as SPEC_DISPLAY  # noqa: E402  (names, options, dedup: one place)
from eval.runspec import RunSpec, parse_spec, training_key  # noqa: E402
from opendas_encoder.plots import format_table, metric_cell  # noqa: E402
from opendas_encoder.train.config import (DataConfig, DatasetSpec, ModelSpec, RuntimeConfig,  # noqa: E402
                                          ScheduleConfig, TrainConfig, warmup_that_fits)
from opendas_encoder.generated.world.domains import GENERATED_LABEL as GENERATED  # noqa: E402
from opendas_encoder.generated.world.domains import domain_names, evaluation_seed, get_domain  # noqa: E402
from opendas_encoder.train.pipeline import (METRIC_KEYS, ExperimentData, build_model, mean_std,  # noqa: E402
                                            run_experiment)

Shot = Union[int, str]
SHOTS = (1, 2, 4, 8, 16, "all")
QUICK_SHOTS = (1, 4, "all")
DEFAULT_METHODS = ("opendas", "opendas-paper", "vpt", "cocoop")
#: report names (eval/runspec.py's); the curves' base preset is the default, so plain ``opendas`` is it
DISPLAY = dict(SPEC_DISPLAY, opendas="OpenDAS (default)")


@dataclass(frozen=True)
class Sizes(run_suite.Sizes):
    """The suite's sizes (scenes per split, stage epochs for K = all, batch size) and the few-shot step floor
    per stage."""

    min_steps: int = 100


#: full: 48 / 30 scenes per split (~280 training segments, ~20 per base class; ~180 test segments), 3 + 3 epochs
#: for 'all' (the suite's quick schedule), >= 10 steps per stage for K shots: sized for 4 domains x 3 seeds x
#: 6 K x (OpenDAS, VPT, CoCoOp) = 216 trainings on one shared CPU core (time measured: README);
#: quick: a smoke test (1 seed, K in QUICK_SHOTS, tiny scenes and schedule)
FULL = Sizes(48, 30, 3, 3, 16, 10)
QUICK = Sizes(24, 16, 2, 2, 16, 6)


# ---------------------------------------------------------------------------------------------- domains
def domain_data(domain: str, seed: int, sizes: Sizes, shots: Shot = "all") -> DataConfig:
    def split(name: str, n: int, s: int) -> DatasetSpec:
        options = {"n_scenes": n, "seed": s, "domain": domain}
        return DatasetSpec(name="generated-world", split=name, options=options)

    return DataConfig(train=split("train", sizes.train_scenes, seed),
                      test=split("test", sizes.test_scenes, evaluation_seed(seed)), shots=shots)


# ---------------------------------------------------------------------------------------------- methods
def resolve_method(text: str) -> RunSpec:
    """A curve (``eval/runspec.py`` syntax: ``[TAG=]NAME[:SETTING][@dotted.key=value]...``) -> RunSpec;
    ValueError naming the known names. Zero-shot CLIP is always measured, so it is no curve."""
    spec = parse_spec(text)
    if not spec.trained:
        raise ValueError("zeroshot is always measured (the reference of every curve); leave it out of --methods")
    return spec


def stage_epochs(shots: Shot, n_classes: int, sizes: Sizes) -> Tuple[int, int]:
    """Epochs of the two stages: the configured ones for ``all``; for K shots at least ``min_steps`` steps
    per stage with K x ``n_classes`` segments (a stage configured with 0 epochs stays off)."""
    s1, s2 = sizes.stage1_epochs, sizes.stage2_epochs
    if shots == "all":
        return s1, s2
    steps_per_epoch = math.ceil(int(shots) * n_classes / sizes.batch_size)
    floor = math.ceil(sizes.min_steps / steps_per_epoch)
    return (max(s1, floor) if s1 else 0), (max(s2, floor) if s2 else 0)


def run_config(spec: RunSpec, domain: str, seed: int, shots: Shot, sizes: Sizes, n_classes: int, out_dir: str,
               model: ModelSpec, device: str) -> TrainConfig:
    """The training config of one point of one curve (validated: overrides included): the curve's spec over
    the base config of the point (``preset: default``, the domain's K-shot data, the stage epochs for K)."""
    s1, s2 = stage_epochs(shots, n_classes, sizes)
    base = TrainConfig(name=f"{GENERATED} domain {domain}: {spec.key}, {shots} shots, seed {seed}", seed=seed,
                       preset="default", model=model, data=domain_data(domain, seed, sizes, shots),
                       schedule=ScheduleConfig(batch_size=sizes.batch_size, stage1_epochs=s1, stage2_epochs=s2,
                                               warmup_epochs=warmup_that_fits(s1, s2)),
                       runtime=RuntimeConfig(device=device),
                       output_dir=os.path.join(out_dir, domain, f"K{shots}", spec.tag, f"seed{seed}"))
    try:
        return spec.config(base)
    except ValueError as exc:
        raise ValueError(f"method {spec.key!r} ({domain}, {shots} shots): {exc}") from None


# ---------------------------------------------------------------------------------------------- plan
@dataclass
class Run:
    domain: str
    seed: int
    shots: Shot
    spec: RunSpec
    config: TrainConfig
    trained_as: Optional[str] = None  # key of the identical run trained instead (same domain, seed, K)


def plan_runs(specs: Sequence[RunSpec], domains: Sequence[str], shots: Sequence[Shot], seeds: int, sizes: Sizes,
              out_dir: str, model: ModelSpec, device: str) -> List[Run]:
    """Every (domain, seed, K, method) point, validated; identical trainings are planned once."""
    runs = []
    for domain in domains:
        n_classes = len(get_domain(domain).vocabulary()["base"])
        for seed in range(seeds):
            for k in shots:
                first: Dict[str, str] = {}
                for spec in specs:
                    config = run_config(spec, domain, seed, k, sizes, n_classes, out_dir, model, device)
                    key = training_key(config)
                    runs.append(Run(domain, seed, k, spec, config, trained_as=first.get(key)))
                    first.setdefault(key, spec.key)
    return runs


# ---------------------------------------------------------------------------------------------- running
def finished_result(config: TrainConfig) -> Optional[dict]:
    """The run's ``results.json`` if it finished with exactly this config (resume), else None."""
    results, saved = (os.path.join(config.output_dir, f) for f in ("results.json", "config.json"))
    if not (os.path.isfile(results) and os.path.isfile(saved)):
        return None
    with open(saved) as f:
        if json.load(f) != json.loads(json.dumps(config.to_dict(), sort_keys=True, default=float)):
            return None
    with open(results) as f:
        res = json.load(f)
    return res if "adapted" in res else None


class DomainSeed:
    """Data and zero-shot CLIP of one (domain, seed), prepared when first needed (a resumed run may not)."""

    def __init__(self, domain: str, seed: int, sizes: Sizes, out_dir: str, model: ModelSpec, device: str,
                 progress: bool):
        self.domain, self.seed, self.sizes, self.model, self.device = domain, seed, sizes, model, device
        self.dir = os.path.join(out_dir, domain, f"seed{seed}")
        self.progress = progress
        self._data: Optional[Tuple[ExperimentData, ExperimentData]] = None
        self._probe = None

    def _config(self) -> TrainConfig:
        return TrainConfig(name=f"{GENERATED} domain {self.domain} seed {self.seed}", seed=self.seed, model=self.model,
                           data=domain_data(self.domain, self.seed, self.sizes),
                           runtime=RuntimeConfig(device=self.device), output_dir=self.dir)

    def data(self) -> Tuple[ExperimentData, ExperimentData]:
        """(with negative queries: OpenDAS, without: the baselines); crops cached under ``<dir>/segments``."""
        if self._data is None:
            self._probe, data, plain = run_suite.prepare_domain_seed(self._config(), self.domain, self.progress)
            self._data = (data, plain)
        return self._data

    def zero_shot(self) -> dict:
        """Zero-shot CLIP on this seed's test scenes (``<dir>/zero_shot.json``; read back when it exists)."""
        path = os.path.join(self.dir, "zero_shot.json")
        config = self._config()
        identity = {"model": config.model.model_dump(), "test": config.data.test.model_dump()}
        if os.path.isfile(path):
            with open(path) as f:
                saved = json.load(f)
            if saved.get("identity") == json.loads(json.dumps(identity)):
                return saved["metrics"]
        from opendas_encoder.train.evaluate import evaluate, zero_shot_encoder
        from opendas_encoder.train.trainer import resolve_device

        data, _ = self.data()
        result = evaluate(zero_shot_encoder(self._probe), data.test, data.vocab, resolve_device(self.device),
                          config.runtime.eval_batch_size, progress=False)
        metrics = {k: float(result.metrics[k]) for k in METRIC_KEYS}
        os.makedirs(self.dir, exist_ok=True)
        with open(path, "w") as f:
            json.dump({"identity": identity, "metrics": metrics}, f, indent=1)
        return metrics


def execute(runs: Sequence[Run], sizes: Sizes, out_dir: str, model: ModelSpec, device: str,
            progress: bool = True) -> Tuple[Dict[tuple, dict], Dict[tuple, dict], dict]:
    """Train every planned run not finished yet; ({(domain, seed, K, key): adapted metrics},
    {(domain, seed): zero-shot metrics}, counts of trained / resumed runs)."""
    from tqdm import tqdm

    contexts: Dict[tuple, DomainSeed] = {}
    trained: Dict[tuple, dict] = {}
    counts = {"trained": 0, "resumed": 0, "shared": 0}
    todo = [r for r in runs if r.trained_as is None]
    bar = tqdm(todo, desc="few-shot runs", unit="run", disable=not progress)
    for run in bar:
        ctx = contexts.setdefault((run.domain, run.seed), DomainSeed(run.domain, run.seed, sizes, out_dir, model,
                                                                     device, progress=False))
        bar.set_postfix_str(f"{run.domain} K={run.shots} {run.spec.key} seed {run.seed}")
        res = finished_result(run.config)
        if res is not None:
            counts["resumed"] += 1
        else:
            stale = os.path.join(run.config.output_dir, "results.json")
            if os.path.exists(stale):  # another config's results: never read as this run's
                os.remove(stale)
            data, plain = ctx.data()
            with warnings.catch_warnings():  # short classes: in results.json / shots.json and fewshot.json
                warnings.filterwarnings("ignore", message=".*fewer than .* usable training segments")
                res = run_experiment(run.config, progress=False, plots=False, model=build_model(run.config),
                                     data=data if run.config.method == "opendas" else plain, zero_shot=False)
            counts["trained"] += 1
        trained[(run.domain, run.seed, run.shots, run.spec.key)] = dict(
            {k: float(res["adapted"][k]) for k in METRIC_KEYS}, seconds=float(res["seconds"]),
            segments=int(res["shots"]["segments"]) if "shots" in res else None,
            short_classes=res["shots"]["short_classes"] if "shots" in res else {})
    bar.close()
    adapted = {}
    for run in runs:
        source = run.trained_as or run.spec.key
        adapted[(run.domain, run.seed, run.shots, run.spec.key)] = trained[(run.domain, run.seed, run.shots, source)]
        counts["shared"] += run.trained_as is not None
    zero_shot = {}
    for domain, seed in dict.fromkeys((r.domain, r.seed) for r in runs):
        ctx = contexts.get((domain, seed)) or DomainSeed(domain, seed, sizes, out_dir, model, device, progress=False)
        zero_shot[(domain, seed)] = ctx.zero_shot()
    return adapted, zero_shot, counts


# ---------------------------------------------------------------------------------------------- results
def _stats(per_seed: List[dict]) -> dict:
    out = {"per_seed": per_seed}
    for k in METRIC_KEYS:
        out[k], out[k + "_std"] = mean_std([r[k] for r in per_seed])
    for k in ("segments", "seconds"):  # training segments (None: all) and run seconds, mean over seeds
        if all(r.get(k) is not None for r in per_seed):
            out[k] = float(np.mean([r[k] for r in per_seed]))
    return out


def smallest_k(curve: Dict[str, dict], zero_shot: List[dict], shots: Sequence[Shot], gain: float = 10.0) -> dict:
    """The first K (in ``shots`` order) whose mean paired B-F1 gain over zero-shot is >= ``gain`` points and
    whose mean paired N-F1 change is >= 0; ``{"k": K or None, "by_k": {K: (dB, dN, holds)}}``."""
    by_k = {}
    found = None
    for k in shots:
        point = curve.get(str(k))
        if point is None:
            continue
        pairs = list(zip(point["per_seed"], zero_shot))
        d_base = float(np.mean([p["base_f1"] - z["base_f1"] for p, z in pairs]))
        d_novel = float(np.mean([p["novel_f1"] - z["novel_f1"] for p, z in pairs]))
        holds = d_base >= gain and d_novel >= 0.0
        by_k[str(k)] = {"base_f1_gain": d_base, "novel_f1_change": d_novel, "holds": holds}
        if holds and found is None:
            found = k
    return {"k": found, "by_k": by_k}


def aggregate(runs: Sequence[Run], adapted: Dict[tuple, dict], zero_shot: Dict[tuple, dict], shots: Sequence[Shot],
              seeds: int, gain: float) -> dict:
    """{"domains": {domain: {"zero_shot": stats, "curves": {key: {K: stats}}, "smallest_k": {key: ...}}},
    "smallest_k_every_domain": {key: K or None}}."""
    keys = list(dict.fromkeys(r.spec.key for r in runs))
    methods = {r.spec.key: r.spec.method for r in runs}
    out: Dict[str, dict] = {}
    for domain in dict.fromkeys(r.domain for r in runs):
        zs = [zero_shot[(domain, s)] for s in range(seeds)]
        curves = {key: {str(k): _stats([adapted[(domain, s, k, key)] for s in range(seeds)]) for k in shots}
                  for key in keys}
        short = {f"K={k} seed {s}": adapted[(domain, s, k, keys[0])]["short_classes"] for k in shots
                 for s in range(seeds) if adapted[(domain, s, k, keys[0])]["short_classes"]}
        out[domain] = {"zero_shot": _stats(zs), "curves": curves, "short_classes": short,
                       "trained_as": {r.spec.key: r.trained_as for r in runs if r.domain == domain and r.trained_as},
                       "smallest_k": {key: smallest_k(curves[key], zs, shots, gain) for key in keys
                                      if methods[key] == "opendas"}}
    every = {}
    for key in (k for k in keys if methods[k] == "opendas"):
        every[key] = next((k for k in shots if all(d["smallest_k"][key]["by_k"][str(k)]["holds"]
                                                   for d in out.values())), None)
    return {"domains": out, "smallest_k_every_domain": every}


def _k_label(k: Shot) -> str:
    return "all" if k == "all" else f"K={k}"


def format_markdown(result: dict) -> str:
    meta, shots = result["meta"], result["meta"]["shots"]
    head = (f"{GENERATED} data (procedurally generated domains, not real datasets); model {meta['model']['name']}; "
            f"mean ± sample std (ddof=1) over {meta['seeds']} seeds; K = labelled training segments per base class "
            "(the same "
            f"K-shot set for every method at a seed); 'all' = every training segment ({meta['sizes']['train_scenes']}"
            f" scenes), {meta['sizes']['stage1_epochs']} + {meta['sizes']['stage2_epochs']} epochs; K shots: at least "
            f"{meta['sizes']['min_steps']} steps per stage")
    parts = []
    for domain, d in result["domains"].items():
        for metric, name in (("base_f1", "B-F1"), ("novel_f1", "N-F1")):
            zs = d["zero_shot"]
            rows = [["zero-shot CLIP"] + [metric_cell(zs[metric], None, zs[metric + "_std"])] * len(shots)]
            for key, curve in d["curves"].items():
                label = DISPLAY.get(key, key) + (f" (= {d['trained_as'][key]})" if key in d["trained_as"] else "")
                rows.append([label] + [metric_cell(curve[str(k)][metric], zs[metric], curve[str(k)][metric + "_std"])
                                       for k in shots])
            parts.append(f"**{name}**, domain `{domain}` ({GENERATED}); in brackets the change against zero-shot "
                         "CLIP\n\n" + format_table(rows, ["method"] + [_k_label(k) for k in shots]))
        lines = [f"- {DISPLAY.get(key, key)}: " + (f"K = {v['k']}" if v["k"] is not None else "no K")
                 for key, v in d["smallest_k"].items()]
        if d["short_classes"]:
            parts.append("K-shot sets where base classes had fewer than K usable segments (they kept all of theirs): "
                         + "; ".join(f"{where}: {', '.join(f'{c} ({n})' for c, n in sorted(cls.items()))}"
                                     for where, cls in d["short_classes"].items()))
        parts.append(f"Smallest K at which OpenDAS beats zero-shot CLIP on B-F1 by {meta['gain']:g} points without "
                     f"losing N-F1 (domain `{domain}`, means of the paired differences over seeds):\n\n"
                     + "\n".join(lines))
    notes = [f"Wall time {meta['seconds'] / 60:.1f} min ({meta['counts']['trained']} runs trained, "
             f"{meta['counts']['resumed']} read back, {meta['counts']['shared']} identical to another row)."]
    if result["trained_as"]:
        notes.append("A row marked (= X) is the same training as X: " + result["trained_as"])
    return f"Few-shot learning curves. {head}.\n\n" + "\n\n".join(parts) + "\n\n" + " ".join(notes) + "\n"


def plot_curves(result: dict, path: str) -> str:
    """B-F1 and N-F1 against K (one row per domain, one line per method; zero-shot CLIP dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shots, domains = result["meta"]["shots"], list(result["domains"])
    x = np.arange(len(shots))
    fig, axes = plt.subplots(len(domains), 2, figsize=(11, 3.6 * len(domains)), squeeze=False)
    for row, domain in enumerate(domains):
        d = result["domains"][domain]
        for col, (metric, name) in enumerate((("base_f1", "B-F1"), ("novel_f1", "N-F1"))):
            ax = axes[row][col]
            zs = d["zero_shot"]
            ax.axhline(zs[metric], color="black", linestyle="--", label="zero-shot CLIP")
            for key, curve in d["curves"].items():
                if key in d["trained_as"]:
                    continue  # the same numbers as the row it equals (named in that row's label)
                same = [DISPLAY.get(k2, k2) for k2, src in d["trained_as"].items() if src == key]
                means = [curve[str(k)][metric] for k in shots]
                stds = [curve[str(k)][metric + "_std"] for k in shots]
                ax.errorbar(x, means, yerr=stds, marker="o", capsize=3,
                            label=" = ".join([DISPLAY.get(key, key)] + same))
            ax.set_xticks(x, [str(k) for k in shots])
            ax.set_xlabel("K (labelled segments per base class)")
            ax.set_ylabel(f"{name} (%)")
            ax.set_title(f"{name}, {GENERATED} domain '{domain}'")
            ax.grid(alpha=0.3)
        axes[row][0].legend(fontsize=8)
    fig.suptitle(f"Few-shot learning curves on {GENERATED} data (not real datasets), "
                 f"mean ± sample std (ddof=1) over {result['meta']['seeds']} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- CLI
def parse_shot(text: str) -> Shot:
    if text == "all":
        return "all"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1 or str(value) != text.strip():
        raise argparse.ArgumentTypeError(f"K must be a positive integer or 'all', got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="METHOD",
                   help="curves to train (eval/runspec.py syntax): opendas, opendas-paper, a baseline (vpt, cocoop, "
                        "...) or [TAG=]NAME[:SETTING][@dotted.key=value]... (zero-shot CLIP is always measured)")
    p.add_argument("--domains", nargs="+", default=None, help=f"generated domains (default: all: {domain_names()})")
    p.add_argument("--shots", nargs="+", type=parse_shot, default=None, metavar="K",
                   help=f"K values (positive integers and/or all); default {' '.join(map(str, SHOTS))}, "
                        f"--quick {' '.join(map(str, QUICK_SHOTS))}")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds 0..N-1 per point (default 3, the issue's minimum; --quick: 1)")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke test: 1 seed, K in {QUICK_SHOTS}, {QUICK.train_scenes}/{QUICK.test_scenes} scenes, "
                        f"{QUICK.stage1_epochs} + {QUICK.stage2_epochs} epochs, >= {QUICK.min_steps} steps per stage")
    p.add_argument("--world-scenes", nargs=2, type=int, default=None, metavar=("TRAIN", "TEST"),
                   help=f"scenes per split (default {FULL.train_scenes} {FULL.test_scenes})")
    p.add_argument("--epochs", nargs=2, type=int, default=None, metavar=("STAGE1", "STAGE2"),
                   help=f"stage epochs for K = all (default {FULL.stage1_epochs} {FULL.stage2_epochs})")
    p.add_argument("--min-steps", type=int, default=None,
                   help=f"K-shot runs train at least this many steps per stage (default {FULL.min_steps})")
    p.add_argument("--batch-size", type=int, default=None, help=f"training batch size (default {FULL.batch_size})")
    p.add_argument("--gain", type=float, default=10.0, help="B-F1 points over zero-shot for the smallest-K criterion")
    p.add_argument("--model", default=None, help="open_clip model name (default: the world's small CLIP)")
    p.add_argument("--pretrained", default=None, help="pretrained tag or file ('' = random weights)")
    p.add_argument("--device", default="auto", help="torch device; auto = cuda if available")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; see OMP_NUM_THREADS)")
    p.add_argument("--out", default="runs/fewshot", help="folder for the runs and fewshot.json / .md / .png")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[List[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    base = QUICK if args.quick else FULL
    sizes = Sizes(*(args.world_scenes or (base.train_scenes, base.test_scenes)),
                  *(args.epochs or (base.stage1_epochs, base.stage2_epochs)),
                  args.batch_size or base.batch_size, base.min_steps if args.min_steps is None else args.min_steps)
    shots = list(dict.fromkeys(args.shots or (QUICK_SHOTS if args.quick else SHOTS)))
    shots.sort(key=lambda k: math.inf if k == "all" else k)
    args.seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    if args.seeds < 1:
        raise SystemExit("run_fewshot: error: --seeds must be >= 1")
    if min(sizes.train_scenes, sizes.test_scenes) < 1 or min(sizes.stage1_epochs, sizes.stage2_epochs) < 0 or \
            sizes.batch_size < 1 or sizes.min_steps < 1:
        raise SystemExit("run_fewshot: error: scenes, batch size and --min-steps must be >= 1, epochs >= 0")
    known = domain_names()
    domains = list(dict.fromkeys(args.domains or known))
    unknown = [d for d in domains if d not in known]
    if unknown:
        raise SystemExit(f"run_fewshot: error: unknown domain(s) {unknown}; known: {known}")
    from opendas_encoder.generated.world import WORLD_MODEL_NAME, WORLD_PRETRAINED

    model = ModelSpec(name=args.model or WORLD_MODEL_NAME,
                      pretrained=WORLD_PRETRAINED if args.pretrained is None else (args.pretrained or None))
    try:  # every config of the plan is validated before any data is rendered or any model trained
        specs = [resolve_method(m) for m in dict.fromkeys(args.methods)]
        if len({s.key for s in specs}) != len(specs):
            raise ValueError(f"two methods share a tag: {[s.key for s in specs]}")
        runs = plan_runs(specs, domains, shots, args.seeds, sizes, args.out, model, args.device)
    except ValueError as exc:
        raise SystemExit(f"run_fewshot: error: {exc}") from None
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from opendas_encoder.train.trainer import flush_denormal

    t0 = time.perf_counter()
    with flush_denormal():
        adapted, zero_shot, counts = execute(runs, sizes, args.out, model, args.device, progress=not args.quiet)
    seconds = time.perf_counter() - t0
    result = aggregate(runs, adapted, zero_shot, shots, args.seeds, args.gain)
    result["meta"] = {"label": f"{GENERATED} (procedurally generated domains, not real datasets)",
                      "domains": domains, "shots": shots, "seeds": args.seeds, "methods": [s.key for s in specs],
                      "method_specs": {s.key: {"method": s.method, "setting": s.setting, "preset": s.preset,
                                               "overrides": {k: json.loads(v) for k, v in s.overrides}}
                                       for s in specs},
                      "sizes": sizes.__dict__, "quick": args.quick, "gain": args.gain,
                      "model": model.model_dump(), "device": args.device, "seconds": seconds, "counts": counts,
                      "argv": sys.argv[1:] if argv is None else list(argv)}
    shared = {r.spec.key for r in runs if r.trained_as}
    result["trained_as"] = "" if not shared else (
        "the same configuration, trained once (e.g. the library default where it equals the paper's preset).")
    os.makedirs(args.out, exist_ok=True)
    json_path, md_path, png_path = (os.path.join(args.out, f"fewshot.{e}") for e in ("json", "md", "png"))
    result["plot"] = plot_curves(result, png_path)
    markdown = format_markdown(result)
    with open(md_path, "w") as f:
        f.write(markdown)
    with open(json_path, "w") as f:
        json.dump(result, f, indent=1, default=float)
    print(markdown)
    for key, k in result["smallest_k_every_domain"].items():
        print(f"smallest K ({DISPLAY.get(key, key)}, every domain): {k if k is not None else 'none'} "
              f"(B-F1 >= zero-shot + {args.gain:g}, N-F1 >= zero-shot)")
    print(f"wall time {seconds:.0f} s; results: {json_path}, {md_path}, {png_path}")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
