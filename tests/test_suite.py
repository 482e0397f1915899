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
def test_tiny_suite_end_to_end(tmp_path):
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

