"""Distillation on unlabelled target images (issue 24 part 2b): the ``distill`` config section.

Independent truths: scipy's KL divergence of hand-made distributions; a dataset whose labels raise when read
(and whose segments' ``label`` raises), with crops compared to ``crop_segment`` of the same image and mask;
a few-step run whose log carries the term and whose text prompts move only through it.
"""

import json
import math
import os

import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import entropy

import opendas_encoder as oe
from conftest import make_square_segments
from opendas_encoder.data.segments import crop_segment
from opendas_encoder.methods.opendas import PromptConfig
from opendas_encoder.train import ScheduleConfig, TrainConfig, fit, prepare_segments, read_log
from opendas_encoder.train.config import PRESETS, RuntimeConfig, config_from_dict
from opendas_encoder.train.distill import Distiller, soft_labels, unlabelled_crops
from opendas_encoder.train.losses import distillation_loss

BASE = ["red square", "green square", "blue square"]
TEST = BASE + ["orange square", "purple square"]
WORLD = {"train": {"name": "generated-world", "split": "train"}}


def test_distillation_loss_is_t_squared_times_scipys_kl_of_teacher_from_student():
    student = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
    teacher = np.array([[1.0, 1.5, 0.0], [-2.0, 1.0, 0.5]])
    for t in (1.0, 2.0, 4.0):
        p, q = softmax(teacher / t, axis=-1), softmax(student / t, axis=-1)
        expected = t * t * np.mean([entropy(p[i], q[i]) for i in range(2)])  # entropy(p, q) = KL(p || q)
        got = distillation_loss(torch.tensor(student), torch.tensor(teacher), t)
        assert math.isclose(float(got), expected, rel_tol=1e-9), t
        assert np.allclose(soft_labels(torch.tensor(teacher), t).numpy(), p)
    same = torch.tensor(student)
    assert float(distillation_loss(same, same, 2.0)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(same, same, 0.0)


def test_teacher_side_carries_no_gradient():
    s = torch.tensor([[1.0, 0.0, -1.0]], requires_grad=True)
    t = torch.tensor([[0.0, 2.0, 0.0]], requires_grad=True)
    distillation_loss(s, t, 2.0).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


class LabelsRaise:
    """A segment dataset whose labels raise when touched: only images and masks may be read."""

    def __init__(self, real):
        self.real, self.name, self.loads = real, "unlabelled spy", 0

    def __len__(self):
        return len(self.real)

    def label(self, i):
        raise AssertionError("the unlabelled dataset's label was read")

    def labels(self):
        raise AssertionError("the unlabelled dataset's labels were read")

    def load(self, i):
        self.loads += 1
        seg = self.real.load(i)

        class NoLabel:
            image, mask = seg.image, seg.mask

            @property
            def label(self):
                raise AssertionError("a segment's label was read")

        return NoLabel()


def test_unlabelled_crops_read_images_and_masks_never_labels():
    real = make_square_segments(n_per_class=2, seed=3)
    model = oe.create_model("opendas-tiny-vit", prompts=PromptConfig.paper())
    spy = LabelsRaise(real)
    crops = unlabelled_crops(spy, model.preprocess)
    assert spy.loads == len(real) and crops.shape[0] == len(real)
    for i in range(len(real)):  # real behaviour: the model's preprocessing of crop_segment of each segment
        seg = real.load(i)
        assert torch.equal(crops[i], model.preprocess(crop_segment(seg.image, seg.mask)))


def _distiller(model, images, classes, weight=1.0):
    return Distiller(images=images, text_input=model.tokenizer(classes), classes=classes, weight=weight,
                     temperature=2.0, batch_size=4, logit_scale=model.logit_scale.exp().detach().float())


def test_few_step_training_distils_in_the_last_stage_only(tmp_path):
    torch.manual_seed(4)
    model = oe.create_model("opendas-tiny-vit", prompts=PromptConfig.paper())
    train = prepare_segments(make_square_segments(seed=0), model.preprocess, BASE, model.image_size, progress=False)
    target = make_square_segments(n_per_class=3, seed=9)  # unlabelled images; soft labels over TEST (5 names)
    images = unlabelled_crops(LabelsRaise(target), model.preprocess)
    distiller = _distiller(model, images, TEST)
    cfg = TrainConfig(preset="paper", schedule=ScheduleConfig(batch_size=4, stage1_epochs=1, stage2_epochs=1, lr=0.01,
                                                              warmup_epochs=0),
                      runtime=RuntimeConfig(device="cpu"), output_dir=str(tmp_path),
                      data={**WORLD, "test": {"name": "generated-world", "split": "test"}},
                      distill={"weight": 1.0, "unlabelled": {"name": "generated-world", "split": "test"}})
    assert cfg.transductive
    fit(model, train, BASE, cfg, str(tmp_path / "run"), progress=False, distiller=distiller)
    log = read_log(str(tmp_path / "run"))
    stages = [r["stage"] for r in log]
    last = stages[-1]
    assert all(("distill" in r) == (r["stage"] == last) for r in log)
    assert all(r["distill"] >= 0 and math.isfinite(r["distill"]) for r in log if "distill" in r)
    # the teacher is the model as stage 1 left it: at the first distillation step teacher = student,
    # so the term is 0 there (T^2 KL of identical distributions), and positive once the prompts moved
    first = next(r for r in log if "distill" in r)
    assert first["distill"] == pytest.approx(0.0, abs=1e-6)
    teacher = distiller.teacher
    assert all(not p.requires_grad for p in teacher.parameters())
    # the run's metadata records the option and its transductive mark
    assert any(r["distill"] > 1e-6 for r in log if "distill" in r)
    with open(os.path.join(tmp_path, "run", "final", "opendas_config.json")) as f:
        options = json.load(f)["metadata"]["training_options"]
    assert options["distill"]["transductive"] is True and options["distill"]["weight"] == 1.0


def test_config_validated_off_in_both_presets_and_refused_without_a_distiller(tmp_path):
    for preset in ("paper", "default"):
        cfg = config_from_dict({"preset": preset, "data": WORLD})
        assert not cfg.distill.active and not cfg.transductive
        assert "distill" not in PRESETS[preset]
    with pytest.raises(ValueError, match="needs distill.unlabelled"):
        config_from_dict({"data": WORLD, "distill": {"weight": 1.0}})
    with pytest.raises(ValueError, match="temperature"):
        config_from_dict({"data": WORLD, "distill": {"temperature": 0}})
    with pytest.raises(ValueError, match="an OpenDAS option"):
        config_from_dict({"method": "vpt", "data": WORLD,
                          "distill": {"weight": 1.0, "unlabelled": {"name": "generated-world", "split": "test"}}})
    inductive = config_from_dict({"data": WORLD, "distill": {"weight": 1.0, "classes": "label-space",
                                                             "unlabelled": {"name": "generated-world", "split": "test"}}})
    assert inductive.distill.active and not inductive.transductive
    torch.manual_seed(0)
    model = oe.create_model("opendas-tiny-vit", prompts=PromptConfig.paper())
    train = prepare_segments(make_square_segments(seed=0), model.preprocess, BASE, model.image_size, progress=False)
    on = config_from_dict({"preset": "paper", "data": WORLD, "output_dir": str(tmp_path), "runtime": {"device": "cpu"},
                           "distill": {"weight": 1.0, "unlabelled": {"name": "generated-world", "split": "test"}}})
    with pytest.raises(ValueError, match="disagree"):
        fit(model, train, BASE, on, str(tmp_path / "run"), progress=False)


def test_experiment_marks_the_run_transductive_and_never_reads_the_unlabelled_labels(tmp_path, monkeypatch):
    """run_experiment with the option: the unlabelled split is read through a labels-raise spy (the same
    generated scenes as the test split, which the evaluation reads with labels); results.json and report.md
    carry the transductive mark; the unlabelled crops are those of every test segment."""
    from opendas_encoder.train import pipeline
    from opendas_encoder.train.config import DataConfig, DatasetSpec, ModelSpec

    unlabelled = DatasetSpec(name="generated-world", split="test", options={"n_scenes": 3, "seed": 1, "domain": "cast"})
    real = pipeline.dataset_from_spec
    spies = []

    def spy(spec, progress=True):
        ds = real(spec, progress)
        if spec == unlabelled:
            spies.append(LabelsRaise(ds))
            return spies[-1]
        return ds

    monkeypatch.setattr(pipeline, "dataset_from_spec", spy)
    cfg = TrainConfig(name="distill", preset="paper", model=ModelSpec(name="opendas-tiny-vit", pretrained=None),
                      data=DataConfig(train=DatasetSpec(name="generated-world", split="train",
                                                        options={"n_scenes": 6, "seed": 0}),
                                      test=DatasetSpec(name="generated-world", split="test",
                                                       options={"n_scenes": 3, "seed": 1})),
                      schedule=ScheduleConfig(batch_size=16, stage1_epochs=1, stage2_epochs=1, warmup_epochs=0),
                      distill={"weight": 0.5, "temperature": 2.0, "unlabelled": unlabelled},
                      runtime=RuntimeConfig(device="cpu"), output_dir=str(tmp_path))
    res = pipeline.run_experiment(cfg, progress=False, plots=False)
    assert len(spies) == 1 and spies[0].loads == len(spies[0].real) > 0
    assert res["transductive"] is True
    with open(os.path.join(str(tmp_path), "results.json")) as f:
        assert json.load(f)["transductive"] is True
    with open(os.path.join(str(tmp_path), "report.md")) as f:
        assert "TRANSDUCTIVE" in f.readline()
    log = read_log(str(tmp_path))
    assert any("distill" in r for r in log)
    plain = pipeline.run_experiment(cfg.updated(distill={"weight": 0.0}, output_dir=str(tmp_path / "plain")),
                                    progress=False, plots=False)
    assert plain["transductive"] is False
