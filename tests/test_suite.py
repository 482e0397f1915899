"""eval/run_suite.py: method keys, a tiny suite end to end (its interval: tests/test_intervals.py)."""

import os

import numpy as np
import pytest

from eval import run_suite


def test_method_keys_resolve_to_training_runs():
    s = run_suite
    assert s.resolve_method("zeroshot").method == "zeroshot"
    paper = s.resolve_method("opendas-paper")
    assert (paper.method, paper.setting) == ("opendas", "two-stage")
    stage1 = s.resolve_method("opendas-carry:visual-only")
    assert (stage1.method, stage1.setting) == ("opendas", "visual-only")
    assert '"text_deep_init": "carry"' in stage1.prompts
    vpt = s.resolve_method("vpt")
    assert (vpt.method, vpt.setting) == ("vpt", "one-stage-ce") and '"n_tokens"' in vpt.options
    for key in s.DEFAULT_METHODS:
        s.resolve_method(key)
    with pytest.raises(ValueError, match="unknown method 'nope'.*opendas-paper"):
        s.resolve_method("nope")
    with pytest.raises(ValueError, match="unknown setting"):
        s.resolve_method("opendas-paper:sideways")
    with pytest.raises(SystemExit, match="unknown generated domain"):
        s.main(["--domains", "nope"])


@pytest.mark.slow
def test_tiny_suite_end_to_end(tmp_path, monkeypatch):
    s = run_suite
    import opendas_encoder as oe
    from opendas_encoder.generated.world import WORLD_MODEL_NAME, WORLD_PRETRAINED
    from opendas_encoder.generated.world.domains import build_domain, get_domain
    from opendas_encoder.generated.world.zero_shot import target_zero_shot_report

    sizes = s.Sizes(train_scenes=4, test_scenes=3, stage1_epochs=1, stage2_epochs=1)
    out = s.run_suite(["zeroshot", "opendas-paper", "opendas-default", "vpt"], ["frames"], seeds=2, sizes=sizes,
                      out_dir=str(tmp_path))
    rows = out["results"]["frames"]
    assert list(rows) == ["zeroshot", "opendas-paper", "opendas-default", "vpt"]
    for key, r in rows.items():
        assert len(r["per_seed"]) == 2
        for k in ("acc", "weighted_f1", "base_f1", "novel_f1"):
            assert 0.0 <= r[k] <= 100.0
            assert r[k] == pytest.approx(np.mean([p[k] for p in r["per_seed"]]))
        if key != "zeroshot":
            for k in ("acc", "weighted_f1", "base_f1", "novel_f1"):  # the bootstrap's point: the table's difference
                diff = r["diff"][k]
                assert diff["mean"] == pytest.approx(r[k] - rows["zeroshot"][k], abs=1e-9)
                assert diff["low"] <= diff["mean"] <= diff["high"] and diff["unit"] == "segment"
            assert r["diff"]["acc"]["n"] == sum(p["n"] for p in r["per_seed"])  # segments pooled over seeds
    # the suite's zero-shot row is zero-shot CLIP as the world's own report measures it (open_clip directly)
    enc = oe.create_encoder("zeroshot", WORLD_MODEL_NAME, WORLD_PRETRAINED)
    v = get_domain("frames").vocabulary()
    for seed in range(2):
        ds = build_domain("frames", 3, 1000 + seed, "test")
        ref = target_zero_shot_report(enc.clip, enc.preprocess, enc.tokenizer, ds, v["base"], v["novel"])
        assert rows["zeroshot"]["per_seed"][seed]["acc"] == pytest.approx(ref["accuracy"], abs=1e-6)
    table = out["table"]
    assert "generated" in table and "`frames`" in table and "OpenDAS (paper)" in table and "VPT" in table
    assert os.path.isfile(os.path.join(tmp_path, "frames", "vpt", "seed1", "results.json"))

    # --resume reads every finished run back (no training: fit is never called) and gives the same table
    from opendas_encoder.train import pipeline

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(pipeline, "fit", no_training)
    again = s.run_suite(["zeroshot", "opendas-paper", "opendas-default", "vpt"], ["frames"], seeds=2, sizes=sizes,
                        out_dir=str(tmp_path), resume=True)
    def rows_of(t):
        return [ln for ln in t.splitlines() if ln.startswith("|")]

    assert rows_of(again["table"]) == rows_of(table) and again["predictions"] == out["predictions"]


def test_distillation_runs_are_transductive_and_get_their_own_rows():
    """A run with @distill.weight>0 distils on the domain's test scenes (read without labels): its config is
    transductive, its unlabelled split is the test split, and the table puts it after a marker row, never
    among the inductive rows."""
    s = run_suite
    run = s.resolve_method("opendas-default@distill.weight=1.0")
    cfg = s.suite_config("frames", run, 2, s.QUICK, "/tmp/unused", "cpu")
    assert cfg.transductive and cfg.distill.unlabelled == cfg.data.test
    assert not s.suite_config("frames", s.resolve_method("opendas-default"), 2, s.QUICK, "/tmp/unused", "cpu").transductive
    row = {k: 50.0 for k in s.METRIC_KEYS} | {k + "_std": 1.0 for k in s.METRIC_KEYS}
    keys = ["zeroshot", run.key, "vpt"]
    summary = {"frames": {k: dict(row) for k in keys}}
    meta = {"model": "m", "seeds": 1, "sizes": s.QUICK.__dict__, "quick": True, "seconds": 1.0,
            "runs": {run.key: {"transductive": True}, "vpt": {"transductive": False}}}
    lines = [ln for ln in s.format_suite(summary, meta).splitlines() if ln.startswith("|")]
    names = [ln.split("|")[1].strip() for ln in lines[2:]]
    marker = next(i for i, n in enumerate(names) if "transductive" in n and "unlabelled" in n)
    assert names[marker + 1].endswith("(transductive)") and marker == len(names) - 2
    assert not any("transductive" in n for n in names[:marker])


def test_ablations_run_and_choose_on_the_selection_domains_only(monkeypatch, tmp_path):
    """docs/selection.md: the default is chosen on cast, frames, night, siblings; the held-out domains (distant,
    synonyms) never feed the choice, even when a suite file holds them."""
    import json

    from eval import run_ablations

    seen = {}
    monkeypatch.setattr(run_ablations.run_suite, "main", lambda argv: seen.setdefault("argv", argv))
    run_ablations.main(["run", "--variants", "paper", "--out", str(tmp_path / "x")])
    argv = seen["argv"]
    domains = argv[argv.index("--domains") + 1:]
    domains = domains[:next((i for i, a in enumerate(domains) if a.startswith("--")), len(domains))]
    assert sorted(domains) == ["cast", "frames", "night", "siblings"]

    def entry(b, n):
        return {"base_f1": b, "novel_f1": n, "per_seed": [{"base_f1": b, "novel_f1": n}]}

    # on the selection domain opendas-paper wins; on the held-out one opendas-default would win by far
    results = {"cast": {"zeroshot": entry(50, 40), "opendas-paper": entry(80, 60), "opendas-default": entry(80, 50)},
               "synonyms": {"zeroshot": entry(50, 40), "opendas-paper": entry(60, 10), "opendas-default": entry(90, 90)}}
    path = tmp_path / "suite.json"
    path.write_text(json.dumps({"meta": {}, "results": results}))
    got = {}
    real = run_ablations.choose_default

    def spy(res, candidates, tol):
        got["domains"] = sorted(res)
        got["choice"] = real(res, candidates, tol)
        return got["choice"]

    monkeypatch.setattr(run_ablations, "choose_default", spy)
    try:
        run_ablations.main(["report", str(path)])
    except KeyError:  # the table formatter wants the suite's full entries (std, W-F1); the choice came before it
        pass
    assert got["domains"] == ["cast"]
    assert got["choice"]["chosen"] == "opendas-paper"
    # without the filter the held-out domain would have decided: opendas-default there, by far
    assert real(results, ["opendas-paper", "opendas-default"], 1.0)["chosen"] == "opendas-default"
