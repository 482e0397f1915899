"""eval/selection.py: the default-selection rule of docs/selection.md on hand-made suite results (hand-computed choices)."""

import json

import pytest

from eval import selection


def e(b, n, seeds=None):
    seeds = seeds if seeds is not None else [n, n]
    return {"base_f1": b, "novel_f1": n, "per_seed": [{"base_f1": b, "novel_f1": s} for s in seeds]}


def results(a1, b1, a2, b2):
    return {"cast": {"zeroshot": e(50, 40, [40, 40]), "vpt": e(80, 60), "maple": e(70, 65), "A": a1, "B": b1},
            "night": {"zeroshot": e(30, 30, [30, 30]), "vpt": e(60, 50), "maple": e(40, 20), "A": a2, "B": b2}}


def test_best_mean_novel_f1_among_those_meeting_every_constraint():
    # cast: best baseline B 80 (vpt), N 65 (maple); night: B 60, N 50 (vpt). Both meet everything;
    # mean N: A (66 + 51) / 2 = 58.5, B (70 + 52) / 2 = 61 -> B
    r = results(e(79.5, 66), e(85, 70), e(60, 51), e(59.5, 52))
    c = selection.choose(r, ["A", "B"], ["vpt", "maple"])
    assert c["chosen"] == "B" and c["rule"].startswith("meets")
    cast = next(row for row in c["rows"] if row["key"] == "A")["per_domain"]["cast"]
    assert (cast["best_base_f1"], cast["best_novel_f1"], cast["met"]) == (80, 65, True)


def test_within_half_a_point_of_novel_f1_the_higher_base_f1_wins():
    # mean N: A 58.5, B (66.2 + 51.3) / 2 = 58.75 (within 0.5); mean B: A (79.5 + 60) / 2 = 69.75,
    # B (79.2 + 59.5) / 2 = 69.35 -> A
    r = results(e(79.5, 66), e(79.2, 66.2), e(60, 51), e(59.5, 51.3))
    assert selection.choose(r, ["A", "B"], ["vpt", "maple"])["chosen"] == "A"
    # equal on both: the earlier candidate (the simpler one)
    r = results(e(80, 66), e(80, 66), e(60, 51), e(60, 51))
    assert selection.choose(r, ["B", "A"], ["vpt", "maple"])["chosen"] == "B"


def test_no_candidate_qualifies_the_smallest_total_shortfall_wins():
    # A: cast N seeds [66, 39] -> mean 52.5: N shortfall 65 - 52.5 = 12.5, one seed below zero-shot (40): 13.5
    # B: cast B 70: B shortfall 80 - 1 - 70 = 9; everything else met: 9 -> B
    r = results(e(80, 52.5, [66, 39]), e(70, 66), e(60, 51), e(60, 51))
    c = selection.choose(r, ["A", "B"], ["vpt", "maple"])
    assert c["chosen"] == "B" and c["rule"].startswith("no candidate")
    rows = {row["key"]: row for row in c["rows"]}
    assert rows["A"]["shortfall"] == pytest.approx(13.5) and rows["B"]["shortfall"] == pytest.approx(9.0)
    assert rows["A"]["per_domain"]["cast"]["seeds_below_zero_shot"] == 1


def test_cli_never_chooses_on_held_out_domains(tmp_path, capsys):
    r = results(e(79.5, 66), e(85, 70), e(60, 51), e(59.5, 52))  # B wins on the selection domains
    r["synonyms"] = {"zeroshot": e(50, 40), "vpt": e(60, 50), "A": e(90, 90), "B": e(10, 0, [0, 0])}
    path = tmp_path / "suite.json"
    path.write_text(json.dumps({"meta": {}, "results": r}))
    choice = selection.main([str(path), "--candidates", "A", "B", "--baselines", "vpt", "maple"])
    assert choice["chosen"] == "B"
    assert all("synonyms" not in row["per_domain"] for row in choice["rows"])
    out = capsys.readouterr().out
    assert "chosen: B" in out and "not chosen on: ['synonyms']" in out and "generated" in out


def test_every_candidate_written_in_the_rule_is_a_valid_suite_run():
    """docs/selection.md's candidates parse in the one run syntax and give valid suite configs with their options
    on; with @distill.weight the run is transductive, without it inductive."""
    import os
    import re

    from eval import run_suite

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "selection.md"), encoding="utf-8") as f:
        text = f.read()
    candidates = text.split("## Candidates", 1)[1].split("\n## ", 1)[0]  # the rule's table, not later results
    keys = re.findall(r"^\| `([^`]+)` \|", candidates, re.M)
    assert len(keys) == 5 and keys[0] == "opendas-default"
    for key in keys:
        for k in (key, key + "@distill.weight=1.0"):
            cfg = run_suite.suite_config("synonyms", run_suite.resolve_method(k), 0, run_suite.QUICK, "/tmp/unused", "cpu")
            assert cfg.transductive == ("distill" in k)
            assert (cfg.consistency.text_target == "descriptions") == ("descriptions" in key)
            assert (cfg.prompts.get("lowrank_rank") == 2) == ("lowrank_rank" in key)


def test_gap_to_the_best_baseline_is_the_per_seed_f1_difference_with_an_interval_around_it():
    """The interval's point is the mean over seeds of F1(candidate) - F1(best baseline by the metric's mean),
    F1 computed here by scikit-learn from the same predictions (the paper's B-F1 / N-F1: weighted F1 over the
    segments whose truth is a base / novel class, predictions over the whole vocabulary)."""
    import numpy as np
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    labels, base, novel = ["a", "b", "c", "d"], ["a", "b"], ["c", "d"]
    seeds, per_seed = [], {k: [] for k in ("A", "vpt", "maple", "zeroshot")}
    for _ in range(3):
        truth = list(rng.choice(labels, 200))
        preds = {k: [t if rng.random() < q else str(rng.choice(labels)) for t in truth]
                 for k, q in (("A", 0.8), ("vpt", 0.7), ("maple", 0.5), ("zeroshot", 0.4))}
        seeds.append({"y_true": truth, "y_pred": preds, "labels": labels, "base": base, "novel": novel})
        for k, y in preds.items():
            t, p = np.asarray(truth), np.asarray(y)
            per_seed[k].append({m: 100 * f1_score(t[np.isin(t, cls)], p[np.isin(t, cls)], labels=labels,
                                                  average="weighted", zero_division=0)
                                for m, cls in (("base_f1", base), ("novel_f1", novel))})
    results = {"cast": {k: {m: float(np.mean([r[m] for r in rows])) for m in ("base_f1", "novel_f1")} | {
        "per_seed": rows} for k, rows in per_seed.items()}}
    gaps = selection.baseline_gap_intervals(results, {"cast": seeds}, "A", ["vpt", "maple"])["cast"]
    for metric in ("base_f1", "novel_f1"):
        g = gaps[metric]
        assert g["baseline"] == "vpt"  # the better baseline by construction (70 % vs 50 % right)
        want = np.mean([a[metric] - b[metric] for a, b in zip(per_seed["A"], per_seed["vpt"])])
        assert g["mean"] == pytest.approx(want, abs=1e-9)
        assert g["low"] <= g["mean"] <= g["high"] and g["half_width"] == pytest.approx((g["high"] - g["low"]) / 2)
        assert g["n"] == 600
