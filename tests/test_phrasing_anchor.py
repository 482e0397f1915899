"""The phrasing anchor (issue 24 part 2c): ``consistency.text_target: descriptions``.

The frozen text side of the consistency terms becomes, per class, the normalised mean of zero-shot CLIP's
normalised features of the class's descriptions (``data.descriptions``, or the generated world's own),
instead of the features of its raw name. Independent truths: open_clip's own ``encode_text`` of its own
tokenizer's tokens of the descriptions; the generated domain's ground-truth object kind of each label.
"""

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

import opendas_encoder as oe
from conftest import make_square_segments
from opendas_encoder.methods.opendas import PromptConfig
from opendas_encoder.train import ScheduleConfig, TrainConfig, fit, prepare_segments, read_log
from opendas_encoder.train.config import PRESETS, RuntimeConfig, config_from_dict
from opendas_encoder.train.trainer import Trainer
from opendas_encoder.vocab import load_descriptions

BASE = ["red square", "green square", "blue square"]
LABEL_SPACE = BASE + ["orange square", "purple circle"]
DESCRIPTIONS = {"red square": ["a red box.", "a square painted red.", "four equal sides, red."],
                "green square": ["a green box.", "a square painted green."],
                "blue square": ["a blue tile."]}


def _config(tmp_path, path, **kw):
    return TrainConfig(preset="paper", schedule=ScheduleConfig(batch_size=4, stage1_epochs=1, stage2_epochs=1, lr=0.01,
                                                               warmup_epochs=0),
                       runtime=RuntimeConfig(device="cpu"), output_dir=str(tmp_path),
                       data={"train": {"name": "generated-world", "split": "train"}, "descriptions": str(path)},
                       consistency={"text": 1.0, "text_target": "descriptions"}, **kw)


def _truth(clip, texts):
    """open_clip's own features: its tokenizer, its encode_text, normalised, averaged, normalised."""
    tokens = open_clip.tokenize(texts, context_length=clip.context_length)
    with torch.no_grad():
        f = F.normalize(clip.encode_text(tokens).float(), dim=-1)
    return F.normalize(f.mean(0), dim=-1)


def spy_on_text_targets(monkeypatch) -> dict:
    """Record the frozen text features the trainer's consistency term pulls toward (``seen["text"]``)."""
    seen = {}
    real = Trainer.zero_shot_features

    def spy(self):
        out = real(self)
        seen["text"] = out[1].clone()
        return out

    monkeypatch.setattr(Trainer, "zero_shot_features", spy)
    return seen


def test_targets_are_the_mean_of_open_clips_own_description_features(tmp_path, monkeypatch):
    path = tmp_path / "descriptions.json"
    path.write_text(json.dumps(DESCRIPTIONS))
    torch.manual_seed(1)
    model = oe.create_model("opendas-tiny-vit", prompts=PromptConfig.paper())
    seen = spy_on_text_targets(monkeypatch)
    train = prepare_segments(make_square_segments(seed=0), model.preprocess, BASE, model.image_size, progress=False)
    fit(model, train, LABEL_SPACE, _config(tmp_path, path), str(tmp_path / "run"), progress=False)
    text = seen["text"]
    assert text.shape == (len(LABEL_SPACE), model.clip.text_projection.shape[1])
    for i, name in enumerate(BASE):
        assert torch.allclose(text[i], _truth(model.clip, DESCRIPTIONS[name]), atol=1e-5), name
    # negative queries without descriptions keep the raw name's template target
    for i, name in enumerate(LABEL_SPACE[3:], start=3):
        assert torch.allclose(text[i], _truth(model.clip, [f"a photo of a {name}."]), atol=1e-5), name
        assert not torch.allclose(text[0], text[i], atol=1e-3)
    assert all(r["consistency"] > 0 for r in read_log(str(tmp_path / "run")))


def test_generated_world_describes_each_label_by_its_kind_in_the_captions_words():
    from opendas_encoder.generated.world.domains import get_domain

    spec = get_domain("synonyms")
    for label, kind in spec.kinds().items():
        for sentence in spec.describe(label):
            assert kind.name in sentence  # "crimson star" is described as a "red star"
            assert not set(sentence.replace(".", "").split()) & {"crimson", "navy", "olive", "violet"}
    assert spec.describe("navy cross")[0] == "a photo of a blue cross."  # a negative query too
    frames = get_domain("frames")
    assert frames.describe("blue square frame")[0] == "a photo of a outlined blue square."
    with pytest.raises(ValueError, match="no label"):
        spec.describe("red circle")  # red is never called red in synonyms


def test_descriptions_file_is_validated_with_the_file_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"red square": [], "green square": ["x", "x"], "blue square": "a tile"}))
    with pytest.raises(ValueError) as info:
        load_descriptions(str(bad), classes=BASE + ["pink square"])
    msg = str(info.value)
    assert str(bad) in msg and "'red square'" in msg and "duplicate" in msg and "'blue square'" in msg
    assert "no descriptions for 1 classes: ['pink square']" in msg
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json: invalid JSON"):
        load_descriptions(str(tmp_path / "broken.json"))
    with pytest.raises(FileNotFoundError, match="class-description file not found"):
        load_descriptions(str(tmp_path / "nope.json"))


def test_the_option_is_validated_and_off_in_the_paper_preset(tmp_path):
    assert PRESETS["paper"]["consistency"].get("text_target", "template") == "template"
    paper = config_from_dict({"preset": "paper", "data": {"train": {"name": "generated-world", "split": "train"}}})
    assert paper.consistency.text_target == "template"
    with pytest.raises(ValueError, match="file not found"):
        config_from_dict({"data": {"train": {"name": "generated-world", "split": "train"},
                                   "descriptions": str(tmp_path / "missing.json")}})
    with pytest.raises(ValueError, match="needs data.descriptions"):
        config_from_dict({"consistency": {"text": 1.0, "text_target": "descriptions"},
                          "data": {"train": {"name": "generic", "root": str(tmp_path), "split": None}}})
    with pytest.raises(ValueError, match="text_target"):
        config_from_dict({"consistency": {"text_target": "paraphrase"},
                          "data": {"train": {"name": "generated-world", "split": "train"}}})
    # the generated world needs no file: it describes its classes itself
    ok = config_from_dict({"consistency": {"text": 1.0, "text_target": "descriptions"},
                           "data": {"train": {"name": "generated-world", "split": "train", "options": {"domain": "frames"}}}})
    assert ok.data.descriptions is None


def test_generated_world_run_anchors_each_class_to_its_own_descriptions(tmp_path, monkeypatch):
    """A generated-world run needs no file: every label of the label space (the domain's phrasing) is anchored to
    the captions'-words descriptions of the object kind the generator draws for it."""
    from opendas_encoder.generated.world.domains import build_domain, get_domain

    spec = get_domain("frames")
    torch.manual_seed(2)
    model = oe.create_model("opendas-tiny-vit", prompts=PromptConfig.paper())
    seen = spy_on_text_targets(monkeypatch)
    base = spec.base_classes
    train = prepare_segments(build_domain("frames", 2, seed=0, split="train"), model.preprocess, base, model.image_size,
                             progress=False)
    cfg = TrainConfig(preset="paper", schedule=ScheduleConfig(batch_size=8, stage1_epochs=1, stage2_epochs=0, lr=0.01,
                                                              warmup_epochs=0),
                      runtime=RuntimeConfig(device="cpu"), output_dir=str(tmp_path),
                      data={"train": {"name": "generated-world", "split": "train", "options": {"domain": "frames"}}},
                      consistency={"text": 1.0, "text_target": "descriptions"})
    fit(model, train, base, cfg, str(tmp_path / "run"), progress=False)
    for i, label in enumerate(base):
        truth = _truth(model.clip, [t.format(spec.kind(label).name) for t in
                                    ("a photo of a {}.", "a picture of a {}.", "a rendering of a {}.",
                                     "there is a {} in the picture.", "a photo of a small {}.", "a photo of a large {}.",
                                     "a {} on a gray background.")])
        assert torch.allclose(seen["text"][i], truth, atol=1e-5), label
