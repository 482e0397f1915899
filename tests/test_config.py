"""Training configs (issue 13.11, 13.16, 15): types, ranges and known keys checked before any work,
the paper's defaults for omitted keys, a default setting per method, paths relative to the file."""

import json
import os
import warnings

import pytest
import yaml

from opendas_encoder import PromptConfig
from opendas_encoder.core.registry import method_names
from opendas_encoder.train.config import (SETTINGS, RuntimeConfig, TrainConfig, config_from_dict, load_config,
                                          stages_for)

WORLD_TRAIN = {"name": "generated-world", "split": "train", "options": {"n_scenes": 4, "seed": 0}}


def write(tmp_path, text: str, name: str = "run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------------------------------------- types
def test_yaml_scientific_notation_becomes_the_float_it_reads_as(tmp_path):
    # PyYAML (YAML 1.1) reads 1e-5 without a dot as the string "1e-5"
    assert yaml.safe_load("x: 1e-5")["x"] == "1e-5"
    path = write(tmp_path, "data: {train: {name: generated-world, split: train}}\n"
                           "schedule: {warmup_lr: 1e-5, lr: 2.5e-3, weight_decay: 5e-4}\n")
    cfg = load_config(path)
    assert type(cfg.schedule.warmup_lr) is float and cfg.schedule.warmup_lr == 1e-5
    assert cfg.schedule.lr == 0.0025 and cfg.schedule.weight_decay == 0.0005


def test_every_bad_value_is_named_with_the_file(tmp_path):
    path = write(tmp_path, "data: {train: {name: generated-world, split: train}, expand_ratio: -0.5}\n"
                           "schedule: {lr: fast, batch_size: '16', stage1_epochs: 2.5}\n"
                           "runtime: {augment: 'yes', device: gpu0}\ntriplet: {margin: .nan}\n")
    with pytest.raises(ValueError) as err:
        load_config(path)
    msg = str(err.value)
    assert msg.startswith(path)
    for key in ("data.expand_ratio", "schedule.lr", "schedule.batch_size", "schedule.stage1_epochs",
                "runtime.augment", "runtime.device", "triplet.margin"):
        assert key in msg, key
    assert "'fast'" in msg and "'gpu0'" in msg


def test_unknown_keys_are_refused_in_every_section(tmp_path):
    path = write(tmp_path, "data: {train: {name: generated-world, split: train, root_dir: x}}\n"
                           "schedul: {}\nprompts: {visual_token: 4}\n")
    with pytest.raises(ValueError) as err:
        load_config(path)
    msg = str(err.value)
    assert "data.train: unknown keys ['root_dir']" in msg and "unknown keys ['schedul']" in msg
    with pytest.raises(ValueError, match=r"prompts: unknown keys \['visual_token'\]"):
        config_from_dict({"data": {"train": WORLD_TRAIN}, "prompts": {"visual_token": 4}})
    with pytest.raises(ValueError, match=r"method_options: unknown keys \['tokens'\]"):
        config_from_dict({"data": {"train": WORLD_TRAIN}, "method": "vpt", "method_options": {"tokens": 4}})
    with pytest.raises(ValueError, match="method_options: n_tokens"):
        config_from_dict({"data": {"train": WORLD_TRAIN}, "method": "vpt", "method_options": {"n_tokens": "many"}})
    with pytest.raises(ValueError, match="unknown dataset 'ade20k'"):
        config_from_dict({"data": {"train": {"name": "ade20k", "root": "x", "split": "training"}}})
    with pytest.raises(ValueError, match="needs a root folder"):
        config_from_dict({"data": {"train": {"name": "generic", "split": "train"}}})


def test_runtime_log_every_is_gone():
    assert "log_every" not in RuntimeConfig.model_fields  # it was never read
    with pytest.warns(FutureWarning, match="log_every"):
        cfg = config_from_dict({"data": {"train": WORLD_TRAIN}, "runtime": {"log_every": 10}})
    assert "log_every" not in cfg.to_dict()["runtime"]


# ------------------------------------------------------------------------------------------- defaults
def test_omitted_keys_give_the_papers_defaults():
    cfg = config_from_dict({"data": {"train": WORLD_TRAIN}})
    assert (cfg.model.name, cfg.model.pretrained) == ("ViT-L-14", "openai")
    assert cfg.prompt_config() == PromptConfig(lowrank_rank=2)  # the default preset: prompts + rank-2 updates
    pc = cfg.prompt_config().resolved(24, 12)  # the paper's 233,472 parameters on ViT-L-14
    assert pc.visual_tokens * pc.visual_depth * 1024 + pc.text_tokens * pc.text_depth * 768 == 233_472
    s = cfg.schedule
    assert (s.optimizer, s.lr, s.momentum, s.weight_decay, s.warmup_epochs, s.warmup_lr, s.batch_size,
            s.stage1_epochs, s.stage2_epochs) == ("sgd", 0.0025, 0.9, 5e-4, 1, 1e-5, 16, 5, 5)
    assert (cfg.triplet.margin, cfg.triplet.lambda_start, cfg.triplet.lambda_end) == (1.5, 0.0, 5.0)
    assert cfg.setting == "two-stage" and cfg.data.test is None


def test_a_config_without_training_data_is_an_error_naming_the_key(tmp_path):
    for text in ("name: x\n", "data: {negatives: null}\n", "{}\n", ""):
        with pytest.raises(ValueError) as err:
            load_config(write(tmp_path, text))
        assert "data.train: missing" in str(err.value), text
    with pytest.raises(ValueError, match=r"data.train.split: missing"):
        config_from_dict({"data": {"train": {"name": "generated-world"}}})


# ------------------------------------------------------------------------------------------- settings
def test_every_method_gets_a_default_setting_it_can_train_with():
    assert config_from_dict({"data": {"train": WORLD_TRAIN}}).setting == "two-stage"
    for method in method_names():
        if method in ("opendas", "zeroshot"):
            continue
        cfg = config_from_dict({"data": {"train": WORLD_TRAIN}, "method": method})
        assert cfg.setting == "one-stage-ce", method
        assert [(st.visual, st.text, st.triplet) for st in stages_for(cfg.setting, cfg.schedule)] == \
            [(True, True, False)]


@pytest.mark.parametrize("method", [m for m in method_names() if m not in ("opendas", "zeroshot")])
@pytest.mark.parametrize("setting", ["two-stage", "joint-triplet", "visual-only", "text-only"])
def test_a_method_setting_pair_that_cannot_train_is_refused_naming_both(tmp_path, method, setting):
    path = write(tmp_path, yaml.safe_dump({"method": method, "setting": setting, "data": {"train": WORLD_TRAIN}}))
    with pytest.raises(ValueError) as err:
        load_config(path)
    msg = str(err.value)
    assert path in msg and repr(method) in msg and repr(setting) in msg and "one-stage-ce" in msg


def test_the_zero_shot_reference_is_not_trainable():
    with pytest.raises(ValueError, match="'zeroshot' has nothing to train"):
        config_from_dict({"data": {"train": WORLD_TRAIN}, "method": "zeroshot"})


def test_setting_names_say_what_they_do_and_old_names_still_read():
    assert set(SETTINGS) == {"two-stage", "joint-triplet", "visual-only", "text-only", "one-stage-ce"}
    for old, new in (("single", "one-stage-ce"), ("joint", "joint-triplet")):
        with pytest.warns(FutureWarning, match=f"'{old}' is renamed '{new}'"):
            cfg = config_from_dict({"data": {"train": WORLD_TRAIN}, "setting": old})
        assert cfg.setting == new
        with pytest.warns(FutureWarning):
            assert stages_for(old, cfg.schedule) == stages_for(new, cfg.schedule)
    sched = TrainConfig().schedule
    assert [(s.visual, s.text, s.triplet) for s in stages_for("joint-triplet", sched)] == [(True, True, True)]
    assert [(s.visual, s.text, s.triplet) for s in stages_for("one-stage-ce", sched)] == [(True, True, False)]


def test_an_untrained_tower_is_configured_as_clips_own():
    vis = TrainConfig(setting="visual-only", prompts={"visual_tokens": 4})
    assert vis.prompt_config().text_deep_init == "carry" and vis.prompt_config().text_init == "a photo of a"
    assert vis.to_dict()["prompts"]["text_deep_init"] == "carry"  # what the run's config.json records
    txt = TrainConfig(setting="text-only")
    assert txt.prompt_config().visual_tokens == 0 and txt.to_dict()["prompts"]["visual_tokens"] == 0
    with pytest.warns(UserWarning, match="prompts.visual_tokens 8 -> 0"):
        TrainConfig(setting="text-only", prompts={"visual_tokens": 8})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert TrainConfig(setting="two-stage").prompt_config() == PromptConfig(lowrank_rank=2)  # trained towers: untouched


# ------------------------------------------------------------------------------------------- files
def test_relative_paths_in_a_config_are_relative_to_its_file(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cwd").mkdir()
    negatives = {"red square": ["a", "b", "c", "d", "e"]}
    (tmp_path / "cfg" / "negatives.json").write_text(json.dumps(negatives))
    (tmp_path / "cwd" / "negatives.json").write_text(json.dumps({"decoy": ["a", "b", "c", "d", "e"]}))
    path = write(tmp_path / "cfg", yaml.safe_dump({"data": {"train": WORLD_TRAIN, "negatives": "negatives.json"}}))
    monkeypatch.chdir(tmp_path / "cwd")
    assert load_config(path).data.negatives == str(tmp_path / "cfg" / "negatives.json")
    # a path given on the command line is relative to the working directory
    cfg = load_config(path, ["data.negatives=negatives.json"])
    assert cfg.data.negatives == "negatives.json"
    missing = write(tmp_path / "cfg", yaml.safe_dump({"data": {"train": WORLD_TRAIN, "vocabulary": "v.json"}}),
                    "missing.yaml")
    with pytest.raises(ValueError, match=r"data.vocabulary: file not found: .*cfg/v.json"):
        load_config(missing)


def test_overrides_are_validated_too(tmp_path):
    path = write(tmp_path, yaml.safe_dump({"data": {"train": WORLD_TRAIN}}))
    assert load_config(path, ["schedule.lr=1e-3", "runtime.amp=off"]).schedule.lr == 0.001
    with pytest.raises(ValueError, match="schedule.batch_size: Input should be greater than or equal to 1"):
        load_config(path, ["schedule.batch_size=0"])


def test_a_bad_override_is_blamed_on_the_override_and_a_bad_file_value_on_the_file(tmp_path):
    """Issue 25.15: a ``--set`` typo used to be reported as a problem of the YAML file."""
    path = write(tmp_path, yaml.safe_dump({"data": {"train": WORLD_TRAIN}, "schedule": {"lr": "fast"}}))
    with pytest.raises(ValueError) as err:
        load_config(path, ["schedule.lrr=0.01", "runtime.amp=off"])
    on_file, on_set = str(err.value).split("\n--set ")
    assert on_file.startswith(f"{path}: invalid config:\n  schedule.lr: ") and on_file.endswith("got 'fast'")
    assert on_set.startswith("schedule.lrr=0.01: invalid config:\n  schedule: unknown keys ['lrr']")
    good = write(tmp_path, yaml.safe_dump({"data": {"train": WORLD_TRAIN}}), "good.yaml")
    with pytest.raises(ValueError, match=r"^--set schedule=3: invalid config"):
        load_config(good, ["schedule=3"])


def test_the_vocabulary_json_is_checked_like_the_config(tmp_path):
    """Issue 25.15: unknown keys and a wrong ``novel`` list are refused naming the file and key; a duplicate
    class names the file; what :meth:`Vocabulary.save` writes loads back."""
    from opendas_encoder import Vocabulary

    def load(**data):
        path = tmp_path / "vocab.json"
        path.write_text(json.dumps(data))
        return str(path), lambda: Vocabulary.load(str(path))

    path, read = load(base=["chair", "lamp"], test=["chair", "lamp", "desk"], novl=["desk"])
    with pytest.raises(ValueError, match=rf"^{path}: unknown vocabulary keys \['novl'\]"):
        read()
    path, read = load(base=["chair", "lamp"], test=["chair", "lamp", "desk"], novel=["desk", "chair"])
    with pytest.raises(ValueError, match=rf"^{path}: 'novel' .*'chair'.* is not test - base"):
        read()
    path, read = load(base=["chair", "lamp", "chair"], test=["chair"])
    with pytest.raises(ValueError, match=rf"^{path}: vocabulary: duplicate base class 'chair'"):
        read()
    config = write(tmp_path, yaml.safe_dump({"data": {"train": WORLD_TRAIN, "vocabulary": "vocab.json"}}))
    with pytest.raises(ValueError, match=rf"{config}: invalid config:\n  data.vocabulary: {path}: vocabulary: dup"):
        load_config(config)  # refused with the config, before any work
    saved = Vocabulary(base=["chair", "lamp"], test=["chair", "lamp", "desk"], name="office")
    saved.save(str(tmp_path / "saved.json"))
    assert json.loads((tmp_path / "saved.json").read_text())["novel"] == ["desk"]
    assert Vocabulary.load(str(tmp_path / "saved.json")).to_dict() == saved.to_dict()


def test_the_saved_run_config_loads_back(tmp_path):
    cfg = config_from_dict({"data": {"train": WORLD_TRAIN}, "setting": "visual-only", "output_dir": "x"})
    cfg.save(str(tmp_path / "config.json"))
    again = load_config(str(tmp_path / "config.json"))
    assert again.to_dict() == cfg.to_dict()


def test_the_readme_config_example_is_a_valid_config_with_the_default_preset(tmp_path):
    """The YAML the README shows a new user loads as written, and its comments tell the truth: the
    preset's options are those of PRESETS['default'], the rest the paper's values."""
    import re

    from opendas_encoder.train.config import PRESETS

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    block = re.search(r"```yaml\n(# my_domain\.yaml.*?)```", readme, re.S)
    assert block, "README lost its config example"
    path = tmp_path / "my_domain.yaml"
    path.write_text(block.group(1))
    (tmp_path / "negatives.json").write_text("{}")
    cfg = load_config(str(path))
    assert cfg.preset == "default" and cfg.model.name == "ViT-L-14" and cfg.model.pretrained == "openai"
    for section, values in PRESETS["default"].items():
        got = getattr(cfg, section).model_dump()
        assert {k: got[k] for k in values} == values, section
    assert (cfg.schedule.lr, cfg.schedule.batch_size, cfg.schedule.stage1_epochs) == (0.0025, 16, 5)


# ------------------------------------------------------------------------------------------- updated()
def test_updated_merges_a_partial_section_onto_the_configs_own_values():
    """Issue 25.3: a dict for part of a section keeps the config's other values of that section (they were
    replaced by the preset's / the field defaults)."""
    cfg = TrainConfig(consistency={"text": 3.0}, triplet={"lambda_end": 2.0, "distance": "cosine"},
                      schedule={"lr": 0.01, "stage1_epochs": 4})
    new = cfg.updated(consistency={"image": 1.0})
    assert (new.consistency.text, new.consistency.image) == (3.0, 1.0)
    new = cfg.updated(triplet={"margin": 1.0})
    assert (new.triplet.margin, new.triplet.lambda_end, new.triplet.distance) == (1.0, 2.0, "cosine")
    new = cfg.updated(schedule={"batch_size": 4})
    assert (new.schedule.lr, new.schedule.stage1_epochs, new.schedule.batch_size) == (0.01, 4, 4)
    assert cfg.consistency.image == 0.0 and cfg.triplet.margin == 1.5  # the original is untouched
    # a section given as a model replaces the section
    from opendas_encoder.train.config import TripletConfig

    assert cfg.updated(triplet=TripletConfig(margin=1.0)).triplet.lambda_end == 5.0


def test_updated_method_or_preset_change_re_derives_the_preset_sections():
    """Changing the method or the preset still takes the new method's / preset's options (e56eaf5): a
    baseline gets every OpenDAS option off, and a partial section goes onto the new preset's values."""
    from opendas_encoder.train.config import PRESETS

    cfg = TrainConfig(consistency={"text": 3.0})
    vpt = cfg.updated(method="vpt")
    assert not vpt.consistency.active and vpt.averaging.mode == "off" and vpt.setting == "one-stage-ce"
    paper = cfg.updated(preset="paper", triplet={"margin": 1.0})
    assert paper.consistency.text == 0.0 and paper.averaging.mode == "off"
    assert paper.triplet.margin == 1.0 and paper.triplet.lambda_end == PRESETS["paper"]["triplet"]["lambda_end"]
    back = paper.updated(preset="default", consistency={"image": 2.0})
    assert (back.consistency.text, back.consistency.image) == (PRESETS["default"]["consistency"]["text"], 2.0)


# ------------------------------------------------------------------------------------------- short schedules
def test_a_trained_stage_with_no_epoch_after_its_warm_up_is_refused_naming_the_keys(tmp_path):
    """Issue 25.10: with 1 epoch per stage and the paper's 1 warm-up epoch at 1e-5, nothing trains (the model
    ended below zero-shot without a word). The error names the stage's epochs key and schedule.warmup_epochs."""
    data = {"train": WORLD_TRAIN}
    for schedule, key in (({"stage1_epochs": 1, "stage2_epochs": 5}, "schedule.stage1_epochs (1)"),
                          ({"stage1_epochs": 5, "stage2_epochs": 2, "warmup_epochs": 2}, "schedule.stage2_epochs (2)")):
        path = write(tmp_path, yaml.safe_dump({"data": data, "schedule": schedule}))
        with pytest.raises(ValueError, match=r"run.yaml: invalid config") as info:
            load_config(path)
        assert key in str(info.value) and "schedule.warmup_epochs" in str(info.value)
    # a one-stage baseline trains stage1 + stage2 epochs in its single stage
    with pytest.raises(ValueError, match=r"schedule.stage1_epochs \+ schedule.stage2_epochs \(1\)"):
        config_from_dict({"data": data, "method": "vpt", "schedule": {"stage1_epochs": 1, "stage2_epochs": 0}})
    # fine: a stage of 0 epochs is not trained; no warm-up; an epoch after the warm-up; 1 + 1 in one stage
    for schedule, method in (({"stage1_epochs": 2, "stage2_epochs": 0}, "opendas"),
                             ({"stage1_epochs": 1, "stage2_epochs": 1, "warmup_epochs": 0}, "opendas"),
                             ({"stage1_epochs": 2, "stage2_epochs": 2}, "opendas"),
                             ({"stage1_epochs": 1, "stage2_epochs": 1}, "vpt")):
        config_from_dict({"data": data, "method": method, "schedule": schedule})


def test_the_demos_short_epochs_train_from_their_first_epoch():
    """`opendas demo --epochs 1` keeps working: a stage of 1 epoch gets no warm-up (it would be all of it)."""
    from opendas_encoder.demo import DemoOptions, demo_config
    from opendas_encoder.train.config import warmup_that_fits

    assert demo_config(DemoOptions(stage1_epochs=1, stage2_epochs=1), 0).schedule.warmup_epochs == 0
    assert demo_config(DemoOptions(stage1_epochs=3, stage2_epochs=0), 0).schedule.warmup_epochs == 1
    assert demo_config(DemoOptions(), 0, "vpt").schedule.warmup_epochs == 1  # the paper's schedule otherwise
    assert (warmup_that_fits(5, 5), warmup_that_fits(2, 1), warmup_that_fits(2, 0), warmup_that_fits(3, 3, warmup=2)) \
        == (1, 0, 1, 2)
