"""WiSE-FT of both towers (issue 24's weight-space candidate): per-tower merge weights, per-tower learning rate,
checkpoints. Truths: open_clip's own zero-shot model, and SGD's update being linear in the learning rate."""

import copy

import pytest
import torch

import opendas_encoder as oe
from conftest import make_square_segments, make_tiny_clip
from opendas_encoder.train import ScheduleConfig, TrainConfig, fit, prepare_segments
from opendas_encoder.train.config import RuntimeConfig

IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
NAMES = ["red square", "green square", "blue square"]


def nudged(model, seed=3):
    """``model`` with every learned tensor moved by noise (a stand-in for training that touches each weight)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.learned_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def test_each_tower_is_merged_with_its_own_weight_and_the_checkpoint_keeps_both(tmp_path):
    base = make_tiny_clip(21)
    model = nudged(oe.wrap_clip("wiseft-both", copy.deepcopy(base), model_name="tiny", alpha_visual=0.0, alpha_text=1.0))
    tuned = {n: p.detach().clone() for n, p in model.named_learned_parameters().items()}
    model.finalize()
    zero_shot = dict(base.named_parameters())
    for name, p in model.named_learned_parameters().items():
        assert torch.equal(p, zero_shot[name] if name.startswith("visual.") else tuned[name]), name
    assert any(n.startswith("visual.") for n in tuned) and any(not n.startswith("visual.") for n in tuned)
    with torch.no_grad():  # image tower: open_clip's own zero-shot model, exactly
        assert torch.equal(model.encode_image(IMAGES), base.encode_image(IMAGES))
        text = model.encode_text(NAMES)
    folder = oe.save_checkpoint(model, str(tmp_path / "both"))
    loaded = oe.load_encoder(folder, model=copy.deepcopy(base))
    assert (loaded.config.alpha_visual, loaded.config.alpha_text) == (0.0, 1.0)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(IMAGES), base.encode_image(IMAGES))
        assert torch.equal(loaded.encode_text(NAMES), text)
    model.finalize(0.5)  # an explicit weight is both towers'
    assert model.config.tower_alpha("visual") == model.config.tower_alpha("text") == 0.5
    name = next(n for n in tuned if n.startswith("visual."))
    assert torch.allclose(model.named_learned_parameters()[name], 0.5 * zero_shot[name] + 0.5 * tuned[name])


@pytest.mark.parametrize("bad", [dict(alpha_visual=1.5), dict(alpha_text=-0.1), dict(visual_lr_scale=0),
                                 dict(visual_lr_scale=True)])
def test_bad_tower_options_are_refused_by_name(bad):
    from opendas_encoder.methods.wiseft import WiSEFTBothConfig

    with pytest.raises(ValueError, match=f"WiSEFTBothConfig.{next(iter(bad))}"):
        WiSEFTBothConfig(**bad)


def _one_step(tmp_path, scale):
    torch.manual_seed(0)
    model = oe.create_encoder("wiseft-both", "opendas-tiny-vit", None, visual_lr_scale=scale)
    start = {n: p.detach().clone() for n, p in model.named_learned_parameters().items()}
    segments = make_square_segments(n_per_class=2, classes=tuple(NAMES))
    train = prepare_segments(segments, model.preprocess, NAMES, model.image_size, progress=False)
    config = TrainConfig(method="wiseft-both", method_options={"visual_lr_scale": scale},
                         schedule=ScheduleConfig(batch_size=len(train), stage1_epochs=1, stage2_epochs=0, lr=0.01,
                                                 warmup_epochs=0),
                         runtime=RuntimeConfig(device="cpu"), output_dir=str(tmp_path / f"x{scale}"))
    fit(model, train, NAMES, config, config.output_dir, progress=False)
    tuned = model.learned_state_dict()  # the fine-tuned weights (the live ones are merged)
    return {n: tuned[n] - start[n] for n in start}


def test_visual_lr_scale_multiplies_the_image_towers_step_and_leaves_the_text_towers(tmp_path):
    """One full-batch SGD step (momentum's first step is the plain gradient step; weight decay is linear in lr
    too): the image tower moves ``visual_lr_scale`` times as far, the text tower the same."""
    one, three = _one_step(tmp_path, 1.0), _one_step(tmp_path, 3.0)
    moved = [n for n in one if one[n].abs().max() > 0]
    assert any(n.startswith("visual.") for n in moved) and any(not n.startswith("visual.") for n in moved)
    for name in moved:
        expected = 3.0 * one[name] if name.startswith("visual.") else one[name]
        # float32: the two runs compute the same gradient; the difference is rounding of p - lr * g (~1e-7 of p)
        assert torch.allclose(three[name], expected, rtol=1e-3, atol=1e-6), name
