"""Tower families beyond CLIP ViT-B/L (issue 17 part 2): the same exactness tests for each.

Families, on tiny random-weight models of the same construction as the released configs:
- CLIP ViT (ViT-B/L/H/bigG, -quickgelu, -336/-378): open_clip VisionTransformer + causal text tower;
- CLIPA (ViT-L/H/bigG-14-CLIPA): no ``ln_pre``, LayerNorm after pooling, bidirectional text pooled at the
  last position, BERT tokenizer ([CLS] ... [SEP], pad 0);
- SigLIP / SigLIP 2 (ViT-B-16-SigLIP, ViT-SO400M-14-SigLIP2, ...): a timm VisionTransformer with a MAP
  attention-pool head inside open_clip's TimmModel, bidirectional text pooled at the last position,
  SentencePiece tokenizer with no start token (text, EOS, pad).
The real BERT / SentencePiece vocabularies download from the Hub, so the tests use word-level
tokenizers with the same call shape and special-id layout as open_clip's HFTokenizer.
"""

import zlib

import open_clip
import pytest
import torch

import opendas_encoder as oe
from conftest import make_tiny_clip


class _SpecialIds:
    def __init__(self, **ids):
        self.__dict__.update(ids)


class WordLevelHFTokenizer:
    """open_clip HFTokenizer's call shape (texts -> (B, L) ids, padded) over a word-level vocabulary,
    with the special ids of the real tokenizer in ``.tokenizer`` (as HF tokenizers expose them)."""

    def __init__(self, context_length, bos=None, cls=None, eos=None, sep=None, pad=0):
        self.context_length = context_length
        self.tokenizer = _SpecialIds(bos_token_id=bos, cls_token_id=cls, eos_token_id=eos, sep_token_id=sep,
                                     pad_token_id=pad)

    def __call__(self, texts, context_length=None):
        texts = [texts] if isinstance(texts, str) else texts
        length = context_length or self.context_length
        hf = self.tokenizer
        first = [i for i in (hf.cls_token_id, hf.bos_token_id) if i is not None][:1]
        last = [i for i in (hf.sep_token_id, hf.eos_token_id) if i is not None][:1]
        out = torch.full((len(texts), length), hf.pad_token_id, dtype=torch.long)
        for r, text in enumerate(texts):
            words = [1000 + zlib.crc32(w.encode()) % 30000 for w in text.replace(".", " .").split()]
            ids = (first + words)[:length - len(last)] + last
            out[r, :len(ids)] = torch.tensor(ids)
        return out


def siglip_like(seed=0):
    torch.manual_seed(seed)
    model = open_clip.CustomTextCLIP(
        embed_dim=192, init_logit_bias=-10,
        vision_cfg=dict(image_size=224, timm_model_name="vit_tiny_patch16_224", timm_model_pretrained=False,
                        timm_pool="map", timm_proj="none"),
        text_cfg=dict(context_length=16, vocab_size=32000, width=40, heads=4, layers=2, no_causal_mask=True,
                      pool_type="last", proj_bias=True))
    return model.eval(), WordLevelHFTokenizer(16, eos=1, pad=0)   # SentencePiece: text, </s>, <pad>


def clipa_like(seed=0):
    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=24,
        vision_cfg=dict(image_size=32, layers=2, width=48, head_width=16, patch_size=8, no_ln_pre=True,
                        final_ln_after_pool=True, pool_type="tok"),
        text_cfg=dict(context_length=16, vocab_size=32000, width=40, heads=4, layers=2, no_causal_mask=True,
                      pool_type="last"))
    return model.eval(), WordLevelHFTokenizer(16, cls=101, sep=102, pad=0)   # BERT: [CLS] text [SEP] [PAD]


def clip_quickgelu(seed=0):
    torch.manual_seed(seed)
    return make_tiny_clip(seed, vision_cfg=dict(layers=2)).eval(), open_clip.get_tokenizer("ViT-B-32")


FAMILIES = {"siglip": siglip_like, "clipa": clipa_like, "clip": clip_quickgelu}
NAMES = ["chair", "office swivel chair", "lamp"]


def images_for(model):
    size = model.visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(4))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    model, tokenizer = FAMILIES[request.param]()
    return request.param, model, tokenizer


def test_zero_prompts_equal_vanilla_open_clip(family):
    name, clip, tok = family
    images = images_for(clip)
    zero_shot = oe.wrap_clip("zeroshot", clip, tokenizer=tok, template="{}")
    vpt = oe.wrap_clip("vpt", clip, tokenizer=tok, n_tokens=0, template="{}")
    prompted = oe.wrap_clip("opendas", clip, tokenizer=tok, visual_tokens=0, text_tokens=0, text_init="")
    with torch.no_grad():
        vanilla_img = clip.encode_image(images)
        vanilla_txt = clip.encode_text(tok(NAMES))
        assert torch.allclose(vpt.encode_image(images), vanilla_img, atol=1e-5), name
        assert torch.allclose(prompted.encode_image(images), vanilla_img, atol=1e-5), name
        assert torch.allclose(zero_shot.encode_text(NAMES), vanilla_txt, atol=1e-5), name
        assert torch.allclose(zero_shot.encode_text(tok(NAMES)), vanilla_txt, atol=1e-5), name
        # OpenDAS closes its prompt with "." (MaPLe's prompt): "<name> ." through open_clip itself
        assert torch.allclose(prompted.encode_text(NAMES), clip.encode_text(tok([f"{n} ." for n in NAMES])),
                              atol=1e-5), name


def test_trainable_parameters_follow_the_formula(family):
    name, clip, tok = family
    model = oe.wrap_clip("opendas", clip, tokenizer=tok)
    view = model.vision_view
    expected = 8 * view.layers * view.width + 4 * model.text_layers * model.text_width
    assert sum(p.numel() for p in model.prompt_parameters()) == expected, name
    assert not any(p.requires_grad for p in clip.parameters())


def test_deep_prompts_act_and_never_reach_the_pool(family):
    name, clip, tok = family
    model = oe.wrap_clip("opendas", clip, tokenizer=tok, visual_tokens=3, text_tokens=4)
    images = images_for(clip)
    seen = []
    pool = clip.visual.trunk.attn_pool if name == "siglip" else clip.visual.ln_post
    handle = pool.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape))
    try:
        with torch.no_grad():
            model.visual_prompts.normal_()
            prompted = model.encode_image(images)
    finally:
        handle.remove()
    n_original = model.vision_view.grid_size[0] * model.vision_view.grid_size[1] + (name != "siglip")
    assert seen and all(s[-2] == n_original for s in seen if len(s) == 3), (name, seen)
    with torch.no_grad():
        assert not torch.allclose(prompted, clip.encode_image(images), atol=1e-4), name


def test_token_input_equals_names_and_context_starts_after_the_start_token(family):
    name, clip, tok = family
    model = oe.wrap_clip("opendas", clip, tokenizer=tok, visual_tokens=0, text_tokens=4)
    with torch.no_grad():
        model.text_prompts.normal_()
        assert torch.equal(model.encode_text(NAMES), model.encode_text(model.tokenizer(NAMES)))
    ids = model.template(["chair"])[0]
    start = {"siglip": 0, "clipa": 1, "clip": 1}[name]
    assert model.template.context_start == start
    assert ids[start:start + 4].tolist() == [0, 0, 0, 0]  # the context slots
    if start:
        assert int(ids[0]) == int(model.tokenizer(["chair"])[0, 0])  # the start token stays first


def test_carry_is_exact_where_the_tower_lets_it_be(family):
    """Causal tower: the untrained text encoder is zero-shot CLIP for every name. Bidirectional tower:
    the carried states were computed for the empty name, so only that prompt is exact."""
    name, clip, tok = family
    model = oe.wrap_clip("opendas", clip, tokenizer=tok, visual_tokens=0, text_tokens=4, text_deep_init="carry")
    zero_shot = oe.wrap_clip("zeroshot", clip, tokenizer=tok)  # "a photo of a {}."
    with torch.no_grad():
        carried, reference = model.encode_text(NAMES), zero_shot.encode_text(NAMES)
        empty = model.encode_text([""])
        empty_ref = clip.encode_text(tok(["a photo of a ."]))
    assert torch.allclose(empty, empty_ref, atol=1e-5), name
    if name == "clip":
        assert torch.allclose(carried, reference, atol=1e-5)
    else:
        assert not torch.allclose(carried, reference, atol=1e-3), name


def test_checkpoint_round_trip_on_a_timm_tower(tmp_path):
    clip, tok = siglip_like(1)
    model = oe.wrap_clip("opendas", clip, tokenizer=tok, model_name="tiny-siglip", visual_tokens=2, text_tokens=4)
    with torch.no_grad():
        model.visual_prompts.normal_()
    folder = oe.save_checkpoint(model, str(tmp_path / "c"))
    config = oe.read_checkpoint_config(folder)
    assert config["base_model"]["patch_size"] == [16, 16] and config["base_model"]["grid_size"] == [14, 14]
    loaded = oe.wrap_clip("opendas", clip, tokenizer=tok, visual_tokens=2, text_tokens=4)
    loaded.load_learned_state_dict(oe.load_encoder(folder, model=clip).learned_state_dict())
    images = images_for(clip)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), model.encode_image(images))


# ---------------------------------------------------------------- refused, by name
@pytest.mark.parametrize("model_name,match", [
    ("EVA02-B-16", "Eva is not supported: EVA towers use rotary position embeddings"),
    ("MobileCLIP-S1", "FastVit is not supported"),
    ("coca_ViT-B-32", "appended class token \\(CoCa\\)"),
    ("RN50", "ModifiedResNet is not a ViT"),
])
def test_unsupported_families_are_refused_by_name(model_name, match):
    with torch.device("meta"):
        model = open_clip.create_model(model_name, device="meta")
    with pytest.raises(oe.UnsupportedModelError, match=match):
        oe.wrap_clip("opendas", model, tokenizer=open_clip.get_tokenizer("ViT-B-32"))


def test_rpo_refuses_towers_it_cannot_read():
    clip, tok = siglip_like(2)
    with pytest.raises(oe.UnsupportedModelError, match="RPO reads its prompts at CLIP's end-of-text token"):
        oe.wrap_clip("rpo", clip, tokenizer=tok)


@pytest.mark.parametrize("causal", [True, False])
def test_visual_only_keeps_text_exactly_zero_shot_only_on_a_causal_tower_and_says_which(tmp_path, causal):
    """Issue 25.4: ``setting: visual-only`` carries the zero-shot text context; that is zero-shot CLIP exactly in a
    causal text tower and not in a bidirectional one (CLIPA / SigLIP style), where it warns by name and the
    checkpoint metadata says "approximately". Truth: open_clip's own encode_text of "a photo of a {name}."."""
    import json
    import os
    import warnings

    from opendas_encoder.train.config import TrainConfig
    from opendas_encoder.train.pipeline import build_model, identity_towers

    name = f"opendas-tiny-{'causal' if causal else 'bidir'}-25"
    cfg = json.loads(open(os.path.join(os.path.dirname(oe.__file__), "model_configs", "opendas-tiny-vit.json")).read())
    cfg["text_cfg"]["no_causal_mask"] = not causal
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(tmp_path / f"{name}.json"))
    config = TrainConfig(setting="visual-only", model={"name": name, "pretrained": None}, output_dir=str(tmp_path))

    def built(config):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = build_model(config)
        with torch.no_grad():
            ours = model.encode_text(NAMES)
            truth = model.clip.encode_text(open_clip.get_tokenizer(name)([f"a photo of a {n}." for n in NAMES]))
        said = [str(w.message) for w in caught if "setting 'visual-only'" in str(w.message)]
        return model, float((ours - truth).abs().max() / truth.abs().max()), said

    model, gap, said = built(config)
    if causal:  # float32: the same blocks over the same states, summed in another order (< 1e-5 relative)
        assert gap <= 1e-5 and not said
        assert identity_towers(config, model) == {"text": "text_deep_init=carry (zero-shot text)"}
    else:
        assert gap > 1e-3 and len(said) == 1 and f"'{name}': its text tower is bidirectional" in said[0]
        assert "text_depth: 1" in said[0]
        assert identity_towers(config, model) == {
            "text": "text_deep_init=carry (approximately zero-shot text: bidirectional text tower)"}
        # the way out the warning names: the template's words at layer 0 only, exactly zero-shot, no warning
        config = config.model_copy(update={"prompts": {"text_depth": 1}})
        model, gap, said = built(config)
        assert gap <= 1e-5 and not said
        assert identity_towers(config, model) == {"text": "text_deep_init=carry (zero-shot text)"}
    # without text tokens the text side is the bare class name: the metadata does not call it zero-shot
    config = config.model_copy(update={"prompts": {"text_tokens": 0}})
    model, gap, said = built(config)
    assert len(said) == 1 and "bare class name" in said[0]
    assert gap > 1e-3 and identity_towers(config, model) == {
        "text": "text_tokens=0 (the bare class name, not zero-shot text)"}
