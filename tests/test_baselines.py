"""Baselines: paper parameter counts, isolation of training, checkpoints, and each method's math."""

import copy
import json
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

import opendas_encoder as oe
from conftest import make_tiny_clip
from opendas_encoder.core import engine
from opendas_encoder.core.checkpoint import CONFIG_NAME
from opendas_encoder.core.engine import run_vision

TINY = "opendas-tiny-vit"
METHODS = ["cocoop", "vpt", "rpo", "maple", "wiseft-text", "wiseft-visual", "wiseft-both"]
IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
NAMES = ["chair", "office chair", "lamp"]
SMALL = {"vpt": dict(n_tokens=3), "rpo": dict(k=4), "maple": dict(), "cocoop": dict(),
         "wiseft-text": dict(alpha=0.5), "wiseft-visual": dict(alpha=0.5), "wiseft-both": dict(alpha=0.5), "cliplora": dict(), "promptsrc": dict()}
#: issue 24's baselines (their own tests: tests/test_cliplora_promptsrc.py); CLIP-LoRA's A matrices get no gradient
#: on the first step (B starts at zero), so the one-step test above keeps to METHODS
NEW_METHODS = ["cliplora", "promptsrc"]


tiny_clip = make_tiny_clip


def n_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def logits_of(model, images, names):
    if model.image_conditioned_text:
        return model.compute_logits(images, names)
    img, txt, scale = model(images, names)
    return scale * img @ txt.T


def sgd_step(model, lr=0.5):
    torch.manual_seed(1)
    loss = F.cross_entropy(logits_of(model.train(), IMAGES, NAMES), torch.tensor([0, 2]))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return model.eval()


def handcrafted_text(clip, names, template="a photo of a {}."):
    return clip.encode_text(open_clip.tokenize([template.format(n) for n in names]))


# ---------------------------------------------------------------- parameter counts (paper Tab. 1, 6)
@pytest.fixture(scope="module")
def vit_l14():
    torch.manual_seed(0)
    return open_clip.create_model("ViT-L-14", pretrained=None)


@pytest.mark.parametrize("method,expected", [("opendas", 233_472), ("cocoop", 77_616), ("vpt", 786_432),
                                             ("rpo", 43_008), ("maple", 18_935_808),
                                             ("wiseft-text", 123_060_480), ("wiseft-visual", 303_966_208),
                                             ("wiseft-both", 427_026_688)])
def test_vit_l14_trainable_counts_match_paper(vit_l14, method, expected):
    model = oe.wrap_clip(method, vit_l14)
    assert n_trainable(model) == expected
    assert sum(p.numel() for p in model.learned_parameters()) == expected
    if method == "wiseft-both":  # every weight of open_clip's ViT-L-14 but logit_scale and the text projection
        assert expected == sum(p.numel() for n, p in vit_l14.named_parameters()
                               if n not in ("logit_scale", "text_projection"))
    elif method.startswith("wiseft"):
        assert round(expected / 1e6) == {"wiseft-text": 123, "wiseft-visual": 304}[method]
        tower = method.split("-")[1]
        assert all(p.requires_grad == (n.startswith("visual.") == (tower == "visual")) or "proj" in n
                   for n, p in vit_l14.named_parameters() if not n.startswith("logit"))
    else:
        assert not any(p.requires_grad for p in model.clip.parameters())


def test_vit_l14_maple_depth_24_shapes(vit_l14):
    model = oe.wrap_clip("maple", vit_l14)
    assert tuple(model.text_ctx.shape) == (24, 2, 768)
    assert tuple(model.coupling_weight.shape) == (24, 1024, 768) and tuple(model.coupling_bias.shape) == (24, 1024)


# ---------------------------------------------------------------- training touches only the method's tensors
@pytest.mark.parametrize("method", METHODS)
def test_sgd_step_changes_only_own_parameters(method):
    clip = tiny_clip(10)
    before = {n: p.detach().clone() for n, p in clip.named_parameters()}
    model = oe.wrap_clip(method, clip, **SMALL[method])
    learned_before = {n: t.clone() for n, t in model.learned_state_dict().items()}
    sgd_step(model)
    learned_after = model.learned_state_dict()
    assert all(not torch.equal(learned_before[n], learned_after[n]) for n in learned_before), "a tensor did not train"
    own = set(model.named_learned_parameters()) if method.startswith("wiseft") else set()
    for name, p in clip.named_parameters():
        assert torch.equal(p, before[name]) != (name in own), name
    assert not clip.training and model.method == method


# ---------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("method", METHODS + NEW_METHODS)
def test_save_load_roundtrip_is_bit_identical(method, tmp_path):
    base = tiny_clip(11)
    model = sgd_step(oe.wrap_clip(method, copy.deepcopy(base), model_name="tiny", **SMALL[method]))
    if method.startswith("wiseft"):
        model.finalize(0.3)
    oe.save_checkpoint(model, str(tmp_path / "c"), dataset="unit-test")
    config = json.loads((tmp_path / "c" / CONFIG_NAME).read_text())
    assert config["method"] == method and "method_config" in config
    loaded = oe.load_encoder(str(tmp_path / "c"), model=copy.deepcopy(base))
    assert type(loaded) is type(model) and loaded.config == model.config
    for name, t in model.learned_state_dict().items():
        assert torch.equal(loaded.learned_state_dict()[name], t), name
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(IMAGES), model.encode_image(IMAGES))
        assert torch.equal(loaded.encode_text(NAMES), model.encode_text(NAMES))
        assert torch.equal(logits_of(loaded, IMAGES, NAMES), logits_of(model, IMAGES, NAMES))


def test_load_refuses_mismatched_tensors_naming_them(tmp_path):
    model = oe.wrap_clip("vpt", tiny_clip(), model_name="tiny", n_tokens=2)
    oe.save_checkpoint(model, str(tmp_path / "c"))
    cfg = json.loads((tmp_path / "c" / CONFIG_NAME).read_text())
    cfg["method_config"]["n_tokens"] = 3
    (tmp_path / "c" / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"prompts.safetensors: vpt tensors .*'prompts' has shape \(3, 2, 48\)"):
        oe.load_encoder(str(tmp_path / "c"), model=tiny_clip())
    with pytest.raises(ValueError, match=r"missing tensor 'ctx'.*unexpected tensor 'prompts'"):
        oe.wrap_clip("cocoop", tiny_clip()).load_learned_state_dict(model.learned_state_dict())


@pytest.mark.parametrize("method", ["opendas"] + METHODS + NEW_METHODS)
def test_build_by_name_serves_the_encoder_contract(method, tmp_path):
    model = oe.create_encoder(method, TINY, **({} if method == "opendas" else SMALL[method]))
    assert model.method == method and model.model_name == TINY and not model.clip.training
    assert model.image_size == (32, 32) and model.tokenizer is not None and model.preprocess is not None
    img, txt, scale = model(IMAGES, NAMES)
    assert img.shape == (2, model.embed_dim) and txt.shape == (3, model.embed_dim)
    assert torch.allclose(img.norm(dim=-1), torch.ones(2)) and torch.allclose(scale, model.logit_scale.exp())
    json.dumps(model.config_dict())
    assert model.base_signature()["vision_width"] == 64


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown method 'coop'"):
        oe.create_encoder("coop", TINY)


@pytest.mark.parametrize("method,kwargs,match", [
    ("vpt", dict(template="a photo"), "exactly one"), ("vpt", dict(depth=4), "depth=4 exceeds"),
    ("maple", dict(depth=4), "depth=4 exceeds"), ("cocoop", dict(n_ctx=5), "ctx_init 'a photo of a' has 4 tokens"),
    ("rpo", dict(k=0), "k must be"), ("wiseft-text", dict(alpha=1.5), r"alpha must be a number in \[0, 1\]")])
def test_bad_configs_are_refused(method, kwargs, match):
    with pytest.raises(ValueError, match=match):
        oe.wrap_clip(method, tiny_clip(), **kwargs)


# ---------------------------------------------------------------- templates and disabled prompts
def test_template_tokens_equal_open_clip_tokenizer():
    model = oe.wrap_clip("vpt", tiny_clip(), n_tokens=0)
    ids = model.template(NAMES)
    assert torch.equal(ids, open_clip.tokenize([f"a photo of a {n}." for n in NAMES]))
    assert torch.equal(model.template(open_clip.tokenize(NAMES)), ids)
    long = model.template([" ".join(["word"] * 100)])
    assert int(long[0, -1]) == model.tokenizer.eot_token_id and int(long[0, -2]) == ids[0, 6]  # "." kept


def test_vpt_with_zero_tokens_is_vanilla_clip():
    clip = tiny_clip(12)
    model = oe.wrap_clip("vpt", clip, n_tokens=0)
    assert model.learned_parameters() == []
    with torch.no_grad():
        assert torch.allclose(model.encode_image(IMAGES), clip.encode_image(IMAGES), atol=1e-6)
        assert torch.allclose(model.encode_text(NAMES), handcrafted_text(clip, NAMES), atol=1e-6)


def test_vpt_prompts_are_deep_and_never_pooled():
    clip = tiny_clip(13)
    model = oe.wrap_clip("vpt", clip, n_tokens=2, depth=2)
    with torch.no_grad():
        model.prompts.normal_()
        v = clip.visual
        x = v._embeds(IMAGES)
        n = x.shape[1]
        for i, blk in enumerate(v.transformer.resblocks):  # reference: replace below depth 2, carry above
            if i < 2:
                p = model.prompts[i] if i else v.ln_pre(model.prompts[0])
                x = torch.cat([x[:, :n], p.expand(2, -1, -1)], 1)
            x = blk(x)
        assert torch.allclose(model.encode_image(IMAGES), v.ln_post(x[:, 0]) @ v.proj, atol=1e-5)


def test_cocoop_initial_context_is_the_handcrafted_prompt_and_zero_shift_is_exact():
    clip = tiny_clip(14)
    model = oe.wrap_clip("cocoop", clip)
    assert model.meta_net.linear1.out_features == 24 // 16
    with torch.no_grad():
        assert torch.allclose(model.encode_text(NAMES), handcrafted_text(clip, NAMES), atol=1e-6)
        model.meta_net.linear2.weight.zero_()
        model.meta_net.linear2.bias.zero_()
        img = F.normalize(clip.encode_image(IMAGES), dim=-1)
        txt = F.normalize(handcrafted_text(clip, NAMES), dim=-1)
        assert torch.allclose(model.compute_logits(IMAGES, NAMES), clip.logit_scale.exp() * img @ txt.T, atol=1e-4)


def test_cocoop_text_depends_on_each_image_through_the_meta_net():
    model = oe.wrap_clip("cocoop", tiny_clip(15), meta_reduction=2)
    assert model.meta_net.linear1.out_features == 12
    with torch.no_grad():
        model.meta_net.linear2.weight.normal_()
        img = model.encode_image(IMAGES, normalize=True)
        per_image = model.encode_text_for_images(img, NAMES, normalize=True)  # (B, C, D)
        assert per_image.shape == (2, 3, 24)
        shift = model.meta_net(img[1:2])                                        # image 1 alone, by hand
        ref = engine.encode_text(model.text_view, model.template(NAMES),
                                 lambda i: (model.ctx + shift) if i == 0 else None)
        assert torch.allclose(per_image[1], F.normalize(ref, dim=-1), atol=1e-6)
        assert not torch.allclose(per_image[0], per_image[1], atol=1e-4)
        logits = model.compute_logits(IMAGES, NAMES)
        assert torch.allclose(logits[1], model.logit_scale.exp() * per_image[1] @ img[1], atol=1e-4)


def test_maple_depth_one_text_equals_handcrafted_prompt():
    clip = tiny_clip(16)
    model = oe.wrap_clip("maple", clip, depth=1)
    with torch.no_grad():
        assert torch.allclose(model.encode_text(NAMES), handcrafted_text(clip, NAMES), atol=1e-6)
    assert torch.equal(model.text_ctx[0], clip.token_embedding.weight[open_clip.tokenize(["a photo"])[0, 1:3]])


def test_maple_couples_text_context_into_every_vision_layer():
    clip = tiny_clip(17, vision_cfg=dict(layers=4), text_cfg=dict(layers=2))
    model = oe.wrap_clip("maple", clip)
    assert model.depth == 4 and tuple(model.text_ctx.shape) == (4, 2, 40)
    with torch.no_grad():
        v = clip.visual
        x = v._embeds(IMAGES)
        n = x.shape[1]
        for i, blk in enumerate(v.transformer.resblocks):  # reference: Linear_i(text_ctx[i]) at every layer
            p = F.linear(model.text_ctx[i], model.coupling_weight[i], model.coupling_bias[i])
            x = torch.cat([x[:, :n], (v.ln_pre(p) if i == 0 else p).expand(2, -1, -1)], 1)
            x = blk(x)
        assert torch.allclose(model.encode_image(IMAGES), v.ln_post(x[:, 0]) @ v.proj, atol=1e-5)
        text, image = model.encode_text(NAMES), model.encode_image(IMAGES)
        model.text_ctx[3] += 1.0  # deeper than the 2-layer text tower: reaches vision only
        assert torch.equal(model.encode_text(NAMES), text)
        assert not torch.allclose(model.encode_image(IMAGES), image, atol=1e-4)


# ---------------------------------------------------------------- RPO: read-only prompts
def test_rpo_prompts_do_not_change_the_original_tokens():
    clip = tiny_clip(18)
    model = oe.wrap_clip("rpo", clip, k=3)
    tokens = model.template(NAMES)
    with torch.no_grad():
        model.text_prompts.normal_()
        model.visual_prompts.normal_()
        x, n = model.image_tokens(IMAGES)
        vanilla, n0 = run_vision(clip.visual, IMAGES)
        assert n == n0 and x.shape[1] == n + 3
        assert torch.allclose(x[:, :n], vanilla, atol=1e-5)
        t = model.text_tokens(tokens)
        ref = clip.token_embedding(tokens) + clip.positional_embedding
        ref = clip.transformer(ref, attn_mask=clip.attn_mask)
        assert torch.allclose(t[:, :77], ref, atol=1e-5)


def test_rpo_text_prompts_match_the_published_layout():
    """Reference: prompts written over the pads right after end-of-text, nothing attends past it."""
    clip = tiny_clip(19)
    model = oe.wrap_clip("rpo", clip, k=2)
    tokens = model.template(NAMES)
    with torch.no_grad():
        ours = model.text_tokens(tokens)[:, 77:]
        for c in range(len(NAMES)):
            eot = int(tokens[c].argmax())
            x = clip.token_embedding(tokens[c:c + 1]) + clip.positional_embedding
            x[0, eot + 1:eot + 3] = model.text_prompts
            mask = torch.full((77, 77), float("-inf")).triu(1)
            mask[:, eot + 1:] = float("-inf")
            out = clip.transformer(x, attn_mask=mask)
            assert torch.allclose(ours[c], out[0, eot + 1:eot + 3], atol=1e-5)


def test_rpo_similarity_is_the_mean_of_per_prompt_cosines():
    clip = tiny_clip(20)
    model = oe.wrap_clip("rpo", clip, k=3)
    assert model.embed_dim == 3 * 24
    with torch.no_grad():
        img, txt = model.encode_image(IMAGES), model.encode_text(NAMES)
        assert torch.allclose(img.norm(dim=-1), torch.ones(2)) and torch.equal(model.encode_text(NAMES, True), txt)
        x, n = model.image_tokens(IMAGES)
        v = F.normalize(clip.visual.ln_post(x[:, n:]) @ clip.visual.proj, dim=-1)              # (B, K, D)
        t = F.normalize(clip.ln_final(model.text_tokens(model.template(NAMES))[:, 77:]) @ clip.text_projection, dim=-1)
        ref = torch.einsum("bkd,ckd->bc", v, t) / 3
        assert torch.allclose(img @ txt.T, ref, atol=1e-6)


def test_rpo_initialisation_is_near_the_special_tokens():
    clip = tiny_clip(21)
    model = oe.wrap_clip("rpo", clip, k=4)
    eot = clip.token_embedding.weight[model.tokenizer.eot_token_id]
    assert torch.allclose((model.text_prompts - eot).norm(dim=-1), torch.full((4,), 0.1), atol=1e-6)
    cls = clip.visual.class_embedding
    assert torch.allclose((model.visual_prompts - cls).norm(dim=-1), torch.full((4,), 0.1), atol=1e-6)


# ---------------------------------------------------------------- WiSE-FT: weight-space ensembling
@pytest.mark.parametrize("method", ["wiseft-text", "wiseft-visual"])
def test_wiseft_alpha_zero_is_zero_shot_and_alpha_one_is_fine_tuned(method):
    base = tiny_clip(22)
    model = sgd_step(oe.wrap_clip(method, copy.deepcopy(base)))
    tuned = model.learned_state_dict()
    zero_shot = dict(base.named_parameters())
    model.finalize(0.0)
    assert model.config.alpha == 0.0 and model.config.interpolated
    for name, p in model.named_learned_parameters().items():
        assert torch.equal(p, zero_shot[name]), name
    with torch.no_grad():
        assert torch.equal(model.encode_image(IMAGES), oe.wrap_clip(method, copy.deepcopy(base)).encode_image(IMAGES))
        assert torch.allclose(model.encode_text(NAMES), handcrafted_text(base, NAMES), atol=1e-6)
    model.finalize(1.0)
    for name, p in model.named_learned_parameters().items():
        assert torch.equal(p, tuned[name]), name
    model.finalize()  # the config's alpha (now 1.0): idempotent
    assert torch.equal(model.learned_state_dict()[next(iter(tuned))], next(iter(tuned.values())))
    model.finalize(0.25)
    name = next(iter(tuned))
    assert torch.equal(model.named_learned_parameters()[name], 0.75 * zero_shot[name] + 0.25 * tuned[name])
    assert all(torch.equal(model.learned_state_dict()[n], t) for n, t in tuned.items())  # checkpoints keep fine-tuned


def test_wiseft_set_trainable_follows_its_tower_and_survives_a_frozen_clip():
    clip = tiny_clip()
    model = oe.wrap_clip("wiseft-visual", clip)
    expected = n_trainable(model)
    clip.requires_grad_(False)  # e.g. a zero-shot wrapper built over the same open_clip model
    model.set_trainable(visual=True, text=False)
    assert n_trainable(model) == expected == sum(p.numel() for p in clip.visual.parameters())
    model.set_trainable(visual=False, text=True)
    assert n_trainable(model) == 0


def test_wiseft_text_keeps_the_projection_frozen_by_default():
    model = oe.wrap_clip("wiseft-text", tiny_clip())
    names = set(model.named_learned_parameters())
    assert "text_projection" not in names and "token_embedding.weight" in names and "ln_final.weight" in names
    assert not any(n.startswith(("visual.", "logit")) for n in names)
    assert "text_projection" in oe.wrap_clip("wiseft-text", tiny_clip(), train_projection=True).named_learned_parameters()
    assert "visual.proj" in oe.wrap_clip("wiseft-visual", tiny_clip()).named_learned_parameters()


def test_rpo_ensemble_has_unit_norm_per_prompt_block():
    model = oe.wrap_clip("rpo", tiny_clip(23), k=2)
    with torch.no_grad():
        blocks = model.encode_image(IMAGES).view(2, 2, 24)
    assert torch.allclose(blocks.norm(dim=-1), torch.full((2, 2), 1 / math.sqrt(2)))
