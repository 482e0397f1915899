"""The default-selection rule of issue 24 (docs/selection.md), executable: choose among candidates on suite results.

``python eval/selection.py SUITE_JSON... --candidates KEY... [--baselines KEY...]`` prints the constraints
per candidate and domain and the choice. Held-out domains in the files are never chosen on (listed
apart). Everything it reads is measured on **generated** data.

Rule (docs/selection.md): with ``best_B[d]`` / ``best_N[d]`` the best baseline's B-F1 / N-F1 on domain d
(per metric), a candidate meets the constraints on d when ``B >= best_B - 1``, ``N >= best_N`` (means over
seeds) and ``N >= zero-shot N`` on every seed. Among candidates meeting all constraints on all selection
domains: the highest mean N-F1; within 0.5 of it, the higher mean B-F1; then the earlier candidate in the
given order (the simpler one: list prompt-only candidates first). Otherwise the smallest total shortfall
``sum_d max(0, best_B - 1 - B) + max(0, best_N - N) + (seeds with N below zero-shot)``, ties as above.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

#: The baselines of the issue's goal (eval/runspec.py keys).
BASELINES = ("cocoop", "vpt", "rpo", "maple", "wiseft-text", "wiseft-visual", "cliplora", "promptsrc")
B_TOLERANCE = 1.0
N_TIE = 0.5


def _seeds(entry: dict, metric: str) -> np.ndarray:
    return np.asarray([r[metric] for r in entry["per_seed"]], dtype=float)


def constraints(results: Dict[str, Dict[str, dict]], key: str, baselines: Sequence[str]) -> Dict[str, dict]:
    """Per domain: best baseline B-F1 / N-F1, the candidate's means, its shortfalls and whether each constraint holds."""
    out = {}
    for domain, rows in results.items():
        present = [b for b in baselines if b in rows]
        if not present:
            raise ValueError(f"domain {domain!r}: no baseline results (expected some of {list(baselines)})")
        best_b = max(rows[b]["base_f1"] for b in present)
        best_n = max(rows[b]["novel_f1"] for b in present)
        c = rows[key]
        below_zs = int((_seeds(c, "novel_f1") < _seeds(rows["zeroshot"], "novel_f1")).sum())
        b_short = max(0.0, best_b - B_TOLERANCE - c["base_f1"])
        n_short = max(0.0, best_n - c["novel_f1"])
        out[domain] = {"best_base_f1": best_b, "best_novel_f1": best_n, "base_f1": c["base_f1"],
                       "novel_f1": c["novel_f1"], "b_shortfall": b_short, "n_shortfall": n_short,
                       "seeds_below_zero_shot": below_zs, "met": b_short == 0.0 and n_short == 0.0 and below_zs == 0}
    return out


def choose(results: Dict[str, Dict[str, dict]], candidates: Sequence[str],
           baselines: Sequence[str] = BASELINES) -> dict:
    """The rule on ``results`` ({domain: {key: suite entry}}, selection domains only) -> {chosen, rule, rows}."""
    rows = []
    for order, key in enumerate(candidates):
        per_domain = constraints(results, key, baselines)
        rows.append({"key": key, "order": order, "per_domain": per_domain,
                     "qualifies": all(d["met"] for d in per_domain.values()),
                     "shortfall": sum(d["b_shortfall"] + d["n_shortfall"] + d["seeds_below_zero_shot"]
                                      for d in per_domain.values()),
                     "mean_novel_f1": float(np.mean([d["novel_f1"] for d in per_domain.values()])),
                     "mean_base_f1": float(np.mean([d["base_f1"] for d in per_domain.values()]))})

    def tie_break(pool: List[dict]) -> dict:
        top = max(r["mean_novel_f1"] for r in pool)
        near = [r for r in pool if r["mean_novel_f1"] >= top - N_TIE]
        best_b = max(r["mean_base_f1"] for r in near)
        return min((r for r in near if r["mean_base_f1"] == best_b), key=lambda r: r["order"])

    qualified = [r for r in rows if r["qualifies"]]
    if qualified:
        chosen, how = tie_break(qualified), "meets every constraint on every selection domain; best mean N-F1"
    else:
        least = min(r["shortfall"] for r in rows)
        chosen = tie_break([r for r in rows if r["shortfall"] == least])
        how = "no candidate meets every constraint: smallest total shortfall"
    return {"chosen": chosen["key"], "rule": how, "rows": rows}


def format_choice(choice: dict) -> str:
    lines = [f"chosen: {choice['chosen']} ({choice['rule']}; generated data)", "",
             "| candidate | domain | B-F1 (best baseline - 1) | N-F1 (best baseline) | seeds N < zero-shot | met |",
             "|---|---|---|---|---|---|"]
    for r in choice["rows"]:
        for d, c in r["per_domain"].items():
            lines.append(f"| {r['key']} | `{d}` | {c['base_f1']:.1f} ({c['best_base_f1'] - B_TOLERANCE:.1f}) | "
                         f"{c['novel_f1']:.1f} ({c['best_novel_f1']:.1f}) | {c['seeds_below_zero_shot']} | "
                         f"{'yes' if c['met'] else 'no'} |")
    return "\n".join(lines)


def baseline_gap_intervals(results: Dict[str, Dict[str, dict]], predictions: Dict[str, List[dict]], key: str,
                           baselines: Sequence[str] = BASELINES) -> Dict[str, Dict[str, dict]]:
    """Per domain and metric (B-F1, N-F1): ``key`` minus the best baseline by that metric's mean, with the paired
    95 % bootstrap interval over the test segments pooled over seeds (the issue's precision check: the
    interval within ±3 points). predictions: suite.json's ``predictions`` ({domain: [per seed: y_true,
    y_pred {key: [...]}, labels, base, novel]}); a domain without them is left out."""
    from opendas_encoder.metrics.intervals import paired_segment_bootstrap

    out: Dict[str, Dict[str, dict]] = {}
    for domain, rows in results.items():
        seeds = predictions.get(domain) or []
        present = [b for b in baselines if b in rows]
        if not seeds or not present or key not in rows:
            continue
        out[domain] = {}
        against: Dict[str, Dict[str, dict]] = {}  # baseline -> every metric's interval (one bootstrap each)
        for metric in ("base_f1", "novel_f1"):
            best = max(present, key=lambda b: rows[b][metric])
            if best not in against:
                groups = [(s["y_true"], s["y_pred"][key], s["y_pred"][best]) for s in seeds]
                against[best] = paired_segment_bootstrap(groups, seeds[0]["labels"], seeds[0]["base"],
                                                         seeds[0]["novel"])
            diff = against[best][metric]
            out[domain][metric] = dict(diff, baseline=best, half_width=(diff["high"] - diff["low"]) / 2.0)
    return out


def format_gaps(key: str, gaps: Dict[str, Dict[str, dict]]) -> str:
    lines = [f"{key} minus the best baseline (per metric), 95 % paired bootstrap over test segments (generated data)",
             "", "| domain | metric | best baseline | difference [95 % interval] | half-width <= 3 |",
             "|---|---|---|---|---|"]
    for domain, by_metric in gaps.items():
        for metric, g in by_metric.items():
            lines.append(f"| `{domain}` | {'B-F1' if metric == 'base_f1' else 'N-F1'} | {g['baseline']} | "
                         f"{g['mean']:+.1f} [{g['low']:+.1f}, {g['high']:+.1f}] | "
                         f"{'yes' if g['half_width'] <= 3.0 else 'no'} ({g['half_width']:.1f}) |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> dict:
    from opendas_encoder.generated.world.domains import held_out_domain_names

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+", help="suite.json files (eval/run_suite.py)")
    p.add_argument("--candidates", nargs="+", required=True, help="suite keys, simplest first (the last tie-break)")
    p.add_argument("--baselines", nargs="+", default=list(BASELINES))
    p.add_argument("--intervals", metavar="KEY", help="also print KEY minus the best baseline per domain with its "
                   "paired bootstrap interval over test segments (every domain in the files, held-out ones too)")
    args = p.parse_args(argv)
    results: Dict[str, Dict[str, dict]] = {}
    predictions: Dict[str, List[dict]] = {}
    for path in args.files:
        with open(path) as f:
            suite = json.load(f)
        for domain, rows in suite["results"].items():
            results.setdefault(domain, {}).update(rows)
        for domain, seeds in (suite.get("predictions") or {}).items():
            if domain not in predictions:
                predictions[domain] = seeds
            else:  # several files on one domain: the same test segments per seed, more methods' predictions
                for mine, theirs in zip(predictions[domain], seeds):
                    if mine["y_true"] != theirs["y_true"]:
                        raise SystemExit(f"{path}: domain {domain!r} was tested on other segments than an "
                                         "earlier file's; intervals need the same test scenes")
                    mine["y_pred"].update(theirs["y_pred"])
    held = [d for d in results if d in held_out_domain_names()]
    chosen_on = {d: rows for d, rows in results.items() if d not in held}
    choice = choose(chosen_on, args.candidates, args.baselines)
    print(format_choice(choice))
    if held:
        print(f"\nheld-out domains in the files, not chosen on: {held}")
    if args.intervals:
        choice["intervals"] = baseline_gap_intervals(results, predictions, args.intervals, args.baselines)
        print("\n" + format_gaps(args.intervals, choice["intervals"]))
    return choice


if __name__ == "__main__":
    main()
