"""Options chosen on held-out BASE classes (``selection.options``, issue 24): validated before any work,
never shown a novel class, scored by the candidates' own accuracies, applied, and resumable.

Independent truths: the generated world's vocabulary (which classes are novel), the engine's ``class_scores``
of each candidate's saved checkpoint with scikit-learn's accuracy, and the harmonic mean's definition.
"""

import json
import os
import shutil

import pytest
import torch
from sklearn.metrics import accuracy_score

import opendas_encoder as oe
from opendas_encoder.train.config import (DataConfig, DatasetSpec, ModelSpec, RuntimeConfig, ScheduleConfig,
                                          TrainConfig)

ALPHAS = [0.5, 1.0]


def config(tmp_path, **changes):
    return TrainConfig(**{**dict(
        name="choice", method="wiseft-both", method_options={"alpha": 0.5},
        selection={"options": {"method_options.alpha": ALPHAS}},
        model=ModelSpec(name="opendas-tiny-vit", pretrained=None),
        data=DataConfig(train=DatasetSpec(name="generated-world", split="train", options={"n_scenes": 6, "seed": 0}),
                        test=DatasetSpec(name="generated-world", split="test", options={"n_scenes": 3, "seed": 1})),
        schedule=ScheduleConfig(batch_size=16, stage1_epochs=1, stage2_epochs=0, warmup_epochs=0, lr=0.001),
        runtime=RuntimeConfig(device="cpu"), output_dir=str(tmp_path)), **changes})


@pytest.mark.parametrize("options,words", [
    ({"method_options.visual_lr_scale": [1.0, -5.0]}, ["visual_lr_scale=-5.0", "positive number"]),
    ({"schedule.no_such_key": [1]}, ["schedule.no_such_key"]),
    ({"seed": [0, 1]}, ["'seed'", "may not change"]),
    ({"schedule.lr": []}, ["'schedule.lr'", "at least one"]),
    ({"schedule.lr": [0.1] * 5, "schedule.momentum": [0.9] * 4}, ["20 combinations"]),
])
def test_every_combination_is_validated_before_any_work(tmp_path, options, words):
    with pytest.raises(ValueError) as info:
        config(tmp_path / "run", selection={"options": options})
    assert all(w in str(info.value) for w in words), str(info.value)
    assert not (tmp_path / "run").exists()


def test_the_choice_sees_base_classes_only_scores_each_candidate_by_its_accuracy_and_is_applied(tmp_path):
    from opendas_encoder.generated.world import world_vocabulary
    from opendas_encoder.train.evaluate import class_scores
    from opendas_encoder.train.holdout import holdout_data
    from opendas_encoder.train.pipeline import build_model, prepare_experiment, run_experiment

    cfg = config(tmp_path)
    res = run_experiment(cfg, progress=False, plots=False)
    sel = res["selection"]
    words = world_vocabulary()
    novel = set(words["test"]) - set(words["base"])
    assert set(sel["held_out"]) <= set(words["base"]) and not set(sel["held_out"]) & novel  # never a novel class
    assert [c["options"] for c in sel["candidates"]] == [{"method_options.alpha": a} for a in ALPHAS]

    data = prepare_experiment(cfg, build_model(cfg), progress=False)
    split = holdout_data(data, cfg.seed)
    assert split["held_out"] == sel["held_out"]
    for i, row in enumerate(sel["candidates"]):  # each score: the candidate's own checkpoint, measured again
        torch.manual_seed(cfg.seed)  # build_model's random base weights (pretrained=None)
        base = oe.create_encoder("wiseft-both", "opendas-tiny-vit").clip
        candidate = oe.load_encoder(str(tmp_path / "selection" / f"candidate{i}" / "final"), model=base)
        accs = []
        for part in ("base_val", "novel_val"):
            pred = class_scores(candidate, split[part].images, split["names"], "cpu").argmax(1)
            accs.append(100 * accuracy_score(split[part].labels.numpy(), pred.numpy()))
        assert (row["base_acc"], row["novel_acc"]) == pytest.approx(accs, abs=1e-6)
        assert row["hm"] == pytest.approx(0 if min(accs) == 0 else 2 * accs[0] * accs[1] / sum(accs))
    hms = [c["hm"] for c in sel["candidates"]]
    chosen = ALPHAS[hms.index(max(hms))]  # the best; ties to the earlier one
    assert sel["options"] == {"method_options.alpha": chosen}
    saved = json.load(open(os.path.join(res["checkpoint"], "opendas_config.json")))
    assert saved["method_config"]["alpha"] == chosen
    report = (tmp_path / "report.md").read_text()  # the choice, where a user reads the run
    assert f'options chosen on held-out base classes {sel["held_out"]}: {{"method_options.alpha": {chosen}}}' in report


def test_an_interrupted_run_reuses_the_recorded_choice_and_trains_no_candidate_again(tmp_path, monkeypatch):
    from opendas_encoder.train import trainer
    from opendas_encoder.train.pipeline import run_experiment

    cfg = config(tmp_path)
    first = run_experiment(cfg, progress=False, plots=False)
    for name in ("state", "final", "results.json", "train_log.jsonl"):  # killed after the choice was recorded
        path = tmp_path / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)

    def no_candidate_training(*args, **kwargs):
        raise AssertionError("a candidate was trained again")

    monkeypatch.setattr(trainer, "fit", no_candidate_training)  # what the choice calls; the final run has its own
    again = run_experiment(cfg, resume=True, progress=False, plots=False)
    assert again["selection"] == first["selection"]
    assert again["adapted"] == pytest.approx(first["adapted"])
    finished = run_experiment(cfg, resume=True, progress=False, plots=False)  # finished: read back, nothing trains
    assert finished["adapted"] == pytest.approx(first["adapted"])


def test_a_run_saved_before_the_selection_section_existed_still_resumes(tmp_path):
    """Training states of 0.3 record no ``selection`` key: a config that chooses nothing gives the same record
    (the full-mode suite's states of 0.3 resumed under 0.4 were refused for 'selection.options' before this),
    one that chooses something does not."""
    from opendas_encoder.train.config import resume_mismatches, resume_record

    plain = config(tmp_path, selection={})
    saved_by_0_3 = {k: v for k, v in resume_record(plain).items() if not k.startswith("selection")}
    assert resume_mismatches(saved_by_0_3, plain) == []
    assert [m.split(":")[0] for m in resume_mismatches(saved_by_0_3, config(tmp_path))] == \
        ["selection.options.method_options.alpha"]
