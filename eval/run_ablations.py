"""Ablations of OpenDAS's training options over the generated domain suite, and the choice of the default.

Every variant is an ``eval/run_suite.py`` key (the paper's OpenDAS, ``opendas-paper``, with config
overrides after ``@``), run through the normal training engine on the generated domains x seeds.
``run`` trains variants and writes their suite JSON; ``report`` merges suite JSON files into the
ablation table (per option and value, per domain B-F1 / N-F1 mean ± std over seeds) and applies the
rule that chooses the library default (issue 14 §4):

    among the variants whose B-F1 is within ``--b-tolerance`` (1) point of the best variant's on every
    domain and whose N-F1 is >= zero-shot CLIP's on every domain and seed, the best mean N-F1 over
    the suite. If none qualifies, the variant with the smallest total shortfall (B-F1 points below
    "best - tolerance", summed over domains, plus N-F1 points below zero-shot, summed over domain-seeds)
    is reported as the closest; ties by mean N-F1.

Everything is measured on **generated** data (docs/domains.md).

    python eval/run_ablations.py run --quick --group sweep --out runs/ablations/sweep
    python eval/run_ablations.py report runs/ablations/sweep/suite.json --out docs/ablations_table.md
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

from eval import run_suite  # noqa: E402
from eval.runspec import parse_spec  # noqa: E402


P = "opendas-paper"
#: the paper's method with the bias-corrected EMA of the prompts (decay 0.9 per step): the sweep's closest
#: variant, the base of the combinations
EMA = f"{P}@averaging.mode=ema@averaging.ema_decay=0.9"
#: name -> (option group, suite key). One option changed from the paper's method per variant ("sweep"),
#: then combinations ("combo").
VARIANTS: Dict[str, tuple] = {
    "paper": ("paper", P),
    # text_deep_init
    "carry": ("text_deep_init", f"{P}@prompts.text_deep_init=carry"),
    # consistency toward the frozen CLIP (PromptSRC weights: text 25, image 10, logits 1; L1)
    "cons-text25": ("consistency", f"{P}@consistency.text=25"),
    "cons-image10": ("consistency", f"{P}@consistency.image=10"),
    "cons-kl1": ("consistency", f"{P}@consistency.logits=1"),
    "cons-src": ("consistency", f"{P}@consistency.text=25@consistency.image=10@consistency.logits=1"),
    "cons-src-cos": ("consistency", f"{P}@consistency.text=25@consistency.image=10@consistency.logits=1"
                                    "@consistency.distance=cosine"),
    "cons-image2": ("consistency", f"{P}@consistency.image=2"),
    "cons-kl0.2": ("consistency", f"{P}@consistency.logits=0.2"),
    # prompt averaging
    "ema0.9": ("averaging", EMA),
    "gpa": ("averaging", f"{P}@averaging.mode=gaussian"),
    # triplet term
    "lambda0": ("triplet", f"{P}@triplet.lambda_end=0"),
    "lambda5-const": ("triplet", f"{P}@triplet.lambda_start=5"),
    "margin0.1": ("triplet", f"{P}@triplet.margin=0.1"),
    "margin0.5": ("triplet", f"{P}@triplet.margin=0.5"),
    "cos-margin0.2": ("triplet", f"{P}@triplet.distance=cosine@triplet.margin=0.2"),
    "cos-margin0.5": ("triplet", f"{P}@triplet.distance=cosine@triplet.margin=0.5"),
    # prompt depth (the world CLIP has 4 + 4 layers)
    "vstart2": ("depth", f"{P}@prompts.visual_start=2"),
    "tstart2": ("depth", f"{P}@prompts.text_start=2"),
    "vstart2-tstart2": ("depth", f"{P}@prompts.visual_start=2@prompts.text_start=2"),
}
#: combinations of the sweep's closest variants (chosen after the sweep: docs/ablations.md)
COMBOS: Dict[str, tuple] = {
    "ema-image10": ("combo", f"{EMA}@consistency.image=10"),
    "ema-text25": ("combo", f"{EMA}@consistency.text=25"),
    "ema-text10": ("combo", f"{EMA}@consistency.text=10"),
    "ema-image10-text10": ("combo", f"{EMA}@consistency.image=10@consistency.text=10"),
    "ema0.95": ("combo", f"{P}@averaging.mode=ema@averaging.ema_decay=0.95"),
}
GROUPS = {"sweep": list(VARIANTS), "combo": list(COMBOS)}
VARIANTS.update(COMBOS)


def variant_keys(names: Sequence[str]) -> List[str]:
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    keys = [VARIANTS[n][1] for n in names]
    for key in keys:  # the one run syntax of eval/runspec.py (run_suite parses them again)
        parse_spec(key)
    return keys


# ---------------------------------------------------------------------------------------------- merge
def load_results(paths: Sequence[str]) -> dict:
    """Merge suite.json files: {domain: {key: entry}}; the zero-shot rows must agree (same seeds, scenes)."""
    merged: Dict[str, Dict[str, dict]] = {}
    meta = None
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        meta = meta or data["meta"]
        for domain, rows in data["results"].items():
            into = merged.setdefault(domain, {})
            for key, entry in rows.items():
                if key == "zeroshot" and key in into:
                    a = [r["novel_f1"] for r in into[key]["per_seed"]]
                    b = [r["novel_f1"] for r in entry["per_seed"]]
                    if not np.allclose(a, b):
                        raise SystemExit(f"{path}: zero-shot rows differ on {domain} (other sizes or seeds?)")
                into[key] = entry
    return {"meta": meta, "results": merged}


def _per_seed(entry: dict, metric: str) -> np.ndarray:
    return np.asarray([r[metric] for r in entry["per_seed"]], dtype=float)


def choose_default(results: Dict[str, Dict[str, dict]], candidates: Sequence[str], b_tolerance: float = 1.0) -> dict:
    """Apply the default-selection rule (module docstring) to ``candidates`` (suite keys)."""
    domains = list(results)
    best_b = {d: max(results[d][k]["base_f1"] for k in candidates) for d in domains}
    rows = []
    for key in candidates:
        b_short = sum(max(0.0, best_b[d] - b_tolerance - results[d][key]["base_f1"]) for d in domains)
        n_short = sum(float(np.clip(_per_seed(results[d]["zeroshot"], "novel_f1") -
                                    _per_seed(results[d][key], "novel_f1"), 0, None).sum()) for d in domains)
        mean_n = float(np.mean([results[d][key]["novel_f1"] for d in domains]))
        mean_b = float(np.mean([results[d][key]["base_f1"] for d in domains]))
        rows.append({"key": key, "b_shortfall": b_short, "n_shortfall": n_short, "mean_novel_f1": mean_n,
                     "mean_base_f1": mean_b, "qualifies": b_short == 0.0 and n_short == 0.0})
    qualified = [r for r in rows if r["qualifies"]]
    if qualified:
        chosen = max(qualified, key=lambda r: r["mean_novel_f1"])
        how = "best mean N-F1 among the variants that meet both constraints"
    else:
        chosen = min(rows, key=lambda r: (r["b_shortfall"] + r["n_shortfall"], -r["mean_novel_f1"]))
        how = ("no variant meets both constraints; closest: smallest total shortfall (B-F1 points below best - "
               f"{b_tolerance:g} summed over domains + N-F1 points below zero-shot summed over domain-seeds)")
    return {"chosen": chosen["key"], "rule": how, "best_base_f1": best_b, "rows": rows}


def name_of(key: str) -> str:
    for name, (_, k) in VARIANTS.items():
        if k == key:
            return name
    return run_suite.DISPLAY.get(key, key)


def format_ablation_table(results: Dict[str, Dict[str, dict]], keys: Sequence[str]) -> str:
    """Markdown: one row per variant (option group, value), per domain B-F1 / N-F1 mean ± std."""
    from opendas_encoder.plots import format_table

    domains = list(results)
    group = {k: g for g, k in VARIANTS.values()}
    rows = []
    for key in ["zeroshot"] + [k for k in keys if k != "zeroshot"]:
        cells = [group.get(key, "-" if key == "zeroshot" else "baseline"), name_of(key)]
        for d in domains:
            r = results[d].get(key)
            cells.append("-" if r is None else f"{r['base_f1']:.1f} ± {r['base_f1_std']:.1f}")
            cells.append("-" if r is None else f"{r['novel_f1']:.1f} ± {r['novel_f1_std']:.1f}")
        present = [results[d][key] for d in domains if key in results[d]]
        cells.append(f"{np.mean([r['base_f1'] for r in present]):.1f}")
        cells.append(f"{np.mean([r['novel_f1'] for r in present]):.1f}")
        rows.append(cells)
    headers = ["option", "variant"] + [f"{d} {m}" for d in domains for m in ("B-F1", "N-F1")] + ["mean B", "mean N"]
    return format_table(rows, headers)


def format_choice(choice: dict) -> str:
    from opendas_encoder.plots import format_table

    rows = [[name_of(r["key"]), f"{r['mean_base_f1']:.1f}", f"{r['mean_novel_f1']:.1f}", f"{r['b_shortfall']:.1f}",
             f"{r['n_shortfall']:.1f}", "yes" if r["qualifies"] else "no"]
            for r in sorted(choice["rows"], key=lambda r: (r["b_shortfall"] + r["n_shortfall"], -r["mean_novel_f1"]))]
    best = ", ".join(f"{d} {v:.1f}" for d, v in choice["best_base_f1"].items())
    return (f"best B-F1 per domain: {best}\n\n" +
            format_table(rows, ["variant", "mean B-F1", "mean N-F1", "B shortfall", "N shortfall", "qualifies"]) +
            f"\n\nchosen: **{name_of(choice['chosen'])}** ({choice['rule']})\n")


# ---------------------------------------------------------------------------------------------- CLI
def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train variants over the suite (writes OUT/suite.json)")
    r.add_argument("--variants", nargs="+", default=None, help=f"names (default: the group); known: {list(VARIANTS)}")
    r.add_argument("--group", default="sweep", choices=sorted(GROUPS))
    r.add_argument("--domains", nargs="+", default=None)
    r.add_argument("--seeds", type=int, default=3)
    r.add_argument("--quick", action="store_true")
    r.add_argument("--out", required=True)
    r.add_argument("--device", default="auto")
    t = sub.add_parser("report", help="merge suite JSON files, print the ablation table and the chosen default")
    t.add_argument("files", nargs="+")
    t.add_argument("--candidates", nargs="+", default=None, help="variant names the rule chooses among "
                   "(default: every OpenDAS key in the files)")
    t.add_argument("--b-tolerance", type=float, default=1.0)
    t.add_argument("--out", default=None, help="also write the markdown here")
    args = p.parse_args(argv)
    if args.command == "run":
        names = args.variants or GROUPS[args.group]
        argv_suite = ["--methods", "zeroshot", *variant_keys(names), "--seeds", str(args.seeds), "--out", args.out,
                      "--device", args.device] + (["--quick"] if args.quick else []) + \
            (["--domains", *args.domains] if args.domains else [])
        run_suite.main(argv_suite)
        return
    data = load_results(args.files)
    results = data["results"]
    keys = list(dict.fromkeys(k for rows in results.values() for k in rows if k != "zeroshot"))
    candidates = variant_keys(args.candidates) if args.candidates else [k for k in keys if k.startswith("opendas")]
    choice = choose_default(results, candidates, args.b_tolerance)
    text = format_ablation_table(results, keys) + "\n\n" + format_choice(choice)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
