"""Issue 24's two baselines: CLIP-LoRA (low-rank q/k/v updates of both towers) and PromptSRC (IVLP prompts with
self-regulating consistency, an ensemble text target and Gaussian prompt aggregation).

Independent truths: the parameter counts stated by the issue / the PromptSRC paper; open_clip's own attention
with the merged weight ``W + s B A`` (the LoRA paper's identity); open_clip's ``encode_text`` of the template
strings; scipy's KL divergence; peft's own wrapping of open_clip's attention.
"""

import copy
import json
import os

import numpy as np
import open_clip
import pytest
import torch
from scipy.stats import entropy

import opendas_encoder as oe
from conftest import make_square_segments, make_tiny_clip
from opendas_encoder.train import ScheduleConfig, TrainConfig, fit, prepare_segments, read_log
from opendas_encoder.train.config import RuntimeConfig
from opendas_encoder.train.evaluate import template_ensemble_features, zero_shot_encoder
from opendas_encoder.train.losses import consistency_loss, logit_consistency

IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
NAMES = ["chair", "office chair", "lamp"]
BASE = ["red square", "green square", "blue square"]


def template_text(clip, names, template="a photo of a {}."):
    return clip.encode_text(open_clip.tokenize([template.format(n) for n in names]))


def meta_model(name):
    with torch.device("meta"):
        return open_clip.create_model(name, device="meta")


# ---------------------------------------------------------------- exact trainable-parameter counts (ViT-B/16)
def test_cliplora_vit_b16_count_is_the_papers_184320():
    """Issue 24: "184,320 parameters at rank 2 on q, k, v of both towers" (ViT-B/16, shapes only)."""
    model = oe.wrap_clip("cliplora", meta_model("ViT-B-16"))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 184_320
    assert sum(p.numel() for p in model.learned_parameters()) == 184_320
    assert not any(p.requires_grad for p in model.clip.parameters())
    vision_only = oe.wrap_clip("cliplora", meta_model("ViT-B-16"), encoder="vision", targets="qv")
    assert sum(p.numel() for p in vision_only.learned_parameters()) == 12 * 2 * 2 * (768 + 768)


def test_promptsrc_vit_b16_count_is_the_papers_46k():
    """PromptSRC (paper: 46K parameters): 4 vision + 4 text tokens in 9 layers of each tower of ViT-B/16."""
    model = oe.wrap_clip("promptsrc", meta_model("ViT-B-16"))
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n == 46_080 and round(n / 1000) == 46
    assert tuple(model.visual_prompts.shape) == (9, 4, 768) and tuple(model.text_prompts.shape) == (9, 4, 512)


def test_peft_lora_of_open_clip_attention_has_another_placement():
    """Why CLIP-LoRA does not use peft here (the module docstring): peft's MultiheadAttention LoRA adapts the
    output projection too and shares one A across q, k, v; the paper adapts q, k, v with a pair each."""
    peft = pytest.importorskip("peft")
    clip = make_tiny_clip(0)
    wrapped = peft.get_peft_model(clip, peft.LoraConfig(r=2, lora_alpha=1, target_modules=r".*resblocks\.\d+\.attn$"))
    names = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert any("out_proj" in n for n in names)
    in_proj_a = [p for n, p in wrapped.named_parameters() if "lora_A" in n and "out_proj" not in n]
    assert {tuple(p.shape) for p in in_proj_a} == {(2, 48), (2, 40)}  # one A (rank, width) for all of q, k, v


# ---------------------------------------------------------------- CLIP-LoRA: what the low-rank pairs do
def test_cliplora_untrained_is_zero_shot_clip():
    clip = make_tiny_clip(3)
    model = oe.wrap_clip("cliplora", clip)
    with torch.no_grad():
        assert torch.allclose(model.encode_image(IMAGES), clip.encode_image(IMAGES), atol=1e-5)
        assert torch.allclose(model.encode_text(NAMES), template_text(clip, NAMES), atol=1e-5)


def merged_copy(model):
    """open_clip model with in_proj_weight[q|k|v] += s * B A (the LoRA paper's merged weight), built by hand."""
    ref = copy.deepcopy(model.clip)
    s = model.config.alpha / model.config.rank ** 0.5
    with torch.no_grad():
        for tower, blocks in (("visual", ref.visual.transformer.resblocks), ("text", ref.transformer.resblocks)):
            a, b = getattr(model, f"{tower}_lora_A"), getattr(model, f"{tower}_lora_B")
            for i, block in enumerate(blocks):
                w = block.attn.in_proj_weight
                d = w.shape[1]
                for j, slot in enumerate("qkv".index(c) for c in model.config.targets):
                    w[slot * d:(slot + 1) * d] += s * b[i, j] @ a[i, j]
    return ref


@pytest.mark.parametrize("targets", ["qkv", "v", "qk"])
def test_cliplora_eval_features_equal_open_clip_with_the_merged_weights(targets):
    """Eval mode (no dropout): the activation-side update equals open_clip's own nn.MultiheadAttention run with
    W + s B A (float32 rounding of a different summation order: 1e-5)."""
    clip = make_tiny_clip(5)
    model = oe.wrap_clip("cliplora", clip, targets=targets, rank=3, alpha=2.0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.learned_parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
        ref = merged_copy(model)
        image, text = model.encode_image(IMAGES), model.encode_text(NAMES)
        assert torch.allclose(image, ref.encode_image(IMAGES), atol=1e-5)
        assert torch.allclose(text, template_text(ref, NAMES), atol=1e-5)
        assert not torch.allclose(image, clip.encode_image(IMAGES), atol=1e-3)  # the pairs do act
        # the shared open_clip model is untouched: a zero-shot encoder over it is still CLIP
        zs = zero_shot_encoder(model)
        assert torch.allclose(zs.encode_image(IMAGES), clip.encode_image(IMAGES), atol=0)
    assert all("forward" not in vars(m) for m in clip.modules())


def test_cliplora_dropout_only_in_train_mode_and_only_on_the_update():
    clip = make_tiny_clip(6)
    model = oe.wrap_clip("cliplora", clip, dropout=0.5)
    assert not model.training  # a new encoder is deterministic
    with torch.no_grad():
        for p in model.learned_parameters():
            p.normal_(std=0.1)
        model.train()
        torch.manual_seed(0)
        a = model.encode_image(IMAGES)
        b = model.encode_image(IMAGES)
        assert not torch.allclose(a, b, atol=1e-4)
        model.eval()
        assert torch.equal(model.encode_image(IMAGES), model.encode_image(IMAGES))
        with torch.no_grad():
            for name in ("visual_lora_B", "text_lora_B"):
                getattr(model, name).zero_()
        model.train()  # with B = 0 the dropped input reaches nothing: exactly CLIP in train mode too
        assert torch.allclose(model.encode_image(IMAGES), clip.encode_image(IMAGES), atol=1e-5)


def test_cliplora_trains_only_its_pairs_per_tower():
    clip = make_tiny_clip(7)
    before = {n: p.detach().clone() for n, p in clip.named_parameters()}
    model = oe.wrap_clip("cliplora", clip)
    model.set_trainable(visual=True, text=False)
    assert {n for n, p in model.named_learned_parameters().items() if p.requires_grad} == {"visual_lora_A",
                                                                                            "visual_lora_B"}
    model.set_trainable(True, True)
    start = {n: t.clone() for n, t in model.learned_state_dict().items()}
    opt = torch.optim.SGD(model.learned_parameters(), lr=0.5)
    for _ in range(2):  # B starts at zero, so A first gets a gradient at step 2
        img, txt, scale = model.train()(IMAGES, NAMES)
        loss = torch.nn.functional.cross_entropy(scale * img @ txt.T, torch.tensor([0, 2]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.learned_state_dict()
    assert all(not torch.equal(start[n], after[n]) for n in start)
    assert all(torch.equal(p, before[n]) for n, p in clip.named_parameters())


@pytest.mark.parametrize("kwargs,match", [(dict(rank=0), "rank"), (dict(targets="qo"), "targets"),
                                          (dict(targets="qq"), "targets"), (dict(dropout=1.0), "dropout"),
                                          (dict(encoder="image"), "encoder")])
def test_cliplora_bad_configs_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        oe.wrap_clip("cliplora", make_tiny_clip(), **kwargs)


# ---------------------------------------------------------------- PromptSRC: the encoder and its training options
def test_promptsrc_is_ivlp_prompts_capped_at_the_towers_depth():
    model = oe.wrap_clip("promptsrc", make_tiny_clip(1))  # 3 + 3 layers < PromptSRC's depth 9
    assert (model.config.visual_depth, model.config.text_depth) == (3, 3)
    assert (model.config.visual_tokens, model.config.text_tokens, model.config.text_init) == (4, 4, "a photo of a")
    prompts = model.template(NAMES)
    opendas = oe.wrap_clip("opendas", make_tiny_clip(1), visual_tokens=4, text_tokens=4)
    assert torch.equal(prompts, opendas.template(NAMES))  # "<4 context> name ." as IVLP / OpenDAS


def test_promptsrc_training_defaults_are_its_configs_and_written_keys_win():
    cfg = TrainConfig(method="promptsrc")
    c, a = cfg.consistency, cfg.averaging
    assert (c.text, c.image, c.logits, c.distance, c.kl_reduction, c.text_target) == \
        (25.0, 10.0, 1.0, "l1", "per-logit", "ensemble")
    assert (a.mode, a.gaussian_mean * 20, a.gaussian_std) == ("gaussian", 15.0, 1.0)  # GPA_MEAN 15 of 20 epochs
    assert cfg.setting == "one-stage-ce" and cfg.schedule.optimizer == "sgd" and cfg.schedule.lr == 0.0025
    cfg = TrainConfig(method="promptsrc", consistency={"text": 5.0}, averaging={"mode": "off"})
    assert (cfg.consistency.text, cfg.consistency.image, cfg.averaging.mode) == (5.0, 10.0, "off")
    lora = TrainConfig(method="cliplora", schedule=ScheduleConfig(batch_size=8, lr=1e-3))
    assert (lora.schedule.optimizer, lora.schedule.lr, lora.schedule.weight_decay, lora.schedule.warmup_epochs,
            lora.schedule.batch_size) == ("adamw", 1e-3, 1e-2, 0, 8)
    assert TrainConfig(method="cliplora").schedule.lr == 2e-4
    with pytest.raises(ValueError, match="consistency: an OpenDAS option"):  # other baselines still refuse it
        TrainConfig(method="cliplora", consistency={"text": 1.0})
    paper = TrainConfig(preset="paper").consistency
    assert (paper.kl_reduction, paper.text_target) == ("batchmean", "template")  # today's training


def test_per_logit_kl_is_scipys_kl_over_batch_times_classes():
    g = torch.Generator().manual_seed(2)
    logits, frozen = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    p = torch.softmax(frozen, -1).numpy().astype(np.float64)
    q = torch.softmax(logits, -1).numpy().astype(np.float64)
    kl = sum(entropy(p[i], q[i]) for i in range(4))
    assert logit_consistency(logits, frozen, "per-logit").item() == pytest.approx(kl / 24, rel=1e-5)
    assert logit_consistency(logits, frozen).item() == pytest.approx(kl / 4, rel=1e-5)
    img = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    both = consistency_loss((0.0, 0.0, 1.0), "l1", img, txt, torch.tensor(1.0), img.flip(0), txt.flip(0), "per-logit")
    assert both.item() == pytest.approx(logit_consistency(img @ txt.T, img.flip(0) @ txt.flip(0).T).item() / 6,
                                        rel=1e-5)


def test_template_ensemble_is_the_normalised_mean_of_open_clips_template_features():
    clip = make_tiny_clip(8)
    encoder = oe.wrap_clip("zeroshot", clip)
    templates = ["a photo of a {}.", "a drawing of the {}.", "itap of a {}."]
    with torch.no_grad():
        mean = torch.stack([template_text(clip, NAMES, t) for t in templates]).mean(0)
        ours = template_ensemble_features(encoder, NAMES, templates)
        assert torch.allclose(ours, torch.nn.functional.normalize(mean, dim=-1), atol=1e-6)
        assert template_ensemble_features(encoder, NAMES[:1]).shape == (1, 24)  # the 80 OpenAI templates


# ---------------------------------------------------------------- smoke training through the engine
@pytest.mark.parametrize("method", ["cliplora", "promptsrc"])
def test_a_few_training_steps_export_a_checkpoint_that_loads(method, tmp_path):
    torch.manual_seed(0)
    model = oe.create_encoder(method, "opendas-tiny-vit")
    base = copy.deepcopy(model.clip)
    train = prepare_segments(make_square_segments(n_per_class=2), model.preprocess, BASE, model.image_size,
                             progress=False)
    cfg = TrainConfig(method=method, schedule=ScheduleConfig(batch_size=4, stage1_epochs=1, stage2_epochs=1,
                                                                                   warmup_epochs=0),
                      runtime=RuntimeConfig(device="cpu"), output_dir=str(tmp_path))
    start = {n: t.clone() for n, t in model.learned_state_dict().items()}
    result = fit(model, train, BASE + ["orange square"], cfg, str(tmp_path / "run"), progress=False)
    log = read_log(str(tmp_path / "run"))
    assert len(log) == 2 * 2 and all(np.isfinite(r["loss"]) for r in log)
    assert ("consistency" in log[0]) == (method == "promptsrc")
    assert any(not torch.equal(start[n], t) for n, t in model.learned_state_dict().items())
    config = json.load(open(os.path.join(result.final_dir, "opendas_config.json")))
    assert config["method"] == method and config["tensors_file"] in os.listdir(result.final_dir)
    loaded = oe.load_encoder(result.final_dir, model=base)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(IMAGES), model.eval().encode_image(IMAGES))
        assert torch.equal(loaded.encode_text(NAMES), model.encode_text(NAMES))
