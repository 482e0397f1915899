"""`opendas demo` end to end on a small generated world with the shipped CLIP (CI-sized)."""

import json

from opendas_encoder.cli import main


def test_demo_prints_the_labelled_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--seeds", "1", "--scene-scale", "0.05", "--epochs", "1,1", "--out", str(out),
                 "--json", str(tmp_path / "demo.json"), "--device", "cpu", "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "generated world" in text and "not a real dataset" in text
    assert "zero-shot CLIP" in text and "| opendas " in text and "| opendas-paper" in text
    # the legend explains the variants in the table and no other (opendas-carry was not run)
    assert "opendas-paper: the paper's method exactly" in text and "opendas-carry" not in text
    result = json.loads((tmp_path / "demo.json").read_text())
    for key in ("zero_shot", "opendas", "opendas-paper"):
        assert set(result[key]) >= {"acc", "weighted_f1", "base_f1", "novel_f1"}
    assert result["seconds"] > 0 and result["world"] == "generated world"
    assert (out / "opendas" / "seed0" / "final" / "prompts.safetensors").exists()
    assert (out / "opendas" / "seed0" / "tsne_text_embeddings.png").exists()


def test_demo_runs_a_named_domain_with_its_vocabulary(tmp_path, capsys):
    from opendas_encoder.generated.world.domains import get_domain

    code = main(["demo", "--domain", "frames", "--seeds", "1", "--scene-scale", "0.05", "--epochs", "1,1",
                 "--variants", "opendas", "--out", str(tmp_path / "demo"), "--json", str(tmp_path / "d.json"),
                 "--device", "cpu", "--quiet"])
    assert code == 0
    assert "domain 'frames'" in capsys.readouterr().out
    result = json.loads((tmp_path / "d.json").read_text())
    words = get_domain("frames").vocabulary()
    assert result["domain"] == "frames"
    assert result["vocabulary"]["base"] == len(words["base"]) and result["vocabulary"]["test"] == len(words["test"])
    assert (tmp_path / "demo" / "frames" / "opendas" / "seed0" / "final").is_dir()


def test_demo_refuses_an_unknown_domain_before_any_work(tmp_path, capsys):
    assert main(["demo", "--domain", "mars", "--out", str(tmp_path / "d"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "mars" in err and "frames" in err and not (tmp_path / "d").exists()


def test_demo_shows_overall_progress_over_its_variant_by_seed_runs(tmp_path, capsys):
    """Issue 25.17f: one bar counts the demo's runs (variants x seeds), here 2 variants x 2 seeds = 4."""
    from opendas_encoder.demo import DemoOptions, run_demo

    opts = DemoOptions(seeds=2, train_scenes=4, test_scenes=4, stage1_epochs=1, stage2_epochs=0, device="cpu",
                       variants=("opendas", "opendas-paper"), out_dir=str(tmp_path / "demo"), progress=True)
    summary = run_demo(opts)
    err = capsys.readouterr().err
    assert "demo runs (variant x seed)" in err and "4/4" in err and "opendas-paper seed 1" in err
    assert len(summary["per_seed"]["opendas-paper"]) == 2
