"""eval/runspec.py: the one run syntax of the eval scripts, its configs, and the resolved-training key."""

import json

import pytest

from eval import run_ablations, run_cls, run_fewshot, run_suite
from eval.runspec import parse_spec, training_key
from opendas_encoder.methods.opendas import PromptConfig
from opendas_encoder.train.config import PRESETS, ScheduleConfig, TrainConfig, preset_prompts


def base(preset="default"):
    return TrainConfig(preset=preset, schedule=ScheduleConfig(batch_size=8, stage1_epochs=2, stage2_epochs=1,
                                                                                  warmup_epochs=0),
                       output_dir="/tmp/never")


def test_syntax_parts():
    s = parse_spec("mine=opendas-paper:visual-only@prompts.visual_start=2@consistency.image=10")
    assert (s.key, s.name, s.method, s.setting, s.preset) == \
        ("mine", "opendas-paper", "opendas", "visual-only", "paper")
    assert dict(s.overrides) == {"prompts.visual_start": "2", "consistency.image": "10"}
    assert s.section("prompts") == {"visual_start": 2}
    plain = parse_spec("opendas-paper@averaging.mode=ema")
    assert plain.key == "opendas-paper@averaging.mode=ema" and plain.tag == "opendas-paper+averaging.mode-ema"
    vpt = parse_spec("vpt@method_options.n_tokens=8")
    assert vpt.setting == "one-stage-ce" and vpt.section("method_options") == {"n_tokens": 8, "depth": None}
    assert parse_spec("zeroshot").trained is False


@pytest.mark.parametrize("text,match", [
    ("nope", "unknown method 'nope'.*opendas-paper"), ("opendas-paper:sideways", "unknown setting"),
    ("vpt:two-stage", "vpt trains with one-stage-ce"), ("zeroshot@prompts.x=1", "zeroshot is not trained"),
    ("opendas@novalue", "section.key=value"), ("opendas@method=vpt", "section.key=value"),
    ("a/b=opendas", "tag")])
def test_bad_specs_are_refused_by_name(text, match):
    with pytest.raises(ValueError, match=match):
        parse_spec(text)


def test_configs_over_a_base():
    b = base()
    default = parse_spec("opendas").config(b)
    assert default.preset == "default"
    assert default.consistency.model_dump()["text"] == PRESETS["default"]["consistency"]["text"]
    paper = parse_spec("opendas-paper").config(b)
    assert paper.prompt_config() == PromptConfig.paper() and not paper.consistency.active
    assert parse_spec("opendas").config(base("paper")).prompt_config() == PromptConfig.paper()  # the base's preset
    carry = parse_spec("opendas-carry:visual-only@triplet.margin=0.5").config(b, seed=3)
    assert (carry.setting, carry.seed, carry.triplet.margin, carry.prompt_config().text_deep_init) == \
        ("visual-only", 3, 0.5, "carry")
    lora = parse_spec("cliplora").config(b)  # the method's own schedule under the base's sizes
    assert (lora.schedule.optimizer, lora.schedule.lr, lora.schedule.batch_size) == ("adamw", 2e-4, 8)
    src = parse_spec("promptsrc@consistency.text=5").config(b)
    assert (src.consistency.text, src.consistency.image, src.averaging.mode) == (5.0, 10.0, "gaussian")
    with pytest.raises(ValueError, match="visual_token"):
        parse_spec("opendas@prompts.visual_token=4").config(b)


def test_training_key_says_which_runs_are_the_same_training():
    b = base()
    key = lambda text, **kw: training_key(parse_spec(text).config(b, **kw))  # noqa: E731
    # another name, folder or seed: the same training (runs are compared at one seed)
    assert key("opendas-paper") == key("opendas-paper", name="other", output_dir="/elsewhere", seed=4)
    same = PRESETS["paper"] == PRESETS["default"] and preset_prompts("paper") == preset_prompts("default")
    assert (key("opendas-paper") == key("opendas-default")) == same
    assert key("opendas-paper@prompts.visual_tokens=8") == key("opendas-paper")  # the paper's value anyway
    assert key("opendas-paper@triplet.lambda_end=5") == key("opendas-paper")
    assert key("opendas-paper@triplet.lambda_end=2") != key("opendas-paper")
    assert key("vpt") != key("vpt@method_options.n_tokens=8") and key("vpt") == key("vpt@method_options.n_tokens=32")
    assert json.loads(key("cocoop"))["method_options"]["n_ctx"] == 4


def test_every_script_names_runs_with_the_one_spec():
    assert run_suite.resolve_method("opendas-carry:visual-only") == parse_spec("opendas-carry:visual-only")
    assert run_fewshot.resolve_method("t=opendas@prompts.text_deep_init=carry") == \
        parse_spec("t=opendas@prompts.text_deep_init=carry")
    for keys in (run_suite.DEFAULT_METHODS, run_cls.DEFAULT_METHODS, run_fewshot.DEFAULT_METHODS,
                 [k for _, k in run_ablations.VARIANTS.values()]):
        for k in keys:
            parse_spec(k)
    for table_methods in (run_suite.DEFAULT_METHODS, run_cls.DEFAULT_METHODS):
        assert "cliplora" in table_methods and "promptsrc" in table_methods
    assert run_suite.DISPLAY["cliplora"] == "CLIP-LoRA" and run_cls.DISPLAY["promptsrc"] == "PromptSRC"
    plan = run_cls.plan_runs(["opendas", "vpt"], ["1", "5", "7"], 2, 2)
    b = base("paper")
    keys = {s.key: training_key(s.config(b)) for table in plan.values() for s in table}
    assert keys["kv8_kt4"] == keys["lambda5"] and len(set(keys.values())) == len(keys) - 1
