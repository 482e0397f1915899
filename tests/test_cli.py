"""CLI end to end: `opendas train` from a YAML config, `opendas eval`, negatives tools."""

import json

import yaml

from opendas_encoder.cli import main
from opendas_encoder.negatives import APPENDIX_C_INSTRUCTION


def write_config(tmp_path, **extra):
    cfg = {
        "name": "cli-test", "seed": 0,
        "model": {"name": "opendas-tiny-vit", "pretrained": None},
        "prompts": {"visual_tokens": 2, "text_tokens": 4},
        "data": {"train": {"name": "generated-world", "split": "train", "options": {"n_scenes": 6, "seed": 0}},
                 "test": {"name": "generated-world", "split": "test", "options": {"n_scenes": 6, "seed": 1}},
                 "negatives": "negatives.json"},
        "schedule": {"batch_size": 16, "stage1_epochs": 1, "stage2_epochs": 1},
        "runtime": {"device": "cpu"},
        "output_dir": str(tmp_path / "run"),
    }
    cfg.update(extra)
    from opendas_encoder.generated.world import world_negatives

    (tmp_path / "negatives.json").write_text(json.dumps(world_negatives()))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_then_eval_from_the_command_line(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main(["train", str(config), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "zero-shot CLIP" in out and "| opendas" in out and "negative queries" in out
    run = tmp_path / "run"
    for name in ("results.json", "report.md", "train_log.jsonl", "loss_curves.png", "confusion_adapted.png",
                 "tsne_text_embeddings.png", "final/prompts.safetensors", "final/opendas_config.json"):
        assert (run / name).exists(), name
    results = json.loads((run / "results.json").read_text())
    assert set(results["adapted"]) >= {"acc", "weighted_f1", "base_f1", "novel_f1"}
    assert results["negatives"]["queries"] > 0
    meta = json.loads((run / "final" / "opendas_config.json").read_text())["metadata"]
    assert meta["completed"] and meta["base_classes"]

    # the exported checkpoint evaluates on another split; base classes come from its metadata
    from opendas_encoder.core.checkpoint import read_checkpoint_config
    assert read_checkpoint_config(str(run / "final"))["model_name"] == "opendas-tiny-vit"
    code = main(["eval", "--checkpoint", str(run / "final"), "--dataset", "generated-world", "--split", "test",
                 "--option", "n_scenes=4", "seed=9", "--no-zero-shot", "--json", str(tmp_path / "e.json"), "--quiet"])
    assert code == 0
    ev = json.loads((tmp_path / "e.json").read_text())
    assert ev["adapted"]["n"] > 0 and ev["adapted"]["n_novel"] > 0


def test_resume_flag_continues_a_finished_run_without_retraining(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main(["train", str(config), "--quiet", "--no-plots"]) == 0
    n_lines = len((tmp_path / "run" / "train_log.jsonl").read_text().splitlines())
    assert main(["train", str(config), "--quiet", "--no-plots", "--resume"]) == 0
    assert len((tmp_path / "run" / "train_log.jsonl").read_text().splitlines()) == n_lines


def test_bad_config_key_gives_clear_error(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("schedule: {lr: 0.1, epochz: 3}\n")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "epochz" in err


def test_negatives_validate_prompt_and_mine(tmp_path, capsys):
    good = {"door": ["door frame", "gate", "hatch", "panel", "shutter"]}
    bad = {"door": ["door", "gate", "gate"]}
    (tmp_path / "good.json").write_text(json.dumps(good))
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert main(["negatives", "validate", str(tmp_path / "good.json")]) == 0
    assert main(["negatives", "validate", str(tmp_path / "bad.json")]) == 1
    out = capsys.readouterr().out
    assert "3 negatives, expected 5" in out and "equals the class itself" in out and "duplicate" in out
    (tmp_path / "classes.txt").write_text("door\nroad\n")
    assert main(["negatives", "prompt", "--classes", str(tmp_path / "classes.txt")]) == 0
    assert APPENDIX_C_INSTRUCTION in capsys.readouterr().out
    (tmp_path / "cands.txt").write_text("\n".join(["door", "door frame", "gate", "sidewalk", "curb", "lane",
                                                   "window", "wall", "floor"]))
    (tmp_path / "novel.txt").write_text("window\n")
    assert main(["negatives", "mine", "--classes", str(tmp_path / "classes.txt"), "--candidates",
                 str(tmp_path / "cands.txt"), "--exclude", str(tmp_path / "novel.txt"), "--model",
                 "opendas-tiny-vit", "--pretrained", "", "--out", str(tmp_path / "mined.json")]) == 0
    mined = json.loads((tmp_path / "mined.json").read_text())
    assert set(mined) == {"door", "road"}
    for cls, negs in mined.items():
        assert len(negs) == 5 and cls not in negs and "window" not in negs and len(set(negs)) == 5
