"""CLI end to end: `opendas train` from a YAML config, `opendas eval`, negatives tools."""

import json

import pytest
import yaml

from opendas_encoder.cli import main
from opendas_encoder.negatives import APPENDIX_C_INSTRUCTION


def tiny_base_weights(tmp_path) -> str:
    """Random weights of ``opendas-tiny-vit`` (seed 0) in a file: a base ``opendas eval`` can rebuild."""
    import open_clip
    import torch
    from conftest import save_weights

    path = tmp_path / "tiny_base.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        save_weights(open_clip.create_model("opendas-tiny-vit"), path)
    return str(path)


def write_config(tmp_path, **extra):
    """A tiny OpenDAS run on the generated world (1 + 1 epochs without warm-up, CPU); ``extra`` replaces
    top-level keys."""
    cfg = {
        "name": "cli-test", "seed": 0,
        "model": {"name": "opendas-tiny-vit", "pretrained": tiny_base_weights(tmp_path)},
        "prompts": {"visual_tokens": 2, "text_tokens": 4},
        "data": {"train": {"name": "generated-world", "split": "train", "options": {"n_scenes": 6, "seed": 0}},
                 "test": {"name": "generated-world", "split": "test", "options": {"n_scenes": 6, "seed": 1}},
                 "negatives": "negatives.json"},
        "schedule": {"batch_size": 16, "stage1_epochs": 1, "stage2_epochs": 1, "warmup_epochs": 0},
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


# ------------------------------------------------------------------------------ issue 13 items 4, 5, 11, 14, 16
def _capture_run(monkeypatch):
    """Replace the pipeline's run_experiment with a recorder (cmd_train then prints the report it wrote)."""
    seen = {}

    def fake_run(config, **kw):
        import os

        seen["config"] = config
        os.makedirs(config.output_dir, exist_ok=True)
        with open(os.path.join(config.output_dir, "report.md"), "w") as f:
            f.write("report\n")
        return {"checkpoint": "none"}

    monkeypatch.setattr("opendas_encoder.train.pipeline.run_experiment", fake_run)
    return seen


def test_set_overrides_do_not_swallow_the_config_path(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path)
    seen = _capture_run(monkeypatch)
    assert main(["train", "--set", "schedule.lr=0.01", "--set", "seed=3", str(config), "--quiet"]) == 0
    assert seen["config"].schedule.lr == 0.01 and seen["config"].seed == 3
    with pytest.raises(SystemExit):  # a value without '=' is refused by the parser, not taken as a path
        main(["train", str(config), "--set", "schedule.lr"])
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_a_bad_config_value_is_refused_before_any_data_is_read(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path, schedule={"warmup_lr": "1e-5x", "batch_size": 16})

    def no_data(*a, **k):
        raise AssertionError("a dataset was built before the config was validated")

    monkeypatch.setattr("opendas_encoder.train.pipeline.build_dataset", no_data)
    assert main(["train", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(config) in err and "schedule.warmup_lr" in err and "'1e-5x'" in err


def test_a_baseline_trains_with_its_default_setting(tmp_path, capsys):
    # before issue 13.16: the default two-stage setting failed in stage 2 (no text parameters) after data prep
    config = write_config(tmp_path, method="vpt", prompts={}, method_options={"n_tokens": 2},
                          schedule={"batch_size": 16, "stage1_epochs": 1, "stage2_epochs": 1, "warmup_epochs": 0})
    assert main(["train", str(config), "--quiet", "--no-plots"]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["method"] == "vpt" and results["setting"] == "one-stage-ce" and "adapted" in results


def test_demo_epochs_take_one_number_or_two_and_refuse_the_rest(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr("opendas_encoder.demo.main_demo", lambda opts, json_path=None: seen.append(opts))
    assert main(["demo", "--epochs", "5"]) == 0
    assert main(["demo", "--epochs", "3,2"]) == 0
    assert [(o.stage1_epochs, o.stage2_epochs) for o in seen] == [(5, 5), (3, 2)]
    for bad in ("5,", "a,b", "1,2,3", "-1"):
        with pytest.raises(SystemExit):
            main(["demo", "--epochs", bad])
        assert "expected N (both stages) or S1,S2" in capsys.readouterr().err, bad


def test_demo_scene_scale_and_its_old_name(monkeypatch):
    seen = []
    monkeypatch.setattr("opendas_encoder.demo.main_demo", lambda opts, json_path=None: seen.append(opts))
    assert main(["demo", "--scene-scale", "0.5"]) == 0
    with pytest.warns(FutureWarning, match="--world-size is renamed --scene-scale"):
        assert main(["demo", "--world-size", "0.5"]) == 0
    assert [(o.train_scenes, o.test_scenes) for o in seen] == [(80, 50), (80, 50)]


def test_negatives_mine_names_its_model(tmp_path, capsys):
    (tmp_path / "classes.txt").write_text("door\nroad\n")
    (tmp_path / "cands.txt").write_text("gate\nlane\ncurb\nwall\nfloor\nwindow\nhatch\n")
    with pytest.raises(SystemExit):
        main(["negatives", "mine", "--classes", str(tmp_path / "classes.txt"), "--candidates",
              str(tmp_path / "cands.txt")])
    assert "--model" in capsys.readouterr().err
    assert main(["negatives", "mine", "--classes", str(tmp_path / "classes.txt"), "--candidates",
                 str(tmp_path / "cands.txt"), "--model", "opendas-tiny-vit", "--pretrained", ""]) == 0
    assert "mining with opendas-tiny-vit (random weights)" in capsys.readouterr().err


def test_eval_cuts_segments_as_the_run_did_unless_told_otherwise(tmp_path, capsys):
    config = write_config(tmp_path, schedule={"batch_size": 16, "stage1_epochs": 1, "stage2_epochs": 0,
                                              "warmup_epochs": 0})
    cfg = yaml.safe_load(config.read_text())
    cfg["data"].update(expand_ratio=0.25, min_pixels=300)
    config.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(config), "--quiet", "--no-plots"]) == 0
    final = tmp_path / "run" / "final"
    meta = json.loads((final / "opendas_config.json").read_text())["metadata"]
    assert (meta["expand_ratio"], meta["min_pixels"]) == (0.25, 300)

    def evaluate(*flags):
        out = tmp_path / "e.json"
        assert main(["eval", "--checkpoint", str(final), "--dataset", "generated-world", "--split", "test",
                     "--option", "n_scenes=4", "seed=9", "--no-zero-shot", "--json", str(out), "--quiet",
                     *flags]) == 0
        return json.loads(out.read_text())

    run = evaluate()
    assert run["segments"] == {"expand_ratio": {"value": 0.25, "from": "checkpoint"},
                               "min_pixels": {"value": 300, "from": "checkpoint"}}
    explicit = evaluate("--expand-ratio", "0.25", "--min-pixels", "300")
    small = evaluate("--min-pixels", "16")
    assert run["adapted"]["n"] == explicit["adapted"]["n"] < small["adapted"]["n"]


def test_quiet_means_no_progress_bars(tmp_path, capfd):
    from opendas_encoder.generated.datasets import write_generic

    root = tmp_path / "generic"
    write_generic(str(root), "train")
    config = write_config(tmp_path, data={"train": {"name": "generic", "root": str(root), "split": "train"},
                                          "test": {"name": "generic", "root": str(root), "split": "train"}},
                          schedule={"batch_size": 16, "stage1_epochs": 1, "stage2_epochs": 1, "warmup_epochs": 0})
    capfd.readouterr()
    assert main(["train", str(config), "--quiet", "--no-plots"]) == 0
    err = capfd.readouterr().err
    assert "enumerate" not in err and "it/s]" not in err, err[-2000:]
    # the same data without --quiet does draw bars (so the check above can see them)
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "final"), "--dataset", "generic", "--root",
                 str(root), "--split", "train", "--no-zero-shot"]) == 0
    assert "enumerate" in capfd.readouterr().err


def test_every_option_has_help_and_there_is_a_version(capsys):
    import argparse

    from opendas_encoder import __version__
    from opendas_encoder.cli import build_parser

    missing = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
                helped = {a.dest for a in action._choices_actions if a.help}
                missing.extend(f"{path} {n}" for n in action.choices if n not in helped)
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "opendas")
    assert not missing, missing
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"opendas {__version__}"


# ------------------------------------------------------------------ the tower a setting does not train is CLIP's
#: The carried text context encodes [SOT, "a photo of a", name, ".", EOT]: zero-shot CLIP's template.
CARRY_TEMPLATE = "a photo of a {}."


def _world_run(tmp_path, setting, test_scenes=3, **prompts):
    """`opendas train` with the shipped generated-world CLIP (real weights), 1 epoch of the setting's stage."""
    from opendas_encoder.generated.world import WORLD_MODEL_NAME, WORLD_PRETRAINED

    config = write_config(tmp_path, setting=setting, model={"name": WORLD_MODEL_NAME, "pretrained": WORLD_PRETRAINED},
                          prompts=dict(prompts), schedule={"batch_size": 16, "stage1_epochs": 1, "stage2_epochs": 1,
                                                           "warmup_epochs": 0, "lr": 0.05})
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["train"]["options"]["n_scenes"] = 4
    cfg["data"]["test"]["options"]["n_scenes"] = test_scenes
    config.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(config), "--quiet", "--no-plots"]) == 0
    return config, tmp_path / "run"


def _vanilla_world_clip():
    """The same weights through open_clip alone (the independent truth)."""
    import open_clip

    from opendas_encoder.generated.world import WORLD_MODEL_NAME, world_checkpoint_path

    model, _, preprocess = open_clip.create_model_and_transforms(WORLD_MODEL_NAME, pretrained=world_checkpoint_path())
    return model.eval(), open_clip.get_tokenizer(WORLD_MODEL_NAME)


def test_visual_only_keeps_the_text_tower_exactly_zero_shot(tmp_path):
    import torch

    import opendas_encoder as oe
    from opendas_encoder.generated.world import world_vocabulary

    _, run = _world_run(tmp_path, "visual-only", visual_tokens=2)
    encoder = oe.load_encoder(str(run / "final"))
    clip, tokenizer = _vanilla_world_clip()
    names = world_vocabulary()["test"]
    with torch.no_grad():
        ours = encoder.encode_text(names)
        truth = clip.encode_text(tokenizer([CARRY_TEMPLATE.format(n) for n in names]))
        images = torch.rand(3, 3, *encoder.image_size)
        moved = (encoder.encode_image(images) - clip.encode_image(images)).abs().max()
    assert (ours - truth).abs().max() <= 1e-5 * truth.abs().max()
    assert moved > 1e-3  # the visual prompts did train
    meta = json.loads((run / "final" / "opendas_config.json").read_text())
    assert meta["method_config"]["text_deep_init"] == "carry"
    assert meta["metadata"]["identity_towers"] == {"text": "text_deep_init=carry (zero-shot text)"}
    assert json.loads((run / "config.json").read_text())["prompts"]["text_deep_init"] == "carry"


def test_text_only_keeps_the_image_tower_exactly_clips(tmp_path):
    import torch

    import opendas_encoder as oe

    _, run = _world_run(tmp_path, "text-only")
    encoder = oe.load_encoder(str(run / "final"))
    clip, tokenizer = _vanilla_world_clip()
    torch.manual_seed(0)
    images = torch.rand(4, 3, *encoder.image_size)
    with torch.no_grad():
        ours, truth = encoder.encode_image(images), clip.encode_image(images)
        text_moved = (encoder.encode_text(["red circle"]) - clip.encode_text(tokenizer(["a photo of a red circle."])))
    assert (ours - truth).abs().max() <= 1e-5 * truth.abs().max()
    assert text_moved.abs().max() > 1e-3  # the text prompts did train
    meta = json.loads((run / "final" / "opendas_config.json").read_text())
    assert meta["method_config"]["visual_tokens"] == 0
    assert meta["metadata"]["identity_towers"] == {"visual": "visual_tokens=0 (CLIP image tower)"}


def test_zero_shot_uses_the_one_template_and_the_report_says_so(tmp_path):
    """The zero-shot row equals open_clip with "a photo of a {}." (the baselines' template) on the run's segments."""
    import torch

    from opendas_encoder.methods.rpo import RPOConfig
    from opendas_encoder.methods.vpt import VPTConfig
    from opendas_encoder.methods.wiseft import WiSEFTConfig
    from opendas_encoder.train.config import load_config
    from opendas_encoder.train.evaluate import ZERO_SHOT_TEMPLATE
    from opendas_encoder.train.pipeline import build_model, prepare_experiment

    config, run = _world_run(tmp_path, "visual-only", test_scenes=10, visual_tokens=2)
    results = json.loads((run / "results.json").read_text())
    cfg = load_config(str(config))
    data = prepare_experiment(cfg, build_model(cfg), progress=False)
    clip, tokenizer = _vanilla_world_clip()
    names = list(data.vocab.test)

    def accuracy(template):
        with torch.no_grad():
            text = clip.encode_text(tokenizer([template.format(n) for n in names]))
            image = clip.encode_image(data.test.images[0:len(data.test)])  # a tensor, or a streamed view
            text, image = (torch.nn.functional.normalize(x, dim=-1) for x in (text, image))
        predicted = [names[i] for i in (image @ text.T).argmax(dim=1).tolist()]
        return 100.0 * sum(p == t for p, t in zip(predicted, data.test.label_strings())) / len(predicted)

    assert accuracy("a photo of a {}") != accuracy("a photo of a {}.")  # these segments tell the two apart
    assert results["zero_shot"]["acc"] == pytest.approx(accuracy("a photo of a {}."), abs=1e-9)
    assert ZERO_SHOT_TEMPLATE == "a photo of a {}." == VPTConfig().template == RPOConfig().template == \
        WiSEFTConfig().template
    assert 'zero-shot CLIP encodes each class name in the template "a photo of a {}."' in \
        (run / "report.md").read_text()


def _tiny_wiseft_checkpoint(tmp_path):
    """A finalized WiSE-FT (visual) checkpoint whose base is opendas-tiny-vit with the weights of a file."""
    import torch

    import opendas_encoder as oe

    weights = tiny_base_weights(tmp_path)
    model = oe.create_encoder("wiseft-visual", "opendas-tiny-vit", weights, alpha=0.5)
    with torch.no_grad():
        for p in model.learned_parameters():
            p.add_(0.05 * torch.randn(p.shape))
    model.finalize()
    return weights, oe.save_checkpoint(model, str(tmp_path / "wiseft"))


def test_eval_zero_shot_row_is_the_recorded_base_model_not_the_wiseft_weights(tmp_path, monkeypatch, capsys):
    """Issue 25.2: the zero-shot row of `opendas eval` on a WiSE-FT checkpoint is the base model it records
    (truth: open_clip's own model from the same name and weights), not the interpolated encoder."""
    import importlib

    import open_clip
    import torch

    from opendas_encoder.generated.datasets import write_generic

    ev = importlib.import_module("opendas_encoder.train.evaluate")  # the module (the package exports the function)

    weights, folder = _tiny_wiseft_checkpoint(tmp_path)
    write_generic(str(tmp_path / "toy"), "test")
    seen = []
    real = ev.evaluate
    monkeypatch.setattr(ev, "evaluate", lambda model, *a, **k: seen.append(model) or real(model, *a, **k))
    assert main(["eval", "--checkpoint", folder, "--dataset", "generic", "--root", str(tmp_path / "toy"),
                 "--split", "test", "--quiet"]) == 0
    adapted, zero_shot = seen
    truth = open_clip.create_model("opendas-tiny-vit", pretrained=weights).eval()
    tokenizer = open_clip.get_tokenizer("opendas-tiny-vit")
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pairs = [(zero_shot.encode_image(images), truth.encode_image(images)),
                 (zero_shot.encode_text(["chair"]), truth.encode_text(tokenizer(["a photo of a chair."])))]
        moved = (adapted.encode_image(images) - truth.encode_image(images)).abs().max()
    for ours, want in pairs:  # float32 through the engine's path vs open_clip's: rounding only (< 1e-5 relative)
        assert (ours - want).abs().max() <= 1e-5 * want.abs().max()
    assert moved > 1e-3 * pairs[0][1].abs().max()  # the WiSE-FT encoder is another model
    assert "zero-shot CLIP" in capsys.readouterr().out


def test_eval_refuses_a_random_base_unless_its_weights_are_given(tmp_path, capsys):
    """Issue 25.8: a checkpoint trained on random weights (pretrained None) cannot be rebuilt: exit 2 with one
    line naming the checkpoint; with --pretrained FILE (its weights) the table is printed."""
    import torch
    from conftest import save_weights

    import opendas_encoder as oe
    from opendas_encoder.generated.datasets import write_generic

    model = oe.create_model("opendas-tiny-vit", prompts=oe.PromptConfig(visual_tokens=8, text_tokens=4))
    folder = oe.save_checkpoint(model, str(tmp_path / "tinyckpt"), dataset="example")
    write_generic(str(tmp_path / "toy"), "test")
    args = ["eval", "--checkpoint", folder, "--dataset", "generic", "--root", str(tmp_path / "toy"), "--split",
            "test", "--quiet"]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"opendas eval: error: {folder}: ") and "random weights" in err and "\n" not in err
    weights = str(tmp_path / "base.safetensors")
    save_weights(model.clip, weights)
    assert main(args + ["--pretrained", weights]) == 0
    assert "zero-shot CLIP" in capsys.readouterr().out
    torch.manual_seed(1)
    other = oe.create_model("opendas-tiny-vit")
    save_weights(other.clip, weights)
    assert main(args + ["--pretrained", weights]) == 2
    assert "weights differ" in capsys.readouterr().err


def test_eval_names_the_checkpoint_when_its_model_name_was_edited(tmp_path, capsys):
    """Issue 25.15: an edited model_name (a local tag registered for another model) names the checkpoint."""
    from opendas_encoder.core.checkpoint import CONFIG_NAME

    _, folder = _tiny_wiseft_checkpoint(tmp_path)
    path = tmp_path / "wiseft" / CONFIG_NAME
    config = json.loads(path.read_text())
    config.update(model_name="opendas-tiny-vit", pretrained="generated-world")
    path.write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["eval", "--checkpoint", folder, "--dataset", "generated-world", "--split", "test", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"opendas eval: error: {folder}: ") and "'generated-world' is registered for" in err


def test_an_unwritable_output_folder_is_one_line_naming_it_exit_2(tmp_path, capsys):
    """Issue 25.14: a run folder that cannot be written gave a raw OSError traceback (exit 1). A folder under a
    regular file fails for root too (tests run as root, which chmod does not stop)."""
    (tmp_path / "a_file").write_text("not a folder")
    run_dir = tmp_path / "a_file" / "run"
    config = write_config(tmp_path, output_dir=str(run_dir))
    assert main(["train", str(config), "--quiet", "--no-plots"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err == f"opendas train: error: output folder {run_dir}: cannot write there (Not a directory)"


def test_ctrl_c_during_training_says_how_to_resume_exit_130(tmp_path, capsys, monkeypatch):
    """Issue 25.14: Ctrl-C inside a training step gave 30 lines of KeyboardInterrupt. Now: one line naming the last
    saved state and the command that continues from it, exit 130; that command then finishes the run."""
    from opendas_encoder.train.trainer import Trainer

    step = Trainer.step

    def interrupted(self, sr, epoch, b, item):
        if sr.stage.name == "text":  # stage 1's state is saved; Ctrl-C in stage 2's first step
            raise KeyboardInterrupt
        return step(self, sr, epoch, b, item)

    config = write_config(tmp_path)
    monkeypatch.setattr(Trainer, "step", interrupted)
    assert main(["train", str(config), "--quiet", "--no-plots", "--set", "seed=0"]) == 130
    err = capsys.readouterr().err.strip()
    state = tmp_path / "run" / "state" / "s0-epoch-0000"
    assert err == (f"opendas train: interrupted; the last saved training state is {state} (the end of its epoch): "
                   f"`opendas train {config} --resume --set seed=0` continues exactly from there")
    monkeypatch.setattr(Trainer, "step", step)
    assert main(["train", str(config), "--quiet", "--no-plots", "--set", "seed=0", "--resume"]) == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["adapted"]["n"] > 0


def test_resuming_a_finished_run_says_so_and_keeps_its_results(tmp_path, capsys):
    """Issue 25.17d: --resume on a finished run rewrote report.md / results.json with the seconds per iteration
    lost ({}). Now it says the run is finished and rewrites nothing; a run whose results were not written yet
    (killed while evaluating) is evaluated again with the timing its checkpoint recorded."""
    config = write_config(tmp_path)
    run = tmp_path / "run"
    assert main(["train", str(config), "--quiet", "--no-plots"]) == 0
    files = {name: (run / name).read_bytes() for name in ("results.json", "report.md", "final/opendas_config.json")}
    seconds = json.loads(files["results.json"])["seconds_per_iter"]
    assert set(seconds) == {"visual", "text"} and all(v > 0 for v in seconds.values())
    capsys.readouterr()
    assert main(["train", str(config), "--quiet", "--no-plots", "--resume"]) == 0
    captured = capsys.readouterr()
    assert f"{run} is a finished run: nothing to resume" in captured.err
    assert "seconds per iteration: {\"visual\"" in captured.out
    assert {name: (run / name).read_bytes() for name in files} == files
    (run / "results.json").unlink()  # killed after training, before the results were written
    assert main(["train", str(config), "--quiet", "--no-plots", "--resume"]) == 0
    assert json.loads((run / "results.json").read_text())["seconds_per_iter"] == seconds
    meta = json.loads((run / "final" / "opendas_config.json").read_text())["metadata"]
    assert meta["seconds_per_iter"] == seconds and meta["completed"]


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["train", "--help"]])
def test_version_and_help_do_not_import_torch(argv):
    """Issue 25.17e: `opendas --version` took 5.6 s, 3.9 s of it importing torch and open_clip through the package.
    The truth: sys.modules of a fresh interpreter after the CLI printed and exited."""
    import subprocess
    import sys

    code = (f"import sys\nfrom opendas_encoder.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit as exc:\n"
            "    code = exc.code\n"
            "heavy = [m for m in ('torch', 'open_clip', 'torchvision', 'pydantic') if m in sys.modules]\n"
            "print('HEAVY', heavy)\nsys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout and ("opendas" in result.stdout)
