"""eval/run_cls.py end to end on the generated world (tiny model, 1 + 1 epochs)."""

import json

import pytest
import yaml

from eval import run_cls


TINY = ["--model", "opendas-tiny-vit", "--pretrained", "", "--world-scenes", "5", "5", "--epochs", "1", "1",
        "--device", "cpu", "--quiet"]


def test_tables_1_and_2_for_every_method_on_the_generated_world(tmp_path, capsys):
    methods = ["opendas", "cocoop", "vpt", "rpo", "maple", "wiseft-text", "wiseft-visual"]
    out = tmp_path / "cls"
    assert run_cls.main(["--methods", *methods, "--seeds", "2", "--out", str(out)] + TINY) == 0
    printed = capsys.readouterr().out
    assert "Table 1" in printed and "Table 2" in printed and "not a real dataset" in printed
    results = json.loads((out / "tables.json").read_text())
    assert results["plan"]["main"] == methods and results["seeds"] == 2
    counts = {t: r["params"] for t, r in results["runs"].items()}
    assert counts["opendas"] == 8 * 2 * 64 + 4 * 2 * 64  # K_v x layers x width + K_t x layers x width
    assert counts["vpt"] == 32 * 2 * 64 and counts["rpo"] == 24 * (64 + 64)
    assert counts["maple"] == 2 * (2 * 64 + 64 * 64 + 64) and counts["cocoop"] == 4 * 64 + (32 * 2 + 2) + (2 * 64 + 64)
    for tag, run in results["runs"].items():
        assert len(run["per_seed"]) == 2 and run["seconds_per_iter"] > 0, tag
        assert 0.0 <= run["acc"] <= 100.0 and run["acc_std"] >= 0.0
        assert run["acc"] == pytest.approx(sum(r["acc"] for r in run["per_seed"]) / 2)
    table1 = (out / "tables.md").read_text().split("Table 2")[0]
    assert table1.count("\n| ") == 2 + len(methods)  # header + "No adaptation" + one row per method
    assert "| MaPLe " in table1 and "±" in table1 and "time/iter" in table1
    zs = results["zero_shot"]
    vpt = results["runs"]["vpt"]
    assert f"{vpt['novel_f1']:.1f} ± {vpt['novel_f1_std']:.1f} ({vpt['novel_f1'] - zs['novel_f1']:+.1f})" in \
        results["tables"]["2"]
    for m in methods:  # every run left a loadable checkpoint with its method name
        meta = json.loads((out / m / "seed1" / "final" / "opendas_config.json").read_text())
        assert meta["method"] == m


def test_tables_5_and_7_share_identical_runs(tmp_path):
    out = tmp_path / "abl"
    assert run_cls.main(["--methods", "opendas", "--tables", "5", "7", "--seeds", "1", "--out", str(out)] + TINY) == 0
    results = json.loads((out / "tables.json").read_text())
    assert results["plan"]["5"] == ["lambda0", "lambda2", "lambda5", "lambda10"]
    assert len(results["plan"]["7"]) == 6
    assert results["runs"]["kv8_kt4"]["trained_as"] == "lambda5"  # same configuration, trained once
    assert not (out / "kv8_kt4").exists() and (out / "kv12_kt12" / "seed0" / "final").is_dir()
    assert results["runs"]["kv12_kt12"]["params"] == 12 * 2 * 64 + 12 * 2 * 64
    assert results["runs"]["lambda0"]["lambda_end"] == 0.0
    md = (out / "tables.md").read_text()
    assert "Table 5" in md and "Table 7" in md and "| 10 " in md and "Table 1" not in md


def test_config_file_dataset_and_errors(tmp_path):
    cfg = {"name": "world-from-config", "model": {"name": "opendas-tiny-vit", "pretrained": None},
           "data": {"train": {"name": "generated-world", "split": "train", "options": {"n_scenes": 4, "seed": 0}},
                    "test": {"name": "generated-world", "split": "test", "options": {"n_scenes": 4, "seed": 1}}},
           "schedule": {"stage1_epochs": 1, "stage2_epochs": 0, "warmup_epochs": 0}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "cfg"
    assert run_cls.main(["--dataset", str(path), "--methods", "vpt", "--seeds", "1", "--out", str(out),
                         "--device", "cpu", "--quiet", "--set", "schedule.batch_size=8"]) == 0
    results = json.loads((out / "tables.json").read_text())
    assert results["dataset"] == "world-from-config" and results["runs"]["vpt"]["per_seed"]
    with pytest.raises(SystemExit, match="config file not found"):
        run_cls.main(["--dataset", str(tmp_path / "missing.yaml")])
