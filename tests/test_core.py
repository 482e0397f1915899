"""Core encoder: parameter counts, equality with vanilla open_clip, prompt semantics, checkpoints."""

import json
import os
import re
import subprocess
import sys

import open_clip
import pytest
import torch

import opendas_encoder as oe
from conftest import make_tiny_clip, save_weights
from opendas_encoder.core.checkpoint import CONFIG_NAME, LEGACY_TENSORS_FILE as WEIGHTS_NAME

TINY = "opendas-tiny-vit"


tiny_clip = make_tiny_clip


def n_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- parameter counts (paper Tab. 1, 7)
@pytest.fixture(scope="module")
def vit_l14():
    torch.manual_seed(0)
    return open_clip.create_model("ViT-L-14", pretrained=None)


def test_vit_l14_default_has_paper_parameter_count(vit_l14):
    model = oe.PromptedCLIP(vit_l14, oe.PromptConfig())
    assert model.config.visual_depth == 24 and model.config.text_depth == 12
    assert n_trainable(model) == 233_472
    assert sum(p.numel() for p in model.prompt_parameters()) == 233_472
    assert not any(p.requires_grad for p in model.clip.parameters())


@pytest.mark.parametrize("kv,kt,expected", [(8, 4, 135_168), (8, 8, 172_032), (8, 12, 208_896),
                                            (12, 4, 184_320), (12, 8, 221_184), (12, 12, 258_048)])
def test_vit_l14_table7_counts(vit_l14, kv, kt, expected):
    cfg = oe.PromptConfig(visual_tokens=kv, visual_depth=12, text_tokens=kt, text_depth=12)
    assert n_trainable(oe.PromptedCLIP(vit_l14, cfg)) == expected


# ---------------------------------------------------------------- equality with vanilla open_clip
@pytest.mark.parametrize("build", [lambda: tiny_clip(1), lambda: oe.create_model(TINY, prompts=oe.PromptConfig(0, None, 0)).clip])
def test_zero_prompts_equal_vanilla_tiny(build):
    clip = build()
    model = oe.PromptedCLIP(clip, oe.PromptConfig(visual_tokens=0, text_tokens=0))
    assert model.prompt_parameters() == []
    images = torch.randn(3, 3, 32, 32)
    names = ["chair", "office chair", "a red table"]
    with torch.no_grad():
        assert torch.allclose(model.encode_image(images), clip.encode_image(images), atol=1e-5)
        ref = clip.encode_text(open_clip.tokenize([f"{n}." for n in names]))
        assert torch.allclose(model.encode_text(names), ref, atol=1e-5)


def test_zero_prompts_equal_vanilla_vit_b16_quickgelu():
    torch.manual_seed(0)
    model = oe.create_model("ViT-B-16-quickgelu", prompts=oe.PromptConfig(visual_tokens=0, text_tokens=0))
    clip = model.clip
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model.encode_image(images), clip.encode_image(images), atol=1e-5)
        ref = clip.encode_text(open_clip.tokenize(["door frame."]))
        assert torch.allclose(model.encode_text(["door frame"]), ref, atol=1e-5)
        assert torch.allclose(model.encode_text(open_clip.tokenize(["door frame"])), ref, atol=1e-5)


@pytest.mark.parametrize("name", ["chair", "office swivel chair"])
def test_text_depth_one_equals_handcrafted_prompt(name):
    clip = tiny_clip(2)
    model = oe.PromptedCLIP(clip, oe.PromptConfig(visual_tokens=0, text_tokens=4, text_depth=1))
    with torch.no_grad():
        ours = model.encode_text([name])
        ref = clip.encode_text(open_clip.tokenize([f"a photo of a {name}."]))
    assert torch.allclose(ours, ref, atol=1e-5)


def test_tokenized_input_equals_names():
    model = oe.PromptedCLIP(tiny_clip(3), oe.PromptConfig())
    with torch.no_grad():
        a = model.encode_text(["chair", "road"])
        b = model.encode_text(model.tokenizer(["chair", "road"]))
    assert torch.equal(a, b)


def test_long_name_keeps_end_of_text_token():
    model = oe.PromptedCLIP(tiny_clip(3), oe.PromptConfig(text_tokens=4))
    tokens = model.template([" ".join(["word"] * 100)])
    assert tokens.shape == (1, 77)
    assert int(tokens[0, -1]) == model.tokenizer.eot_token_id
    assert int(tokens.argmax()) == 76
    assert int(tokens[0, -2]) == int(open_clip.tokenize(["."])[0, 1])  # the closing period is kept too


def test_text_init_longer_than_tokens_is_refused():
    with pytest.raises(ValueError, match="text_init"):
        oe.PromptedCLIP(tiny_clip(), oe.PromptConfig(text_tokens=2, text_init="a photo of a"))


def test_text_init_fills_last_context_tokens():
    clip = tiny_clip(4)
    model = oe.PromptedCLIP(clip, oe.PromptConfig(text_tokens=6, text_init="a photo of a"))
    ids = open_clip.tokenize(["a photo of a"])[0, 1:5]
    assert torch.equal(model.text_prompts[0, 2:], clip.token_embedding.weight[ids])


# ---------------------------------------------------------------- prompt semantics
def manual_image_features(clip, prompts, depth):
    """Reference deep-VPT forward written directly over the open_clip blocks (layer 0 through ln_pre)."""
    v = clip.visual
    x = v._embeds(IMAGES)
    n = x.shape[1]
    for i, blk in enumerate(v.transformer.resblocks):
        if i < depth:
            p = v.ln_pre(prompts[0]) if i == 0 else prompts[i]
            x = torch.cat([x[:, :n], p.unsqueeze(0).expand(x.shape[0], -1, -1)], 1)
        x = blk(x)
    pooled = v.ln_post(x[:, 0])
    return pooled @ v.proj


IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_visual_prompts_follow_reference_forward(depth):
    clip = tiny_clip(5)
    model = oe.PromptedCLIP(clip, oe.PromptConfig(visual_tokens=3, visual_depth=depth, text_tokens=0))
    with torch.no_grad():
        model.visual_prompts.normal_(std=1.0)
        ref = manual_image_features(clip, model.visual_prompts, depth)
        assert torch.allclose(model.encode_image(IMAGES), ref, atol=1e-5)


def test_every_prompt_row_below_depth_changes_output_and_none_exist_above():
    clip = tiny_clip(6)
    model = oe.PromptedCLIP(clip, oe.PromptConfig(visual_tokens=2, visual_depth=2, text_tokens=2, text_depth=2,
                                                  text_init=""))
    assert tuple(model.visual_prompts.shape) == (2, 2, 48)  # no prompts above depth 2 of 3 layers
    assert tuple(model.text_prompts.shape) == (2, 2, 40)
    with torch.no_grad():
        base_img, base_txt = model.encode_image(IMAGES), model.encode_text(["chair"])
        g = torch.Generator().manual_seed(0)
        for row in range(2):  # (a constant shift would be invisible behind the blocks' LayerNorm)
            delta_v = torch.randn(model.visual_prompts[row].shape, generator=g)
            model.visual_prompts[row] += delta_v
            assert not torch.allclose(model.encode_image(IMAGES), base_img, atol=1e-4)
            model.visual_prompts[row] -= delta_v
            delta_t = torch.randn(model.text_prompts[row].shape, generator=g)
            model.text_prompts[row] += delta_t
            assert not torch.allclose(model.encode_text(["chair"]), base_txt, atol=1e-4)
            model.text_prompts[row] -= delta_t


def test_prompt_tokens_never_enter_image_pooling_with_avg_pool():
    clip = tiny_clip(7, vision_cfg=dict(pool_type="avg"))
    model = oe.PromptedCLIP(clip, oe.PromptConfig(visual_tokens=4, visual_depth=1, text_tokens=0))
    with torch.no_grad():
        model.visual_prompts.normal_()
        v = clip.visual
        x = v._embeds(IMAGES)
        n = x.shape[1]
        x = torch.cat([x, v.ln_pre(model.visual_prompts[0]).unsqueeze(0).expand(2, -1, -1)], 1)
        for blk in v.transformer.resblocks:
            x = blk(x)
        ref = v.ln_post(x[:, :n])[:, 1:].mean(1) @ v.proj
        assert torch.allclose(model.encode_image(IMAGES), ref, atol=1e-5)


def test_backward_reaches_prompts_only():
    model = oe.PromptedCLIP(tiny_clip(8), oe.PromptConfig(visual_tokens=2, text_tokens=2, text_init="a"))
    img, txt, scale = model(IMAGES, ["chair", "table"])
    (scale * img @ txt.T).logsumexp(1).sum().backward()
    assert model.visual_prompts.grad is not None and model.visual_prompts.grad.abs().sum() > 0
    assert model.text_prompts.grad is not None and model.text_prompts.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.clip.parameters())


def test_forward_matches_open_clip_contract():
    model = oe.PromptedCLIP(tiny_clip(9), oe.PromptConfig())
    img, txt, scale = model(IMAGES, ["chair", "table", "lamp"])
    assert img.shape == (2, 24) and txt.shape == (3, 24)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2)) and torch.allclose(txt.norm(dim=-1), torch.ones(3))
    assert torch.allclose(scale, model.clip.logit_scale.exp())


def test_train_mode_keeps_clip_in_eval():
    model = oe.PromptedCLIP(tiny_clip(), oe.PromptConfig()).train()
    assert model.training and not model.clip.training


def test_set_trainable_selects_prompt_groups():
    model = oe.PromptedCLIP(tiny_clip(), oe.PromptConfig())
    model.set_trainable(visual=True, text=False)
    assert model.visual_prompts.requires_grad and not model.text_prompts.requires_grad


def test_non_vit_tower_is_refused():
    torch.manual_seed(0)
    resnet = open_clip.CLIP(embed_dim=16, vision_cfg=dict(image_size=32, layers=(1, 1, 1, 1), width=16),
                            text_cfg=dict(width=32, heads=2, layers=1))
    with pytest.raises(oe.UnsupportedModelError, match="ViT"):
        oe.PromptedCLIP(resnet, oe.PromptConfig())


def test_depth_larger_than_tower_is_refused():
    with pytest.raises(ValueError, match="visual_depth=5 exceeds"):
        oe.PromptedCLIP(tiny_clip(), oe.PromptConfig(visual_depth=5))


@pytest.mark.parametrize("kwargs", [dict(visual_tokens=-1), dict(text_depth=0), dict(visual_tokens=1.5),
                                    dict(text_init=3)])
def test_prompt_config_validation(kwargs):
    with pytest.raises(ValueError):
        oe.PromptConfig(**kwargs)


# ---------------------------------------------------------------- checkpoints
def test_save_load_roundtrip_is_bit_identical(tmp_path):
    torch.manual_seed(0)
    model = oe.create_model(TINY, prompts=oe.PromptConfig(visual_tokens=3, text_tokens=2, text_init="a"))
    with torch.no_grad():
        model.visual_prompts.normal_()
        model.text_prompts.normal_()
    oe.save_checkpoint(model, str(tmp_path / "ckpt"), dataset="unit-test", epochs=0)
    config = json.loads((tmp_path / "ckpt" / CONFIG_NAME).read_text())
    assert config["model_name"] == TINY and config["method_config"]["visual_tokens"] == 3
    assert config["metadata"] == {"dataset": "unit-test", "epochs": 0}
    assert list(config) == sorted(config)
    loaded = oe.load_encoder(str(tmp_path / "ckpt"), model=model.clip)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(IMAGES), model.encode_image(IMAGES))
        assert torch.equal(loaded.encode_text(["chair"]), model.encode_text(["chair"]))
    assert loaded.preprocess is not None and loaded.tokenizer is not None


def test_load_rebuilds_base_model_from_metadata(tmp_path):
    from conftest import save_weights

    torch.manual_seed(0)
    weights = str(tmp_path / "base.safetensors")
    save_weights(oe.create_model(TINY).clip, weights)
    model = oe.create_model(TINY, pretrained=weights)  # recorded as the weights file (a random base is refused)
    oe.save_checkpoint(model, str(tmp_path / "c"))
    loaded = oe.load_encoder(str(tmp_path / "c"))
    assert loaded.model_name == TINY and loaded.pretrained == weights
    assert torch.equal(loaded.visual_prompts, model.visual_prompts)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(IMAGES), model.encode_image(IMAGES))


def test_load_into_other_base_model_is_refused(tmp_path):
    model = oe.PromptedCLIP(tiny_clip(), oe.PromptConfig(), model_name="tiny-a")
    oe.save_checkpoint(model, str(tmp_path / "c"))
    other = tiny_clip(vision_cfg=dict(width=64, layers=2))
    with pytest.raises(ValueError, match=r"vision_width: checkpoint 48 vs model 64"):
        oe.load_encoder(str(tmp_path / "c"), model=other)


def test_missing_and_corrupt_files_give_clear_errors(tmp_path):
    model = oe.PromptedCLIP(tiny_clip(), oe.PromptConfig(), model_name="tiny")
    d = tmp_path / "c"
    oe.save_checkpoint(model, str(d))
    with pytest.raises(FileNotFoundError, match="checkpoint folder not found"):
        oe.load_encoder(str(tmp_path / "nope"), model=tiny_clip())
    (d / WEIGHTS_NAME).write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="corrupt safetensors"):
        oe.load_encoder(str(d), model=tiny_clip())
    os.remove(d / WEIGHTS_NAME)
    with pytest.raises(FileNotFoundError, match="missing prompts.safetensors"):
        oe.load_encoder(str(d), model=tiny_clip())


def test_unknown_config_keys_warn_and_are_ignored(tmp_path):
    model = oe.PromptedCLIP(tiny_clip(), oe.PromptConfig(), model_name="tiny")
    d = tmp_path / "c"
    oe.save_checkpoint(model, str(d))
    cfg = json.loads((d / CONFIG_NAME).read_text())
    cfg["shiny_new_key"] = 1
    cfg["method_config"]["future_option"] = True
    (d / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="unknown"):
        loaded = oe.load_encoder(str(d), model=tiny_clip())
    assert torch.equal(loaded.visual_prompts, model.visual_prompts)


def test_checkpoint_prompt_shape_mismatch_is_refused(tmp_path):
    model = oe.PromptedCLIP(tiny_clip(), oe.PromptConfig(visual_tokens=2), model_name="tiny")
    d = tmp_path / "c"
    oe.save_checkpoint(model, str(d))
    cfg = json.loads((d / CONFIG_NAME).read_text())
    cfg["method_config"]["visual_tokens"] = 3
    (d / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="visual_prompts.*shape"):
        oe.load_encoder(str(d), model=tiny_clip())


# ---------------------------------------------------------------- packaging
def test_import_does_not_pull_heavy_dependencies():
    code = ("import sys, opendas_encoder, opendas_encoder.data, opendas_encoder.vocab, opendas_encoder.methods; "
            "bad = [m for m in ('detectron2', 'open3d', 'hydra', 'omegaconf', 'MinkowskiEngine', 'plyfile') "
            "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_quickstart_runs(repo_root, tmp_path, monkeypatch):
    text = open(os.path.join(repo_root, "README.md")).read()
    match = re.search(r"<!-- quickstart -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README has no quickstart block"
    monkeypatch.chdir(tmp_path)
    exec(compile(match.group(1), "README quickstart", "exec"), {})


def test_ci_runs_the_readme_test_command(repo_root):
    readme = open(os.path.join(repo_root, "README.md")).read()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    assert len(blocks) >= 2 and "opendas demo" in blocks[0] and "pytest" in blocks[1]
    ci = open(os.path.join(repo_root, ".ci", "run")).read()
    assert blocks[1].strip() in ci


@pytest.mark.parametrize("name", ["chair", "office swivel chair"])
def test_carry_init_of_deep_text_prompts_equals_handcrafted_prompt(name):
    clip = tiny_clip(10)
    model = oe.PromptedCLIP(clip, oe.PromptConfig(visual_tokens=0, text_tokens=4, text_deep_init="carry"))
    assert model.config.text_depth == 3
    with torch.no_grad():
        ours = model.encode_text([name])
        ref = clip.encode_text(open_clip.tokenize([f"a photo of a {name}."]))
        random_init = oe.PromptedCLIP(clip, oe.PromptConfig(visual_tokens=0, text_tokens=4)).encode_text([name])
    assert torch.allclose(ours, ref, atol=1e-5)
    assert not torch.allclose(random_init, ref, atol=1e-3)  # the paper's random deep prompts start elsewhere
