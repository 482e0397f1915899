"""OpenDAS's low-rank option (issue 24 part 2a): q/k/v low-rank updates per tower with a merge coefficient toward
the zero-shot weights, chosen on held-out BASE classes treated as novel.

Independent truths: the issue's CLIP-LoRA count; open_clip's own attention with the hand-merged weight
W + c s B A (WiSE-FT of the delta); the generated world's vocabulary (novel classes); the engine's own
``class_scores``.
"""

import copy
import json
import os
from dataclasses import replace

import open_clip
import pytest
import torch

import opendas_encoder as oe
from conftest import make_square_segments, make_tiny_clip
from opendas_encoder.methods.opendas import LOWRANK_ALPHA, PromptConfig
from opendas_encoder.train import prepare_segments
from opendas_encoder.train.config import (DataConfig, DatasetSpec, ModelSpec, RuntimeConfig, ScheduleConfig,
                                          TrainConfig)
from opendas_encoder.train.evaluate import class_scores
from opendas_encoder.train.holdout import BASE_VAL_EVERY, holdout_split, relabelled
from opendas_encoder.train.lowrank import MERGE_GRID, merge_scores

IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(9))
NAMES = ["chair", "lamp"]


def test_off_in_the_paper_preset_rank_2_in_the_default_and_the_count_is_clip_loras():
    assert PromptConfig.paper().lowrank_rank == 0 and PromptConfig().lowrank_rank == 0  # the plain encoder: none
    assert TrainConfig(preset="paper").prompt_config().lowrank_rank == 0
    assert TrainConfig().prompt_config().lowrank_rank == 2  # the selection rule's pick (docs/selection.md)
    with torch.device("meta"):
        b16 = open_clip.create_model("ViT-B-16", device="meta")
    model = oe.wrap_clip("opendas", b16, lowrank_rank=2)
    assert sum(p.numel() for n, p in model.named_learned_parameters().items() if "lowrank" in n) == 184_320
    with pytest.raises(ValueError, match="lowrank_merge_text"):
        PromptConfig(lowrank_merge_text=1.5)


def test_the_default_presets_encoder_on_vit_l14_is_the_papers_prompts_plus_rank_2_pairs():
    """ViT-L-14 under preset default: the paper's 233,472 prompt values plus rank-2 A/B pairs on q, k, v of 24
    image layers (width 1024) and 12 text layers (width 768): 24*3*2*2*1024 + 12*3*2*2*768 = 405,504; 638,976 in
    all (2.6 MB in fp32, the README's figure)."""
    with torch.device("meta"):
        l14 = open_clip.create_model("ViT-L-14", device="meta")
    model = oe.wrap_clip("opendas", l14, **{k: v for k, v in TrainConfig().prompt_config().to_dict().items()
                                           if k != "legacy_conventions"})
    learned = model.named_learned_parameters()
    assert sum(p.numel() for n, p in learned.items() if "lowrank" not in n) == 233_472
    assert sum(p.numel() for p in learned.values()) == 638_976


@pytest.mark.parametrize("c", [0.0, 0.5, 1.0])
def test_merge_coefficient_is_wiseft_of_the_low_rank_delta(c):
    """Features with coefficient c = open_clip with W + c s B A (hand-merged), same prompts (1e-5: float32 order)."""
    clip = make_tiny_clip(4)
    model = oe.wrap_clip("opendas", clip, lowrank_rank=2)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name in ("visual_lowrank_B", "text_lowrank_B"):
            getattr(model, name).copy_(0.1 * torch.randn(getattr(model, name).shape, generator=g))
        model.config = replace(model.config, lowrank_merge_visual=c, lowrank_merge_text=c)
        ref_clip = copy.deepcopy(clip)
        s = c * LOWRANK_ALPHA / 2 ** 0.5
        towers = (("visual", ref_clip.visual.transformer.resblocks), ("text", ref_clip.transformer.resblocks))
        for tower, blocks in towers:
            a, b = getattr(model, f"{tower}_lowrank_A"), getattr(model, f"{tower}_lowrank_B")
            for i, block in enumerate(blocks):
                w = block.attn.in_proj_weight
                d = w.shape[1]
                for j in range(3):
                    w[j * d:(j + 1) * d] += s * b[i, j] @ a[i, j]
        ref = oe.wrap_clip("opendas", ref_clip)
        ref.visual_prompts.copy_(model.visual_prompts)
        ref.text_prompts.copy_(model.text_prompts)
        assert torch.allclose(model.encode_image(IMAGES), ref.encode_image(IMAGES), atol=1e-5)
        assert torch.allclose(model.encode_text(NAMES), ref.encode_text(NAMES), atol=1e-5)


def test_holdout_split_partitions_the_base_segments():
    clip_model = oe.create_encoder("opendas", "opendas-tiny-vit")
    classes = ("red square", "green square", "blue square", "yellow square")
    segs = prepare_segments(make_square_segments(n_per_class=6, classes=classes), clip_model.preprocess,
                            list(classes), clip_model.image_size, progress=False)
    split = holdout_split(segs, seed=3)
    assert split == holdout_split(segs, seed=3) and len(split["held_out"]) == 1  # round(0.25 x 4)
    assert set(split["held_out"]) | set(split["trained"]) == set(classes)
    assert sorted(split["train"] + split["base_val"] + split["novel_val"]) == list(range(len(segs)))
    names = segs.label_strings()
    assert {names[i] for i in split["novel_val"]} == set(split["held_out"])
    assert len(split["base_val"]) == 3 * (6 // BASE_VAL_EVERY)
    assert not {names[i] for i in split["train"]} & set(split["held_out"])
    sub = relabelled(segs, split["train"], split["trained"])
    assert sub.label_strings() == [names[i] for i in split["train"]]
    grid = merge_scores(oe.wrap_clip("opendas", make_tiny_clip(2), lowrank_rank=2),
                        relabelled(segs, split["base_val"], list(classes)),
                        relabelled(segs, split["novel_val"], list(classes)), list(classes), "cpu")
    assert len(grid) == len(MERGE_GRID) ** 2


def test_grid_scores_are_the_engines_accuracies():
    model = oe.create_encoder("opendas", "opendas-tiny-vit", lowrank_rank=2)
    with torch.no_grad():
        model.visual_lowrank_B.normal_(std=0.2)
        model.text_lowrank_B.normal_(std=0.2)
    classes = ["red square", "green square", "blue square"]
    segs = prepare_segments(make_square_segments(n_per_class=3), model.preprocess, classes, model.image_size,
                            progress=False)
    rows = merge_scores(model, segs, segs, classes, "cpu")
    row = next(r for r in rows if (r["visual"], r["text"]) == (0.25, 0.75))
    model.config = replace(model.config, lowrank_merge_visual=0.25, lowrank_merge_text=0.75)
    pred = class_scores(model, segs.images, classes, "cpu").argmax(1)
    assert row["base_acc"] == pytest.approx(float((pred == segs.labels).float().mean()) * 100, abs=1e-4)
    assert model.config.lowrank_merge_visual == 0.25  # merge_scores restored the coefficients it tried


def test_training_chooses_on_held_out_base_classes_and_the_checkpoint_loads(tmp_path):
    from opendas_encoder.generated.world import world_vocabulary
    from opendas_encoder.train.pipeline import run_experiment

    cfg = TrainConfig(name="lowrank", preset="paper", prompts={"lowrank_rank": 2},
                      model=ModelSpec(name="opendas-tiny-vit", pretrained=None),
                      data=DataConfig(train=DatasetSpec(name="generated-world", split="train",
                                                        options={"n_scenes": 6, "seed": 0}),
                                      test=DatasetSpec(name="generated-world", split="test",
                                                       options={"n_scenes": 3, "seed": 1})),
                      schedule=ScheduleConfig(batch_size=16, stage1_epochs=1, stage2_epochs=1, warmup_epochs=0),
                      runtime=RuntimeConfig(device="cpu"), output_dir=str(tmp_path))
    res = run_experiment(cfg, progress=False, plots=False)
    sel = res["lowrank_selection"]
    words = world_vocabulary()
    novel = set(words["test"]) - set(words["base"])
    assert set(sel["held_out"]) <= set(words["base"]) and not set(sel["held_out"]) & novel  # never the novel ones
    saved = json.load(open(os.path.join(res["checkpoint"], "opendas_config.json")))
    assert (saved["method_config"]["lowrank_merge_visual"], saved["method_config"]["lowrank_merge_text"]) == \
        (sel["visual"], sel["text"]) and saved["metadata"]["lowrank_selection"]["held_out"] == sel["held_out"]
    assert os.path.isdir(os.path.join(str(tmp_path), "lowrank_selection", "final"))
    report = open(os.path.join(str(tmp_path), "report.md")).read()  # the choice, where a user reads the run
    assert f"low-rank merge coefficients: image {sel['visual']:g}, text {sel['text']:g}" in report
    assert f"chosen on held-out base classes {sel['held_out']}" in report
    torch.manual_seed(cfg.seed)  # build_model's random base weights (pretrained=None)
    loaded = oe.load_encoder(res["checkpoint"], model=oe.create_encoder("opendas", "opendas-tiny-vit").clip)
    assert (loaded.config.lowrank_merge_visual, loaded.config.lowrank_rank) == (sel["visual"], 2)


def test_the_default_preset_with_too_few_segments_to_hold_out_merges_at_zero_and_says_why(tmp_path):
    """2 shots per class leave no fifth segment to validate on: no selection run, c = 0 (zero-shot weights), a
    warning, and the reason in the results and the checkpoint; the split itself refuses 2 classes by name."""
    from opendas_encoder.train.holdout import TooFewToHoldOut
    from opendas_encoder.train.pipeline import run_experiment

    cfg = TrainConfig(name="fewshot-default", model=ModelSpec(name="opendas-tiny-vit", pretrained=None),
                      data=DataConfig(train=DatasetSpec(name="generated-world", split="train",
                                                        options={"n_scenes": 6, "seed": 0}), shots=2),
                      schedule=ScheduleConfig(batch_size=8, stage1_epochs=1, stage2_epochs=1, warmup_epochs=0),
                      runtime=RuntimeConfig(device="cpu"), output_dir=str(tmp_path))
    assert cfg.prompt_config().lowrank_rank == 2
    with pytest.warns(UserWarning, match="too few training segments.*merged with coefficient 0"):
        res = run_experiment(cfg, progress=False, plots=False)
    sel = res["lowrank_selection"]
    assert (sel["visual"], sel["text"]) == (0.0, 0.0) and "too few training segments" in sel["skipped"]
    assert not os.path.exists(os.path.join(str(tmp_path), "lowrank_selection"))  # nothing trained for it
    assert "low-rank merge coefficients: image 0, text 0 (0 = zero-shot weights; not chosen (choosing on held-out " \
        "base classes: too few training segments" in open(os.path.join(str(tmp_path), "report.md")).read()
    saved = json.load(open(os.path.join(res["checkpoint"], "opendas_config.json")))
    assert (saved["method_config"]["lowrank_merge_visual"], saved["method_config"]["lowrank_merge_text"]) == (0, 0)
    model = oe.create_encoder("opendas", "opendas-tiny-vit")
    two = prepare_segments(make_square_segments(n_per_class=6, classes=("red square", "blue square")),
                           model.preprocess, ["red square", "blue square"], model.image_size, progress=False)
    with pytest.raises(TooFewToHoldOut, match="at least 3 base classes with training segments \\(got 2\\)"):
        holdout_split(two, seed=0)
