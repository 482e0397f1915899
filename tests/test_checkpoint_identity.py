"""Checkpoint identity (issue 13 item 10) and checkpoints written by the previous format (issue 15)."""

import json
import os

import open_clip
import pytest
import torch
from safetensors.torch import load_file, save_file

import opendas_encoder as oe
from conftest import make_tiny_clip, save_weights
from opendas_encoder.core.checkpoint import CONFIG_NAME

IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
NAMES = ["chair", "office chair", "lamp"]
LEGACY = os.path.join(os.path.dirname(__file__), "data", "legacy_checkpoints")


def saved(tmp_path, clip, method="opendas", **cfg):
    model = oe.wrap_clip(method, clip, model_name="tiny", **(cfg or dict(visual_tokens=2, text_tokens=4)))
    return model, oe.save_checkpoint(model, str(tmp_path / "c"))


def test_other_patch_size_with_equal_widths_is_refused(tmp_path):
    """Like ViT-B-16 vs ViT-B-32: same widths and depths, another patch size and grid."""
    _, folder = saved(tmp_path, make_tiny_clip(0))
    other = make_tiny_clip(0, vision_cfg=dict(patch_size=16))
    with pytest.raises(ValueError, match=r"patch_size: checkpoint \[8, 8\] vs model \[16, 16\]"):
        oe.load_encoder(folder, model=other)


def test_other_context_length_is_refused(tmp_path):
    _, folder = saved(tmp_path, make_tiny_clip(0))
    other = make_tiny_clip(0, text_cfg=dict(context_length=32))
    with pytest.raises(ValueError, match="context_length: checkpoint 77 vs model 32"):
        oe.load_encoder(folder, model=other)


def test_same_architecture_with_other_weights_is_refused_naming_the_tensors(tmp_path):
    _, folder = saved(tmp_path, make_tiny_clip(0))
    with pytest.raises(ValueError, match=r"weights differ.*differing tensors: positional_embedding, text_projection"):
        oe.load_encoder(folder, model=make_tiny_clip(1))


def test_the_same_weights_are_accepted_and_their_fp16_rounding_is_not(tmp_path):
    """The fingerprint is exact (issue 25.1): the same weights rebuilt load; fp16 rounding of them is other weights."""
    model, folder = saved(tmp_path, make_tiny_clip(0))
    loaded = oe.load_encoder(folder, model=make_tiny_clip(0))
    assert torch.equal(loaded.visual_prompts, model.visual_prompts)
    with pytest.raises(ValueError, match="weights differ.*bytes, dtype and shape"):
        oe.load_encoder(folder, model=make_tiny_clip(0).half().float())


# Issue 25.1: tensors the six-tensor fingerprint never looked at (a text block, a visual block, the image
# projection, the last image norm).
UNSEEN_BY_V1 = ["transformer.resblocks.1.mlp.c_fc.weight", "visual.transformer.resblocks.2.attn.in_proj_weight",
                "visual.proj", "visual.ln_post.weight"]


@pytest.mark.parametrize("tensor", UNSEEN_BY_V1)
def test_noise_in_any_tensor_of_the_base_is_refused_naming_the_checkpoint_and_the_tensor(tmp_path, tensor):
    _, folder = saved(tmp_path, make_tiny_clip(0))
    other = make_tiny_clip(0)
    with torch.no_grad():
        other.state_dict()[tensor].add_(1e-3 * torch.randn(other.state_dict()[tensor].shape))
    with pytest.raises(ValueError) as err:
        oe.load_encoder(folder, model=other)
    assert str(err.value).startswith(folder) and f"differing tensors: {tensor} (" in str(err.value)


def test_one_ulp_in_any_tensor_of_the_state_dict_changes_exactly_its_digest():
    """Every tensor open_clip's own state dict lists is covered: nudging one element of any one of them by the
    smallest float step is seen, and named alone."""
    from opendas_encoder.core.towers import fingerprint_differences, weights_fingerprint

    clip = make_tiny_clip(0)
    state = clip.state_dict()
    recorded = weights_fingerprint(state)
    assert list(recorded["sha256"]) == list(state)
    for name, tensor in state.items():
        nudged = dict(state)
        t = tensor.clone()
        flat = t.view(-1)
        flat[0] = torch.nextafter(flat[0], torch.tensor(float("inf"), dtype=t.dtype))
        nudged[name] = t
        assert fingerprint_differences(recorded, weights_fingerprint(nudged)) == [name]
    assert fingerprint_differences(recorded, weights_fingerprint(make_tiny_clip(0).state_dict())) == []


def _as_format2_with_six_tensor_fingerprint(folder, clip):
    """Rewrite a checkpoint as format 2 wrote it: version-1 fingerprint (six tensors) of its base."""
    from opendas_encoder.core.towers import weights_fingerprint_v1

    path = os.path.join(folder, CONFIG_NAME)
    config = json.loads(open(path).read())
    config["format_version"] = 2
    config["base_fingerprint"] = weights_fingerprint_v1(dict(clip.named_parameters()))
    open(path, "w").write(json.dumps(config))
    return config


def test_format2_six_tensor_fingerprints_are_checked_as_recorded_and_say_what_they_do_not_cover(tmp_path):
    model, folder = saved(tmp_path, make_tiny_clip(0))
    recorded = _as_format2_with_six_tensor_fingerprint(folder, make_tiny_clip(0))["base_fingerprint"]
    assert len(recorded) == 6 and not set(recorded) & set(UNSEEN_BY_V1)
    with pytest.warns(UserWarning, match="fingerprint of 6 tensors.*other weights were not checked"):
        loaded = oe.load_encoder(folder, model=make_tiny_clip(0))
    assert torch.equal(loaded.visual_prompts, model.visual_prompts)
    with pytest.raises(ValueError, match=r"weights differ.*token_embedding\.weight"):
        oe.load_encoder(folder, model=make_tiny_clip(1))


def test_a_format1_checkpoint_without_fingerprint_warns_that_weights_were_not_checked():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="no fingerprint of its base model's weights"):
        oe.load_encoder(os.path.join(LEGACY, "vpt"), model=open_clip.create_model("opendas-tiny-vit"))


@pytest.mark.parametrize("name", ["../outside.safetensors", "sub/prompts.safetensors", "ABSOLUTE", ".."])
def test_tensors_file_must_be_a_plain_file_name_in_the_folder(tmp_path, name):
    """Issue 25.7: the JSON cannot point the loader at tensors elsewhere (they exist there, and would load)."""
    _, folder = saved(tmp_path, make_tiny_clip(0))
    tensors = load_file(os.path.join(folder, "prompts.safetensors"))
    outside = str(tmp_path / "outside.safetensors")
    save_file(tensors, outside)
    os.makedirs(os.path.join(folder, "sub"))
    save_file(tensors, os.path.join(folder, "sub", "prompts.safetensors"))
    name = outside if name == "ABSOLUTE" else name
    path = os.path.join(folder, CONFIG_NAME)
    config = json.loads(open(path).read())
    config["tensors_file"] = name
    open(path, "w").write(json.dumps(config))
    with pytest.raises(ValueError, match=f"{path}: tensors_file must be a plain file name"):
        oe.load_encoder(folder, model=make_tiny_clip(0))


def test_a_random_base_is_not_rebuilt_but_handed_over(tmp_path):
    """Issue 25.8: a base recorded with random weights (pretrained None) is refused, naming the checkpoint,
    unless the caller hands it over: model= or its weights file as pretrained= (checked bit for bit)."""
    from opendas_encoder.core.checkpoint import load_base_model

    model = oe.create_model("opendas-tiny-vit", prompts=oe.PromptConfig(visual_tokens=2, text_tokens=4))
    folder = oe.save_checkpoint(model, str(tmp_path / "c"))
    with pytest.raises(ValueError, match=f"^{folder}: .*random weights.*cannot be rebuilt"):
        oe.load_encoder(folder)
    with pytest.raises(ValueError, match=f"^{folder}: .*random weights"):
        load_base_model(folder)
    weights = str(tmp_path / "base.safetensors")
    save_weights(model.clip, weights)
    loaded = oe.load_encoder(folder, pretrained=weights)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(IMAGES), model.encode_image(IMAGES))
    save_file({k: v.contiguous() + 1e-3 for k, v in model.clip.state_dict().items()}, weights)
    with pytest.raises(ValueError, match=f"^{folder}: the base model's weights differ"):
        oe.load_encoder(folder, pretrained=weights)


@pytest.mark.parametrize("model_name, pretrained, problem", [
    ("opendas-tiny-vit", "generated-world", "registered for"),  # a local tag of another model
    ("no-such-model", None, "unknown open_clip model"),
    ("opendas-tiny-vit", "no-such-tag", "not a known tag"),  # open_clip's own RuntimeError
])
def test_an_edited_base_model_record_is_an_error_naming_the_checkpoint(tmp_path, model_name, pretrained, problem):
    """Issue 25.15: every load error names the checkpoint folder."""
    _, folder = saved(tmp_path, make_tiny_clip(0))
    path = os.path.join(folder, CONFIG_NAME)
    config = json.loads(open(path).read())
    config.update(model_name=model_name, pretrained=pretrained or "x.safetensors")
    if pretrained is None:
        config["pretrained"] = "openai"
    open(path, "w").write(json.dumps(config))
    with pytest.raises(ValueError, match=f"^{folder}: .*{problem}"):
        oe.load_encoder(folder)


def test_wiseft_checkpoint_identifies_its_zero_shot_base(tmp_path):
    clip = make_tiny_clip(0)
    model = oe.wrap_clip("wiseft-visual", clip, model_name="tiny")
    with torch.no_grad():
        for p in model.learned_parameters():
            p.add_(1.0)  # fine-tuned far away from the base
    folder = oe.save_checkpoint(model, str(tmp_path / "c"))
    assert os.path.isfile(os.path.join(folder, "towers.safetensors"))  # whole towers, not prompts
    loaded = oe.load_encoder(folder, model=make_tiny_clip(0))
    assert torch.equal(loaded.learned_state_dict()["visual.conv1.weight"],
                       model.learned_state_dict()["visual.conv1.weight"])
    with pytest.raises(ValueError, match="weights differ"):
        oe.load_encoder(folder, model=make_tiny_clip(1))


def test_non_finite_tensors_are_refused(tmp_path):
    _, folder = saved(tmp_path, make_tiny_clip(0))
    path = os.path.join(folder, "prompts.safetensors")
    tensors = load_file(path)
    tensors["visual_prompts"][0, 0, 0] = float("nan")
    save_file(tensors, path)
    with pytest.raises(ValueError, match="'visual_prompts' holds non-finite values"):
        oe.load_encoder(folder, model=make_tiny_clip(0))


def test_checkpoint_records_identity_facts(tmp_path):
    _, folder = saved(tmp_path, make_tiny_clip(0))
    config = json.loads(open(os.path.join(folder, CONFIG_NAME)).read())
    assert config["format_version"] == 3 and config["tensors_file"] == "prompts.safetensors"
    assert {"patch_size", "grid_size", "context_length"} <= set(config["base_model"])
    assert config["base_model"]["grid_size"] == [4, 4]
    assert config["base_fingerprint"]["version"] == 2
    assert sorted(config["base_fingerprint"]["sha256"]) == sorted(make_tiny_clip(0).state_dict())
    assert "prompts" not in config and config["method_config"]["visual_tokens"] == 2


# ---------------------------------------------------------------- format 1 (written by main b7e0b1a)
def float32_bound(features, chain=14, n=256, safety=2.0):
    """How far features computed on another machine may be from this machine's (issue 25 item 13).

    The fixture's features were computed by an older version on another machine; other SIMD kernels and
    thread counts sum float32 products in another order. A dot product of n terms of size <= m rounds
    to within ~ sqrt(n) * eps * m (eps = 2**-24 ~ 6e-8, the rounding errors a random walk); the
    opendas-tiny-vit path from pixels to a feature is a chain of ``chain`` such products (patch conv of
    3*8*8 = 192 terms; per layer of 2: qkv, q.k, attn.v, out, fc1, fc2 of at most n = 256 terms; the
    projection), whose independent errors add in quadrature, each relative to the feature scale:
    bound = safety * sqrt(chain) * sqrt(n) * eps * max|feature| (here ~2e-5 for |f| <= 2.7). Measured
    across OMP_NUM_THREADS 1-3, ATEN_CPU_CAPABILITY default/avx2/avx512, MKL_ENABLE_INSTRUCTIONS
    SSE4_2/AVX2: at most 3.0e-6 (another machine of the same kind: 2.0e-6). The text side tells the
    format-1 conventions apart by 1.5; the image side's (layer-0 prompts without ln_pre) changes these
    features by only 4e-6 and is checked in-process by tests/test_encoder_contract.py.
    """
    eps = 2.0 ** -24
    return safety * (chain * n) ** 0.5 * eps * float(features.abs().max())


@pytest.mark.parametrize("method", ["opendas", "vpt"])
def test_format1_checkpoints_load_and_give_the_features_they_gave(method):
    torch.manual_seed(0)
    base = open_clip.create_model("opendas-tiny-vit")  # the base the fixture was written on (see its README)
    loaded = oe.load_encoder(os.path.join(LEGACY, method), model=base)
    expected = load_file(os.path.join(LEGACY, f"{method}_expected_features.safetensors"))
    with torch.no_grad():
        for key, got in (("image", loaded.encode_image(IMAGES)), ("text", loaded.encode_text(NAMES))):
            bound = float32_bound(expected[key])
            assert (got - expected[key]).abs().max() <= bound, (key, (got - expected[key]).abs().max(), bound)
    if method == "opendas":
        assert loaded.config.legacy_conventions and loaded.config.visual_tokens == 3



def test_a_tokenizer_that_fails_to_build_is_an_error_not_a_silent_none(tmp_path, monkeypatch):
    """Issue 13.13: loading used to swallow any tokenizer error (``except Exception: tokenizer = None``) and
    hand back an encoder that failed later, far from the cause. The error now reaches the caller as it is."""
    import open_clip

    model = oe.create_model("opendas-tiny-vit")
    oe.save_checkpoint(model, str(tmp_path / "ckpt"))

    def unavailable(name, *args, **kwargs):
        raise OSError(f"tokenizer of {name!r} is not in the local cache (offline)")

    monkeypatch.setattr(open_clip, "get_tokenizer", unavailable)
    with pytest.raises(OSError, match="not in the local cache"):
        oe.load_encoder(str(tmp_path / "ckpt"), model=model.clip)
